// CUDA glue of fastsample::softmax (kernels: include/fastsample/cuda/softmax.cuh).
#include "fastsample/cuda/softmax.cuh"
#include "glue.h"

namespace fastsample {
namespace cuda_glue {
namespace {

Tensor softmax_cuda(const Tensor& logits, const OptTensor& temperature_arr, double temperature_val) {
  check_scores(logits, "logits");
  check_rows(logits, "logits");
  const c10::cuda::CUDAGuard guard(logits.device());
  const float* t_arr = row_ptr<float>(temperature_arr, "temperature_arr", logits, at::kFloat);
  Tensor out = at::empty(logits.sizes(), logits.options().dtype(at::kFloat));
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  if (rows == 0) return out;
  Tensor ws = workspace(cuda::softmax_workspace_bytes(rows, vocab), logits);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_scores(logits, [&](auto tag) {
    using T = decltype(tag);
    const cuda::SoftmaxArgs<T> args{data_as<T>(logits), rows, vocab, t_arr, static_cast<float>(temperature_val),
                                    out.data_ptr<float>()};
    check_launch(cuda::softmax<T>(args, ws.data_ptr(), stream), "softmax");
  });
  return out;
}

}  // namespace
}  // namespace cuda_glue
}  // namespace fastsample

TORCH_LIBRARY_IMPL(fastsample, CUDA, m) { m.impl("softmax", &fastsample::cuda_glue::softmax_cuda); }
