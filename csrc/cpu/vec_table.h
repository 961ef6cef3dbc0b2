// The table of vec_paths.h filled from the loops of vec_loops.h over one path's primitives V: what each ISA
// file (simd_avx512.cpp, simd_avx2.cpp, simd_neon.cpp) instantiates, after its target switch and V's header.
// The entries pick the loops' compile-time variants from their run-time arguments.
#pragma once
#include <cstdint>

#include "simd.h"
#include "top_p_bracket.h"
#include "vec_loops.h"
#include "vec_paths.h"

namespace fastsample::cpu::vec {

template <class V>
struct PathOf {
  static float exp_weights_any(const float* x, int64_t n, float ref, float inv_t, float theta, float* w) {
    return theta == -kInf ? exp_weights<V, false, false>(x, n, ref, inv_t, theta, w, nullptr)
                          : exp_weights<V, false, true>(x, n, ref, inv_t, theta, w, nullptr);
  }
  static float exp_weights_seen(const float* x, int64_t n, float ref, float inv_t, float* w, SpanStats* seen) {
    return exp_weights<V, true, false>(x, n, ref, inv_t, -kInf, w, seen);
  }
  static float bracket_block_any(const float* xb, int64_t len, int64_t real, bool is_exp, float ref, float inv_t,
                                 const Bracket& br, float* sums, PassGather& g, SpanStats* seen) {
    if (br.narrow()) {
      return seen ? bracket_block<V, true, true>(xb, len, real, is_exp, ref, inv_t, br, sums, g, seen)
                  : bracket_block<V, false, true>(xb, len, real, is_exp, ref, inv_t, br, sums, g, nullptr);
    }
    return seen ? bracket_block<V, true>(xb, len, real, is_exp, ref, inv_t, br, sums, g, seen)
                : bracket_block<V, false>(xb, len, real, is_exp, ref, inv_t, br, sums, g, nullptr);
  }
  static constexpr VecPath table = {exp_weights_any, exp_weights_seen, span_stats<V>, bracket_block_any,
                                    gather_span<V>};
};

}  // namespace fastsample::cpu::vec
