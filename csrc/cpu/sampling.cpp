// CPU `sample` and `renorm_probs`: plan each row (row_plan.h), then draw one token or write the row.
#include <cmath>
#include <limits>

#include "common.h"
#include "fastsample/philox.h"
#include "row_plan.h"

namespace fastsample::cpu {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Drawn {
  int64_t token;
  double logprob;
};

// The token-th +inf of the row, where token = floor(u * count): the inverse CDF of equal weights.
int64_t nth_equal(const float* x, int64_t n, float value, int64_t nth) {
  for (int64_t i = 0; i < n; ++i) {
    if (x[i] == value && nth-- == 0) return i;
  }
  return -1;
}

// Inverse CDF in ascending id order over the kept tokens (DESIGN 4): the smallest kept i whose prefix
// weight exceeds u * W. Float rounding can leave the walk short of the target: the last kept token then.
int64_t dense_crossing(const float* x, int64_t n, const RowPlan& plan, double target, int nseg) {
  double cum = 0.0;
  int64_t last = -1;
  if (nseg == 1) {
    const int64_t i = find_crossing(x, n, plan.wt, plan.theta, target, cum, last);
    return i >= 0 ? i : last;
  }
  std::vector<double> sums(nseg);
  for_segments(nseg, [&](int s) {
    const int64_t lo = segment_begin(n, nseg, s), hi = segment_begin(n, nseg, s + 1);
    sums[s] = kept_weight_sum(x + lo, hi - lo, plan.wt, plan.theta);
  });
  for (int s = 0; s < nseg; ++s) {  // the segment holding the step, or the last one with weight
    if (sums[s] <= 0.0) continue;
    const int64_t lo = segment_begin(n, nseg, s), hi = segment_begin(n, nseg, s + 1);
    if (cum + sums[s] > target || s == nseg - 1) {
      double c = cum;
      const int64_t i = find_crossing(x + lo, hi - lo, plan.wt, plan.theta, target, c, last);
      if (i >= 0) return lo + i;
      if (last >= 0) last += lo;
    }
    cum += sums[s];
  }
  if (last < 0) {  // the step fell past a segment's end by rounding: take the last kept token of all
    for (int s = nseg - 1; s >= 0 && last < 0; --s) {
      if (sums[s] <= 0.0) continue;
      const int64_t lo = segment_begin(n, nseg, s), hi = segment_begin(n, nseg, s + 1);
      double c = 0.0;
      find_crossing(x + lo, hi - lo, plan.wt, plan.theta, std::numeric_limits<double>::infinity(), c, last);
      last += lo;
    }
  }
  return last;
}

// The same walk from the plan's block sums: only the block holding the step is scanned. Falls back to
// the dense walk if rounding left that block without a kept token of positive weight.
int64_t block_crossing(const float* x, int64_t n, const RowPlan& plan, double target, int nseg) {
  double cum = 0.0;
  int64_t block = -1;
  for (size_t j = 0; j < plan.blocks.size(); ++j) {
    if (plan.blocks[j] <= 0.0) continue;
    block = static_cast<int64_t>(j);
    if (cum + plan.blocks[j] > target) break;
    cum += plan.blocks[j];
  }
  if (block >= 0) {
    const int64_t lo = block * kPassBlock, len = std::min(kPassBlock, n - lo);
    int64_t last = -1;
    const int64_t i = find_crossing(x + lo, len, plan.wt, plan.theta, target, cum, last);
    if (i >= 0) return lo + i;
    if (last >= 0) return lo + last;
  }
  return dense_crossing(x, n, plan, target, nseg);
}

Drawn draw(const RowPlan& plan, const float* x, int64_t n, int64_t seed, int64_t offset, int nseg) {
  switch (plan.kind) {
    case RowPlan::kInvalid:
      return {-1, kNaN};
    case RowPlan::kGreedy:
      return {plan.first, -std::log(static_cast<double>(plan.count))};
    case RowPlan::kUniformInf: {
      const double u = philox_uniform(seed, offset, 0);
      const auto nth = static_cast<int64_t>(u * static_cast<double>(plan.count));
      return {nth_equal(x, n, std::numeric_limits<float>::infinity(), nth),
              -std::log(static_cast<double>(plan.count))};
    }
    case RowPlan::kThreshold:
      break;
  }
  const double target = philox_uniform(seed, offset, 0) * plan.mass;
  int64_t token = -1;
  if (plan.listed) {
    double cum = 0.0;
    for (const Candidate& c : plan.kept) {
      const double w = token_weight(plan, c.x);
      if (w <= 0.0) continue;
      token = c.index;  // ends on the last kept token if rounding never crosses
      cum += w;
      if (cum > target) break;
    }
  } else if (!plan.blocks.empty()) {
    token = block_crossing(x, n, plan, target, nseg);
  } else {
    token = dense_crossing(x, n, plan, target, nseg);
  }
  // The token's weight as the mass was summed: double weights for listed tokens, the vectorised float
  // weights otherwise (mixing the two would put rounding into log(1) on one-token rows).
  const double w = plan.listed ? token_weight(plan, x[token]) : weight_of(plan.wt, x[token]);
  return {token, std::log(w / plan.mass)};
}

std::tuple<at::Tensor, at::Tensor> sample(const at::Tensor& x_in, bool is_logits,
                                          const std::optional<at::Tensor>& temperature_arr, double temperature_val,
                                          const std::optional<at::Tensor>& top_k_arr, int64_t top_k_val,
                                          const std::optional<at::Tensor>& top_p_arr, double top_p_val,
                                          const std::optional<at::Tensor>& min_p_arr, double min_p_val,
                                          const at::Tensor& seed_in, const at::Tensor& offset_in,
                                          bool return_logprobs) {
  check_rows(x_in, is_logits ? "logits" : "probs", is_logits);
  const int64_t batch = x_in.size(0), vocab = x_in.size(1);
  const auto temperature = row_arg<float>(temperature_arr, temperature_val, batch, "temperature");
  const auto top_k = row_arg<int64_t>(top_k_arr, top_k_val, batch, "top_k");
  const auto top_p = row_arg<float>(top_p_arr, top_p_val, batch, "top_p");
  const auto min_p = row_arg<float>(min_p_arr, min_p_val, batch, "min_p");
  const at::Tensor seed = seed_rows(seed_in, batch, "seed"), offset = seed_rows(offset_in, batch, "offset");
  at::Tensor tokens = at::empty({batch}, x_in.options().dtype(at::kLong));
  at::Tensor logprobs = at::empty({return_logprobs ? batch : 0}, x_in.options().dtype(at::kFloat));
  const int64_t *seeds = seed.data_ptr<int64_t>(), *offsets = offset.data_ptr<int64_t>();
  int64_t* out = tokens.data_ptr<int64_t>();
  float* lp = logprobs.data_ptr<float>();
  const int nseg = segments_for(batch, vocab);

  for_float_blocks(x_in, [&](const at::Tensor& rows, int64_t first) {
    const float* xp = rows.data_ptr<float>();
    for_rows(rows.size(0), nseg, [&](int64_t r) {
      const int64_t b = first + r;
      const RowParams params{is_logits, is_logits ? static_cast<float>(temperature[b]) : 1.0f,
                             static_cast<int64_t>(top_k[b]), top_p[b], min_p[b]};
      const float* xb = xp + r * vocab;
      const RowPlan plan = plan_row(xb, vocab, params, nseg, return_logprobs);
      const Drawn d = draw(plan, xb, vocab, seeds[b], offsets[b], nseg);
      out[b] = d.token;
      if (return_logprobs) lp[b] = static_cast<float>(d.logprob);
    });
  });
  return {tokens, logprobs};
}

at::Tensor renorm_probs(const at::Tensor& probs_in, const std::optional<at::Tensor>& top_k_arr, int64_t top_k_val,
                        const std::optional<at::Tensor>& top_p_arr, double top_p_val,
                        const std::optional<at::Tensor>& min_p_arr, double min_p_val) {
  const at::Tensor probs = float_rows(probs_in, "probs", false);
  const int64_t batch = probs.size(0), vocab = probs.size(1);
  const auto top_k = row_arg<int64_t>(top_k_arr, top_k_val, batch, "top_k");
  const auto top_p = row_arg<float>(top_p_arr, top_p_val, batch, "top_p");
  const auto min_p = row_arg<float>(min_p_arr, min_p_val, batch, "min_p");
  at::Tensor result = at::empty_like(probs);
  const float* xp = probs.data_ptr<float>();
  float* outp = result.data_ptr<float>();
  const int nseg = segments_for(batch, vocab);

  auto row = [&](int64_t b) {
    const RowParams params{false, 1.0f, static_cast<int64_t>(top_k[b]), top_p[b], min_p[b]};
    const float* xb = xp + b * vocab;
    float* ob = outp + b * vocab;
    const RowPlan plan = plan_row(xb, vocab, params, nseg, false);
    if (plan.kind != RowPlan::kThreshold || plan.listed) {
      std::fill(ob, ob + vocab, 0.0f);
      for (const Candidate& c : plan.kept) ob[c.index] = static_cast<float>(c.x / plan.mass);
      return;
    }
    const auto scale = static_cast<float>(1.0 / plan.mass);
    for_segments(nseg, [&](int s) {
      const int64_t lo = segment_begin(vocab, nseg, s), hi = segment_begin(vocab, nseg, s + 1);
      write_kept_weights(xb + lo, hi - lo, plan.wt, plan.theta, scale, ob + lo);
    });
  };
  for_rows(batch, nseg, row);
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsample, CPU, m) {
  m.impl("sample", &sample);
  m.impl("renorm_probs", &renorm_probs);
}

}  // namespace fastsample::cpu
