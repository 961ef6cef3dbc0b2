#include "row_plan.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace fastsample::cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

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

// Top-p over tokens sorted by value (descending): walks groups of equal value from `cum` (the mass of
// everything above them) and keeps a group while the mass above it is < target; the row's first group
// is always kept. Returns the last kept value and updates cum to the kept mass.
template <class Token, class Weight>
float walk_top_p_groups(std::vector<Token>& tokens, Weight weight, bool row_top, double target, double& cum) {
  std::sort(tokens.begin(), tokens.end(), [](const Token& a, const Token& b) { return a.x > b.x; });
  float theta = kInf;
  for (size_t i = 0; i < tokens.size();) {
    if (!row_top && !(cum < target)) break;
    row_top = false;
    theta = tokens[i].x;
    for (; i < tokens.size() && tokens[i].x == theta; ++i) cum += weight(tokens[i]);
  }
  return theta;
}

// Lower digits of a value's key below the kMassShift bits of key_bucket: refinement levels 1 and 2.
inline int sub_bucket(float x, int level) {
  const uint32_t key = float_key(x);
  return level == 1 ? static_cast<int>((key >> 10) & 0x7FFu) : static_cast<int>(key & 0x3FFu);
}

struct Valued {
  float x;
  double w;
};

// Within the boundary bucket's tokens, narrows to the sub-bucket holding the boundary while there are
// many tokens (equal values share every key digit, so ties never split), then walks groups exactly.
float refine_top_p(std::vector<Valued>& tokens, bool row_top, double target, double& cum) {
  for (int level = 1; level <= 2 && tokens.size() > 64; ++level) {
    std::vector<double> hist(2048, 0.0);
    for (const Valued& t : tokens) hist[sub_bucket(t.x, level)] += t.w;
    int boundary = -1;
    for (int d = 2047; d >= 0; --d) {
      if (hist[d] == 0.0) continue;
      if (boundary >= 0) row_top = false;
      boundary = d;
      if (!(cum + hist[d] < target)) break;
      cum += hist[d];
    }
    tokens.erase(std::remove_if(tokens.begin(), tokens.end(),
                                [&](const Valued& t) { return sub_bucket(t.x, level) != boundary; }),
                 tokens.end());
  }
  return walk_top_p_groups(tokens, [](const Valued& t) { return t.w; }, row_top, target, cum);
}

// The gathered tokens of all segments with their weights (float from the vectorised loops, like the
// masses they are compared with).
std::vector<Valued> valued(const std::vector<Gathered>& parts) {
  std::vector<Valued> tokens;
  for (const Gathered& part : parts) {
    for (size_t i = 0; i < part.values.size(); ++i) tokens.push_back({part.values[i], part.weights[i]});
  }
  return tokens;
}

// Top-p over the whole row (top-k off), from the mass histogram of the first pass: the bucket holding the
// boundary is found by walking buckets from the top, then only its tokens are gathered and refined.
// Returns theta and sets mass to the kept weight.
float dense_top_p(const float* x, int64_t n, const RowPlan& plan, const double* hist, double total, double top_p,
                  int nseg, double& mass) {
  const double target = top_p * total;
  double cum = 0.0;
  int boundary = -1;
  bool row_top = true;  // stays true while the boundary is the first non-empty bucket
  for (int b = kMassBuckets - 1; b >= 0; --b) {
    if (hist[b] == 0.0) continue;
    if (boundary >= 0) row_top = false;
    boundary = b;
    if (!(cum + hist[b] < target)) break;
    cum += hist[b];
  }
  std::vector<Gathered> parts(nseg);
  for_segments(nseg, [&](int s) {
    const int64_t lo = segment_begin(n, nseg, s), hi = segment_begin(n, nseg, s + 1);
    gather_key_bucket(x + lo, hi - lo, lo, plan.wt, boundary, parts[s]);
  });
  std::vector<Valued> tokens = valued(parts);
  const float theta = refine_top_p(tokens, row_top, target, cum);
  mass = cum;
  return theta;
}

