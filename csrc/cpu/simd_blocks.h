// The per-block steps of the online passes (internal to csrc/cpu): the exp of a block, its stats and
// whether a block weighed before its stats were known stands. Shared by online_pass (simd.cpp) and the
// top-p bracket pass (top_p_bracket.cpp), inline so that each pass compiles them into its own loop.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "isa.h"
#include "simd.h"
#include "vec_paths.h"

namespace fastsample::cpu {

// w[i] = (x[i] >= theta ? exp_nonpositive((x[i] - ref) * inv_t) : 0) over a span (theta = -inf: every
// token; NaN weighs NaN); returns their float sum.
inline float exp_weights(const float* x, int64_t n, float ref, float inv_t, float theta, float* w) {
  return vec_path().exp_weights(x, n, ref, inv_t, theta, w);
}

inline SpanStats span_stats_dispatch(const float* x, int64_t n) {
  return vec_path().span_stats(x, n);
}

// Stats of one block into st and, for logits, the reference raised (with slack) when the block exceeds
// it. Returns the factor that sums taken against the old reference must be multiplied by (1 if unchanged)
// and sets bmax to the block max.
inline double block_stats(const float* xb, int64_t len, bool is_exp, float inv_t, OnlinePass& st, float& bmax) {
  const SpanStats stats = span_stats_dispatch(xb, len);
  const float mx = stats.max, mn = stats.min;
  bmax = mx;
  st.has_nan |= stats.has_nan;
  st.max = mx > st.max ? mx : st.max;
  st.min = mn < st.min ? mn : st.min;
  if (!is_exp || !(mx > st.ref) || st.has_nan || st.max == kInf) return 1.0;
  const float ref = mx + kRefSlack / inv_t;
  const double scale = std::exp(static_cast<double>(st.ref - ref) * inv_t);  // 0 from -inf
  st.ref = ref;
  return scale;
}

// Whether the span's weights can be summed: rows with NaN or +inf are decided by their stats alone, and
// while every logit so far is -inf there is no reference (x - ref would be NaN).
inline bool weighable(const OnlinePass& st, bool is_exp) {
  return !st.has_nan && st.max != kInf && !(is_exp && st.ref == -kInf);
}

// The weights of one block into w[0..len) against the current reference (all 0 while the span is not
// weighable); returns their float sum.
inline float block_weights(const float* xb, int64_t len, const OnlinePass& st, bool is_exp, float inv_t, float* w) {
  float s = 0.0f;
  if (!weighable(st, is_exp)) {
    std::fill(w, w + len, 0.0f);
  } else if (is_exp) {
    s = exp_weights(xb, len, st.ref, inv_t, -kInf, w);
  } else {
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < len; ++i) {
      w[i] = xb[i];
      s += w[i];
    }
  }
  return s;
}

// Whether a block of logits can be weighed before its stats are known (the fused loops of vec_paths.h),
// against the reference as it stands.
inline bool fusable(const OnlinePass& st, bool is_exp) {
  return is_exp && weighable(st, is_exp);
}

// Whether a block weighed before its stats were known (the fused loops, against the reference as
// it stood) stands: its max did not exceed the reference, and it held no NaN or +inf. Then folds its stats
// into st; otherwise the caller weighs the block again the generic way (stats first).
inline bool fused_block_stands(const SpanStats& seen, bool is_exp, OnlinePass& st) {
  if (seen.has_nan || seen.max == kInf || (is_exp && !(seen.max <= st.ref))) return false;
  st.max = seen.max > st.max ? seen.max : st.max;
  st.min = seen.min < st.min ? seen.min : st.min;
  return true;
}

}  // namespace fastsample::cpu
