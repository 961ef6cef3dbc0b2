#include "row_plan.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "top_p.h"

namespace fastsample::cpu {
namespace {

bool params_valid(const RowParams& p) {
  const bool t_ok = !p.is_logits || (p.temperature >= 0.0f && p.temperature < kInf);  // false for NaN
  return t_ok && p.top_p >= 0.0 && p.top_p <= 1.0 && p.min_p >= 0.0 && p.min_p <= 1.0;
}

// The smallest float t with keep(t), for a predicate monotone in t, starting from a guess.
template <class Keep>
float smallest_kept(float guess, Keep keep) {
  while (!keep(guess)) guess = std::nextafter(guess, kInf);
  for (float below = std::nextafter(guess, -kInf); keep(below); below = std::nextafter(guess, -kInf)) {
    guess = below;
  }
  return guess;
}

// min-p as a threshold on the token value: keep iff w >= min_p * max w, decided in double like the oracle.
float min_p_threshold(float row_max, const RowParams& p) {
  if (p.min_p <= 0.0) return -kInf;
  if (p.is_logits) {
    const double m = row_max, t = p.temperature, log_min_p = std::log(p.min_p);
    return smallest_kept(static_cast<float>(m + t * log_min_p),
                         [&](float v) { return (static_cast<double>(v) - m) / t >= log_min_p; });
  }
  const double bound = p.min_p * static_cast<double>(row_max);
  return smallest_kept(static_cast<float>(bound), [&](float v) { return static_cast<double>(v) >= bound; });
}

// Top-k on (then top-p, min-p over the few survivors): everything from the candidate list.
void plan_listed(RowPlan& plan, std::vector<Candidate>& cands, const RowParams& p, float theta_min_p) {
  float theta = kth_largest(cands, p.top_k);
  drop_below(cands, theta);
  if (p.top_p < 1.0) {
    std::vector<Valued> sorted;
    sorted.reserve(cands.size());
    double total = 0.0;
    for (const Candidate& c : cands) {
      sorted.push_back({c.x, token_weight(plan, c.x)});
      total += sorted.back().w;
    }
    double cum = 0.0;
    const float theta_p =
        walk_top_p_groups(sorted, [](const Valued& v) { return v.w; }, true, p.top_p * total, cum);
    theta = std::max(theta, theta_p);
  }
  theta = std::max(theta, theta_min_p);
  drop_below(cands, theta);
  double mass = 0.0;
  for (const Candidate& c : cands) mass += token_weight(plan, c.x);
  plan.theta = theta;
  plan.mass = mass;
  plan.listed = true;
  plan.kept = std::move(cands);
}

int64_t first_equal(const float* x, int64_t n, float value) {
  for (int64_t i = 0; i < n; ++i) {
    if (x[i] == value) return i;
  }
  return -1;
}

int64_t count_equal(const float* x, int64_t n, float value, int nseg) {
  std::vector<int64_t> counts(nseg, 0);
  for_segments(n, nseg, [&](int s, int64_t lo, int64_t hi) {
    int64_t c = 0;
#pragma omp simd reduction(+ : c)
    for (int64_t i = lo; i < hi; ++i) c += x[i] == value;
    counts[s] = c;
  });
  int64_t total = 0;
  for (int64_t c : counts) total += c;
  return total;
}

// Stats of the whole row through `stats(s)` per segment; returns false for a NaN row.
template <class Stats>
bool merge_stats(int nseg, Stats stats, float& mx, float& mn) {
  mx = -kInf;
  mn = kInf;
  for (int s = 0; s < nseg; ++s) {
    if (stats(s).has_nan) return false;
    mx = std::max(mx, stats(s).max);
    mn = std::min(mn, stats(s).min);
  }
  return true;
}

// Rows decided by their stats alone: invalid, +inf tokens, greedy. Returns true if the plan is final.
bool plan_from_stats(RowPlan& plan, const float* x, int64_t n, const RowParams& p, float mx, float mn, int nseg,
                     bool count_maxima) {
  if (p.is_logits) {
    if (mx == -kInf) return true;
    if (p.temperature == 0.0f) {  // greedy first, +inf maxima included: lowest index of the max
      plan.kind = RowPlan::kGreedy;
      plan.first = first_equal(x, n, mx);
      if (count_maxima) plan.count = count_equal(x, n, mx, nseg);
      return true;
    }
    if (mx == kInf) {  // the +inf tokens share the mass
      plan.kind = RowPlan::kUniformInf;
      plan.count = count_equal(x, n, mx, nseg);
      return true;
    }
    return false;
  }
  return mn < 0.0f || mx == kInf || !(mx > 0.0f);  // probs: negative, infinite or all zero
}

// min-p on top of a plan, when its threshold is the higher one: listed plans drop tokens, dense plans
// take a pass for the kept weight of each block.
void apply_min_p(const float* x, int64_t n, float theta_min_p, int nseg, RowPlan& plan) {
  if (!(theta_min_p > plan.theta)) return;
  plan.theta = theta_min_p;
  plan.mass = 0.0;
  if (plan.listed) {
    drop_below(plan.kept, theta_min_p);
    for (const Candidate& c : plan.kept) plan.mass += token_weight(plan, c.x);
    return;
  }
  const int64_t nblocks = (n + kPassBlock - 1) / kPassBlock;
  std::vector<float> sums(nblocks);
  for_segments(n, nseg, [&](int, int64_t lo, int64_t hi) {
    kept_block_sums(x + lo, hi - lo, plan.wt, plan.theta, &sums[lo / kPassBlock]);
  });
  plan.blocks.assign(sums.begin(), sums.end());
  for (double v : plan.blocks) plan.mass += v;
}

}  // namespace

double token_weight(const RowPlan& plan, float x) { return exact_weight(plan.wt, plan.temperature, x); }

namespace {

// 1 / T for logits (inf for greedy rows, which never weigh), 1 for probs.
float inv_temperature(const RowParams& p) { return p.is_logits ? 1.0f / p.temperature : 1.0f; }

// Greedy rows, or top-k on: one pass for the stats and the top-k candidates, then everything from the
// candidate list (plan_listed).
void plan_from_candidates(RowPlan& plan, const float* x, int64_t n, const RowParams& p, int nseg,
                          bool count_maxima) {
  const bool greedy = p.is_logits && p.temperature == 0.0f;
  std::vector<SpanStats> stats(nseg);
  std::vector<std::vector<Candidate>> parts(greedy ? 0 : nseg);
  std::vector<float> block_max(greedy ? 0 : n / kBlock + nseg + 1);
  for_segments(n, nseg, [&](int s, int64_t lo, int64_t hi) {
    stats[s] = greedy ? span_stats(x + lo, hi - lo)
                      : collect_candidates(x + lo, hi - lo, lo, p.top_k, block_max.data() + lo / kBlock + s, parts[s]);
  });
  float mx, mn;
  if (!merge_stats(nseg, [&](int s) { return stats[s]; }, mx, mn)) return;
  if (plan_from_stats(plan, x, n, p, mx, mn, nseg, count_maxima)) return;
  plan.kind = RowPlan::kThreshold;
  plan.wt = {p.is_logits, mx, inv_temperature(p)};
  std::vector<Candidate> cands;
  for (auto& part : parts) cands.insert(cands.end(), part.begin(), part.end());
  plan_listed(plan, cands, p, min_p_threshold(mx, p));
}

// Top-p without top-k (csrc/cpu/top_p.h): the bracket pass, then the boundary from its exact masses.
void plan_top_p(RowPlan& plan, const float* x, int64_t n, const RowParams& p, int nseg, bool count_maxima) {
  const TopPPass pass = top_p_first_pass(x, n, p.is_logits, plan.temperature, p.top_p, nseg);
  if (pass.has_nan) return;
  if (plan_from_stats(plan, x, n, p, pass.max, pass.min, nseg, count_maxima)) return;
  plan.kind = RowPlan::kThreshold;
  plan.wt = {p.is_logits, p.is_logits ? pass.ref : pass.max, inv_temperature(p)};
  TopPResult kept = resolve_top_p(x, n, pass, p.top_p, nseg, plan.wt, plan.temperature);
  plan.theta = kept.theta;
  plan.mass = kept.mass;
  plan.listed = kept.listed;
  plan.blocks = std::move(kept.blocks);
  plan.kept = std::move(kept.kept);
  apply_min_p(x, n, min_p_threshold(pass.max, p), nseg, plan);
}

// No top-k, no top-p: one pass for the stats, the weight sum and (with no filter at all) block sums,
// which are then all a draw needs; min-p takes a second pass (apply_min_p).
void plan_dense(RowPlan& plan, const float* x, int64_t n, const RowParams& p, int nseg, bool count_maxima) {
  const float inv_t = inv_temperature(p);
  const bool record = p.min_p <= 0.0;
  const int64_t nblocks = (n + kPassBlock - 1) / kPassBlock;
  std::vector<OnlinePass> passes(nseg);
  std::vector<float> block_sums(record ? nblocks : 0), block_refs(record ? nblocks : 0);
  for_segments(n, nseg, [&](int s, int64_t lo, int64_t hi) {
    const PassBlocks blocks = record ? PassBlocks{&block_sums[lo / kPassBlock], &block_refs[lo / kPassBlock]}
                                     : PassBlocks{};
    online_pass(x + lo, hi - lo, p.is_logits, inv_t, passes[s], blocks);
  });
  // Segments summed weights against their own references: brought to the largest one.
  const OnlinePass row = merge_segments(passes, p.is_logits, inv_t);
  if (row.has_nan) return;
  if (plan_from_stats(plan, x, n, p, row.max, row.min, nseg, count_maxima)) return;
  plan.kind = RowPlan::kThreshold;
  plan.wt = {p.is_logits, p.is_logits ? row.ref : row.max, inv_t};
  plan.mass = row.sum;
  plan.theta = -kInf;
  if (!record) return apply_min_p(x, n, min_p_threshold(row.max, p), nseg, plan);
  BlockRescale to_ref([&](float from) { return rescale_factor(p.is_logits, from, row.ref, inv_t); });
  plan.blocks.resize(nblocks);
  for (int64_t j = 0; j < nblocks; ++j) plan.blocks[j] = block_sums[j] * to_ref(block_refs[j]);
}

}  // namespace

// Each route leaves the plan kInvalid (the row returns -1) unless it reaches a final kind.
RowPlan plan_row(const float* x, int64_t n, const RowParams& p, int nseg, bool count_maxima) {
  RowPlan plan;
  if (!params_valid(p)) return plan;
  plan.temperature = p.is_logits ? p.temperature : 1.0;
  const bool greedy = p.is_logits && p.temperature == 0.0f;
  if (greedy || (p.top_k > 0 && p.top_k < n)) {
    plan_from_candidates(plan, x, n, p, nseg, count_maxima);
  } else if (p.top_p < 1.0) {
    plan_top_p(plan, x, n, p, nseg, count_maxima);
  } else {
    plan_dense(plan, x, n, p, nseg, count_maxima);
  }
  return plan;
}

}  // namespace fastsample::cpu
