// CPU `chain_speculative_sampling` (docs/ops.md): the acceptance test of each draft position with its own
// Philox draw, then one token from the residual max(0, p - q) at the first rejection, or the bonus token.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <memory>

#include "common.h"
#include "fastsample/philox.h"
#include "inverse_cdf.h"

namespace fastsample::cpu {
namespace {

// The final token's weight of id v: the residual max(0, p - q) after a rejection (q given), else p.
inline double final_weight(const float* p, const float* q, bool residual, int64_t v) {
  return residual ? std::max(0.0, static_cast<double>(p[v]) - q[v]) : static_cast<double>(p[v]);
}

// The final token by inverse CDF with uniform u, streaming over the rows (no copies): a branch-free pass
// for validity and sums, then block sums in ascending ids and a walk of the one block holding the step.
// q is the draft row after a rejection, else null; a residual that sums to 0 falls back to p. -1 if p or
// q holds a NaN, negative or infinite entry, or the weights sum to 0 (docs/ops.md).
int64_t sample_final(const float* p, const float* q, int64_t vocab, double u) {
  constexpr int64_t kWalkBlock = 64;
  int bad = 0;
  double sum_p = 0.0, sum_r = 0.0;
#pragma omp simd reduction(| : bad) reduction(+ : sum_p, sum_r)
  for (int64_t v = 0; v < vocab; ++v) {
    const float pv = p[v], qv = q ? q[v] : 0.0f;
    bad |= (pv != pv) | (pv < 0.0f) | (pv > FLT_MAX) | (qv != qv) | (qv < 0.0f) | (qv > FLT_MAX);
    sum_p += pv;
    sum_r += std::max(0.0, static_cast<double>(pv) - qv);
  }
  const bool residual = q != nullptr && sum_r > 0.0;
  const double total = residual ? sum_r : sum_p;
  if (bad || !(total > 0.0)) return -1;
  const double target = u * total;
  // The block holding the step (or the last with weight), then its tokens; rounding may leave the block
  // short of the target: its last positive weight then.
  auto block_end = [&](int64_t j) { return std::min((j + 1) * kWalkBlock, vocab); };
  auto block_sum = [&](int64_t j) {
    const int64_t end = block_end(j);
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t v = j * kWalkBlock; v < end; ++v) s += final_weight(p, q, residual, v);
    return s;
  };
  double cum = 0.0;
  int64_t last_block = -1, last = -1;
  int64_t block = cdf_step(0, (vocab + kWalkBlock - 1) / kWalkBlock, block_sum, target, cum, last_block);
  if (block < 0) block = last_block;
  if (block < 0) return -1;  // unreachable with total > 0; never read before the row
  const int64_t v = cdf_step(block * kWalkBlock, block_end(block),
                             [&](int64_t i) { return final_weight(p, q, residual, i); }, target, cum, last);
  return v >= 0 ? v : last;
}

// Probability rows [R, V] in their own dtype (float32, float16 or bfloat16), read as float32.
struct ProbRows {
  const at::Tensor& t;
  int64_t vocab;
  ProbRows(const at::Tensor& t, int64_t vocab) : t(t), vocab(vocab) {}
  float value(int64_t r, int64_t v) const {
    const int64_t i = r * vocab + v;
    switch (t.scalar_type()) {
      case at::kFloat: return t.const_data_ptr<float>()[i];
      case at::kHalf: return static_cast<float>(t.const_data_ptr<c10::Half>()[i]);
      default: return static_cast<float>(t.const_data_ptr<c10::BFloat16>()[i]);
    }
  }
  // Row r as float32: in place for float32 input, else widened into buf.
  const float* row(int64_t r, std::unique_ptr<float[]>& buf) const {
    if (t.scalar_type() == at::kFloat) return t.const_data_ptr<float>() + r * vocab;
    buf.reset(new float[vocab]);
    widen_row(t, r, 0, vocab, buf.get());
    return buf.get();
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> chain_speculative_sampling(
    const at::Tensor& draft_probs_in, const at::Tensor& draft_ids_in, const at::Tensor& target_probs_in,
    const at::Tensor& seed_in, const at::Tensor& offset_in) {
  TORCH_CHECK(draft_probs_in.dim() == 3, "draft_probs must be [batch, n, vocab], got ", draft_probs_in.sizes());
  const int64_t batch = draft_probs_in.size(0), n = draft_probs_in.size(1), vocab = draft_probs_in.size(2);
  for (const auto& [t, name] : {std::pair{&draft_probs_in, "draft_probs"}, std::pair{&target_probs_in, "target_probs"}}) {
    const auto dtype = t->scalar_type();
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, name,
                " must be float32, float16 or bfloat16, got ", dtype);
  }
  TORCH_CHECK(target_probs_in.sizes() == at::IntArrayRef({batch, n + 1, vocab}), "target_probs must be [", batch,
              ", ", n + 1, ", ", vocab, "], got ", target_probs_in.sizes());
  TORCH_CHECK(draft_ids_in.sizes() == at::IntArrayRef({batch, n}), "draft_token_ids must be [", batch, ", ", n,
              "], got ", draft_ids_in.sizes());
  // Read in their own dtype (the math is float32): the acceptance tests read one entry per position, and only
  // the final token's rows are widened (float16/bfloat16), never a float32 copy of the inputs.
  const at::Tensor q = draft_probs_in.contiguous(), p = target_probs_in.contiguous();
  const at::Tensor ids = draft_ids_in.to(at::kLong).contiguous();
  const at::Tensor seed = seed_rows(seed_in, batch, "seed"), offset = seed_rows(offset_in, batch, "offset");
  at::Tensor output = at::full({batch, n + 1}, -1, ids.options());
  at::Tensor accepted = at::zeros({batch}, ids.options()), emitted = at::zeros({batch}, ids.options());
  const ProbRows qrows(q, vocab), prows(p, vocab);
  const int64_t *idp = ids.data_ptr<int64_t>(), *seeds = seed.data_ptr<int64_t>(), *offsets = offset.data_ptr<int64_t>();
  int64_t *outp = output.data_ptr<int64_t>(), *accp = accepted.data_ptr<int64_t>(), *emp = emitted.data_ptr<int64_t>();

  for_rows(batch, 1, [&](int64_t b) {
    int64_t first_reject = n, passed = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t x = idp[b * n + i];
      bool pass = false;
      if (x >= 0 && x < vocab) {
        const double u = philox_uniform(seeds[b], offsets[b], static_cast<uint32_t>(i));
        const double qx = qrows.value(b * n + i, x), px = prows.value(b * (n + 1) + i, x);
        pass = u * qx < px;  // NaN compares false: fails
      }
      passed += pass;
      if (!pass && first_reject == n) first_reject = i;
    }
    // The final token uses draw n: residual norm(max(0, p - q)) after a rejection, else the bonus from p_n.
    std::unique_ptr<float[]> p_buf, q_buf;  // the widened rows of float16/bfloat16 input
    const float* pe = prows.row(b * (n + 1) + first_reject, p_buf);
    const float* qe = first_reject < n ? qrows.row(b * n + first_reject, q_buf) : nullptr;
    const double u = philox_uniform(seeds[b], offsets[b], static_cast<uint32_t>(n));
    for (int64_t i = 0; i < first_reject; ++i) outp[b * (n + 1) + i] = idp[b * n + i];
    outp[b * (n + 1) + first_reject] = sample_final(pe, qe, vocab, u);
    accp[b] = passed;
    emp[b] = first_reject;
  });
  return {output, accepted, emitted};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsample, CPU, m) { m.impl("chain_speculative_sampling", &chain_speculative_sampling); }

}  // namespace fastsample::cpu
