// The Arm NEON instantiation of vec_loops.h (vec_paths.h's kNeonPath), on aarch64 only: NEON is part of
// every ARMv8-A core, so no target switch is needed and the library always has this path there.
#include "vec_paths.h"

#if defined(__aarch64__)
#include <cstdint>

#include "simd.h"
#include "top_p_bracket.h"
#include "vec_neon.h"
#include "vec_loops.h"

namespace fastsample::cpu {
namespace {

float exp_weights_neon(const float* x, int64_t n, float ref, float inv_t, float theta, float* w) {
  return theta == -kInf ? vec::exp_weights<Neon, false, false>(x, n, ref, inv_t, theta, w, nullptr)
                        : vec::exp_weights<Neon, false, true>(x, n, ref, inv_t, theta, w, nullptr);
}

float exp_weights_seen_neon(const float* x, int64_t n, float ref, float inv_t, float* w, SpanStats* seen) {
  return vec::exp_weights<Neon, true, false>(x, n, ref, inv_t, -kInf, w, seen);
}

SpanStats span_stats_neon(const float* x, int64_t n) { return vec::span_stats<Neon>(x, n); }

float bracket_block_neon(const float* xb, int64_t len, int64_t real, bool is_exp, float ref, float inv_t,
                         const Bracket& br, float* sums, PassGather& g, SpanStats* seen) {
  return seen ? vec::bracket_block<Neon, true>(xb, len, real, is_exp, ref, inv_t, br, sums, g, seen)
              : vec::bracket_block<Neon, false>(xb, len, real, is_exp, ref, inv_t, br, sums, g, nullptr);
}

}  // namespace

const VecPath kNeonPath = {exp_weights_neon, exp_weights_seen_neon, span_stats_neon, bracket_block_neon,
                           vec::gather_span<Neon>};

}  // namespace fastsample::cpu
#endif
