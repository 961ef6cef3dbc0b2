// The AVX-512F instantiation of vec_loops.h (vec_paths.h's kAvx512Path). Everything after the pragma is
// compiled for AVX-512F (the standard headers and simd.h come first, so that no inline function of theirs is
// compiled for it); the library calls in only where the CPU has it (isa.h). Built with FASTSAMPLE_SIMDE=1
// (make check-avx512), the same loops run on SIMDe's emulation of the intrinsics instead, on any x86-64.
#include "vec_paths.h"

#if FS_X86_GCC
#include <cstdint>

#include "simd.h"
#include "top_p_bracket.h"

#pragma GCC push_options
#if !FASTSAMPLE_SIMDE
#pragma GCC target("avx512f")
#endif
#include "vec_avx512.h"
#include "vec_table.h"

namespace fastsample::cpu {

const VecPath kAvx512Path = vec::PathOf<Avx512>::table;

}  // namespace fastsample::cpu

#pragma GCC pop_options
#endif
