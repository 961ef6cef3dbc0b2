// CPU `sample` and `renorm_probs`: plan each row (row_plan.h), then draw one token or write the row.
#include <cmath>
#include <limits>

#include "common.h"
#include "fastsample/philox.h"
#include "inverse_cdf.h"
#include "row_plan.h"

namespace fastsample::cpu {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kNoTarget = std::numeric_limits<double>::infinity();  // a walk that never crosses

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

// Inverse CDF in ascending id order over the kept tokens (docs/design.md section 4): the smallest kept i whose prefix
// weight exceeds u * W. Float rounding can leave the walk short of the target: the last kept token then.
// Split rows: the segments' kept sums first, then the walk of the segment holding the step.
int64_t dense_crossing(const float* x, int64_t n, const RowPlan& plan, double target, int nseg) {
  double cum = 0.0;
  int64_t last = -1;
  if (nseg == 1) {
    const int64_t i = find_crossing(x, n, plan.wt, plan.theta, target, cum, last);
    return i >= 0 ? i : last;
  }
  std::vector<double> sums(nseg);
  for_segments(n, nseg, [&](int s, int64_t lo, int64_t hi) {
    sums[s] = kept_weight_sum(x + lo, hi - lo, plan.wt, plan.theta);
  });
  // The walk of segment s from cum: the token, or -1 with `last` at its last kept token (if any).
  auto crossing_in = [&](int64_t s, double target_s) {
    const int64_t lo = segment_begin(n, nseg, s), hi = segment_begin(n, nseg, s + 1);
    double c = cum;
    const int64_t i = find_crossing(x + lo, hi - lo, plan.wt, plan.theta, target_s, c, last);
    if (last >= 0) last += lo;
    return i >= 0 ? lo + i : -1;
  };
  // Each segment whose sum crosses is walked (rounding may leave one short: then the next), and the last
  // one always.
  int64_t unused = -1;
  auto sum_of = [&](int64_t s) { return sums[s]; };
  for (int64_t s = cdf_step(0, nseg - 1, sum_of, target, cum, unused); s >= 0;
       s = cdf_step(s + 1, nseg - 1, sum_of, target, cum, unused)) {
    const int64_t i = crossing_in(s, target);
    if (i >= 0) return i;
    cum += sums[s];
  }
  if (sums[nseg - 1] > 0.0) {
    const int64_t i = crossing_in(nseg - 1, target);
    if (i >= 0) return i;
  }
  // The step fell past a segment's end by rounding: the last kept token of all.
  for (int s = nseg - 1; s >= 0 && last < 0; --s) {
    if (sums[s] > 0.0) crossing_in(s, kNoTarget);
  }
  return last;
}

// The same walk from the plan's block sums: only the block holding the step is scanned. Falls back to
// the dense walk if rounding left that block without a kept token of positive weight.
int64_t block_crossing(const float* x, int64_t n, const RowPlan& plan, double target, int nseg) {
  double cum = 0.0;
  int64_t last_block = -1;
  const auto nblocks = static_cast<int64_t>(plan.blocks.size());
  int64_t block = cdf_step(0, nblocks, [&](int64_t j) { return plan.blocks[j]; }, target, cum, last_block);
  if (block < 0) block = last_block;
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
    int64_t last = -1;
    const auto count = static_cast<int64_t>(plan.kept.size());
    const int64_t i = cdf_step(0, count, [&](int64_t j) { return token_weight(plan, plan.kept[j].x); }, target, cum, last);
    if (i >= 0 || last >= 0) token = plan.kept[i >= 0 ? i : last].index;
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

// The filter parameters of a batch (top-k, top-p, min-p), per row.
struct FilterArgs {
  RowArg<int64_t> top_k;
  RowArg<float> top_p, min_p;
  RowParams row(int64_t b, bool is_logits, float temperature) const {
    return {is_logits, temperature, static_cast<int64_t>(top_k[b]), top_p[b], min_p[b]};
  }
};

FilterArgs filter_args(int64_t batch, const std::optional<at::Tensor>& top_k_arr, int64_t top_k_val,
                       const std::optional<at::Tensor>& top_p_arr, double top_p_val,
                       const std::optional<at::Tensor>& min_p_arr, double min_p_val) {
  return {row_arg<int64_t>(top_k_arr, top_k_val, batch, "top_k"), row_arg<float>(top_p_arr, top_p_val, batch, "top_p"),
          row_arg<float>(min_p_arr, min_p_val, batch, "min_p")};
}

std::tuple<at::Tensor, at::Tensor> sample(const at::Tensor& x_in, bool is_logits,
                                          const std::optional<at::Tensor>& temperature_arr, double temperature_val,
                                          const std::optional<at::Tensor>& top_k_arr, int64_t top_k_val,
                                          const std::optional<at::Tensor>& top_p_arr, double top_p_val,
                                          const std::optional<at::Tensor>& min_p_arr, double min_p_val,
                                          const at::Tensor& seed_in, const at::Tensor& offset_in,
                                          bool return_logprobs) {
  const InputRows in = input_rows(x_in, is_logits ? "logits" : "probs");
  const int64_t batch = in.batch;
  const auto temperature = row_arg<float>(temperature_arr, temperature_val, batch, "temperature");
  const FilterArgs filters = filter_args(batch, top_k_arr, top_k_val, top_p_arr, top_p_val, min_p_arr, min_p_val);
  const at::Tensor seed = seed_rows(seed_in, batch, "seed"), offset = seed_rows(offset_in, batch, "offset");
  at::Tensor tokens = at::empty({batch}, in.x.options().dtype(at::kLong));
  at::Tensor logprobs = at::empty({return_logprobs ? batch : 0}, in.float_options());
  const int64_t *seeds = seed.data_ptr<int64_t>(), *offsets = offset.data_ptr<int64_t>();
  int64_t* out = tokens.data_ptr<int64_t>();
  float* lp = logprobs.data_ptr<float>();

  for_input_rows(in, [&](int64_t b, const float* xb) {
    const RowParams params = filters.row(b, is_logits, is_logits ? static_cast<float>(temperature[b]) : 1.0f);
    const RowPlan plan = plan_row(xb, in.vocab, params, in.nseg, return_logprobs);
    const Drawn d = draw(plan, xb, in.vocab, seeds[b], offsets[b], in.nseg);
    out[b] = d.token;
    if (return_logprobs) lp[b] = static_cast<float>(d.logprob);
  });
  return {tokens, logprobs};
}

at::Tensor renorm_probs(const at::Tensor& probs_in, const std::optional<at::Tensor>& top_k_arr, int64_t top_k_val,
                        const std::optional<at::Tensor>& top_p_arr, double top_p_val,
                        const std::optional<at::Tensor>& min_p_arr, double min_p_val) {
  const InputRows in = input_rows(probs_in, "probs");
  const FilterArgs filters = filter_args(in.batch, top_k_arr, top_k_val, top_p_arr, top_p_val, min_p_arr, min_p_val);
  at::Tensor result = at::empty({in.batch, in.vocab}, in.float_options());
  float* outp = result.data_ptr<float>();

  for_input_rows(in, [&](int64_t b, const float* xb) {
    float* ob = outp + b * in.vocab;
    const RowPlan plan = plan_row(xb, in.vocab, filters.row(b, false, 1.0f), in.nseg, false);
    if (plan.kind != RowPlan::kThreshold || plan.listed) {
      std::fill(ob, ob + in.vocab, 0.0f);
      for (const Candidate& c : plan.kept) ob[c.index] = static_cast<float>(c.x / plan.mass);
      return;
    }
    const auto scale = static_cast<float>(1.0 / plan.mass);
    for_segments(in.vocab, in.nseg, [&](int, int64_t lo, int64_t hi) {
      write_kept_weights(xb + lo, hi - lo, plan.wt, plan.theta, scale, ob + lo);
    });
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsample, CPU, m) {
  m.impl("sample", &sample);
  m.impl("renorm_probs", &renorm_probs);
}

}  // namespace fastsample::cpu
