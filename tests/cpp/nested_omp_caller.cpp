// Test helper for tests/test_threads.py: calls fastsample::sample through the dispatcher from inside an
// OpenMP parallel region (one row per iteration), as a C++ caller that already runs in parallel would.
// The kernels' own parallel regions are then nested: they must stay correct with whatever threads they get.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace {

using SampleFn = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, bool, const std::optional<at::Tensor>&, double, const std::optional<at::Tensor>&, int64_t,
    const std::optional<at::Tensor>&, double, const std::optional<at::Tensor>&, double, const at::Tensor&,
    const at::Tensor&, bool);

at::Tensor sample_rows_in_parallel(const at::Tensor& logits, const at::Tensor& seed, const at::Tensor& offset,
                                   double top_p, int64_t threads) {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("fastsample::sample", "").typed<SampleFn>();
  const int64_t batch = logits.size(0);
  at::Tensor tokens = at::empty({batch}, logits.options().dtype(at::kLong));
  int64_t* out = tokens.data_ptr<int64_t>();
#pragma omp parallel for num_threads(threads) schedule(static, 1)
  for (int64_t b = 0; b < batch; ++b) {
    const auto result = op.call(logits.narrow(0, b, 1), true, std::nullopt, 1.0, std::nullopt, 0, std::nullopt,
                                top_p, std::nullopt, 0.0, seed.narrow(0, b, 1), offset.narrow(0, b, 1), false);
    out[b] = std::get<0>(result).data_ptr<int64_t>()[0];
  }
  return tokens;
}

}  // namespace

TORCH_LIBRARY(fastsample_nested_test, m) {
  m.def("sample_rows_in_parallel(Tensor logits, Tensor seed, Tensor offset, float top_p, int threads) -> Tensor",
        &sample_rows_in_parallel);
}
