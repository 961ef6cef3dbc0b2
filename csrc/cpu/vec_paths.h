// The loops of vec_loops.h instantiated per instruction set, as a table of entry points (vec_table.h):
// AVX-512F (simd_avx512.cpp) and AVX2 + FMA (simd_avx2.cpp) on x86-64, NEON (simd_neon.cpp) on aarch64, and
// the portable primitives of vec_generic.h everywhere (simd_generic.cpp); vec_path() gives the table of the
// path in use (isa.h). Every path runs the same loops: only the primitives differ.
#pragma once
#include <cstdint>

#include "isa.h"
#include "simd.h"
#include "top_p_bracket.h"

namespace fastsample::cpu {

struct VecPath {
  // exp_weights (simd_blocks.h); theta = -inf: no threshold.
  float (*exp_weights)(const float* x, int64_t n, float ref, float inv_t, float theta, float* w);
  // The same without a threshold, the span's stats taken in the same read.
  float (*exp_weights_seen)(const float* x, int64_t n, float ref, float inv_t, float* w, SpanStats* seen);
  SpanStats (*span_stats)(const float* x, int64_t n);
  // One bracket block, weights in registers (vec::bracket_block); seen: null, or the block's max and NaN hint.
  float (*bracket_block)(const float* xb, int64_t len, int64_t real, bool is_exp, float ref, float inv_t,
                         const Bracket& br, float* sums, PassGather& g, SpanStats* seen);
  // vec::gather_span: the tokens with lo <= x < hi appended from entry k on (room for them plus kVecRoom).
  int64_t (*gather_span)(const float* x, int64_t n, int64_t base, float lo, float hi, float* values,
                         int64_t* indices, int64_t k);
};

// Entries a gather may write past its count (the widest vector of any path).
constexpr int64_t kVecRoom = 16;

#if FS_X86_GCC
extern const VecPath kAvx512Path;
extern const VecPath kAvx2Path;
#endif
#if defined(__aarch64__)
extern const VecPath kNeonPath;
#endif

extern const VecPath kGenericPath;

// The table of the path in use.
inline const VecPath& vec_path() {
  switch (cpu_isa()) {
#if FS_X86_GCC
    case Isa::kAvx512: return kAvx512Path;
    case Isa::kAvx2: return kAvx2Path;
#endif
#if defined(__aarch64__)
    case Isa::kNeon: return kNeonPath;
#endif
    default: return kGenericPath;
  }
}

}  // namespace fastsample::cpu
