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
  const bool t_ok = !p.is_logits || p.temperature >= 0.0f;  // false for NaN
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
float min_p_threshold(const RowPlan& plan, const RowParams& p) {
  if (p.min_p <= 0.0) return -kInf;
  if (plan.wt.is_exp) {
    const double m = plan.wt.max, t = p.temperature, log_min_p = std::log(p.min_p);
    return smallest_kept(static_cast<float>(m + t * log_min_p),
                         [&](float v) { return (static_cast<double>(v) - m) / t >= log_min_p; });
  }
  const double bound = p.min_p * static_cast<double>(plan.wt.max);
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

// Sub-digits of a weight's bits below the 11 bits of mass_bucket: refinement levels 1 and 2.
inline int sub_bucket(float w, int level) {
  uint32_t bits;
  std::memcpy(&bits, &w, sizeof bits);
  return level == 1 ? static_cast<int>((bits >> 9) & 0x7FFu) : static_cast<int>(bits & 0x1FFu);
}

// Within the boundary bucket's tokens, narrows to the sub-bucket holding the boundary while there are
// many tokens (ties of value keep identical bits, so they never split), then walks groups exactly.
float refine_top_p(std::vector<WeightedToken>& tokens, bool row_top, double target, double& cum) {
  for (int level = 1; level <= 2 && tokens.size() > 2048; ++level) {
    std::vector<double> hist(2048, 0.0);
    for (const WeightedToken& t : tokens) hist[sub_bucket(t.w, level)] += t.w;
    int boundary = -1;
    for (int d = 2047; d >= 0; --d) {
      if (hist[d] == 0.0) continue;
      if (boundary >= 0) row_top = false;
      boundary = d;
      if (!(cum + hist[d] < target)) break;
      cum += hist[d];
    }
    tokens.erase(std::remove_if(tokens.begin(), tokens.end(),
                                [&](const WeightedToken& t) { return sub_bucket(t.w, level) != boundary; }),
                 tokens.end());
  }
  return walk_top_p_groups(tokens, [](const WeightedToken& t) { return static_cast<double>(t.w); }, row_top,
                           target, cum);
}

// Top-p over the whole row (top-k off): a histogram of mass over weight buckets finds the bucket holding
// the boundary, then only that bucket's tokens are gathered and refined. Returns theta; sets mass.
float dense_top_p(const float* x, int64_t n, const RowPlan& plan, double top_p, int nseg, double& mass) {
  std::vector<double> hists(static_cast<size_t>(nseg) * kMassBuckets, 0.0);
  std::vector<double> totals(nseg, 0.0);
  for_segments(nseg, [&](int s) {
    const int64_t lo = segment_begin(n, nseg, s), hi = segment_begin(n, nseg, s + 1);
    totals[s] = mass_histogram(x + lo, hi - lo, plan.wt, &hists[static_cast<size_t>(s) * kMassBuckets]);
  });
  double total = 0.0;
  for (int s = 0; s < nseg; ++s) total += totals[s];
  for (int s = 1; s < nseg; ++s) {
    for (int b = 0; b < kMassBuckets; ++b) hists[b] += hists[static_cast<size_t>(s) * kMassBuckets + b];
  }
  const double target = top_p * total;
  double cum = 0.0;
  int boundary = -1;
  bool row_top = true;  // stays true while the boundary is the first non-empty bucket
  for (int b = kMassBuckets - 1; b >= 0; --b) {
    if (hists[b] == 0.0) continue;
    if (boundary >= 0) row_top = false;
    boundary = b;
    if (!(cum + hists[b] < target)) break;
    cum += hists[b];
  }
  std::vector<std::vector<WeightedToken>> parts(nseg);
  for_segments(nseg, [&](int s) {
    const int64_t lo = segment_begin(n, nseg, s), hi = segment_begin(n, nseg, s + 1);
    gather_bucket(x + lo, hi - lo, lo, plan.wt, boundary, parts[s]);
  });
  std::vector<WeightedToken> tokens;
  for (auto& part : parts) tokens.insert(tokens.end(), part.begin(), part.end());
  const float theta = refine_top_p(tokens, row_top, target, cum);
  mass = cum;
  return theta;
}

// Top-k on (then top-p, min-p over the few survivors): everything from the candidate list.
void plan_listed(RowPlan& plan, std::vector<Candidate>& cands, const RowParams& p, float theta_min_p) {
  float theta = kth_largest(cands, p.top_k);
  drop_below(cands, theta);
  if (p.top_p < 1.0) {
    struct Valued {
      float x;
      double w;
    };
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
  const bool use_k = !greedy && p.top_k > 0 && p.top_k < n;

  std::vector<SpanStats> stats(nseg);
  std::vector<std::vector<Candidate>> parts(use_k ? nseg : 0);
  std::vector<float> block_max(use_k ? n / kBlock + nseg + 1 : 0);
  for_segments(nseg, [&](int s) {
    const int64_t lo = segment_begin(n, nseg, s), hi = segment_begin(n, nseg, s + 1);
    stats[s] = use_k ? collect_candidates(x + lo, hi - lo, lo, p.top_k, block_max.data() + lo / kBlock + s,
                                          parts[s])
                     : span_stats(x + lo, hi - lo);
  });
  float mx = -kInf, mn = kInf;
  for (const SpanStats& st : stats) {
    if (st.has_nan) return plan;
    mx = std::max(mx, st.max);
    mn = std::min(mn, st.min);
  }
  if (p.is_logits) {
    if (mx == -kInf) return plan;
    if (mx == kInf) {  // the +inf tokens share the mass
      plan.kind = RowPlan::kUniformInf;
      plan.count = count_equal(x, n, mx, nseg);
      return plan;
    }
    if (greedy) {
      plan.kind = RowPlan::kGreedy;
      plan.first = first_equal(x, n, mx);
      if (count_maxima) plan.count = count_equal(x, n, mx, nseg);
      return plan;
    }
  } else if (mn < 0.0f || mx == kInf || !(mx > 0.0f)) {
    return plan;
  }

  plan.kind = RowPlan::kThreshold;
  plan.temperature = p.is_logits ? p.temperature : 1.0;
  plan.wt = {p.is_logits, mx, p.is_logits ? 1.0f / p.temperature : 1.0f};
  const float theta_min_p = min_p_threshold(plan, p);
  if (use_k) {
    std::vector<Candidate> cands;
    for (auto& part : parts) cands.insert(cands.end(), part.begin(), part.end());
    plan_listed(plan, cands, p, theta_min_p);
    return plan;
  }
  float theta = -kInf;
  bool mass_known = false;
  if (p.top_p < 1.0) {
    theta = dense_top_p(x, n, plan, p.top_p, nseg, plan.mass);
    mass_known = true;
  }
  if (theta_min_p > theta) {
    theta = theta_min_p;
    mass_known = false;
  }
  plan.theta = theta;
  if (!mass_known) {
    std::vector<double> sums(nseg, 0.0);
    for_segments(nseg, [&](int s) {
      const int64_t lo = segment_begin(n, nseg, s), hi = segment_begin(n, nseg, s + 1);
      sums[s] = kept_weight_sum(x + lo, hi - lo, plan.wt, theta);
    });
    for (double v : sums) plan.mass += v;
  }
  return plan;
}

}  // namespace fastsample::cpu
