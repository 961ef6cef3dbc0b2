// AVX2 + FMA vector primitives (8 float lanes) for the loops of vec_loops.h. Include only inside a region
// compiled for AVX2 + FMA (simd_avx2.cpp).
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "simd.h"
#include "vec_shape.h"
#include "vec_x86.h"

namespace fastsample::cpu {

// Masks are all ones in a lane where true. 16 vector registers: the bracket block takes its weights through a
// buffer (vec_loops.h).
struct Avx2 : VecShape<Avx2, __m256, __m256, 8, false>, X86Compares<Avx2, __m256, __m256> {
  static F set1(float v) { return _mm256_set1_ps(v); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  // Lanes [0, rem) (0 < rem < kWidth) as a mask, and loads/stores of those lanes only (others read as 0).
  static M first(int64_t rem) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(rem)), lane));
  }
  static M all() { return _mm256_castsi256_ps(_mm256_set1_epi32(-1)); }
  static M none() { return _mm256_setzero_ps(); }
  static F load_first(const float* p, M lanes) { return _mm256_maskload_ps(p, _mm256_castps_si256(lanes)); }
  static void store_first(float* p, M lanes, F v) { _mm256_maskstore_ps(p, _mm256_castps_si256(lanes), v); }

  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F mul_add(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F round(F v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // p * 2^k where m, else 0: 2^k built in the exponent field, for integral k >= -126 (exp_lanes' range; larger
  // k only in blocks whose max passed the reference, which are weighed again).
  static F scale_where(M m, F p, F k) {
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return keep(m, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
  }
  static F add_where(F acc, M m, F v) { return _mm256_add_ps(acc, keep(m, v)); }  // acc + v where m, else acc
  static F keep(M m, F v) { return _mm256_and_ps(m, v); }  // v where m, else 0
  static F select(M m, F a, F b) { return _mm256_blendv_ps(b, a, m); }  // a where m, else b
  template <int kPredicate>
  static M cmp(F a, F b) { return _mm256_cmp_ps(a, b, kPredicate); }  // ge, lt, not_lt, nan: vec_x86.h
  static M both(M a, M b) { return _mm256_and_ps(a, b); }
  static M either(M a, M b) { return _mm256_or_ps(a, b); }
  static M but_not(M a, M b) { return _mm256_andnot_ps(b, a); }  // a and not b
  static uint32_t bits(M m) { return static_cast<uint32_t>(_mm256_movemask_ps(m)); }
  // max / min where a NaN in v leaves acc (vmaxps returns its second operand when either is NaN).
  static F max_seen(F v, F acc) { return _mm256_max_ps(v, acc); }
  static F min_seen(F v, F acc) { return _mm256_min_ps(v, acc); }

  static float sum(F v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  static float max(F v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
  }
  static float min(F v) {
    __m128 s = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_min_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_min_ss(s, _mm_movehdup_ps(s)));
  }

  // Writes v's lanes set in `bits` to dst, packed, and returns how many: all 8 lanes are stored (dst needs
  // room for 8), the chosen ones first, by a permutation looked up from the mask.
  static int compress_store(float* dst, uint32_t bits_set, F v) {
    _mm256_storeu_ps(dst, _mm256_permutevar8x32_ps(v, compress_permutation(bits_set)));
    return __builtin_popcount(bits_set);
  }
  // Writes base + l for each lane l set in `bits_set` to dst, packed: all 8 slots are stored (dst needs room
  // for 8), from the same table's lane numbers widened to int64.
  static void compress_index(int64_t* dst, uint32_t bits_set, int64_t base) {
    const uint64_t packed = kCompressLanes.packed[bits_set];
    const __m256i at = _mm256_set1_epi64x(base);
    const __m256i low = _mm256_cvtepu8_epi64(_mm_cvtsi64_si128(static_cast<int64_t>(packed)));
    const __m256i high = _mm256_cvtepu8_epi64(_mm_cvtsi64_si128(static_cast<int64_t>(packed >> 32)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_add_epi64(low, at));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 4), _mm256_add_epi64(high, at));
  }

 private:
  // For each 8-bit mask, the indices of its set lanes in order, a byte each (pdep/pext would do without a
  // table, but are microcoded on AMD before Zen 3).
  struct CompressTable {
    uint64_t packed[256];
  };
  static constexpr CompressTable kCompressLanes = [] {
    CompressTable t{};
    for (uint32_t m = 0; m < 256; ++m) {
      int at = 0;
      for (uint32_t l = 0; l < 8; ++l) {
        if (m >> l & 1u) t.packed[m] |= static_cast<uint64_t>(l) << (8 * at++);
      }
    }
    return t;
  }();
  // The permutation that packs the lanes set in an 8-bit mask.
  static __m256i compress_permutation(uint32_t bits_set) {
    return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<int64_t>(kCompressLanes.packed[bits_set])));
  }
};

}  // namespace fastsample::cpu
