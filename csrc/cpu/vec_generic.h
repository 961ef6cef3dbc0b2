// Portable vector primitives (4 float lanes as GCC vector extensions, which the compiler lowers to whatever
// vector unit the target has: SSE2 on baseline x86-64, VSX, ... or scalar code; 16 bytes, the width every
// 64-bit ABI passes in a register) for the loops of
// vec_loops.h, the same set as vec_avx2.h: the `generic` path, on any CPU. Its multiply-adds take two
// roundings (the target may lack fused ones), so its weights are exp_nonpositive's and may differ from the
// vector paths' in the last bit; each path's draws are exact against its own weights, and the walks use
// exact_weight.
#pragma once
#include <cstdint>
#include <cstring>

#include "simd.h"

namespace fastsample::cpu {

struct Generic {
  static constexpr int64_t kWidth = 4;
  typedef float F __attribute__((vector_size(4 * kWidth)));
  typedef int32_t M __attribute__((vector_size(4 * kWidth)));  // -1 in a lane where true, else 0
  // The bracket block takes its weights through a buffer (vec_loops.h): no register file to count on.
  static constexpr bool kWideRegisterFile = false;

  static F set1(float v) { return F{} + v; }
  static F zero() { return F{}; }
  static F load(const float* p) {
    F v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(float* p, F v) { std::memcpy(p, &v, sizeof v); }
  static M first(int64_t rem) { return lane_index() < static_cast<int32_t>(rem); }
  static M all() { return M{} - 1; }
  static M none() { return M{}; }
  // Loads / stores of the lanes of a mask made by first() or all() only (a prefix; others read as 0).
  static F load_first(const float* p, M lanes) {
    F v{};
    for (int l = 0; l < kWidth && lanes[l]; ++l) v[l] = p[l];
    return v;
  }
  static void store_first(float* p, M lanes, F v) {
    for (int l = 0; l < kWidth && lanes[l]; ++l) p[l] = v[l];
  }

  static F add(F a, F b) { return a + b; }
  static F sub(F a, F b) { return a - b; }
  static F mul(F a, F b) { return a * b; }
  // a * b + c in two roundings (the build does not contract it; exp_nonpositive's steps exactly).
  static F mul_add(F a, F b, F c) { return a * b + c; }
  // To nearest, ties to even, for |v| < 2^22 (exp_lanes' range): 1.5 * 2^23 added and taken away.
  static F round(F v) { return (v + 12582912.0f) - 12582912.0f; }
  // p * 2^k where m, else 0: 2^k built in the exponent field. k is clamped into the exponent's range first
  // (NaN to 0): larger k only in blocks whose max passed the reference (weighed again), and the conversion of
  // an out-of-range float is undefined.
  static F scale_where(M m, F p, F k) {
    const F in_range = k == k ? (k > 127.0f ? set1(127.0f) : k < -127.0f ? set1(-127.0f) : k) : zero();
    const M e = (__builtin_convertvector(in_range, M) + 127) << 23;
    return keep(m, p * reinterpret_cast<F>(e));
  }
  static F add_where(F acc, M m, F v) { return acc + keep(m, v); }
  static F keep(M m, F v) { return reinterpret_cast<F>(reinterpret_cast<M>(v) & m); }  // v where m, else +0
  static F select(M m, F a, F b) { return m ? a : b; }
  static M ge(F a, F b) { return a >= b; }  // false where either is NaN
  static M lt(F a, F b) { return a < b; }
  static M not_lt(F a, F b) { return ~(a < b); }  // true where either is NaN
  static M nan(F v) { return v != v; }
  static M both(M a, M b) { return a & b; }
  static M either(M a, M b) { return a | b; }
  static M but_not(M a, M b) { return a & ~b; }
  static uint32_t bits(M m) {
    uint32_t out = 0;
    for (int l = 0; l < kWidth; ++l) out |= static_cast<uint32_t>(m[l] & 1) << l;
    return out;
  }
  // v > acc ? v : acc: a NaN in v leaves acc, as vmaxps(v, acc) does.
  static F max_seen(F v, F acc) { return v > acc ? v : acc; }
  static F min_seen(F v, F acc) { return v < acc ? v : acc; }

  static float sum(F v) { return fold(v, [](float a, float b) { return a + b; }); }
  static float max(F v) { return fold(v, [](float a, float b) { return a > b ? a : b; }); }
  static float min(F v) { return fold(v, [](float a, float b) { return a < b ? a : b; }); }

  // Writes v's lanes set in `bits_set` to dst, packed, and returns how many (only those entries written).
  static int compress_store(float* dst, uint32_t bits_set, F v) {
    int k = 0;
    for (; bits_set != 0; bits_set &= bits_set - 1) dst[k++] = v[__builtin_ctz(bits_set)];
    return k;
  }
  static void compress_index(int64_t* dst, uint32_t bits_set, int64_t base) {
    for (; bits_set != 0; bits_set &= bits_set - 1) *dst++ = base + __builtin_ctz(bits_set);
  }

 private:
  static M lane_index() { return M{0, 1, 2, 3}; }
  // Halves folded onto each other (2 + 2, 1 + 1), as the other paths fold.
  template <class Op>
  static float fold(F v, Op op) {
    float lane[kWidth];
    std::memcpy(lane, &v, sizeof lane);
    for (int half = kWidth / 2; half >= 1; half /= 2) {
      for (int l = 0; l < half; ++l) lane[l] = op(lane[l], lane[l + half]);
    }
    return lane[0];
  }
};

}  // namespace fastsample::cpu
