// The AVX2 + FMA instantiation of vec_loops.h (vec_paths.h's kAvx2Path). Everything after the pragma is
// compiled for AVX2 + FMA (the standard headers come first, so that no inline function of theirs is
// compiled for it); the library calls in only where the CPU has them (isa.h).
#include "vec_paths.h"

#if FS_X86_GCC
#include <cstdint>

#include "simd.h"
#include "top_p_bracket.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include "vec_avx2.h"
#include "vec_loops.h"

namespace fastsample::cpu {
namespace {

float exp_weights_avx2(const float* x, int64_t n, float ref, float inv_t, float theta, float* w) {
  return theta == -kInf ? vec::exp_weights<Avx2, false, false>(x, n, ref, inv_t, theta, w, nullptr)
                        : vec::exp_weights<Avx2, false, true>(x, n, ref, inv_t, theta, w, nullptr);
}

float exp_weights_seen_avx2(const float* x, int64_t n, float ref, float inv_t, float* w, SpanStats* seen) {
  return vec::exp_weights<Avx2, true, false>(x, n, ref, inv_t, -kInf, w, seen);
}

SpanStats span_stats_avx2(const float* x, int64_t n) { return vec::span_stats<Avx2>(x, n); }

float bracket_block_avx2(const float* xb, int64_t len, int64_t real, bool is_exp, float ref, float inv_t,
                         const Bracket& br, float* sums, PassGather& g, SpanStats* seen) {
  return seen ? vec::bracket_block<Avx2, true>(xb, len, real, is_exp, ref, inv_t, br, sums, g, seen)
              : vec::bracket_block<Avx2, false>(xb, len, real, is_exp, ref, inv_t, br, sums, g, nullptr);
}

}  // namespace

const VecPath kAvx2Path = {exp_weights_avx2, exp_weights_seen_avx2, span_stats_avx2, bracket_block_avx2,
                           vec::gather_span<Avx2>};

}  // namespace fastsample::cpu

#pragma GCC pop_options
#endif
