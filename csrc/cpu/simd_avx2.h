// The AVX2 + FMA path's loops (vec_loops.h instantiated for vec_avx2.h, in simd_avx2.cpp): entry points
// with the contracts of their generic twins in simd_blocks.h and top_p_bracket.cpp. Call only where
// use_avx2() (isa.h).
#pragma once
#include <cstdint>

#include "simd.h"
#include "top_p_bracket.h"

#if FS_X86_GCC
namespace fastsample::cpu {

// exp_weights (simd_blocks.h); theta = -inf: no threshold.
float exp_weights_avx2(const float* x, int64_t n, float ref, float inv_t, float theta, float* w);
// The same without a threshold, the span's stats taken in the same read.
float exp_weights_seen_avx2(const float* x, int64_t n, float ref, float inv_t, float* w, SpanStats* seen);
SpanStats span_stats_avx2(const float* x, int64_t n);
// One bracket block, weights in registers (vec::bracket_block); seen: null, or the block's max and NaN hint.
float bracket_block_avx2(const float* xb, int64_t len, int64_t real, bool is_exp, float ref, float inv_t,
                         const Bracket& br, float* sums, PassGather& g, SpanStats* seen);

}  // namespace fastsample::cpu
#endif
