// float16 / bfloat16 -> float32, exactly (every half value is a float32 value; NaNs stay NaN): bfloat16 and
// the portable float16 loop are plain loops the compiler vectorises for any target, independent of the FTZ/DAZ
// flags; x86-64 CPUs with F16C convert float16 with vcvtph2ps instead (several times faster, same values).
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <bit>
#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace fastsample::cpu {

// bfloat16 is the high half of a float32.
inline void widen(const c10::BFloat16* x, int64_t n, float* out) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = std::bit_cast<float>(static_cast<uint32_t>(x[i].x) << 16);
}

// IEEE binary16: normal numbers re-biased (15 -> 127), subnormals as m * 2^-24 (an exact float32 product of
// an integer below 2^10), infinities and NaNs (payload kept) to float32's all-ones exponent.
inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t magnitude = h & 0x7fffu;  // exponent and mantissa
  const uint32_t exponent = magnitude >> 10;
  const uint32_t normal = (magnitude << 13) + (112u << 23);
  const uint32_t special = (magnitude << 13) | 0x7f800000u;
  const uint32_t subnormal = std::bit_cast<uint32_t>(static_cast<float>(static_cast<int32_t>(magnitude)) * 0x1p-24f);
  // Selected by masks, not branches, so that the loop vectorises.
  const uint32_t is_subnormal = 0u - static_cast<uint32_t>(exponent == 0);
  const uint32_t is_special = 0u - static_cast<uint32_t>(exponent == 31);
  const uint32_t bits = (subnormal & is_subnormal) | (special & is_special) | (normal & ~(is_subnormal | is_special));
  return std::bit_cast<float>(bits | sign);
}

inline void widen_portable(const c10::Half* x, int64_t n, float* out) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = half_bits_to_float(x[i].x);
}

#if defined(__x86_64__)
__attribute__((target("avx,f16c"))) inline void widen_f16c(const c10::Half* x, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
  }
  widen_portable(x + i, n - i, out + i);
}
#endif

inline void widen(const c10::Half* x, int64_t n, float* out) {
#if defined(__x86_64__)
  static const bool f16c = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
  if (f16c) return widen_f16c(x, n, out);
#endif
  widen_portable(x, n, out);
}

}  // namespace fastsample::cpu
