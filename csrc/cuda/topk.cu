// CUDA glue of fastsample::top_k and fastsample::top_k_mask_logits (kernels: include/fastsample/cuda/topk.cuh).
#include "fastsample/cuda/topk.cuh"
#include "glue.h"

#include <tuple>

namespace fastsample {
namespace cuda_glue {
namespace {

std::tuple<Tensor, Tensor> top_k_cuda(const Tensor& x, int64_t k, bool sorted) {
  (void)sorted;  // results are always sorted, which is valid for sorted=False too
  check_scores(x, "x");
  check_rows(x, "x");
  const int64_t rows = x.size(0), vocab = x.size(1);
  TORCH_CHECK_VALUE(k >= 0 && k <= vocab, "k must be in [0, ", vocab, "] (the vocabulary size), got ", k);
  TORCH_CHECK_VALUE(rows * k < (int64_t{1} << 31), "top_k on CUDA needs batch * k < 2^31, got ", rows, " * ", k);
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor values = at::empty({rows, k}, x.options());
  Tensor indices = at::empty({rows, k}, x.options().dtype(at::kLong));
  if (rows == 0 || k == 0) return {values, indices};
  Tensor ws = workspace(cuda::top_k_workspace_bytes(rows, vocab, k), x);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_scores(x, [&](auto tag) {
    using T = decltype(tag);
    const cuda::TopKArgs<T> args{data_as<T>(x), rows, vocab, k, mutable_data_as<T>(values),
                                 indices.data_ptr<int64_t>()};
    check_launch(cuda::top_k<T>(args, ws.data_ptr(), stream), "top_k");
  });
  return {values, indices};
}

Tensor top_k_mask_logits_cuda(const Tensor& logits, const OptTensor& top_k_arr, int64_t top_k_val) {
  check_scores(logits, "logits");
  check_rows(logits, "logits");
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t* k_arr = row_ptr<int64_t>(top_k_arr, "top_k_arr", logits, at::kLong);
  Tensor out = at::empty_like(logits);
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  if (rows == 0) return out;
  Tensor ws = workspace(cuda::top_k_mask_logits_workspace_bytes(rows, vocab), logits);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_scores(logits, [&](auto tag) {
    using T = decltype(tag);
    const cuda::MaskArgs<T> args{data_as<T>(logits), rows, vocab, k_arr, top_k_val, mutable_data_as<T>(out)};
    check_launch(cuda::top_k_mask_logits<T>(args, ws.data_ptr(), stream), "top_k_mask_logits");
  });
  return out;
}

}  // namespace
}  // namespace cuda_glue
}  // namespace fastsample

TORCH_LIBRARY_IMPL(fastsample, CUDA, m) {
  m.impl("top_k", &fastsample::cuda_glue::top_k_cuda);
  m.impl("top_k_mask_logits", &fastsample::cuda_glue::top_k_mask_logits_cuda);
}
