// The hot loops written once over a vector type V (vec_avx512.h: 16 lanes, vec_avx2.h: 8, vec_neon.h: 4).
// Each is instantiated in a file compiled for V's instruction set (simd_avx512.cpp, simd_avx2.cpp,
// simd_neon.cpp) and reached through the table of vec_paths.h. Includes point one way: these loops over the
// primitives, which include nothing above them.
//
// V provides: F (a vector of kWidth floats) and M (a lane mask); set1, zero, load, store, first(rem),
// all(), none(), load_first / store_first (masked), add, sub, mul, mul_add(a, b, c) (a * b + c, fused where
// the ISA has it), round (to nearest, ties to even), scale_where(m, p, k) (p * 2^k where m, else 0),
// add_where(acc, m, v), keep(m, v), select(m, a, b), ge, lt, not_lt (true where NaN), nan, both, either,
// but_not, bits, max_seen / min_seen (a NaN in the new value leaves the running one), the folds sum, max,
// min, compress_store / compress_index, and kWideRegisterFile.
#pragma once
#include <cstdint>

#include "simd.h"
#include "top_p_bracket.h"

namespace fastsample::cpu::vec {

// exp_nonpositive((v - ref) * inv_t) of a vector (simd.h: the same steps, so that every path gives the same
// weights where it has fused multiply-adds) where `lanes` and (kTheta) v >= theta, else 0. Unlike
// exp_nonpositive, NaN gives NaN, so that a sum of weights tells whether its span held NaN. The range test
// and the kept test are one mask, applied with the final scale.
template <class V, bool kTheta>
typename V::F exp_lanes(typename V::F v, typename V::M lanes, typename V::F ref, typename V::F inv_t,
                        typename V::F theta) {
  using F = typename V::F;
  const F low = V::set1(kExpLow);
  const F y = V::mul(V::sub(v, ref), inv_t);
  auto keep = V::both(lanes, V::not_lt(y, low));  // NaN kept
  if constexpr (kTheta) keep = V::both(keep, V::ge(v, theta));
  const F c = V::max_seen(low, y);  // y where y is NaN (max_seen keeps its second operand then)
  const F k = V::round(V::mul(c, V::set1(kLog2e)));
  const F r = V::mul_add(k, V::set1(kLn2Lo), V::mul_add(k, V::set1(-kLn2Hi), c));  // c - k ln 2, in two parts
  F p = V::set1(kExpPoly[0]);
  for (int j = 1; j < kExpPolyTerms; ++j) p = V::mul_add(p, r, V::set1(kExpPoly[j]));
  p = V::mul_add(V::mul_add(p, r, V::set1(1.0f)), r, V::set1(1.0f));
  return V::scale_where(keep, p, k);
}

// Weights of a span into w (exp_weights_generic's contract): x >= theta (kTheta) weighs
// exp((x - ref) * inv_t), others 0; returns the float sum. kSee: the span's stats into *seen in the same
// read. NaN weighs NaN, so that a sum tells whether its span held NaN.
template <class V, bool kSee, bool kTheta>
float exp_weights(const float* x, int64_t n, float ref, float inv_t, float theta, float* w, SpanStats* seen) {
  using F = typename V::F;
  constexpr int64_t kW = V::kWidth;
  const F vref = V::set1(ref), vinv = V::set1(inv_t), vtheta = V::set1(theta);
  F acc0 = V::zero(), acc1 = V::zero();  // two chains: adds do not wait on each other
  F mx = V::set1(-kInf), mn = V::set1(kInf);
  auto nan = V::none();
  int64_t i = 0;
  for (; i + 2 * kW <= n; i += 2 * kW) {
    const F v0 = V::load(x + i), v1 = V::load(x + i + kW);
    if constexpr (kSee) {
      nan = V::either(nan, V::either(V::nan(v0), V::nan(v1)));
      mx = V::max_seen(v1, V::max_seen(v0, mx));
      mn = V::min_seen(v1, V::min_seen(v0, mn));
    }
    const F e0 = exp_lanes<V, kTheta>(v0, V::all(), vref, vinv, vtheta);
    const F e1 = exp_lanes<V, kTheta>(v1, V::all(), vref, vinv, vtheta);
    V::store(w + i, e0);
    V::store(w + i + kW, e1);
    acc0 = V::add(acc0, e0);
    acc1 = V::add(acc1, e1);
  }
  for (; i < n; i += kW) {
    const auto lanes = n - i >= kW ? V::all() : V::first(n - i);
    const F v = V::load_first(x + i, lanes);
    if constexpr (kSee) {
      nan = V::either(nan, V::both(lanes, V::nan(v)));  // lanes past the end read 0: left out of the stats
      mx = V::max_seen(V::select(lanes, v, V::set1(-kInf)), mx);
      mn = V::min_seen(V::select(lanes, v, V::set1(kInf)), mn);
    }
    const F e = exp_lanes<V, kTheta>(v, lanes, vref, vinv, vtheta);
    V::store_first(w + i, lanes, e);
    acc0 = V::add(acc0, e);
  }
  if constexpr (kSee) *seen = {V::max(mx), V::min(mn), V::bits(nan) != 0};
  return V::sum(V::add(acc0, acc1));
}

// max, min (NaN ignored) and whether a span holds NaN.
template <class V>
SpanStats span_stats(const float* x, int64_t n) {
  using F = typename V::F;
  constexpr int64_t kW = V::kWidth;
  F mx0 = V::set1(-kInf), mn0 = V::set1(kInf), mx1 = mx0, mn1 = mn0;
  auto nan = V::none();
  int64_t i = 0;
  for (; i + 2 * kW <= n; i += 2 * kW) {
    const F v0 = V::load(x + i), v1 = V::load(x + i + kW);
    nan = V::either(nan, V::either(V::nan(v0), V::nan(v1)));
    mx0 = V::max_seen(v0, mx0);
    mn0 = V::min_seen(v0, mn0);
    mx1 = V::max_seen(v1, mx1);
    mn1 = V::min_seen(v1, mn1);
  }
  float mx = V::max(V::max_seen(mx1, mx0)), mn = V::min(V::min_seen(mn1, mn0));
  bool has_nan = V::bits(nan) != 0;
  for (; i < n; ++i) {  // the tail: fewer than two vectors
    has_nan |= x[i] != x[i];
    mx = x[i] > mx ? x[i] : mx;
    mn = x[i] < mn ? x[i] : mn;
  }
  return {mx, mn, has_nan};
}

// One block of the top-p bracket pass (top_p_bracket.cpp): sums[j] = weight of the tokens with
// x >= edges[j], the central region's values (first `real` tokens only) compressed into g, and the block's
// weight sum returned. len is a multiple of kWidth, at most kPassBlock. kSee: the block max and whether it
// may hold NaN into *seen (min not taken): exp makes NaN weights of NaN logits (and of +inf ones), which the
// caller's redo sorts out.
// kNarrow (a narrowed bracket, Bracket::narrow()): only the central edges are compared and summed, and the
// outer edges' sums are copies of theirs (their edges are the same values): two compares and masked adds a
// vector fewer.
// Where V has the registers (V::kWideRegisterFile: AVX-512's 32), logits take one loop, the weights never
// leaving registers. Elsewhere they take two loops over the block: the exps first, into a buffer that stays
// in L1 (two vectors a step, as exp_weights), then the edges' sums and the gather from it; fused, the exp's
// constants, the edges and their sums need more registers than AVX2 has, and the spills cost more than the
// buffer. Probs are their own weights: the second loop alone.
template <class V, bool kSee, bool kNarrow = false>
float bracket_block(const float* xb, int64_t len, int64_t real, bool is_exp, float ref, float inv_t, const Bracket& br,
                    float* sums, PassGather& g, SpanStats* seen) {
  using F = typename V::F;
  constexpr int64_t kW = V::kWidth;
  const F vref = V::set1(ref), vinv = V::set1(inv_t), no_theta = V::set1(-kInf);
  const bool fused = is_exp && V::kWideRegisterFile;
  float buf[kPassBlock];
  const float* w = xb;
  F vmax = V::set1(-kInf);
  if (is_exp && !fused) {
    int64_t i = 0;
    for (; i + 2 * kW <= len; i += 2 * kW) {
      const F v0 = V::load(xb + i), v1 = V::load(xb + i + kW);
      if constexpr (kSee) vmax = V::max_seen(v1, V::max_seen(v0, vmax));
      V::store(buf + i, exp_lanes<V, false>(v0, V::all(), vref, vinv, no_theta));
      V::store(buf + i + kW, exp_lanes<V, false>(v1, V::all(), vref, vinv, no_theta));
    }
    for (; i < len; i += kW) {
      const F v = V::load(xb + i);
      if constexpr (kSee) vmax = V::max_seen(v, vmax);
      V::store(buf + i, exp_lanes<V, false>(v, V::all(), vref, vinv, no_theta));
    }
    w = buf;
  }
  const bool max_in_loop = w == xb;  // no exp loop took it
  constexpr int kFirst = kNarrow ? kCentralHigh : 0, kEnd = kNarrow ? kCentralLow + 1 : kBracketEdges;
  F acc[kBracketEdges], edge[kBracketEdges];
  for (int j = kFirst; j < kEnd; ++j) {
    acc[j] = V::zero();
    edge[j] = V::set1(br.edges[j]);
  }
  F total = V::zero();
  int64_t count = g.count;
  float* const values = g.values;  // locals: the stores below could alias g's fields for all GCC knows
  const int64_t capacity = g.capacity;
  // One vector's share: its weights wv into the total and the edges' sums, its central tokens gathered.
  auto weigh = [&](F v, F wv, int64_t i) {
    total = V::add(total, wv);
    typename V::M ge[kBracketEdges];
    for (int j = kFirst; j < kEnd; ++j) {
      ge[j] = V::ge(v, edge[j]);
      acc[j] = V::add_where(acc[j], ge[j], wv);
    }
    const int64_t rem = real - i;
    uint32_t central = V::bits(V::but_not(ge[kCentralLow], ge[kCentralHigh]));
    central &= rem >= kW ? (1u << kW) - 1u : rem <= 0 ? 0u : (1u << rem) - 1u;
    count += V::compress_store(values + (count < capacity ? count : capacity), central, v);
  };
  int64_t i = 0;
  if (fused) {  // two vectors a step: two exps' dependency chains (the polynomial) overlap
    for (; i + 2 * kW <= len; i += 2 * kW) {
      const F v0 = V::load(xb + i), v1 = V::load(xb + i + kW);
      if constexpr (kSee) vmax = V::max_seen(v1, V::max_seen(v0, vmax));
      const F e0 = exp_lanes<V, false>(v0, V::all(), vref, vinv, no_theta);
      const F e1 = exp_lanes<V, false>(v1, V::all(), vref, vinv, no_theta);
      weigh(v0, e0, i);
      weigh(v1, e1, i + kW);
    }
  }
  for (; i < len; i += kW) {
    const F v = V::load(xb + i);
    if constexpr (kSee) vmax = max_in_loop ? V::max_seen(v, vmax) : vmax;
    weigh(v, fused ? exp_lanes<V, false>(v, V::all(), vref, vinv, no_theta) : V::load(w + i), i);
  }
  g.count = count;
  for (int j = kFirst; j < kEnd; ++j) sums[j] = V::sum(acc[j]);
  if constexpr (kNarrow) {
    sums[kOuterHigh] = sums[kCentralHigh];
    sums[kOuterLow] = sums[kCentralLow];
  }
  const float s = V::sum(total);
  if constexpr (kSee) *seen = {V::max(vmax), kInf, s != s};
  return s;
}

// Appends the tokens of x[0, n) with lo <= x < hi (index base + position) to values / indices from entry k
// on, in index order, and returns the new count: a compare and a compress per vector, no branch per token
// (they are few and spread at random). Each step writes kWidth entries past the count: the buffers need
// room for the gathered tokens plus kWidth.
template <class V>
int64_t gather_span(const float* x, int64_t n, int64_t base, float lo, float hi, float* values, int64_t* indices,
                    int64_t k) {
  using F = typename V::F;
  constexpr int64_t kW = V::kWidth;
  const F vlo = V::set1(lo), vhi = V::set1(hi);
  int64_t i = 0;
  for (; i + kW <= n; i += kW) {
    const F v = V::load(x + i);
    const uint32_t in = V::bits(V::both(V::ge(v, vlo), V::lt(v, vhi)));
    V::compress_index(indices + k, in, base + i);
    k += V::compress_store(values + k, in, v);
  }
  if (i < n) {  // the tail: lanes past the end read 0 and are left out
    const auto lanes = V::first(n - i);
    const F v = V::load_first(x + i, lanes);
    const uint32_t in = V::bits(V::both(lanes, V::both(V::ge(v, vlo), V::lt(v, vhi))));
    V::compress_index(indices + k, in, base + i);
    k += V::compress_store(values + k, in, v);
  }
  return k;
}

}  // namespace fastsample::cpu::vec
