// The inverse-CDF step every CPU draw takes (docs/design.md section 4): the smallest kept id whose prefix weight exceeds
// u * W, in ascending id order. Draws walk it twice: over the sums of blocks of ids to find the block that
// holds the step, then over that block's tokens.
#pragma once
#include <cstdint>

namespace fastsample::cpu {

// Walks items [first, n) in order, from `cum` (the mass before item `first`), skipping items of weight
// <= 0: returns the first item i at which cum + weight(i) > target, with cum left at the mass before it;
// or -1, with every weight added to cum. `last_positive` gets the last item of positive weight seen (or
// stays as passed in): where float rounding never crosses, that item is the draw.
template <class Weight>
int64_t cdf_step(int64_t first, int64_t n, Weight&& weight, double target, double& cum, int64_t& last_positive) {
  for (int64_t i = first; i < n; ++i) {
    const double w = weight(i);
    if (w <= 0.0) continue;
    last_positive = i;
    if (cum + w > target) return i;
    cum += w;
  }
  return -1;
}

}  // namespace fastsample::cpu
