// The inputs both CPU stack ops take (sample_stack, stack_processed_logits): logits, the allowed-token mask,
// the bias and history id lists and the penalties, checked once here for both (ValueError for shapes and
// values, TypeError for dtypes, as the public API raises them).
#pragma once
#include <optional>

#include "common.h"
#include "stack_row.h"

namespace fastsample::cpu::stack {

struct StackInputs {
  at::Tensor logits;  // [B, V], contiguous
  int64_t batch = 0, vocab = 0, words = 0;  // words: ceil(V / 32), the mask words of a row
  at::Tensor mask, bias_ids, bias_values, prompt_ids, output_ids;  // contiguous, or undefined when not given
  RowArg<float> repetition, frequency, presence;

  // Row b's mask words (null: every token allowed), id lists and penalties.
  const uint32_t* mask_row(int64_t b) const;
  IdList bias(int64_t b) const { return list(bias_ids, bias_values, b); }
  IdList prompt(int64_t b) const { return list(prompt_ids, at::Tensor(), b); }
  IdList output(int64_t b) const { return list(output_ids, at::Tensor(), b); }
  Penalties penalties(int64_t b) const { return {repetition[b], frequency[b], presence[b]}; }

 private:
  static IdList list(const at::Tensor& ids, const at::Tensor& values, int64_t b);
};

// Scalar penalties are rounded to float32 like their tensor form (and the reference), so both forms agree.
StackInputs stack_inputs(const at::Tensor& logits, const std::optional<at::Tensor>& allowed_mask,
                         const std::optional<at::Tensor>& bias_ids, const std::optional<at::Tensor>& bias_values,
                         const std::optional<at::Tensor>& prompt_ids, const std::optional<at::Tensor>& output_ids,
                         const std::optional<at::Tensor>& repetition_arr, double repetition_val,
                         const std::optional<at::Tensor>& frequency_arr, double frequency_val,
                         const std::optional<at::Tensor>& presence_arr, double presence_val);

}  // namespace fastsample::cpu::stack
