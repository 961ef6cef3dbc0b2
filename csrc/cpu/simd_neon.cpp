// The Arm NEON instantiation of vec_loops.h (vec_paths.h's kNeonPath), on aarch64 only: NEON is part of
// every ARMv8-A core, so no target switch is needed and the library always has this path there.
#include "vec_paths.h"

#if defined(__aarch64__)
#include "vec_neon.h"
#include "vec_table.h"

namespace fastsample::cpu {

const VecPath kNeonPath = vec::PathOf<Neon>::table;

}  // namespace fastsample::cpu
#endif
