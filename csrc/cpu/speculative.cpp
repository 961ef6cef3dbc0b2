// CPU `chain_speculative_sampling` (docs/ops.md): the acceptance test of each draft position with its own
// Philox draw, then one token from the residual max(0, p - q) at the first rejection, or the bonus token.
#include <memory>

#include "common.h"
#include "fastsample/philox.h"
#include "speculative_rows.h"

namespace fastsample::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> chain_speculative_sampling(
    const at::Tensor& draft_probs_in, const at::Tensor& draft_ids_in, const at::Tensor& target_probs_in,
    const at::Tensor& seed_in, const at::Tensor& offset_in) {
  TORCH_CHECK(draft_probs_in.dim() == 3, "draft_probs must be [batch, n, vocab], got ", draft_probs_in.sizes());
  const int64_t batch = draft_probs_in.size(0), n = draft_probs_in.size(1), vocab = draft_probs_in.size(2);
  for (const auto& [t, name] : {std::pair{&draft_probs_in, "draft_probs"}, std::pair{&target_probs_in, "target_probs"}}) {
    const auto dtype = t->scalar_type();
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, name,
                " must be float32, float16 or bfloat16, got ", dtype);
  }
  TORCH_CHECK(target_probs_in.sizes() == at::IntArrayRef({batch, n + 1, vocab}), "target_probs must be [", batch,
              ", ", n + 1, ", ", vocab, "], got ", target_probs_in.sizes());
  TORCH_CHECK(draft_ids_in.sizes() == at::IntArrayRef({batch, n}), "draft_token_ids must be [", batch, ", ", n,
              "], got ", draft_ids_in.sizes());
  // Read in their own dtype (the math is float32): the acceptance tests read one entry per position, and only
  // the final token's rows are widened (float16/bfloat16), never a float32 copy of the inputs.
  const at::Tensor q = draft_probs_in.contiguous(), p = target_probs_in.contiguous();
  const at::Tensor ids = draft_ids_in.to(at::kLong).contiguous();
  const at::Tensor seed = seed_rows(seed_in, batch, "seed"), offset = seed_rows(offset_in, batch, "offset");
  at::Tensor output = at::full({batch, n + 1}, -1, ids.options());
  at::Tensor accepted = at::zeros({batch}, ids.options()), emitted = at::zeros({batch}, ids.options());
  const ProbRows qrows(q, vocab), prows(p, vocab);
  const int64_t *idp = ids.data_ptr<int64_t>(), *seeds = seed.data_ptr<int64_t>(), *offsets = offset.data_ptr<int64_t>();
  int64_t *outp = output.data_ptr<int64_t>(), *accp = accepted.data_ptr<int64_t>(), *emp = emitted.data_ptr<int64_t>();

  for_rows(batch, 1, [&](int64_t b) {
    int64_t first_reject = n, passed = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t x = idp[b * n + i];
      bool pass = false;
      if (x >= 0 && x < vocab) {
        const double u = philox_uniform(seeds[b], offsets[b], static_cast<uint32_t>(i));
        const double qx = qrows.value(b * n + i, x), px = prows.value(b * (n + 1) + i, x);
        pass = u * qx < px;  // NaN compares false: fails
      }
      passed += pass;
      if (!pass && first_reject == n) first_reject = i;
    }
    // The final token uses draw n: residual norm(max(0, p - q)) after a rejection, else the bonus from p_n.
    std::unique_ptr<float[]> p_buf, q_buf;  // the widened rows of float16/bfloat16 input
    const float* pe = prows.row(b * (n + 1) + first_reject, p_buf);
    const float* qe = first_reject < n ? qrows.row(b * n + first_reject, q_buf) : nullptr;
    const double u = philox_uniform(seeds[b], offsets[b], static_cast<uint32_t>(n));
    for (int64_t i = 0; i < first_reject; ++i) outp[b * (n + 1) + i] = idp[b * n + i];
    outp[b * (n + 1) + first_reject] = sample_final(pe, qe, vocab, u);
    accp[b] = passed;
    emp[b] = first_reject;
  });
  return {output, accepted, emitted};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsample, CPU, m) { m.impl("chain_speculative_sampling", &chain_speculative_sampling); }

}  // namespace fastsample::cpu
