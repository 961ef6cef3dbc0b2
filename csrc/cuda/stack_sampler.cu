// CUDA glue of fastsample::stack_processed_logits, steps 1-3 of the stack sampler (kernels:
// include/fastsample/cuda/stack_sampler.cuh; fastsample/stack/cuda.py composes the whole op from it).
#include "fastsample/cuda/stack_sampler.cuh"
#include "glue.h"

#include <tuple>

namespace fastsample {
namespace cuda_glue {
namespace {

// An id list [B, L] (int64, -1 padding) on x's device, or an empty list when not given.
cuda::StackIdList id_list(const OptTensor& ids, const char* name, const Tensor& x) {
  if (!ids.has_value()) return {nullptr, nullptr, 0};
  check_tensor(*ids, name, 2);
  check_same_device(*ids, name, x);
  check_dtype(*ids, name, at::kLong);
  TORCH_CHECK_VALUE(ids->size(0) == x.size(0), name, " must have shape [", x.size(0), ", L], got ", ids->sizes());
  return {ids->data_ptr<int64_t>(), nullptr, ids->size(1)};
}

std::tuple<Tensor, Tensor> stack_processed_logits_cuda(
    const Tensor& logits, const OptTensor& allowed_mask, const OptTensor& bias_ids, const OptTensor& bias_values,
    const OptTensor& prompt_ids, const OptTensor& output_ids, const OptTensor& repetition_arr, double repetition_val,
    const OptTensor& frequency_arr, double frequency_val, const OptTensor& presence_arr, double presence_val) {
  check_scores(logits, "logits");
  check_rows(logits, "logits");
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  TORCH_CHECK_VALUE(vocab < (int64_t{1} << 31), "logits may have at most 2^31 - 1 tokens on CUDA, got ", vocab);
  const c10::cuda::CUDAGuard guard(logits.device());
  cuda::StackIdList bias = id_list(bias_ids, "bias_ids", logits);
  TORCH_CHECK_VALUE(bias_ids.has_value() == bias_values.has_value(), "bias_ids and bias_values must be given together");
  if (bias_values.has_value()) {
    check_tensor(*bias_values, "bias_values", 2);
    check_same_device(*bias_values, "bias_values", logits);
    check_dtype(*bias_values, "bias_values", at::kFloat);
    TORCH_CHECK_VALUE(bias_values->sizes() == bias_ids->sizes(), "bias_values must have bias_ids' shape ",
                      bias_ids->sizes(), ", got ", bias_values->sizes());
    bias.values = bias_values->data_ptr<float>();
  }
  const int32_t* mask = nullptr;
  int64_t mask_words = 0;
  if (allowed_mask.has_value()) {
    check_tensor(*allowed_mask, "allowed_mask", 2);
    check_same_device(*allowed_mask, "allowed_mask", logits);
    check_dtype(*allowed_mask, "allowed_mask", at::kInt);
    mask_words = allowed_mask->size(1);
    TORCH_CHECK_VALUE(allowed_mask->size(0) == rows && mask_words >= (vocab + 31) / 32, "allowed_mask must have shape [",
                      rows, ", ", (vocab + 31) / 32, "] (ceil(V / 32) words), got ", allowed_mask->sizes());
    mask = allowed_mask->data_ptr<int32_t>();
  }
  const cuda::StackIdList prompt = id_list(prompt_ids, "prompt_ids", logits);
  const cuda::StackIdList output = id_list(output_ids, "output_ids", logits);
  const float* repetition = row_ptr<float>(repetition_arr, "repetition_arr", logits, at::kFloat);
  const float* frequency = row_ptr<float>(frequency_arr, "frequency_arr", logits, at::kFloat);
  const float* presence = row_ptr<float>(presence_arr, "presence_arr", logits, at::kFloat);
  Tensor out = at::empty({rows, vocab}, logits.options().dtype(at::kFloat));
  Tensor bad = at::empty({rows}, logits.options().dtype(at::kInt));
  if (rows == 0) return {out, bad.to(at::kBool)};
  const int64_t listed = cuda::stack_listed_ids(bias, prompt, output);
  Tensor ws = workspace(cuda::stack_overrides_workspace_bytes(rows, listed), logits);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_scores(logits, [&](auto tag) {
    using T = decltype(tag);
    const cuda::StackOverrideArgs<T> args{data_as<T>(logits),
                                          rows,
                                          vocab,
                                          mask,
                                          mask_words,
                                          bias,
                                          prompt,
                                          output,
                                          repetition,
                                          static_cast<float>(repetition_val),
                                          frequency,
                                          static_cast<float>(frequency_val),
                                          presence,
                                          static_cast<float>(presence_val),
                                          out.data_ptr<float>(),
                                          bad.data_ptr<int32_t>()};
    check_launch(cuda::stack_overrides<T>(args, ws.data_ptr(), stream), "stack_processed_logits");
  });
  return {out, bad.to(at::kBool)};
}

}  // namespace
}  // namespace cuda_glue
}  // namespace fastsample

TORCH_LIBRARY_IMPL(fastsample, CUDA, m) {
  m.impl("stack_processed_logits", &fastsample::cuda_glue::stack_processed_logits_cuda);
}
