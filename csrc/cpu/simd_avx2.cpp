// The AVX2 + FMA instantiation of vec_loops.h (vec_paths.h's kAvx2Path). Everything after the pragma is
// compiled for AVX2 + FMA (the standard headers and simd.h come first, so that no inline function of theirs
// is compiled for it); the library calls in only where the CPU has them (isa.h).
#include "vec_paths.h"

#if FS_X86_GCC
#include <cstdint>

#include "simd.h"
#include "top_p_bracket.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include "vec_avx2.h"
#include "vec_table.h"

namespace fastsample::cpu {

const VecPath kAvx2Path = vec::PathOf<Avx2>::table;

}  // namespace fastsample::cpu

#pragma GCC pop_options
#endif
