// CPU kernel of fastsample::stack_processed_logits: steps 1-3 of the stack sampler written out as processed
// float32 logits [B, V] and the rows that are invalid whatever follows. The CPU stack sampler itself never
// builds this copy (stack_sampler.cpp); this op exists so that the op the CUDA route composes
// (fastsample/stack_cuda.py) runs, and is tested against the oracle, on every device.
//
// Exactness invariant: the same resolve_overrides / override_logit as the fused CPU kernel (stack_row.h),
// so a processed logit is the float32 rounding of docs/ops.md's float64 formula, bias values summed in list
// order; untouched tokens are x, masked tokens -inf.
#include <cmath>

#include "common.h"
#include "stack_row.h"

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
  const bool params_ok = pen.repetition > 0 && std::isfinite(pen.repetition) && std::isfinite(pen.frequency) &&
                         std::isfinite(pen.presence);
  const bool ids_ok = resolve_overrides(bias, prompt, output, vocab, scratch, overrides);
  bad = nan || !params_ok || !ids_ok;
  if (!ids_ok) return;
  for (const Override& o : overrides) {
    if (!mask || ((mask[o.id / 32] >> (o.id % 32)) & 1u)) y[o.id] = override_logit(o, static_cast<float>(x[o.id]), pen);
  }
}

// f(b) for every row, rows spread over the OpenMP threads (outside the dtype-dispatch macro, which cannot hold
// a pragma).
template <class F>
void for_each_row(int64_t batch, F&& f) {
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t b = 0; b < batch; ++b) f(b);
}

at::Tensor id_rows(const std::optional<at::Tensor>& t, int64_t batch, const char* name) {
  if (!t.has_value()) return at::Tensor();
  TORCH_CHECK_VALUE(t->dim() == 2 && t->size(0) == batch, name, " must have shape [", batch, ", L], got ",
                    t->sizes());
  TORCH_CHECK_TYPE(t->scalar_type() == at::kLong, name, " must be int64, got ", t->scalar_type());
  return t->contiguous();
}

IdList row_list(const at::Tensor& ids, const at::Tensor& values, int64_t b) {
  if (!ids.defined()) return {};
  const int64_t len = ids.size(1);
  return {ids.data_ptr<int64_t>() + b * len, values.defined() ? values.data_ptr<float>() + b * len : nullptr, len};
}

std::tuple<at::Tensor, at::Tensor> stack_processed_logits(
    const at::Tensor& logits_in, const std::optional<at::Tensor>& allowed_mask,
    const std::optional<at::Tensor>& bias_ids_in, const std::optional<at::Tensor>& bias_values_in,
    const std::optional<at::Tensor>& prompt_ids_in, const std::optional<at::Tensor>& output_ids_in,
    const std::optional<at::Tensor>& repetition_arr, double repetition_val,
    const std::optional<at::Tensor>& frequency_arr, double frequency_val,
    const std::optional<at::Tensor>& presence_arr, double presence_val) {
  TORCH_CHECK_VALUE(logits_in.dim() == 2, "logits must be 2-D [batch, vocab], got shape ", logits_in.sizes());
  const auto dtype = logits_in.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
                   "logits must be float32, float16 or bfloat16, got ", dtype);
  const at::Tensor logits = logits_in.contiguous();
  const int64_t batch = logits.size(0), vocab = logits.size(1), words = (vocab + 31) / 32;
  at::Tensor mask;
  if (allowed_mask.has_value()) {
    TORCH_CHECK_TYPE(allowed_mask->scalar_type() == at::kInt, "allowed_mask must be int32, got ",
                     allowed_mask->scalar_type());
    TORCH_CHECK_VALUE(allowed_mask->dim() == 2 && allowed_mask->size(0) == batch && allowed_mask->size(1) >= words,
                      "allowed_mask must have shape [", batch, ", ", words, "], got ", allowed_mask->sizes());
    mask = allowed_mask->narrow(1, 0, words).contiguous();
  }
  const at::Tensor bias_ids = id_rows(bias_ids_in, batch, "bias_ids");
  TORCH_CHECK_VALUE(bias_ids_in.has_value() == bias_values_in.has_value(), "bias_ids and bias_values go together");
  at::Tensor bias_values;
  if (bias_values_in.has_value()) {
    TORCH_CHECK_VALUE(bias_values_in->sizes() == bias_ids.sizes(), "bias_values must have bias_ids' shape ",
                      bias_ids.sizes(), ", got ", bias_values_in->sizes());
    bias_values = bias_values_in->to(at::kFloat).contiguous();
  }
  const at::Tensor prompt_ids = id_rows(prompt_ids_in, batch, "prompt_ids");
  const at::Tensor output_ids = id_rows(output_ids_in, batch, "output_ids");
  const auto rep = row_arg<float>(repetition_arr, static_cast<float>(repetition_val), batch, "repetition");
  const auto freq = row_arg<float>(frequency_arr, static_cast<float>(frequency_val), batch, "frequency");
  const auto pres = row_arg<float>(presence_arr, static_cast<float>(presence_val), batch, "presence");
  at::Tensor out = at::empty({batch, vocab}, logits.options().dtype(at::kFloat));
  at::Tensor bad = at::empty({batch}, logits.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "stack_processed_logits", [&] {
    const scalar_t* xp = logits.data_ptr<scalar_t>();
    const auto* mp = mask.defined() ? reinterpret_cast<const uint32_t*>(mask.data_ptr<int32_t>()) : nullptr;
    for_each_row(batch, [&](int64_t b) {
      bool row_bad = false;
      process_row<scalar_t>(xp + b * vocab, mp ? mp + b * words : nullptr, vocab, row_list(bias_ids, bias_values, b),
                            row_list(prompt_ids, at::Tensor(), b), row_list(output_ids, at::Tensor(), b),
                            {rep[b], freq[b], pres[b]}, out.data_ptr<float>() + b * vocab, row_bad);
      bad.data_ptr<bool>()[b] = row_bad;
    });
  });
  return {out, bad};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsample, CPU, m) { m.impl("stack_processed_logits", &stack_processed_logits); }

}  // namespace fastsample::cpu::stack
