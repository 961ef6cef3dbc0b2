// The generic instantiation of vec_loops.h (vec_paths.h's kGenericPath): the same loops as every other path,
// over the portable primitives of vec_generic.h, compiled for the baseline of the target (SSE2 on x86-64),
// so that any CPU runs it.
#include "vec_generic.h"
#include "vec_paths.h"
#include "vec_table.h"

namespace fastsample::cpu {

const VecPath kGenericPath = vec::PathOf<Generic>::table;

}  // namespace fastsample::cpu
