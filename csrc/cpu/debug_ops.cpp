// Diagnostics of the CPU kernels, as ops outside the fastsample namespace (torch.ops.fastsample_cpu.*):
// which vector path runs (the bench records it with every CPU row) and, for tests, the top-p route
// counters (top_p.h), so that tests/test_cpu_topp_paths.py can assert which route each of its rows took.
#include <torch/library.h>

#include <string>
#include <vector>

#include "isa.h"
#include "top_p.h"

namespace fastsample::cpu {
namespace {

std::vector<int64_t> top_p_routes(bool reset) {
  const auto counts = top_p_route_counts(reset);
  return {counts.begin(), counts.end()};
}

std::string isa() { return isa_name(cpu_isa()); }

std::string switch_isa(const std::string& name) { return isa_name(set_isa(name.c_str())); }

}  // namespace

TORCH_LIBRARY(fastsample_cpu, m) {
  // [central hit, outer regather, central overflow, block-maxima bound, no estimate] row counts since the
  // last reset (reset=True: then starts again from 0).
  m.def("top_p_routes(bool reset) -> int[]", &top_p_routes);
  // The vector path of the CPU kernels: "avx512", "avx2" or "generic" (csrc/cpu/isa.h).
  m.def("isa() -> str", &isa);
  // Switches the path between kernel calls (as FASTSAMPLE_ISA, never more than the CPU has); returns the
  // path now in use. The bench times each path in one run this way.
  m.def("set_isa(str name) -> str", &switch_isa);
}

}  // namespace fastsample::cpu
