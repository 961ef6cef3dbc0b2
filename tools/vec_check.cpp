// The loops of csrc/cpu/vec_loops.h over one path's primitives (Neon on aarch64; on x86-64 Avx2, or Avx512
// with -DVEC_CHECK_AVX512=1, native or SIMDe-emulated with -DFASTSAMPLE_SIMDE=1), run on fixed inputs:
// prints lines that must be the same on every path (hashes of the exact weights, stats, gathers and counts,
// and "ok" where a sum, whose rounding depends on the lane count, is within 1e-6 of the double-precision
// one). tools/check_arm.py (NEON under qemu-aarch64) and tools/check_avx512.py compare its lines with the AVX2
// build's. Exit status 1 when a check fails here.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "simd.h"
#include "top_p_bracket.h"
#if defined(__aarch64__) || VEC_CHECK_NEON  // VEC_CHECK_NEON: on SIMDe's NEON, with FASTSAMPLE_SIMDE=1
#include "vec_neon.h"
#include "vec_loops.h"
using V = fastsample::cpu::Neon;
#elif VEC_CHECK_GENERIC
#include "vec_generic.h"
#include "vec_loops.h"
using V = fastsample::cpu::Generic;
#elif VEC_CHECK_AVX512
// The AVX-512 primitives: native, or over SIMDe's emulation with FASTSAMPLE_SIMDE=1 (any x86-64 CPU).
#if !FASTSAMPLE_SIMDE
#pragma GCC target("avx512f")
#endif
#include "vec_avx512.h"
#include "vec_loops.h"
using V = fastsample::cpu::Avx512;
#else
#pragma GCC target("avx2,fma")
#include "vec_avx2.h"
#include "vec_loops.h"
using V = fastsample::cpu::Avx2;
#endif

using namespace fastsample::cpu;

namespace {

int failures = 0;

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// The weight in double: exp((x - ref) * inv_t) with the difference taken in float as the loops do, 0 below
// the exp's range.
double exact_weight(float x, float ref, float inv_t) {
  const float y = (x - ref) * inv_t;
  return y < kExpLow ? 0.0 : std::exp(static_cast<double>(y));
}

void expect_close(const char* what, double got, double want) {
  const bool ok = std::fabs(got - want) <= 1e-6 * std::fabs(want) + 1e-30;
  std::printf("%s %s\n", what, ok ? "ok" : "FAIL");
  failures += !ok;
}

}  // namespace

