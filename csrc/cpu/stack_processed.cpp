// CPU kernel of fastsample::stack_processed_logits: steps 1-3 of the stack sampler written out as processed
// float32 logits [B, V] and the rows that are invalid whatever follows. The CPU stack sampler itself never
// builds this copy (stack_sampler.cpp); this op exists so that the op the CUDA route composes
// (fastsample/stack/cuda.py) runs, and is tested against the oracle, on every device.
//
// Exactness invariant: the same resolve_overrides / override_logit as the fused CPU kernel (stack_row.h),
// so a processed logit is the float32 rounding of docs/ops.md's float64 formula, bias values summed in list
// order; untouched tokens are x, masked tokens -inf.

#include "stack_inputs.h"

namespace fastsample::cpu::stack {
namespace {

template <class T>
void process_row(const T* x, const uint32_t* mask, int64_t vocab, const IdList& bias, const IdList& prompt,
                 const IdList& output, const Penalties& pen, float* y, bool& bad) {
  thread_local ResolveScratch scratch;
  thread_local std::vector<Override> overrides;
  bool nan = false;
  for (int64_t i = 0; i < vocab; ++i) {
    const float v = static_cast<float>(x[i]);
    nan = nan || v != v;
    y[i] = !mask || ((mask[i / 32] >> (i % 32)) & 1u) ? v : -kInf;
  }
  const bool ids_ok = resolve_overrides(bias, prompt, output, vocab, scratch, overrides);
  bad = nan || !pen.valid() || !ids_ok;
  if (!ids_ok) return;
  for (const Override& o : overrides) {
    if (!mask || ((mask[o.id / 32] >> (o.id % 32)) & 1u)) y[o.id] = override_logit(o, static_cast<float>(x[o.id]), pen);
  }
}

std::tuple<at::Tensor, at::Tensor> stack_processed_logits(
    const at::Tensor& logits, const std::optional<at::Tensor>& allowed_mask, const std::optional<at::Tensor>& bias_ids,
    const std::optional<at::Tensor>& bias_values, const std::optional<at::Tensor>& prompt_ids,
    const std::optional<at::Tensor>& output_ids, const std::optional<at::Tensor>& repetition_arr,
    double repetition_val, const std::optional<at::Tensor>& frequency_arr, double frequency_val,
    const std::optional<at::Tensor>& presence_arr, double presence_val) {
  const StackInputs in = stack_inputs(logits, allowed_mask, bias_ids, bias_values, prompt_ids, output_ids,
                                      repetition_arr, repetition_val, frequency_arr, frequency_val, presence_arr,
                                      presence_val);
  at::Tensor out = at::empty({in.batch, in.vocab}, in.logits.options().dtype(at::kFloat));
  at::Tensor bad = at::empty({in.batch}, in.logits.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.logits.scalar_type(), "stack_processed_logits", [&] {
    const scalar_t* xp = in.logits.const_data_ptr<scalar_t>();
    for_rows(in.batch, 1, [&](int64_t b) {
      bool row_bad = false;
      process_row<scalar_t>(xp + b * in.vocab, in.mask_row(b), in.vocab, in.bias(b), in.prompt(b), in.output(b),
                            in.penalties(b), out.data_ptr<float>() + b * in.vocab, row_bad);
      bad.data_ptr<bool>()[b] = row_bad;
    });
  });
  return {out, bad};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsample, CPU, m) { m.impl("stack_processed_logits", &stack_processed_logits); }

}  // namespace fastsample::cpu::stack
