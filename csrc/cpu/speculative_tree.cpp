// CPU `tree_speculative_sampling` (docs/ops.md): one walk per row over a token tree, each child tested in index
// order against the residual at its parent with its own Philox draw (j = node index), then one token drawn from
// the residual where the walk stops (j = N).
#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <vector>

#include "common.h"
#include "fastsample/philox.h"
#include "speculative_rows.h"

namespace fastsample::cpu {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// An inverse-CDF draw from float64 weights (a materialised residual): -1 if one is NaN, negative or infinite,
// or they sum to 0. Block sums first, then the one block holding the step, as sample_final walks.
int64_t sample_weights(const double* w, int64_t vocab, double u) {
  constexpr int64_t kWalkBlock = 64;
  int bad = 0;
  double total = 0.0;
#pragma omp simd reduction(| : bad) reduction(+ : total)
  for (int64_t v = 0; v < vocab; ++v) {
    bad |= (w[v] != w[v]) | (w[v] < 0.0) | (w[v] > DBL_MAX);
    total += w[v];
  }
  if (bad || !(total > 0.0)) return -1;
  const double target = u * total;
  auto block_end = [&](int64_t j) { return std::min((j + 1) * kWalkBlock, vocab); };
  auto block_sum = [&](int64_t j) {
    double s = 0.0;
    for (int64_t v = j * kWalkBlock; v < block_end(j); ++v) s += w[v];
    return s;
  };
  double cum = 0.0;
  int64_t last_block = -1, last = -1;
  int64_t block = cdf_step(0, (vocab + kWalkBlock - 1) / kWalkBlock, block_sum, target, cum, last_block);
  if (block < 0) block = last_block;
  const int64_t v = cdf_step(block * kWalkBlock, block_end(block), [&](int64_t i) { return w[i]; }, target, cum, last);
  return v >= 0 ? v : last;
}

// The residual r = w / mass at the walk's current node. It starts as the target row p itself (`fresh`, mass 1:
// the rows are taken as distributions, as the chain op does) and is copied to float64 only on a rejection,
// so a walk that accepts reads one entry per node and no row.
struct Residual {
  const ProbRows& target;
  int64_t vocab, row = 0;  // target row of the current node
  bool fresh = true;
  double mass = 1.0;
  std::vector<double> w;

  Residual(const ProbRows& target, int64_t vocab) : target(target), vocab(vocab) {}

