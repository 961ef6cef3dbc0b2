// draw_from_cdfs: many outputs inverting few CDFs (fastsample/indexed.py). FlashInfer's `indices` lets n outputs
// draw from R << n rows (5,000,000 draws from one row in its frequency tests); the rows' kept weights and prefix
// sums are built once per distinct (row, filter) group, and this op does the per-output part: one Philox uniform
// and one binary search each, O(n log V) time and no memory beyond the result.
#include <algorithm>
#include <cmath>

#include "common.h"
#include "fastsample/philox.h"

namespace fastsample::cpu {
namespace {

constexpr int64_t kBlock = 4096;  // outputs per parallel task: per-output OpenMP scheduling would dominate

// Output i: u = Philox draw 0 of (seed_i, offset_i + offset_step * i) (docs/design.md section 4; seed and offset
// are [1] or [n], a [1] tensor holding for every output), token = the smallest t with cdf[group_i, t] > u * total
// where total = cdf[group_i, V - 1]; -1 where the total is not finite and positive (an invalid row).
at::Tensor draw_from_cdfs(const at::Tensor& cdf_in, const at::Tensor& group_in, const at::Tensor& seed_in,
                          const at::Tensor& offset_in, int64_t offset_step) {
  TORCH_CHECK_VALUE(cdf_in.dim() == 2 && cdf_in.size(1) >= 1, "cdf must be [groups, vocab], got ", cdf_in.sizes());
  TORCH_CHECK_TYPE(cdf_in.scalar_type() == at::kDouble, "cdf must be float64, got ", cdf_in.scalar_type());
  TORCH_CHECK_VALUE(group_in.dim() == 1, "group must be 1-D, got ", group_in.sizes());
  const int64_t n = group_in.size(0), groups = cdf_in.size(0), vocab = cdf_in.size(1);
  for (const auto* t : {&seed_in, &offset_in}) {
    TORCH_CHECK_TYPE(t->scalar_type() == at::kLong, "seed and offset must be int64, got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->dim() == 1 && (t->size(0) == 1 || t->size(0) == n), "seed and offset must be [1] or [",
                      n, "], got ", t->sizes());
  }
  const at::Tensor cdf = cdf_in.contiguous(), group = group_in.to(at::kLong).contiguous();
  const at::Tensor seed = seed_in.contiguous(), offset = offset_in.contiguous();
  const int64_t* g = group.const_data_ptr<int64_t>();
  // Checked before any row is read: a group id out of range would read outside cdf.
  const auto [lo, hi] = std::minmax_element(g, g + n);
  TORCH_CHECK_INDEX(n == 0 || (*lo >= 0 && *hi < groups), "group ids must be in [0, ", groups, ")");
  const double* c = cdf.const_data_ptr<double>();
  const int64_t *seeds = seed.const_data_ptr<int64_t>(), *offsets = offset.const_data_ptr<int64_t>();
  const bool seed_per_output = seed.size(0) == n && n != 1, offset_per_output = offset.size(0) == n && n != 1;
  at::Tensor tokens = at::empty({n}, group.options());
  int64_t* out = tokens.data_ptr<int64_t>();

  for_rows((n + kBlock - 1) / kBlock, 1, [&](int64_t block) {
    for (int64_t i = block * kBlock; i < std::min(n, (block + 1) * kBlock); ++i) {
      const double* row = c + g[i] * vocab;
      const double total = row[vocab - 1];
      const int64_t s = seeds[seed_per_output ? i : 0];
      // Unsigned arithmetic: offsets are 64-bit counters and may wrap.
      const int64_t o = static_cast<int64_t>(static_cast<uint64_t>(offsets[offset_per_output ? i : 0]) +
                                             static_cast<uint64_t>(offset_step) * static_cast<uint64_t>(i));
      const double target = static_cast<double>(philox_uniform(s, o, 0)) * total;
      // u < 1 keeps target below a finite positive total, so the search ends on a token with weight > 0.
      out[i] = std::isfinite(total) && total > 0 ? std::upper_bound(row, row + vocab, target) - row : -1;
    }
  });
  return tokens;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsample, CPU, m) { m.impl("draw_from_cdfs", &draw_from_cdfs); }

}  // namespace fastsample::cpu
