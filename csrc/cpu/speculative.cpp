// CPU `chain_speculative_sampling` (docs/ops.md): the acceptance test of each draft position with its own
// Philox draw, then one token from the residual max(0, p - q) at the first rejection, or the bonus token.
#include <cmath>
#include <vector>

#include "common.h"
#include "fastsample/philox.h"

namespace fastsample::cpu {
namespace {

// Inverse CDF over weights w (ascending ids) with uniform u; -1 if the weights are not a distribution.
int64_t sample_weights(const std::vector<double>& w, double u) {
  double total = 0.0;
  for (double v : w) {
    if (!(v >= 0.0) || std::isinf(v)) return -1;
    total += v;
  }
  if (!(total > 0.0)) return -1;
  const double target = u * total;
  double cum = 0.0;
  int64_t last = -1;
  for (size_t i = 0; i < w.size(); ++i) {
    if (w[i] <= 0.0) continue;
    last = static_cast<int64_t>(i);
    cum += w[i];
    if (cum > target) break;
  }
  return last;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> chain_speculative_sampling(
    const at::Tensor& draft_probs_in, const at::Tensor& draft_ids_in, const at::Tensor& target_probs_in,
    const at::Tensor& seed_in, const at::Tensor& offset_in) {
  TORCH_CHECK(draft_probs_in.dim() == 3, "draft_probs must be [batch, n, vocab], got ", draft_probs_in.sizes());
  const int64_t batch = draft_probs_in.size(0), n = draft_probs_in.size(1), vocab = draft_probs_in.size(2);
  TORCH_CHECK(draft_probs_in.scalar_type() == at::kFloat, "draft_probs must be float32");
  TORCH_CHECK(target_probs_in.scalar_type() == at::kFloat, "target_probs must be float32");
  TORCH_CHECK(target_probs_in.sizes() == at::IntArrayRef({batch, n + 1, vocab}), "target_probs must be [", batch,
              ", ", n + 1, ", ", vocab, "], got ", target_probs_in.sizes());
  TORCH_CHECK(draft_ids_in.sizes() == at::IntArrayRef({batch, n}), "draft_token_ids must be [", batch, ", ", n,
              "], got ", draft_ids_in.sizes());
  const at::Tensor q = draft_probs_in.contiguous(), p = target_probs_in.contiguous();
  const at::Tensor ids = draft_ids_in.to(at::kLong).contiguous();
  const at::Tensor seed = seed_rows(seed_in, batch, "seed"), offset = seed_rows(offset_in, batch, "offset");
  at::Tensor output = at::full({batch, n + 1}, -1, ids.options());
  at::Tensor accepted = at::zeros({batch}, ids.options()), emitted = at::zeros({batch}, ids.options());
  const float *qp = q.data_ptr<float>(), *pp = p.data_ptr<float>();
  const int64_t *idp = ids.data_ptr<int64_t>(), *seeds = seed.data_ptr<int64_t>(), *offsets = offset.data_ptr<int64_t>();
  int64_t *outp = output.data_ptr<int64_t>(), *accp = accepted.data_ptr<int64_t>(), *emp = emitted.data_ptr<int64_t>();

#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t b = 0; b < batch; ++b) {
    int64_t first_reject = n, passed = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t x = idp[b * n + i];
      bool pass = false;
      if (x >= 0 && x < vocab) {
        const double u = philox_uniform(seeds[b], offsets[b], static_cast<uint32_t>(i));
        const double qx = qp[(b * n + i) * vocab + x], px = pp[(b * (n + 1) + i) * vocab + x];
        pass = u * qx < px;  // NaN compares false: fails
      }
      passed += pass;
      if (!pass && first_reject == n) first_reject = i;
    }
    // The final token uses draw n: residual norm(max(0, p - q)) after a rejection, else the bonus from p_n.
    const float* pe = pp + (b * (n + 1) + first_reject) * vocab;
    std::vector<double> w(pe, pe + vocab);
    if (first_reject < n) {
      const float* qe = qp + (b * n + first_reject) * vocab;
      std::vector<double> residual(vocab);
      bool any = false, bad = false;
      for (int64_t v = 0; v < vocab; ++v) {
        // std::max(0, NaN) is 0, which would hide a NaN: check both rows first
        bad |= !(qe[v] >= 0.0f) || std::isinf(qe[v]) || !(w[v] >= 0.0) || std::isinf(w[v]);
        residual[v] = std::max(0.0, w[v] - static_cast<double>(qe[v]));
        any |= residual[v] > 0.0;
      }
      if (bad) {
        w.assign(vocab, std::nan(""));
      } else if (any) {
        w.swap(residual);
      }
    }
    const double u = philox_uniform(seeds[b], offsets[b], static_cast<uint32_t>(n));
    for (int64_t i = 0; i < first_reject; ++i) outp[b * (n + 1) + i] = idp[b * n + i];
    outp[b * (n + 1) + first_reject] = sample_weights(w, u);
    accp[b] = passed;
    emp[b] = first_reject;
  }
  return {output, accepted, emitted};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsample, CPU, m) { m.impl("chain_speculative_sampling", &chain_speculative_sampling); }

}  // namespace fastsample::cpu
