// CPU `softmax` (fused temperature + safe softmax) and `logsumexp` (one online pass: the single-pass
// limit the benchmarks compare every op with).
#include <cmath>
#include <limits>

#include "common.h"
#include "row_plan.h"

namespace fastsample::cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Writes 1/count on the tokens equal to `value` (the maxima, or the +inf tokens), 0 elsewhere.
void uniform_over(const float* x, int64_t n, float value, float* out) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) count += x[i] == value;
  const float share = 1.0f / static_cast<float>(count);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] == value ? share : 0.0f;
}

// The first pass of a row run on nseg segments, merged: stats, and the weight sum brought to the largest
// segment reference.
struct RowPass {
  float max = -kInf, ref = -kInf;
  bool has_nan = false;
  double total = 0.0;
};

template <class Segment>
RowPass first_pass(int64_t n, int nseg, float inv_t, Segment segment_pass) {
  std::vector<OnlinePass> passes(nseg);
  for_segments(nseg, [&](int s) {
    segment_pass(segment_begin(n, nseg, s), segment_begin(n, nseg, s + 1), passes[s]);
  });
  RowPass row;
  for (const OnlinePass& pass : passes) {
    row.has_nan |= pass.has_nan;
    row.max = std::max(row.max, pass.max);
    row.ref = std::max(row.ref, pass.ref);
  }
  for (const OnlinePass& pass : passes) {
    row.total += pass.sum * std::exp((static_cast<double>(pass.ref) - row.ref) * inv_t);
  }
  return row;
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
  const RowPass row = first_pass(n, nseg, inv_t, [&](int64_t lo, int64_t hi, OnlinePass& pass) {
    online_pass(x + lo, hi - lo, true, inv_t, pass, PassBlocks{nullptr, &refs[lo / kPassBlock], out + lo});
  });
  const float mx = row.max, ref = row.ref;
  const double total = row.total;
  if (row.has_nan || mx == -kInf) {
    std::fill(out, out + n, std::numeric_limits<float>::quiet_NaN());
    return;
  }
  if (mx == kInf || temperature == 0.0) {
    uniform_over(x, n, mx, out);
    return;
  }
  for_segments(nseg, [&](int s) {
    const int64_t lo = segment_begin(n, nseg, s), hi = segment_begin(n, nseg, s + 1);
    float block_ref = std::numeric_limits<float>::quiet_NaN(), scale = 0.0f;
    for (int64_t b = lo; b < hi; b += kPassBlock) {
      if (!(refs[b / kPassBlock] == block_ref)) {  // references change rarely: one exp per change
        block_ref = refs[b / kPassBlock];
        scale = static_cast<float>(std::exp((static_cast<double>(block_ref) - ref) * inv_t) / total);
      }
      const int64_t end = std::min(b + kPassBlock, hi);
#pragma omp simd
      for (int64_t i = b; i < end; ++i) out[i] *= scale;
    }
  });
}

at::Tensor softmax(const at::Tensor& logits_in, const std::optional<at::Tensor>& temperature_arr,
                   double temperature_val) {
  check_rows(logits_in, "logits", true);
  const int64_t batch = logits_in.size(0), vocab = logits_in.size(1);
  const auto temperature = row_arg<float>(temperature_arr, temperature_val, batch, "temperature");
  at::Tensor out = at::empty({batch, vocab}, logits_in.options().dtype(at::kFloat));
  float* op = out.data_ptr<float>();
  const int nseg = segments_for(batch, vocab);
  for_float_blocks(logits_in, [&](const at::Tensor& rows, int64_t first) {
    const float* xp = rows.data_ptr<float>();
    for_rows(rows.size(0), nseg, [&](int64_t r) {
      const int64_t b = first + r;
      softmax_row(xp + r * vocab, vocab, temperature[b], nseg, op + b * vocab);
    });
  });
  return out;
}

// log(sum(exp(x))) per row in one read of the logits. NaN rows give NaN, rows with +inf give +inf,
// rows of -inf give -inf.
at::Tensor logsumexp(const at::Tensor& logits_in) {
  check_rows(logits_in, "logits", true);
  const int64_t batch = logits_in.size(0), vocab = logits_in.size(1);
  at::Tensor out = at::empty({batch}, logits_in.options().dtype(at::kFloat));
  float* op = out.data_ptr<float>();
  const int nseg = segments_for(batch, vocab);
  for_float_blocks(logits_in, [&](const at::Tensor& rows, int64_t first) {
    const float* xp = rows.data_ptr<float>();
    for_rows(rows.size(0), nseg, [&](int64_t r) {
      const RowPass row = first_pass(vocab, nseg, 1.0f, [&](int64_t lo, int64_t hi, OnlinePass& pass) {
        online_pass(xp + r * vocab + lo, hi - lo, true, 1.0f, pass, PassBlocks{});
      });
      const int64_t b = first + r;
      if (row.has_nan) {
        op[b] = std::numeric_limits<float>::quiet_NaN();
      } else {
        op[b] = (row.max == kInf || row.max == -kInf) ? row.max : static_cast<float>(row.ref + std::log(row.total));
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsample, CPU, m) {
  m.impl("softmax", &softmax);
  m.impl("logsumexp", &logsumexp);
}

}  // namespace fastsample::cpu
