// What the CPU speculative ops share (speculative.cpp, speculative_tree.cpp): probability rows read in their own
// dtype, and the final token's inverse-CDF draw from p or the residual max(0, p - q).
#pragma once
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <memory>

#include "common.h"
#include "inverse_cdf.h"

namespace fastsample::cpu {

// The final token's weight of id v: the residual max(0, p - q) after a rejection (q given), else p.
inline double final_weight(const float* p, const float* q, bool residual, int64_t v) {
  return residual ? std::max(0.0, static_cast<double>(p[v]) - q[v]) : static_cast<double>(p[v]);
}

// The final token by inverse CDF with uniform u, streaming over the rows (no copies): a branch-free pass
// for validity and sums, then block sums in ascending ids and a walk of the one block holding the step.
// q is the draft row after a rejection, else null; a residual that sums to 0 falls back to p. -1 if p or
// q holds a NaN, negative or infinite entry, or the weights sum to 0 (docs/ops.md).
inline int64_t sample_final(const float* p, const float* q, int64_t vocab, double u) {
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

}  // namespace fastsample::cpu
