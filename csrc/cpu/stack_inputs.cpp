// Argument checks shared by the CPU stack ops (stack_inputs.h).
#include "stack_inputs.h"

namespace fastsample::cpu::stack {
namespace {

at::Tensor id_rows(const std::optional<at::Tensor>& t, int64_t batch, const char* name) {
  if (!t.has_value()) return at::Tensor();
  TORCH_CHECK_VALUE(t->dim() == 2 && t->size(0) == batch, name, " must have shape [", batch, ", L], got ",
                    t->sizes());
  TORCH_CHECK_TYPE(t->scalar_type() == at::kLong, name, " must be int64, got ", t->scalar_type());
  return t->contiguous();
}

}  // namespace

const uint32_t* StackInputs::mask_row(int64_t b) const {
  return mask.defined() ? reinterpret_cast<const uint32_t*>(mask.const_data_ptr<int32_t>()) + b * words : nullptr;
}

IdList StackInputs::list(const at::Tensor& ids, const at::Tensor& values, int64_t b) {
  if (!ids.defined()) return {};
  const int64_t len = ids.size(1);
  return {ids.const_data_ptr<int64_t>() + b * len, values.defined() ? values.const_data_ptr<float>() + b * len : nullptr,
          len};
}

StackInputs stack_inputs(const at::Tensor& logits, const std::optional<at::Tensor>& allowed_mask,
                         const std::optional<at::Tensor>& bias_ids, const std::optional<at::Tensor>& bias_values,
                         const std::optional<at::Tensor>& prompt_ids, const std::optional<at::Tensor>& output_ids,
                         const std::optional<at::Tensor>& repetition_arr, double repetition_val,
                         const std::optional<at::Tensor>& frequency_arr, double frequency_val,
                         const std::optional<at::Tensor>& presence_arr, double presence_val) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "logits must be 2-D [batch, vocab], got shape ", logits.sizes());
  const auto dtype = logits.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
                   "logits must be float32, float16 or bfloat16, got ", dtype);
  StackInputs in;
  in.logits = logits.contiguous();
  in.batch = logits.size(0);
  in.vocab = logits.size(1);
  in.words = (in.vocab + 31) / 32;
  if (allowed_mask.has_value()) {
    TORCH_CHECK_TYPE(allowed_mask->scalar_type() == at::kInt, "allowed_mask must be int32, got ",
                     allowed_mask->scalar_type());
    TORCH_CHECK_VALUE(allowed_mask->dim() == 2 && allowed_mask->size(0) == in.batch && allowed_mask->size(1) >= in.words,
                      "allowed_mask must have shape [", in.batch, ", ", in.words, "], got ", allowed_mask->sizes());
    in.mask = allowed_mask->narrow(1, 0, in.words).contiguous();
  }
  in.bias_ids = id_rows(bias_ids, in.batch, "bias_ids");
  TORCH_CHECK_VALUE(bias_ids.has_value() == bias_values.has_value(), "bias_ids and bias_values go together");
  if (bias_values.has_value()) {
    TORCH_CHECK_VALUE(bias_values->sizes() == in.bias_ids.sizes(), "bias_values must have bias_ids' shape ",
                      in.bias_ids.sizes(), ", got ", bias_values->sizes());
    in.bias_values = bias_values->to(at::kFloat).contiguous();
  }
  in.prompt_ids = id_rows(prompt_ids, in.batch, "prompt_ids");
  in.output_ids = id_rows(output_ids, in.batch, "output_ids");
  in.repetition = row_arg<float>(repetition_arr, static_cast<float>(repetition_val), in.batch, "repetition");
  in.frequency = row_arg<float>(frequency_arr, static_cast<float>(frequency_val), in.batch, "frequency");
  in.presence = row_arg<float>(presence_arr, static_cast<float>(presence_val), in.batch, "presence");
  return in;
}

}  // namespace fastsample::cpu::stack
