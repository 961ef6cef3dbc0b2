// CUDA glue of fastsample::sample and fastsample::renorm_probs (kernels: include/fastsample/cuda/sampling.cuh).
#include "fastsample/cuda/sampling.cuh"
#include "glue.h"

#include <tuple>

namespace fastsample {
namespace cuda_glue {
namespace {

// Per-row filter parameters; temperature only where the op has one.
cuda::RowParams row_params(const Tensor& like, const OptTensor& temperature_arr, double temperature_val,
                           const OptTensor& top_k_arr, int64_t top_k_val, const OptTensor& top_p_arr,
                           double top_p_val, const OptTensor& min_p_arr, double min_p_val) {
  cuda::RowParams p;
  p.temperature = row_ptr<float>(temperature_arr, "temperature_arr", like, at::kFloat);
  p.temperature_val = static_cast<float>(temperature_val);
  p.top_k = row_ptr<int64_t>(top_k_arr, "top_k_arr", like, at::kLong);
  p.top_k_val = top_k_val;
  p.top_p = row_ptr<float>(top_p_arr, "top_p_arr", like, at::kFloat);
  p.top_p_val = static_cast<float>(top_p_val);
  p.min_p = row_ptr<float>(min_p_arr, "min_p_arr", like, at::kFloat);
  p.min_p_val = static_cast<float>(min_p_val);
  return p;
}

std::tuple<Tensor, Tensor> sample_cuda(const Tensor& x, bool is_logits, const OptTensor& temperature_arr,
                                       double temperature_val, const OptTensor& top_k_arr, int64_t top_k_val,
                                       const OptTensor& top_p_arr, double top_p_val, const OptTensor& min_p_arr,
                                       double min_p_val, const Tensor& seed, const Tensor& offset,
                                       bool return_logprobs) {
  check_scores(x, "x");
  check_rows(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const cuda::RowParams params = row_params(x, temperature_arr, temperature_val, top_k_arr, top_k_val, top_p_arr,
                                            top_p_val, min_p_arr, min_p_val);
  check_row_tensor(seed, "seed", x, at::kLong);
  check_row_tensor(offset, "offset", x, at::kLong);
  const int64_t rows = x.size(0), vocab = x.size(1);
  Tensor tokens = at::empty({rows}, x.options().dtype(at::kLong));
  Tensor logprobs = at::empty({return_logprobs ? rows : 0}, x.options().dtype(at::kFloat));
  if (rows == 0) return {tokens, logprobs};
  Tensor ws = workspace(cuda::sample_workspace_bytes(rows, vocab), x);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_scores(x, [&](auto tag) {
    using T = decltype(tag);
    const cuda::SampleArgs<T> args{data_as<T>(x),
                                   rows,
                                   vocab,
                                   is_logits,
                                   params,
                                   seed.data_ptr<int64_t>(),
                                   offset.data_ptr<int64_t>(),
                                   tokens.data_ptr<int64_t>(),
                                   return_logprobs ? logprobs.data_ptr<float>() : nullptr};
    check_launch(cuda::sample<T>(args, ws.data_ptr(), stream), "sample");
  });
  return {tokens, logprobs};
}

Tensor renorm_probs_cuda(const Tensor& probs_in, const OptTensor& top_k_arr, int64_t top_k_val,
                         const OptTensor& top_p_arr, double top_p_val, const OptTensor& min_p_arr,
                         double min_p_val) {
  check_scores(probs_in, "probs");
  check_rows(probs_in, "probs");
  // float16/bfloat16 probabilities are widened once (the renorm kernel reads and writes float32).
  const Tensor probs = probs_in.to(at::kFloat);
  const c10::cuda::CUDAGuard guard(probs.device());
  const cuda::RowParams params =
      row_params(probs, std::nullopt, 1.0, top_k_arr, top_k_val, top_p_arr, top_p_val, min_p_arr, min_p_val);
  Tensor out = at::empty_like(probs);
  const int64_t rows = probs.size(0), vocab = probs.size(1);
  if (rows == 0) return out;
  Tensor ws = workspace(cuda::renorm_probs_workspace_bytes(rows, vocab), probs);
  const cuda::RenormArgs args{probs.data_ptr<float>(), rows, vocab, params, out.data_ptr<float>()};
  check_launch(cuda::renorm_probs(args, ws.data_ptr(), c10::cuda::getCurrentCUDAStream()), "renorm_probs");
  return out;
}

}  // namespace
}  // namespace cuda_glue
}  // namespace fastsample

TORCH_LIBRARY_IMPL(fastsample, CUDA, m) {
  m.impl("sample", &fastsample::cuda_glue::sample_cuda);
  m.impl("renorm_probs", &fastsample::cuda_glue::renorm_probs_cuda);
}
