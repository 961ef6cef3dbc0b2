// CPU `softmax` (fused temperature + safe softmax) and `logsumexp` (one online pass: the single-pass
// limit the benchmarks compare every op with).
#include <cmath>
#include <limits>

#include "common.h"
#include "row_plan.h"

namespace fastsample::cpu {
namespace {

// Writes 1/count on the tokens equal to `value` (the maxima, or the +inf tokens), 0 elsewhere.
void uniform_over(const float* x, int64_t n, float value, float* out) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) count += x[i] == value;
  const float share = 1.0f / static_cast<float>(count);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] == value ? share : 0.0f;
}

// The first pass of a row run on nseg segments, merged: stats, and the weight sum brought to the largest
// segment reference. segment_pass(lo, hi, pass) runs one segment.
template <class Segment>
OnlinePass first_pass(int64_t n, int nseg, float inv_t, Segment segment_pass) {
  std::vector<OnlinePass> passes(nseg);
  for_segments(n, nseg, [&](int s, int64_t lo, int64_t hi) { segment_pass(lo, hi, passes[s]); });
  return merge_segments(passes, true, inv_t);
}

// One exp per token: the fused online pass stores each weight against its block's reference, then a
// multiply pass brings every block to the final reference and divides by the sum.
void softmax_row(const float* x, int64_t n, double temperature, int nseg, float* out) {
  if (!(temperature >= 0.0 && temperature < kInf)) {
    std::fill(out, out + n, std::numeric_limits<float>::quiet_NaN());
    return;
  }
  const float inv_t = temperature > 0.0 ? static_cast<float>(1.0 / temperature) : 1.0f;
  const int64_t nblocks = (n + kPassBlock - 1) / kPassBlock;
  std::vector<float> refs(nblocks);
  const OnlinePass row = first_pass(n, nseg, inv_t, [&](int64_t lo, int64_t hi, OnlinePass& pass) {
    online_pass(x + lo, hi - lo, true, inv_t, pass, PassBlocks{nullptr, &refs[lo / kPassBlock], out + lo});
  });
  const float mx = row.max, ref = row.ref;
  const double total = row.sum;
  if (row.has_nan || mx == -kInf) {
    std::fill(out, out + n, std::numeric_limits<float>::quiet_NaN());
    return;
  }
  if (mx == kInf || temperature == 0.0) {
    uniform_over(x, n, mx, out);
    return;
  }
  for_segments(n, nseg, [&](int, int64_t lo, int64_t hi) {
    BlockRescale to_probs([&](float from) { return rescale_factor(true, from, ref, inv_t) / total; });
    for (int64_t b = lo; b < hi; b += kPassBlock) {
      const auto scale = static_cast<float>(to_probs(refs[b / kPassBlock]));
      const int64_t end = std::min(b + kPassBlock, hi);
#pragma omp simd
      for (int64_t i = b; i < end; ++i) out[i] *= scale;
    }
  });
}

at::Tensor softmax(const at::Tensor& logits_in, const std::optional<at::Tensor>& temperature_arr,
                   double temperature_val) {
  const InputRows in = input_rows(logits_in, "logits");
  const auto temperature = row_arg<float>(temperature_arr, temperature_val, in.batch, "temperature");
  at::Tensor out = at::empty({in.batch, in.vocab}, in.float_options());
  float* op = out.data_ptr<float>();
  for_input_rows(in, [&](int64_t b, const float* xb) {
    softmax_row(xb, in.vocab, temperature[b], in.nseg, op + b * in.vocab);
  });
  return out;
}

// log(sum(exp(x))) per row in one read of the logits. NaN rows give NaN, rows with +inf give +inf,
// rows of -inf give -inf.
at::Tensor logsumexp(const at::Tensor& logits_in) {
  const InputRows in = input_rows(logits_in, "logits");
  at::Tensor out = at::empty({in.batch}, in.float_options());
  float* op = out.data_ptr<float>();
  for_input_rows(in, [&](int64_t b, const float* xb) {
    const OnlinePass row = first_pass(in.vocab, in.nseg, 1.0f, [&](int64_t lo, int64_t hi, OnlinePass& pass) {
      online_pass(xb + lo, hi - lo, true, 1.0f, pass, PassBlocks{});
    });
    if (row.has_nan) {
      op[b] = std::numeric_limits<float>::quiet_NaN();
    } else {
      op[b] = (row.max == kInf || row.max == -kInf) ? row.max : static_cast<float>(row.ref + std::log(row.sum));
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsample, CPU, m) {
  m.impl("softmax", &softmax);
  m.impl("logsumexp", &logsumexp);
}

}  // namespace fastsample::cpu