int main() {
  uint64_t state = 12345;  // a fixed LCG: the same inputs on every machine
  auto uniform = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<double>(state >> 11) * 0x1p-53;
  };
  const int64_t n = 1000;
  std::vector<float> x(n), w(n);
  for (float& v : x) v = static_cast<float>((uniform() - 0.5) * 40.0);
  x[5] = -kInf;
  x[17] = -100.0f;
  x[34] = -69.0f;  // (x - ref) * inv_t near the exp's lower limit
  x[35] = -70.5f;
  float ref = -kInf;
  for (float v : x) ref = std::fmax(ref, v);
  const float inv_t = 1.25f;

  // exp_weights: every length's tail, with and without a threshold and the stats taken alongside.
  for (int64_t len : {int64_t{1}, int64_t{3}, int64_t{7}, int64_t{13}, int64_t{31}, n}) {
    const float sum = vec::exp_weights<V, false, false>(x.data(), len, ref, inv_t, -kInf, w.data(), nullptr);
    uint64_t hash = 0;
    double want = 0.0, worst = 0.0;
    for (int64_t i = 0; i < len; ++i) {
      hash = hash * 1000003u ^ bits_of(w[i]);
      const double e = exact_weight(x[i], ref, inv_t);
      want += e;
      worst = std::fmax(worst, std::fabs(w[i] - e) / (e > 0 ? e : 1.0));
    }
    std::printf("exp len %lld weights %016llx\n", static_cast<long long>(len), static_cast<unsigned long long>(hash));
    expect_close("  sum", sum, want);
    std::printf("  within 2e-7 of exp: %s\n", worst < 2e-7 ? "ok" : "FAIL");
    failures += !(worst < 2e-7);
    SpanStats seen;
    vec::exp_weights<V, true, false>(x.data(), len, ref, inv_t, -kInf, w.data(), &seen);
    std::printf("  seen max %a min %a nan %d\n", seen.max, seen.min, static_cast<int>(seen.has_nan));
    const float theta = 3.0f;
    vec::exp_weights<V, false, true>(x.data(), len, ref, inv_t, theta, w.data(), nullptr);
    int64_t kept = 0, wrong = 0;
    for (int64_t i = 0; i < len; ++i) {
      kept += w[i] > 0.0f;
      wrong += x[i] < theta && w[i] != 0.0f;
    }
    std::printf("  theta kept %lld wrong %lld\n", static_cast<long long>(kept), static_cast<long long>(wrong));
    failures += wrong != 0;
  }

  // NaN: span_stats and the fused stats see it, and its weight is NaN.
  std::vector<float> y(x);
  y[100] = __builtin_nanf("");
  for (int64_t len : {int64_t{37}, n}) {
    const SpanStats st = vec::span_stats<V>(y.data(), len);
    std::printf("stats len %lld max %a min %a nan %d\n", static_cast<long long>(len), st.max, st.min,
                static_cast<int>(st.has_nan));
  }
  SpanStats seen;
  const float with_nan = vec::exp_weights<V, true, false>(y.data(), 250, ref, 1.0f, -kInf, w.data(), &seen);
  std::printf("nan: sum nan %d seen %d weight nan %d\n", static_cast<int>(with_nan != with_nan),
              static_cast<int>(seen.has_nan), static_cast<int>(w[100] != w[100]));

  // gather_span: the tokens in [lo, hi), in index order, with their indices.
  std::vector<float> values(n + 16);
  std::vector<int64_t> indices(n + 16);
  const int64_t base = int64_t{1} << 33;  // beyond 32 bits
  const int64_t got = vec::gather_span<V>(x.data(), 997, base, -2.0f, 5.0f, values.data(), indices.data(), 0);
  int64_t want = 0, wrong = 0;
  for (int64_t i = 0; i < 997; ++i) {
    if (!(x[i] >= -2.0f && x[i] < 5.0f)) continue;
    wrong += want >= got || indices[want] != base + i || values[want] != x[i];
    ++want;
  }
  std::printf("gather %lld of %lld, wrong %lld\n", static_cast<long long>(got), static_cast<long long>(want),
              static_cast<long long>(wrong));
  failures += got != want || wrong != 0;

  // bracket_block: the masses above each edge, the total, the max and the central tokens (the first `real`).
  const Bracket br{{10.0f, 4.0f, -1.0f, -6.0f}};
  std::vector<float> central(300 + 16);
  PassGather g{central.data(), 300};
  float sums[kBracketEdges];
  const float total = vec::bracket_block<V, true>(x.data(), 256, 250, true, ref, inv_t, br, sums, g, &seen);
  double mass[kBracketEdges] = {}, all = 0.0;
  int64_t in_central = 0;
  wrong = 0;
  for (int64_t i = 0; i < 256; ++i) {
    const double e = exact_weight(x[i], ref, inv_t);
    all += e;
    for (int j = 0; j < kBracketEdges; ++j) mass[j] += x[i] >= br.edges[j] ? e : 0.0;
    if (i < 250 && x[i] >= br.edges[kCentralLow] && x[i] < br.edges[kCentralHigh]) {
      wrong += in_central >= g.count || central[in_central] != x[i];
      ++in_central;
    }
  }
  std::printf("bracket central %lld of %lld, wrong %lld, max %a\n", static_cast<long long>(g.count),
              static_cast<long long>(in_central), static_cast<long long>(wrong), seen.max);
  failures += g.count != in_central || wrong != 0;
  expect_close("  total", total, all);
  for (int j = 0; j < kBracketEdges; ++j) expect_close("  edge", sums[j], mass[j]);
  // The narrowed bracket (Bracket::narrowed): two edges compared, the outer sums copies of the central ones.
  const Bracket narrow = br.narrowed();
  g.count = 0;
  const float narrow_total =
      vec::bracket_block<V, true, true>(x.data(), 256, 250, true, ref, inv_t, narrow, sums, g, &seen);
  std::printf("narrow central %lld\n", static_cast<long long>(g.count));
  failures += g.count != in_central || narrow_total != total;
  for (int j = 0; j < kBracketEdges; ++j) {
    expect_close("  edge", sums[j], mass[j == kOuterHigh ? kCentralHigh : j == kOuterLow ? kCentralLow : j]);
  }
  for (float& v : w) v = static_cast<float>(uniform());  // probs: their own weights
  g.count = 0;
  const float probs = vec::bracket_block<V, false>(w.data(), 256, 256, false, 0.0f, 1.0f,
                                                   Bracket{{0.9f, 0.6f, 0.4f, 0.1f}}, sums, g, nullptr);
  double p_all = 0.0;
  for (int64_t i = 0; i < 256; ++i) p_all += w[i];
  std::printf("probs central %lld\n", static_cast<long long>(g.count));
  expect_close("  total", probs, p_all);
  std::printf("%s\n", failures == 0 ? "all ok" : "FAILED");
  return failures == 0 ? 0 : 1;
}