// Top-p from an estimated histogram (every 16th token): one vectorised pass finds the exact mass above a
// few bucket edges around the estimated boundary bucket, gathering that bucket's tokens and each block's
// mass above it on the way, so no exact histogram is scattered and a draw scans one block. Returns false,
// with the plan untouched, when the boundary is not between those edges (the caller then builds the
// exact histogram).
bool bracket_top_p(const float* x, int64_t n, RowPlan& plan, const double* estimate, double total, double top_p,
                   int nseg) {
  double estimated_total = 0.0;
  for (int b = 0; b < kMassBuckets; ++b) estimated_total += estimate[b];
  int guess = -1;
  double cum = 0.0;
  for (int b = kMassBuckets - 1; b >= 0; --b) {
    if (estimate[b] == 0.0) continue;
    guess = b;
    if (!(cum + estimate[b] < top_p * estimated_total)) break;
    cum += estimate[b];
  }
  if (guess < 0) return false;
  // Edge j is the floor of bucket guess + 4 - j: the guessed bucket lies between edges 3 and 4, and three
  // buckets either side are checked too (near 0 the buckets are narrow and the estimate lands a few off).
  constexpr int kGuessEdge = 3;
  float edges[kBracketEdges];
  for (int j = 0; j < kBracketEdges; ++j) edges[j] = bucket_floor(guess + 4 - j);
  const int64_t nblocks = (n + kPassBlock - 1) / kPassBlock;
  std::vector<double> mass_at(static_cast<size_t>(nseg) * kBracketEdges, 0.0);
  std::vector<Gathered> parts(nseg);
  std::vector<float> block_above(kBracketEdges * nblocks);
  for_segments(nseg, [&](int s) {
    const int64_t lo = segment_begin(n, nseg, s), hi = segment_begin(n, nseg, s + 1);
    bracket_pass(x + lo, hi - lo, lo, plan.wt, edges, &mass_at[s * kBracketEdges], kGuessEdge, parts[s],
                 &block_above[lo / kPassBlock], nblocks);
  });
  for (int s = 1; s < nseg; ++s) {
    for (int j = 0; j < kBracketEdges; ++j) mass_at[j] += mass_at[s * kBracketEdges + j];
  }
  // The boundary bucket: the mass above it is < target and the mass from its floor up is >= target.
  // (With p > 0 that needs positive mass in it, and weights grow with the value, so "nothing above"
  // is "no mass above".)
  const double target = top_p * total;
  int edge = -1;
  for (int j = 0; j + 1 < kBracketEdges && edge < 0; ++j) {
    if (mass_at[j] < target && target <= mass_at[j + 1]) edge = j;
  }
  if (edge < 0) return false;
  if (edge != kGuessEdge) {  // the estimate was a few buckets off: gather the right one
    for_segments(nseg, [&](int s) {
      const int64_t lo = segment_begin(n, nseg, s), hi = segment_begin(n, nseg, s + 1);
      parts[s] = Gathered{};
      gather_key_bucket(x + lo, hi - lo, lo, plan.wt, guess + 3 - edge, parts[s]);
    });
  }
  std::vector<Valued> tokens = valued(parts);
  cum = mass_at[edge];
  plan.theta = refine_top_p(tokens, mass_at[edge] == 0.0, target, cum);
  plan.mass = cum;
  // Block masses above the boundary bucket, plus its kept tokens: a draw then scans one block.
  plan.blocks.assign(block_above.begin() + edge * nblocks, block_above.begin() + (edge + 1) * nblocks);
  for (const Gathered& part : parts) {
    for (size_t i = 0; i < part.values.size(); ++i) {
      if (part.values[i] >= plan.theta) plan.blocks[part.indices[i] / kPassBlock] += part.weights[i];
    }
  }
  return true;
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
  for_segments(nseg, [&](int s) {
    const int64_t lo = segment_begin(n, nseg, s), hi = segment_begin(n, nseg, s + 1);
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
    if (mx == kInf) {  // the +inf tokens share the mass
      plan.kind = RowPlan::kUniformInf;
      plan.count = count_equal(x, n, mx, nseg);
      return true;
    }
    if (p.temperature == 0.0f) {
      plan.kind = RowPlan::kGreedy;
      plan.first = first_equal(x, n, mx);
      if (count_maxima) plan.count = count_equal(x, n, mx, nseg);
      return true;
    }
    return false;
  }
  return mn < 0.0f || mx == kInf || !(mx > 0.0f);  // probs: negative, infinite or all zero
}

}  // namespace

int segments_for(int64_t batch, int64_t n) {
  const int threads = omp_get_max_threads();
  if (threads <= 1 || batch >= threads || n < 32768) return 1;
  return static_cast<int>(std::min<int64_t>(threads, n / 16384));
}

double token_weight(const RowPlan& plan, float x) {
  if (!plan.wt.is_exp) return x;
  return std::exp((static_cast<double>(x) - plan.wt.max) / plan.temperature);
}

