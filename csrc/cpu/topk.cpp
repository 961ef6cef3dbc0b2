// CPU `top_k` (values + indices, like torch.topk) and `top_k_mask_logits`, by the candidate filter and
// radix select of select.h: one vectorised pass over each row, no sort of the vocabulary.
#include <algorithm>
#include <limits>

#include "common.h"
#include "row_plan.h"
#include "select.h"

namespace fastsample::cpu {
namespace {

// Every token >= the row's k-th largest non-NaN value (ties included), in index order. Sets has_nan.
std::vector<Candidate> top_candidates(const float* x, int64_t n, int64_t k, int nseg, bool& has_nan) {
  std::vector<std::vector<Candidate>> parts(nseg);
  std::vector<SpanStats> stats(nseg);
  std::vector<float> block_max(n / kBlock + nseg + 1);
  for_segments(nseg, [&](int s) {
    const int64_t lo = segment_begin(n, nseg, s), hi = segment_begin(n, nseg, s + 1);
    stats[s] = collect_candidates(x + lo, hi - lo, lo, k, block_max.data() + lo / kBlock + s, parts[s]);
  });
  has_nan = false;
  std::vector<Candidate> cands;
  for (int s = 0; s < nseg; ++s) {
    has_nan |= stats[s].has_nan;
    cands.insert(cands.end(), parts[s].begin(), parts[s].end());
  }
  if (static_cast<int64_t>(cands.size()) > k) drop_below(cands, kth_largest(cands, k));
  return cands;
}

std::tuple<at::Tensor, at::Tensor> top_k(const at::Tensor& x_in, int64_t k, bool sorted) {
  check_rows(x_in, "x", true);
  const int64_t batch = x_in.size(0), vocab = x_in.size(1);
  TORCH_CHECK(k >= 0 && k <= vocab, "k must be in [0, ", vocab, "], got ", k);
  at::Tensor indices = at::empty({batch, k}, x_in.options().dtype(at::kLong));
  int64_t* ip = indices.data_ptr<int64_t>();
  const int nseg = segments_for(batch, vocab);
  for_float_blocks(x_in, [&](const at::Tensor& rows, int64_t first) {
    const float* xp = rows.data_ptr<float>();
    for_rows(rows.size(0), k == 0 ? 1 : nseg, [&](int64_t r) {
      if (k == 0) return;
      const float* xb = xp + r * vocab;
      int64_t* out = ip + (first + r) * k;
      bool has_nan = false;
      std::vector<Candidate> cands = top_candidates(xb, vocab, k, nseg, has_nan);
      int64_t filled = 0;
      if (has_nan) {  // NaN ranks above +inf, as in torch.topk: NaNs first, in index order
        for (int64_t i = 0; i < vocab && filled < k; ++i) {
          if (xb[i] != xb[i]) out[filled++] = i;
        }
      }
      std::sort(cands.begin(), cands.end(), [](const Candidate& a, const Candidate& c) {
        return a.x > c.x || (a.x == c.x && a.index < c.index);
      });
      for (size_t j = 0; filled < k && j < cands.size(); ++j) out[filled++] = cands[j].index;
    });
  });
  (void)sorted;  // always sorted: "unspecified order" allows it, and callers mostly want it
  return {x_in.contiguous().gather(1, indices), indices};
}

// out = x with every token below its row's theta set to -inf (compared in float32, as theta was found).
template <class T>
void write_masked(const T* x, int64_t batch, int64_t vocab, const float* theta, T* out) {
  const auto neg_inf = static_cast<T>(-std::numeric_limits<float>::infinity());
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < batch; ++b) {
    const float t = theta[b];
    const T* xb = x + b * vocab;
    T* ob = out + b * vocab;
    for (int64_t i = 0; i < vocab; ++i) ob[i] = static_cast<float>(xb[i]) < t ? neg_inf : xb[i];
  }
}

at::Tensor top_k_mask_logits(const at::Tensor& logits_in, const std::optional<at::Tensor>& top_k_arr,
                             int64_t top_k_val) {
  check_rows(logits_in, "logits", true);
  const int64_t batch = logits_in.size(0), vocab = logits_in.size(1);
  const auto top_k = row_arg<int64_t>(top_k_arr, top_k_val, batch, "top_k");
  // Row thresholds: masked iff x < theta. -inf keeps the row; NaN keeps it too (NaN rows stay unchanged).
  std::vector<float> theta(batch, -std::numeric_limits<float>::infinity());
  const int nseg = segments_for(batch, vocab);
  for_float_blocks(logits_in, [&](const at::Tensor& rows, int64_t first) {
    const float* xp = rows.data_ptr<float>();
    for_rows(rows.size(0), nseg, [&](int64_t r) {
      const auto k = static_cast<int64_t>(top_k[first + r]);
      if (k <= 0 || k >= vocab) return;
      bool has_nan = false;
      std::vector<Candidate> cands = top_candidates(xp + r * vocab, vocab, k, nseg, has_nan);
      theta[first + r] = has_nan ? std::numeric_limits<float>::quiet_NaN() : kth_largest(cands, k);
    });
  });
  // Written row by row: no [B, V] temporaries (mask, float32 copy) beside the output.
  const at::Tensor logits = logits_in.contiguous();
  at::Tensor out = at::empty_like(logits);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "top_k_mask_logits", [&] {
    write_masked(logits.data_ptr<scalar_t>(), batch, vocab, theta.data(), out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsample, CPU, m) {
  m.impl("top_k", &top_k);
  m.impl("top_k_mask_logits", &top_k_mask_logits);
}

}  // namespace fastsample::cpu
