// Test-only: the top-p route counters (top_p.h) as an op outside the fastsample namespace, so that
// tests/test_cpu_topp_paths.py can assert which route each of its rows took.
#include <torch/library.h>

#include <vector>

#include "top_p.h"

namespace fastsample::cpu {
namespace {

std::vector<int64_t> top_p_routes(bool reset) {
  const auto counts = top_p_route_counts(reset);
  return {counts.begin(), counts.end()};
}

}  // namespace

// Returns [central hit, outer regather, central overflow, block-maxima bound, no estimate] row counts
// since the last reset (reset=True: then starts again from 0).
TORCH_LIBRARY(fastsample_testing, m) { m.def("top_p_routes(bool reset) -> int[]", &top_p_routes); }

}  // namespace fastsample::cpu