RowPlan plan_row(const float* x, int64_t n, const RowParams& p, int nseg, bool count_maxima) {
  RowPlan plan;
  if (!params_valid(p)) return plan;
  const bool greedy = p.is_logits && p.temperature == 0.0f;
  const float inv_t = p.is_logits ? 1.0f / p.temperature : 1.0f;
  plan.temperature = p.is_logits ? p.temperature : 1.0;
  float mx, mn;

  if (greedy || (p.top_k > 0 && p.top_k < n)) {  // first pass: stats, and top-k candidates
    std::vector<SpanStats> stats(nseg);
    std::vector<std::vector<Candidate>> parts(greedy ? 0 : nseg);
    std::vector<float> block_max(greedy ? 0 : n / kBlock + nseg + 1);
    for_segments(nseg, [&](int s) {
      const int64_t lo = segment_begin(n, nseg, s), hi = segment_begin(n, nseg, s + 1);
      stats[s] = greedy ? span_stats(x + lo, hi - lo)
                        : collect_candidates(x + lo, hi - lo, lo, p.top_k, block_max.data() + lo / kBlock + s,
                                             parts[s]);
    });
    if (!merge_stats(nseg, [&](int s) { return stats[s]; }, mx, mn)) return plan;
    if (plan_from_stats(plan, x, n, p, mx, mn, nseg, count_maxima)) return plan;
    plan.kind = RowPlan::kThreshold;
    plan.wt = {p.is_logits, mx, inv_t};
    std::vector<Candidate> cands;
    for (auto& part : parts) cands.insert(cands.end(), part.begin(), part.end());
    plan_listed(plan, cands, p, min_p_threshold(mx, p));
    return plan;
  }

  // First pass without top-k: stats, the weight sum and, for top-p, the mass histogram (estimated from
  // every 16th token on long rows, exact on short ones), in one read. With no filter at all it also
  // records block sums, which are then all a draw needs.
  const bool use_p = p.top_p < 1.0, record = !use_p && p.min_p <= 0.0;
  const int64_t nblocks = (n + kPassBlock - 1) / kPassBlock;
  std::vector<OnlinePass> passes(nseg);
  std::vector<double> hists(use_p ? static_cast<size_t>(nseg) * kMassBuckets : 0);
  std::vector<float> block_sums(record ? nblocks : 0), block_refs(record ? nblocks : 0);
  float ref = mx;
  double total = 0.0;
  auto rescale = [&](float from) {
    return p.is_logits ? std::exp((static_cast<double>(from) - ref) * inv_t) : 1.0;
  };
  auto first_pass = [&](int hist_stride) {  // fills passes and hists[0, kMassBuckets): false on a NaN row
    std::fill(hists.begin(), hists.end(), 0.0);
    passes.assign(nseg, OnlinePass{});
    for_segments(nseg, [&](int s) {
      const int64_t lo = segment_begin(n, nseg, s), hi = segment_begin(n, nseg, s + 1);
      const PassBlocks blocks = record ? PassBlocks{&block_sums[lo / kPassBlock], &block_refs[lo / kPassBlock]}
                                       : PassBlocks{};
      online_pass(x + lo, hi - lo, p.is_logits, inv_t, passes[s],
                  use_p ? &hists[static_cast<size_t>(s) * kMassBuckets] : nullptr, hist_stride, blocks);
    });
    if (!merge_stats(nseg, [&](int s) { return passes[s]; }, mx, mn)) return false;
    // Segments summed weights against their own references: bring them to the largest one.
    ref = mx;
    if (p.is_logits) {
      for (const OnlinePass& pass : passes) ref = std::max(ref, pass.ref);
    }
    total = 0.0;
    for (int s = 0; s < nseg; ++s) {
      const double scale = rescale(passes[s].ref);
      total += passes[s].sum * scale;
      for (size_t b = 0; use_p && b < kMassBuckets; ++b) {
        hists[b] = (s == 0 ? 0.0 : hists[b]) + hists[static_cast<size_t>(s) * kMassBuckets + b] * scale;
      }
    }
    return true;
  };
  const int stride = use_p && n >= 16384 ? 16 : 1;
  if (!first_pass(stride)) return plan;
  if (plan_from_stats(plan, x, n, p, mx, mn, nseg, count_maxima)) return plan;
  plan.kind = RowPlan::kThreshold;
  plan.wt = {p.is_logits, ref, inv_t};
  plan.mass = total;
  plan.theta = -kInf;
  if (record) {
    plan.blocks.resize(nblocks);
    float last_ref = std::numeric_limits<float>::quiet_NaN();
    double scale = 1.0;
    for (int64_t j = 0; j < nblocks; ++j) {
      if (!(block_refs[j] == last_ref)) {  // references change rarely: one exp per change
        last_ref = block_refs[j];
        scale = rescale(last_ref);
      }
      plan.blocks[j] = block_sums[j] * scale;
    }
    return plan;
  }
  if (use_p && !(stride > 1 && bracket_top_p(x, n, plan, hists.data(), total, p.top_p, nseg))) {
    if (stride > 1) first_pass(1);  // the estimate missed: the exact histogram
    plan.theta = dense_top_p(x, n, plan, hists.data(), total, p.top_p, nseg, plan.mass);
  }
  const float theta_min_p = min_p_threshold(mx, p);
  if (theta_min_p > plan.theta) {  // min-p decides: a pass for the kept weight of each block
    plan.theta = theta_min_p;
    std::vector<float> sums(nblocks);
    for_segments(nseg, [&](int s) {
      const int64_t lo = segment_begin(n, nseg, s), hi = segment_begin(n, nseg, s + 1);
      kept_block_sums(x + lo, hi - lo, plan.wt, plan.theta, &sums[lo / kPassBlock]);
    });
    plan.blocks.assign(sums.begin(), sums.end());
    plan.mass = 0.0;
    for (double v : plan.blocks) plan.mass += v;
  }
  return plan;
}

}  // namespace fastsample::cpu
