// CUDA glue of fastsample::chain_speculative_sampling (kernels: include/fastsample/cuda/speculative.cuh).
#include "fastsample/cuda/speculative.cuh"
#include "glue.h"

#include <tuple>

namespace fastsample {
namespace cuda_glue {
namespace {

std::tuple<Tensor, Tensor, Tensor> chain_speculative_sampling_cuda(const Tensor& draft_probs_in,
                                                                   const Tensor& draft_token_ids,
                                                                   const Tensor& target_probs_in, const Tensor& seed,
                                                                   const Tensor& offset) {
  check_tensor(draft_probs_in, "draft_probs", 3);
  check_tensor(draft_token_ids, "draft_token_ids", 2);
  check_tensor(target_probs_in, "target_probs", 3);
  for (const auto& [t, name] : {std::pair{&draft_probs_in, "draft_probs"}, std::pair{&target_probs_in, "target_probs"}}) {
    const auto dtype = t->scalar_type();
    TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, name,
                     " must have dtype float32, float16 or bfloat16, got ", dtype);
  }
  // float16/bfloat16 probabilities are widened once (the kernels read float32).
  const Tensor draft_probs = draft_probs_in.to(at::kFloat), target_probs = target_probs_in.to(at::kFloat);
  check_dtype(draft_token_ids, "draft_token_ids", at::kLong);
  check_same_device(draft_token_ids, "draft_token_ids", draft_probs);
  check_same_device(target_probs, "target_probs", draft_probs);
  check_rows(draft_probs, "draft_probs");
  const int64_t rows = draft_probs.size(0), n = draft_probs.size(1), vocab = draft_probs.size(2);
  TORCH_CHECK_VALUE(vocab >= 1, "draft_probs must have a vocabulary of at least 1, got shape ", draft_probs.sizes());
  TORCH_CHECK_VALUE(draft_token_ids.size(0) == rows && draft_token_ids.size(1) == n, "draft_token_ids must have shape [",
                    rows, ", ", n, "], got ", draft_token_ids.sizes());
  TORCH_CHECK_VALUE(target_probs.size(0) == rows && target_probs.size(1) == n + 1 && target_probs.size(2) == vocab,
                    "target_probs must have shape [", rows, ", ", n + 1, ", ", vocab, "], got ", target_probs.sizes());
  check_row_tensor(seed, "seed", draft_probs, at::kLong);
  check_row_tensor(offset, "offset", draft_probs, at::kLong);
  const c10::cuda::CUDAGuard guard(draft_probs.device());
  const auto long_options = draft_probs.options().dtype(at::kLong);
  Tensor output = at::empty({rows, n + 1}, long_options);
  Tensor accepted = at::empty({rows}, long_options);
  Tensor emitted = at::empty({rows}, long_options);
  if (rows == 0) return {output, accepted, emitted};
  Tensor ws = workspace(cuda::chain_speculative_sampling_workspace_bytes(rows, vocab), draft_probs);
  const cuda::SpecArgs args{draft_probs.data_ptr<float>(), draft_token_ids.data_ptr<int64_t>(),
                            target_probs.data_ptr<float>(), rows, n, vocab, seed.data_ptr<int64_t>(),
                            offset.data_ptr<int64_t>(), output.data_ptr<int64_t>(), accepted.data_ptr<int64_t>(),
                            emitted.data_ptr<int64_t>()};
  check_launch(cuda::chain_speculative_sampling(args, ws.data_ptr(), c10::cuda::getCurrentCUDAStream()),
               "chain_speculative_sampling");
  return {output, accepted, emitted};
}

}  // namespace
}  // namespace cuda_glue
}  // namespace fastsample

TORCH_LIBRARY_IMPL(fastsample, CUDA, m) {
  m.impl("chain_speculative_sampling", &fastsample::cuda_glue::chain_speculative_sampling_cuda);
}
