// Rules of the stack sampler (docs/ops.md "sample_stack") that the CPU and CUDA kernels share, so that each is
// written once in C++ (the Python twin of each is in fastsample/stack/spec.py).
#pragma once

#include "fastsample/philox.h"  // FS_HOST_DEVICE

namespace fastsample {

// The penalties of a row are in range: r > 0 and finite, f and q finite (a row where they are not returns -1).
// v - v == 0 holds exactly for finite v (NaN and +-inf give NaN), on the host and the device alike.
FS_HOST_DEVICE bool stack_penalties_valid(double repetition, double frequency, double presence) {
  return repetition > 0.0 && repetition - repetition == 0.0 && frequency - frequency == 0.0 &&
         presence - presence == 0.0;
}

}  // namespace fastsample
