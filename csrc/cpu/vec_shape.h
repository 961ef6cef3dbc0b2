// What every path's primitives (vec_avx512.h, vec_avx2.h, vec_neon.h) declare the same way: the vector and
// mask types, the lane count and whether the bracket block keeps its weights in registers (vec_loops.h).
// and what follows from the path's own primitives alone (zero from set1). Each primitive set D derives from
// VecShape<D, ...>; includes nothing above the primitives.
#pragma once
#include <cstdint>

namespace fastsample::cpu {

template <class D, class Vector, class Mask, int64_t kLanes, bool kWide>
struct VecShape {
  using F = Vector;  // kWidth float lanes
  using M = Mask;    // a lane mask
  static constexpr int64_t kWidth = kLanes;
  // true: enough vector registers that the bracket block keeps its weights in them; false: through a buffer.
  static constexpr bool kWideRegisterFile = kWide;
  static auto zero() { return D::set1(0.0f); }  // D is complete where this is called
};

}  // namespace fastsample::cpu
