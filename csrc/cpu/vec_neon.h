// Arm NEON vector primitives (4 float lanes, AArch64) for the loops of vec_loops.h, the same set as
// vec_avx2.h. Include only when compiling for aarch64 (simd_neon.cpp): NEON is part of every ARMv8-A core, so
// no target switch is needed. Each primitive says what it computes in terms of the AVX2 one it mirrors.
#pragma once
#if FASTSAMPLE_SIMDE  // the same primitives over SIMDe's emulation of NEON, on x86-64 (tools/check_avx512.py)
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/arm/neon.h>
#else
#include <arm_neon.h>
#endif

#include <cstdint>

#include "simd.h"
#include "vec_shape.h"

namespace fastsample::cpu {

// Masks are all ones in a lane where true. The bracket block takes its weights through a buffer, as on AVX2
// (vec_loops.h; AArch64 has 32 registers, but the fused form is not measured on an Arm core yet).
struct Neon : VecShape<Neon, float32x4_t, uint32x4_t, 4, false> {
  static F set1(float v) { return vdupq_n_f32(v); }
  static F load(const float* p) { return vld1q_f32(p); }
  static void store(float* p, F v) { vst1q_f32(p, v); }
  // Lanes [0, rem) (0 < rem < kWidth) as a mask: lane index < rem.
  static M first(int64_t rem) {
    static constexpr uint32_t kLane[4] = {0, 1, 2, 3};
    return vcltq_u32(vld1q_u32(kLane), vdupq_n_u32(static_cast<uint32_t>(rem)));
  }
  static M all() { return vdupq_n_u32(~0u); }
  static M none() { return vdupq_n_u32(0u); }
  // Loads / stores of the lanes of a mask made by first() or all() only (a prefix of the lanes; others read
  // as 0): NEON has no masked load, so through a small buffer.
  static F load_first(const float* p, M lanes) {
    const int n = count(lanes);
    if (n == kWidth) return vld1q_f32(p);
    float buf[kWidth] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int l = 0; l < n; ++l) buf[l] = p[l];
    return vld1q_f32(buf);
  }
  static void store_first(float* p, M lanes, F v) {
    const int n = count(lanes);
    float buf[kWidth];
    vst1q_f32(buf, v);
    for (int l = 0; l < n; ++l) p[l] = buf[l];
  }

  static F add(F a, F b) { return vaddq_f32(a, b); }
  static F sub(F a, F b) { return vsubq_f32(a, b); }
  static F mul(F a, F b) { return vmulq_f32(a, b); }
  static F mul_add(F a, F b, F c) { return vfmaq_f32(c, a, b); }  // fused: c + a * b
  static F round(F v) { return vrndnq_f32(v); }  // to nearest, ties to even (as _MM_FROUND_TO_NEAREST_INT)
  // p * 2^k where m, else 0: 2^k built in the exponent field (k is integral, so the truncating convert is
  // exact; k >= -126 in exp_lanes' range).
  static F scale_where(M m, F p, F k) {
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(k), vdupq_n_s32(127)), 23);
    return keep(m, vmulq_f32(p, vreinterpretq_f32_s32(e)));
  }
  // acc + v where m, else acc (as add(acc, keep(m, v))).
  static F add_where(F acc, M m, F v) { return vaddq_f32(acc, keep(m, v)); }
  // v where m, else +0.0 (the bits of v and-ed with the mask).
  static F keep(M m, F v) { return vreinterpretq_f32_u32(vandq_u32(m, vreinterpretq_u32_f32(v))); }
  static F select(M m, F a, F b) { return vbslq_f32(m, a, b); }  // a where m, else b
  static M ge(F a, F b) { return vcgeq_f32(a, b); }              // a >= b, false where either is NaN
  static M lt(F a, F b) { return vcltq_f32(a, b); }              // a < b, false where either is NaN
  static M not_lt(F a, F b) { return vmvnq_u32(vcltq_f32(a, b)); }  // not (a < b): true where either is NaN
  static M nan(F v) { return vmvnq_u32(vceqq_f32(v, v)); }       // v is NaN: v != v
  static M both(M a, M b) { return vandq_u32(a, b); }
  static M either(M a, M b) { return vorrq_u32(a, b); }
  static M but_not(M a, M b) { return vbicq_u32(a, b); }  // a and not b
  // Bit l set iff lane l of m is set.
  static uint32_t bits(M m) {
    static constexpr uint32_t kBit[4] = {1, 2, 4, 8};
    return vaddvq_u32(vandq_u32(m, vld1q_u32(kBit)));
  }
  // v > acc ? v : acc: a NaN in v (the compare is false) leaves acc, as vmaxps(v, acc) does on x86
  // (vmaxq_f32 would return the NaN).
  static F max_seen(F v, F acc) { return vbslq_f32(vcgtq_f32(v, acc), v, acc); }
  static F min_seen(F v, F acc) { return vbslq_f32(vcltq_f32(v, acc), v, acc); }

  // The lanes folded: sum, max and min (the stats' running vectors never hold NaN).
  static float sum(F v) { return vaddvq_f32(v); }
  static float max(F v) { return vmaxvq_f32(v); }
  static float min(F v) { return vminvq_f32(v); }

  // Writes v's lanes set in `bits_set` to dst, packed, and returns how many: all 4 lanes are stored (dst
  // needs room for 4), the chosen ones first, by a byte shuffle looked up from the mask.
  static int compress_store(float* dst, uint32_t bits_set, F v) {
    vst1q_f32(dst, vreinterpretq_f32_u8(vqtbl1q_u8(vreinterpretq_u8_f32(v), compress_order(bits_set))));
    return __builtin_popcount(bits_set);
  }
  // Writes base + l for each lane l set in `bits_set` to dst, packed, in lane order.
  static void compress_index(int64_t* dst, uint32_t bits_set, int64_t base) {
    for (; bits_set != 0; bits_set &= bits_set - 1) *dst++ = base + __builtin_ctz(bits_set);
  }

 private:
  static int count(M lanes) { return __builtin_popcount(bits(lanes)); }

  // The byte shuffle that packs the lanes set in a 4-bit mask: the bytes of each selected lane in order
  // (lane l is bytes 4l..4l+3), then zeros; vqtbl1q_u8 gathers them into the first lanes.
  static uint8x16_t compress_order(uint32_t bits_set) {
    static constexpr auto kTable = [] {
      struct { uint8_t bytes[16][16]; } t{};
      for (uint32_t m = 0; m < 16; ++m) {
        int at = 0;
        for (uint32_t l = 0; l < 4; ++l) {
          if (!(m >> l & 1u)) continue;
          for (uint32_t b = 0; b < 4; ++b) t.bytes[m][4 * at + b] = static_cast<uint8_t>(4 * l + b);
          ++at;
        }
      }
      return t;
    }();
    return vld1q_u8(kTable.bytes[bits_set]);
  }
};

}  // namespace fastsample::cpu