  void reset(int64_t target_row) { row = target_row, fresh = true, mass = 1.0; }
  double at(int64_t t) const { return fresh ? target.value(row, t) : w[t]; }
  void materialise() {
    if (!fresh) return;
    w.resize(vocab);
    std::unique_ptr<float[]> buf;
    const float* p = target.row(row, buf);
    for (int64_t v = 0; v < vocab; ++v) w[v] = p[v];
    fresh = false;
  }
  // Deterministic child t rejected: r <- norm(r without t).
  void remove(int64_t t) {
    materialise();
    mass -= w[t];
    w[t] = 0.0;
  }
  // Sampled child with draft row q rejected: r <- norm(max(r - q, 0)); a residual of zero mass leaves r as it
  // was; a NaN, negative or infinite entry in r or q makes r all NaN (every later test fails, the draw is -1).
  void subtract(const float* q) {
    materialise();
    int bad = 0;
    double total = 0.0;
#pragma omp simd reduction(| : bad) reduction(+ : total)
    for (int64_t v = 0; v < vocab; ++v) {
      const double qv = q[v];
      bad |= (w[v] != w[v]) | (w[v] < 0.0) | (w[v] > DBL_MAX) | (qv != qv) | (qv < 0.0) | (qv > DBL_MAX);
      total += std::max(w[v] / mass - qv, 0.0);
    }
    if (bad) {
      std::fill(w.begin(), w.end(), kNaN);
    } else if (total > 0.0) {
      for (int64_t v = 0; v < vocab; ++v) w[v] = std::max(w[v] / mass - q[v], 0.0);
      mass = total;
    }
  }
  int64_t draw(double u) const {
    if (!fresh) return sample_weights(w.data(), vocab, u);
    std::unique_ptr<float[]> buf;
    return sample_final(target.row(row, buf), nullptr, vocab, u);
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> tree_speculative_sampling(
    const at::Tensor& ids_in, const at::Tensor& parents_in, const at::Tensor& target_in,
    const std::optional<at::Tensor>& draft_in, const at::Tensor& seed_in, const at::Tensor& offset_in) {
  TORCH_CHECK_VALUE(ids_in.dim() == 2, "draft_token_ids must be [batch, n], got ", ids_in.sizes());
  const int64_t batch = ids_in.size(0), n = ids_in.size(1);
  TORCH_CHECK_VALUE(parents_in.sizes() == ids_in.sizes(), "parents must be [", batch, ", ", n, "], got ",
                    parents_in.sizes());
  TORCH_CHECK_VALUE(target_in.dim() == 3 && target_in.size(0) == batch && target_in.size(1) == n + 1,
                    "target_probs must be [", batch, ", ", n + 1, ", vocab], got ", target_in.sizes());
  const int64_t vocab = target_in.size(2);
  const bool sampled = draft_in.has_value();
  for (const at::Tensor* t : {&target_in, sampled ? &*draft_in : &target_in}) {
    const auto dtype = t->scalar_type();
    TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
                     "probabilities must be float32, float16 or bfloat16, got ", dtype);
  }
  if (sampled) {
    TORCH_CHECK_VALUE(draft_in->sizes() == at::IntArrayRef({batch, n, vocab}), "draft_probs must be [", batch, ", ",
                      n, ", ", vocab, "], got ", draft_in->sizes());
  }
  const at::Tensor ids = ids_in.to(at::kLong).contiguous(), parents = parents_in.to(at::kLong).contiguous();
  const at::Tensor p = target_in.contiguous(), q = sampled ? draft_in->contiguous() : p;
  const at::Tensor seed = seed_rows(seed_in, batch, "seed"), offset = seed_rows(offset_in, batch, "offset");
  at::Tensor output = at::full({batch, n + 1}, -1, ids.options());
  at::Tensor nodes = at::full({batch, n}, -1, ids.options());
  at::Tensor emitted = at::zeros({batch}, ids.options());
  const ProbRows prows(p, vocab), qrows(q, vocab);
  const int64_t *idp = ids.data_ptr<int64_t>(), *parp = parents.data_ptr<int64_t>();
  const int64_t *seeds = seed.data_ptr<int64_t>(), *offsets = offset.data_ptr<int64_t>();
  int64_t *outp = output.data_ptr<int64_t>(), *nodep = nodes.data_ptr<int64_t>(), *emp = emitted.data_ptr<int64_t>();

  for_rows(batch, 1, [&](int64_t b) {
    const int64_t* tok = idp + b * n;
    const int64_t* par = parp + b * n;
    for (int64_t i = 0; i < n; ++i) {
      if (tok[i] != -1 && !(par[i] >= -1 && par[i] < i)) return;  // malformed tree: the row stays all -1
    }
    // One pass in index order meets each node's children in index order while the walk sits at that node
    // (every parent precedes its children): node i is tested iff its parent is the current node.
    Residual r(prows, vocab);
    r.reset(b * (n + 1));
    int64_t cur = -1, depth = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t t = tok[i];
      if (t == -1 || par[i] != cur) continue;
      const bool in_range = t >= 0 && t < vocab;
      bool pass = false;
      if (in_range) {
        const double u = philox_uniform(seeds[b], offsets[b], static_cast<uint32_t>(i));
        const double lhs = sampled ? u * qrows.value(b * n + i, t) * r.mass : u * r.mass;
        pass = lhs < r.at(t);  // a NaN compares false: rejected
      }
      if (pass) {
        outp[b * (n + 1) + depth] = t;
        nodep[b * n + depth] = i;
        ++depth;
        cur = i;
        r.reset(b * (n + 1) + i + 1);
      } else if (sampled) {
        std::unique_ptr<float[]> buf;
        r.subtract(qrows.row(b * n + i, buf));
      } else if (in_range) {
        r.remove(t);
      }
    }
    outp[b * (n + 1) + depth] = r.draw(philox_uniform(seeds[b], offsets[b], static_cast<uint32_t>(n)));
    emp[b] = depth;
  });
  return {output, nodes, emitted};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsample, CPU, m) { m.impl("tree_speculative_sampling", &tree_speculative_sampling); }

}  // namespace fastsample::cpu
