// CUDA glue of fastsample::tree_speculative_sampling (kernel: include/fastsample/cuda/speculative_tree.cuh).
// Shapes and dtypes are checked here; parents and ids are checked per row in the kernel (a malformed row is all
// -1, an id outside [0, V) is rejected), which never indexes with them before that check. No host reads.
#include "fastsample/cuda/speculative_tree.cuh"
#include "glue.h"

#include <tuple>

namespace fastsample {
namespace cuda_glue {
namespace {

std::tuple<Tensor, Tensor, Tensor> tree_speculative_sampling_cuda(const Tensor& ids_in, const Tensor& parents_in,
                                                                  const Tensor& target_in, const OptTensor& draft_in,
                                                                  const Tensor& seed, const Tensor& offset) {
  check_tensor(target_in, "target_probs", 3);
  TORCH_CHECK_VALUE(ids_in.dim() == 2, "draft_token_ids must be [batch, n], got ", ids_in.sizes());
  const int64_t rows = ids_in.size(0), n = ids_in.size(1), vocab = target_in.size(2);
  TORCH_CHECK_VALUE(parents_in.sizes() == ids_in.sizes(), "parents must be [", rows, ", ", n, "], got ",
                    parents_in.sizes());
  TORCH_CHECK_VALUE(target_in.size(0) == rows && target_in.size(1) == n + 1 && vocab >= 1, "target_probs must be [",
                    rows, ", ", n + 1, ", V >= 1], got ", target_in.sizes());
  const bool sampled = draft_in.has_value();
  for (const auto& [t, name] : {std::pair{&target_in, "target_probs"},
                                std::pair{sampled ? &*draft_in : &target_in, "draft_probs"}}) {
    const auto dtype = t->scalar_type();
    TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, name,
                     " must have dtype float32, float16 or bfloat16, got ", dtype);
  }
  if (sampled) {
    check_tensor(*draft_in, "draft_probs", 3);
    check_same_device(*draft_in, "draft_probs", target_in);
    TORCH_CHECK_VALUE(draft_in->sizes() == at::IntArrayRef({rows, n, vocab}), "draft_probs must be [", rows, ", ", n,
                      ", ", vocab, "], got ", draft_in->sizes());
  }
  for (const auto& [t, name] : {std::pair{&ids_in, "draft_token_ids"}, std::pair{&parents_in, "parents"}}) {
    TORCH_CHECK_VALUE(t->is_cuda(), name, " must be a CUDA tensor, got a tensor on ", t->device());
    check_same_device(*t, name, target_in);
    TORCH_CHECK_TYPE(t->scalar_type() == at::kLong || t->scalar_type() == at::kInt, name,
                     " must be int32 or int64, got ", t->scalar_type());
  }
  check_row_tensor(seed, "seed", ids_in, at::kLong);
  check_row_tensor(offset, "offset", ids_in, at::kLong);
  check_same_device(seed, "seed", target_in);
  const c10::cuda::CUDAGuard guard(target_in.device());
  const Tensor ids = ids_in.to(at::kLong).contiguous(), parents = parents_in.to(at::kLong).contiguous();
  // One element type for both probability tensors: mixed dtypes are widened to float32.
  const bool mixed = sampled && draft_in->scalar_type() != target_in.scalar_type();
  const Tensor target = mixed ? target_in.to(at::kFloat) : target_in;
  const Tensor draft = sampled ? (mixed ? draft_in->to(at::kFloat) : draft_in->contiguous()) : Tensor();
  const auto long_options = target.options().dtype(at::kLong);
  // The kernel writes every entry of the three outputs (the -1 padding included).
  Tensor output = at::empty({rows, n + 1}, long_options);
  Tensor nodes = at::empty({rows, n}, long_options);
  Tensor emitted = at::empty({rows}, long_options);
  if (rows == 0) return {output, nodes, emitted};
  Tensor ws = workspace(cuda::tree_speculative_sampling_workspace_bytes(rows, n, vocab), target);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_scores(target, [&](auto tag) {
    using T = decltype(tag);
    const cuda::TreeArgs<T> args{ids.data_ptr<int64_t>(), parents.data_ptr<int64_t>(), data_as<T>(target),
                                 sampled ? data_as<T>(draft) : nullptr, rows, n, vocab, seed.data_ptr<int64_t>(),
                                 offset.data_ptr<int64_t>(), output.data_ptr<int64_t>(), nodes.data_ptr<int64_t>(),
                                 emitted.data_ptr<int64_t>()};
    check_launch(cuda::tree_speculative_sampling<T>(args, ws.data_ptr(), stream), "tree_speculative_sampling");
  });
  return {output, nodes, emitted};
}

}  // namespace
}  // namespace cuda_glue
}  // namespace fastsample

TORCH_LIBRARY_IMPL(fastsample, CUDA, m) {
  m.impl("tree_speculative_sampling", &fastsample::cuda_glue::tree_speculative_sampling_cuda);
}
