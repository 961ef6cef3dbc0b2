// AVX-512F vector primitives (16 float lanes, masks in mask registers) for the loops of vec_loops.h, the same
// set as vec_avx2.h. Include only inside a region compiled for AVX-512F (simd_avx512.cpp).
//
// FASTSAMPLE_SIMDE=1: the same code over SIMDe's exact emulation of the AVX-512 intrinsics (its native
// aliases map each _mm512_ name and type onto plain C++), so that the AVX-512 path is built and tested on any
// x86-64 CPU (make check-avx512). SIMDe is a test-only dependency: the library never defines it.
#pragma once
#include <cstdint>

#if FASTSAMPLE_SIMDE
// SIMDe emulates the fused multiply-add by a multiply and an add (two roundings) unless it may use a fused
// one: FMA instructions, or (told so here) fmaf, exact on any CPU.
#if !defined(__FMA__) && !defined(FP_FAST_FMAF)
#define FP_FAST_FMAF 1
#endif
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#ifndef _MM_FROUND_NO_EXC  // the one name used here that SIMDe 0.8 does not alias
#define _MM_FROUND_NO_EXC SIMDE_MM_FROUND_NO_EXC
#endif
#else
#include <immintrin.h>
// GCC 12's AVX-512 intrinsics (max, roundscale, shuffles) start from _mm512_undefined_ps() and warn on their
// own code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include "simd.h"
#include "vec_shape.h"
#include "vec_x86.h"

namespace fastsample::cpu {

// Masks have bit l set where lane l is true. 32 vector registers: the bracket block keeps its weights in
// registers (vec_loops.h).
struct Avx512 : VecShape<Avx512, __m512, __mmask16, 16, true>, X86Compares<Avx512, __m512, __mmask16> {
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  // Lanes [0, rem) (0 < rem < kWidth) as a mask, and loads/stores of those lanes only (others read as 0).
  static M first(int64_t rem) { return static_cast<M>((1u << rem) - 1u); }
  static M all() { return static_cast<M>(0xFFFF); }
  static M none() { return 0; }
#if FASTSAMPLE_SIMDE
  // SIMDe 0.8 emulates the masked load and store by whole-vector ones (reading past the lanes, and writing
  // zeros over the others): lane by lane through a buffer instead.
  static F load_first(const float* p, M lanes) {
    float buf[kWidth] = {};
    for (int l = 0; l < kWidth; ++l) buf[l] = lanes >> l & 1 ? p[l] : 0.0f;
    return _mm512_loadu_ps(buf);
  }
  static void store_first(float* p, M lanes, F v) {
    float buf[kWidth];
    _mm512_storeu_ps(buf, v);
    for (int l = 0; l < kWidth; ++l) {
      if (lanes >> l & 1) p[l] = buf[l];
    }
  }
#else
  static F load_first(const float* p, M lanes) { return _mm512_maskz_loadu_ps(lanes, p); }
  static void store_first(float* p, M lanes, F v) { _mm512_mask_storeu_ps(p, lanes, v); }
#endif

  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F mul_add(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F round(F v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // p * 2^k where m, else 0 (vscalefps: exact for the normal results of exp_lanes).
  static F scale_where(M m, F p, F k) { return _mm512_maskz_scalef_ps(m, p, k); }
  static F add_where(F acc, M m, F v) { return _mm512_mask_add_ps(acc, m, acc, v); }  // acc + v where m, else acc
  static F keep(M m, F v) { return _mm512_maskz_mov_ps(m, v); }                       // v where m, else 0
  static F select(M m, F a, F b) { return _mm512_mask_blend_ps(m, b, a); }            // a where m, else b
  template <int kPredicate>
  static M cmp(F a, F b) { return _mm512_cmp_ps_mask(a, b, kPredicate); }  // ge, lt, not_lt, nan: vec_x86.h
  static M both(M a, M b) { return static_cast<M>(a & b); }
  static M either(M a, M b) { return static_cast<M>(a | b); }
  static M but_not(M a, M b) { return static_cast<M>(a & ~b); }  // a and not b
  static uint32_t bits(M m) { return m; }
  // max / min where a NaN in v leaves acc (vmaxps returns its second operand when either is NaN).
  static F max_seen(F v, F acc) { return _mm512_max_ps(v, acc); }
  static F min_seen(F v, F acc) { return _mm512_min_ps(v, acc); }

  // The lanes folded by halves (8 + 8, 4 + 4, 2 + 2, 1 + 1): a tree of four steps instead of a chain of 15.
  static float sum(F v) { return fold<kSum>(v); }
  static float max(F v) { return fold<kMax>(v); }
  static float min(F v) { return fold<kMin>(v); }

  // Writes v's lanes set in `bits_set` to dst, packed, and returns how many: all 16 lanes are stored (dst
  // needs room for 16; a full store of vcompressps's result, where its memory form is slow on Intel cores).
  static int compress_store(float* dst, uint32_t bits_set, F v) {
    _mm512_storeu_ps(dst, _mm512_maskz_compress_ps(static_cast<M>(bits_set), v));
    return __builtin_popcount(bits_set);
  }
  // Writes base + l for each lane l set in `bits_set` to dst, packed: 8 lanes of int64 a step, all 16 slots
  // stored (dst needs room for 16).
  static void compress_index(int64_t* dst, uint32_t bits_set, int64_t base) {
    const __m512i low = _mm512_add_epi64(_mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7), _mm512_set1_epi64(base));
    const auto low_bits = static_cast<uint8_t>(bits_set), high_bits = static_cast<uint8_t>(bits_set >> 8);
    _mm512_storeu_si512(dst, _mm512_maskz_compress_epi64(low_bits, low));
    const __m512i high = _mm512_add_epi64(low, _mm512_set1_epi64(8));
    _mm512_storeu_si512(dst + __builtin_popcount(low_bits), _mm512_maskz_compress_epi64(high_bits, high));
  }

 private:
  enum Op { kSum, kMax, kMin };
  template <Op kOp>
  static F fold_step(F a, F b) {
    if constexpr (kOp == kSum) return _mm512_add_ps(a, b);
    if constexpr (kOp == kMax) return _mm512_max_ps(a, b);
    return _mm512_min_ps(a, b);
  }
  template <Op kOp>
  static float fold(F v) {
    v = fold_step<kOp>(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
    v = fold_step<kOp>(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
    v = fold_step<kOp>(v, _mm512_shuffle_ps(v, v, _MM_SHUFFLE(1, 0, 3, 2)));  // within each 128-bit lane
    v = fold_step<kOp>(v, _mm512_shuffle_ps(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtss_f32(_mm512_castps512_ps128(v));
  }
};

}  // namespace fastsample::cpu
