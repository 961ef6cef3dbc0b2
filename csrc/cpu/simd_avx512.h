// AVX-512 primitives of the vector loops (internal to csrc/cpu): the exp and the running stats of 16
// lanes, and folds of a vector to one lane. The loops built on them (simd_blocks.h, simd.cpp and the top-p
// bracket pass) call them where use_avx512() says so; other machines take the auto-vectorised loops.
#pragma once
#include <cstdint>

#include "isa.h"
#include "simd.h"

#if FS_X86_GCC
#include <immintrin.h>
// GCC 12's AVX-512 intrinsics (max, roundscale, shuffles) start from _mm512_undefined_ps() and warn on their
// own code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace fastsample::cpu {

// The lanes [0, rem) of a group of 16 (all of them for rem >= 16, none for rem <= 0).
inline __mmask16 first_lanes(int64_t rem) {
  return rem >= kLanes ? 0xFFFF : rem <= 0 ? 0 : static_cast<__mmask16>((1u << rem) - 1u);
}

// exp_nonpositive((v - ref) * inv_t) of 16 lanes, step for step, 0 where not `lanes`, below the range or
// v < theta (the range clamp and the kept test become one mask that zeroes the result). kTheta = false: no
// theta (-inf), and one compare less in loops that the exp bounds. Unlike exp_nonpositive, NaN gives NaN
// (kTheta = false), so that a sum of weights tells whether its span held NaN.
template <bool kTheta>
__attribute__((target("avx512f"))) inline __m512 exp16_avx512(__m512 v, __mmask16 lanes, __m512 ref, __m512 inv_t,
                                                              __m512 theta) {
  const __m512 low = _mm512_set1_ps(kExpLow);
  const __m512 y = _mm512_mul_ps(_mm512_sub_ps(v, ref), inv_t);
  __mmask16 keep = lanes & _mm512_cmp_ps_mask(y, low, _CMP_NLT_UQ);  // NaN kept
  if constexpr (kTheta) keep &= _mm512_cmp_ps_mask(v, theta, _CMP_GE_OQ);
  const __m512 c = _mm512_max_ps(low, y);  // the second operand, NaN, where either is NaN
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(c, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fmadd_ps(k, _mm512_set1_ps(kLn2Lo), _mm512_fnmadd_ps(k, _mm512_set1_ps(kLn2Hi), c));
  __m512 p = _mm512_set1_ps(kExpPoly[0]);
  for (int j = 1; j < kExpPolyTerms; ++j) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpPoly[j]));
  p = _mm512_fmadd_ps(_mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f)), r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(keep, p, k);
}

// Running stats of 16 lanes (the `lanes` ones): vmaxps/vminps return their second operand when either is
// NaN, so NaN lanes leave the running values alone.
struct Stats16 {
  __m512 max, min;
  __mmask16 nan;
};

__attribute__((target("avx512f"))) inline Stats16 no_stats16() {
  return {_mm512_set1_ps(-kInf), _mm512_set1_ps(kInf), 0};
}

__attribute__((target("avx512f"))) inline void see16(Stats16& st, __m512 v, __mmask16 lanes) {
  st.nan |= _mm512_mask_cmp_ps_mask(lanes, v, v, _CMP_UNORD_Q);
  st.max = _mm512_mask_max_ps(st.max, lanes, v, st.max);
  st.min = _mm512_mask_min_ps(st.min, lanes, v, st.min);
}

// Halves of a vector folded onto each other (8 + 8, 4 + 4, 2 + 2, 1 + 1 lanes): a tree of four steps,
// where a scalar walk of the lanes would chain 16 dependent ops, once per block and per reduction.
enum class Fold { kSum, kMax, kMin };

template <Fold kOp>
__attribute__((target("avx512f"))) inline __m512 fold_step(__m512 a, __m512 b) {
  if constexpr (kOp == Fold::kSum) return _mm512_add_ps(a, b);
  if constexpr (kOp == Fold::kMax) return _mm512_max_ps(a, b);
  return _mm512_min_ps(a, b);
}

template <Fold kOp>
__attribute__((target("avx512f"))) inline float fold16(__m512 v) {
  v = fold_step<kOp>(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = fold_step<kOp>(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  v = fold_step<kOp>(v, _mm512_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = fold_step<kOp>(v, _mm512_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_cvtss_f32(v);
}

__attribute__((target("avx512f"))) inline SpanStats seen_of(const Stats16& st) {
  return {fold16<Fold::kMax>(st.max), fold16<Fold::kMin>(st.min), st.nan != 0};
}

__attribute__((target("avx512f"))) inline float lane_sum(__m512 v) { return fold16<Fold::kSum>(v); }

}  // namespace fastsample::cpu
#endif
