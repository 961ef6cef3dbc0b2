#include "top_p.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

namespace fastsample::cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// The sample: kSampleChunks runs of kSampleChunk consecutive tokens spread evenly over the row (all
// tokens of short rows). Runs rather than a stride: a stride short of a cache line would read every line
// of the row, runs read one in sixteen.
constexpr int64_t kSampleChunk = 64;
constexpr int64_t kSampleChunks = 128;
// The estimate buckets sample weights by their float bits below the sample's largest weight: 1/64 octave a
// bucket, 32 octaves in all (lighter tokens share the last bucket).
constexpr int kEstBuckets = 2048;
constexpr int kEstShift = 17;
// Bracket edge j sits kSpread[j] standard errors of the estimated mass fraction from p, and at least
// kGap[j] estimate buckets beyond its inner neighbour (the guessed bucket lies between edges 3 and 4):
// the sample's and the pass's float weights differ a little, and a row sampled whole has no error.
constexpr double kSpread[kBracketEdges] = {-6.0, -2.0, -1.0, -0.35, 0.35, 1.0, 2.0, 6.0};
constexpr int64_t kGap[kBracketEdges] = {4, 2, 1, 0, 1, 1, 2, 4};

// The weight whose float bits are `edge` buckets below `top`'s (0 past the last).
float bucket_edge_weight(float top, int64_t edge) {
  const int64_t bits = static_cast<int64_t>(std::bit_cast<uint32_t>(top)) - (edge << kEstShift);
  if (bits <= 0) return 0.0f;
  const auto u = static_cast<uint32_t>(bits);
  float v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

// Step 1. guess_ref: the reference to start the pass from (the sample max plus the usual slack).
Bracket estimate_bracket(const float* x, int64_t n, bool is_logits, double temperature, double top_p,
                         float& guess_ref) {
  Bracket br;
  std::fill(br.edges, br.edges + kBracketEdges, kInf);  // no estimate: the resolve step finds the boundary
  guess_ref = -kInf;
  const bool whole = n <= kSampleChunk * kSampleChunks;
  const int64_t m = whole ? n : kSampleChunk * kSampleChunks;
  std::vector<float> sample(m), w(m);
  if (whole) {
    std::copy(x, x + n, sample.data());
  } else {
    for (int64_t c = 0; c < kSampleChunks; ++c) {
      const int64_t at = std::min(c * n / kSampleChunks, n - kSampleChunk);
      std::copy(x + at, x + at + kSampleChunk, &sample[c * kSampleChunk]);
    }
  }
  const double stride = static_cast<double>(n) / m;  // each sampled token stands for this many
  const SpanStats stats = span_stats(sample.data(), m);
  if (stats.has_nan || !(stats.max > -kInf) || stats.max == kInf || (!is_logits && !(stats.max > 0.0f))) return br;
  const float inv_t = static_cast<float>(1.0 / temperature);
  if (is_logits) guess_ref = stats.max + 8.0f / inv_t;
  weights_of(Weighting{is_logits, stats.max, inv_t}, sample.data(), m, w.data());

  const float top = is_logits ? 1.0f : stats.max;  // the sample's largest weight
  const auto top_bits = static_cast<int32_t>(std::bit_cast<uint32_t>(top));
  std::vector<int32_t> bucket(m + 1, 0);  // + 1: a zero-weight pad for the pairwise loop below
  for (int64_t i = 0; i < m; ++i) {  // vectorised: bits below the top, 1/64 octave a bucket
    const int32_t below = (top_bits - static_cast<int32_t>(std::bit_cast<uint32_t>(w[i]))) >> kEstShift;
    bucket[i] = w[i] > 0.0f ? std::min(std::max(below, 0), kEstBuckets - 1) : kEstBuckets - 1;
  }
  w.push_back(0.0f);
  // Two interleaved histograms: tokens in one bucket would otherwise chain every add on the last store.
  std::vector<double> mass(2 * kEstBuckets, 0.0);
  for (int64_t i = 0; i < m; i += 2) {
    mass[bucket[i]] += w[i];
    mass[kEstBuckets + bucket[i + 1]] += w[i + 1];
  }
  // bucket_at(f): the bucket in which the mass from the top reaches the fraction f of the sample's.
  std::vector<double> cum(kEstBuckets + 1, 0.0);
  for (int k = 0; k < kEstBuckets; ++k) cum[k + 1] = cum[k] + mass[k] + mass[kEstBuckets + k];
  const double z = cum[kEstBuckets];
  auto bucket_at = [&](double f) {
    const auto it = std::lower_bound(cum.begin() + 1, cum.end(), std::clamp(f, 0.0, 1.0) * z);
    return std::min<int64_t>(it - cum.begin() - 1, kEstBuckets - 1);
  };
  const int64_t guess = bucket_at(top_p);
  // Standard error of the estimated fraction above the guess (each sampled token stands for `stride`).
  float var = 0.0f;
  const auto miss_above = static_cast<float>((1.0 - top_p) * (1.0 - top_p)), miss_below = static_cast<float>(top_p * top_p);
  const auto guess32 = static_cast<int32_t>(guess);
#pragma omp simd reduction(+ : var)
  for (int64_t i = 0; i < m; ++i) var += w[i] * w[i] * (bucket[i] <= guess32 ? miss_above : miss_below);
  const double se = z > 0.0 ? std::sqrt((stride - 1.0) * var) / z : 0.0;
  // Edge j keeps the tokens of weight >= bucket_edge_weight(top, e[j]), i.e. about the buckets < e[j].
  int64_t e[kBracketEdges];
  e[3] = std::min(bucket_at(top_p + kSpread[3] * se), guess);
  e[4] = std::max(bucket_at(top_p + kSpread[4] * se), guess) + 1;
  for (int j = 2; j >= 0; --j) e[j] = std::min(bucket_at(top_p + kSpread[j] * se), e[j + 1] - kGap[j]);
  for (int j = 5; j < kBracketEdges; ++j) e[j] = std::max(bucket_at(top_p + kSpread[j] * se) + 1, e[j - 1] + kGap[j]);
  for (int j = 0; j < kBracketEdges; ++j) {
    const float wt = bucket_edge_weight(top, std::clamp<int64_t>(e[j], 0, kEstBuckets));
    br.edges[j] = !is_logits ? wt
                  : wt > 0.0f ? static_cast<float>(stats.max + temperature * std::log(static_cast<double>(wt)))
                              : -kInf;
  }
  return br;
}

// Lower digits of a value's key, most significant first: 11, 11 and 10 bits.
inline int key_digit(float x, int level) {
  const uint32_t key = float_key(x);
  return level == 0 ? static_cast<int>(key >> 21) : level == 1 ? static_cast<int>((key >> 10) & 0x7FFu)
                                                                : static_cast<int>(key & 0x3FFu);
}

// The walk of walk_top_p_groups over many tokens: narrows to the key digit holding the boundary while
// there are many tokens (equal values share every digit, so ties never split), then walks groups exactly.
float refine_top_p(std::vector<Valued>& tokens, bool row_top, double target, double& cum) {
  for (int level = 0; level <= 2 && tokens.size() > 64; ++level) {
    std::vector<double> hist(2048, 0.0);
    for (const Valued& t : tokens) hist[key_digit(t.x, level)] += t.w;
    int boundary = -1;
    for (int d = 2047; d >= 0; --d) {
      if (hist[d] == 0.0) continue;
      if (boundary >= 0) row_top = false;
      boundary = d;
      if (!(cum + hist[d] < target)) break;
      cum += hist[d];
    }
    tokens.erase(std::remove_if(tokens.begin(), tokens.end(),
                                [&](const Valued& t) { return key_digit(t.x, level) != boundary; }),
                 tokens.end());
  }
  return walk_top_p_groups(tokens, [](const Valued& t) { return t.w; }, row_top, target, cum);
}

// The gathered tokens of all segments with their float weights (the vectorised loops' own, like the
// masses they are compared with).
std::vector<Valued> valued(std::vector<Gathered>& parts, const Weighting& wt) {
  std::vector<Valued> tokens;
  for (Gathered& part : parts) {
    part.weights.resize(part.values.size());
    weights_of(wt, part.values.data(), static_cast<int64_t>(part.values.size()), part.weights.data());
    for (size_t i = 0; i < part.values.size(); ++i) tokens.push_back({part.values[i], part.weights[i]});
  }
  return tokens;
}

std::vector<Gathered> gather(const float* x, int64_t n, float lo, float hi, int nseg) {
  std::vector<Gathered> parts(nseg);
  for_segments(nseg, [&](int s) {
    const int64_t begin = segment_begin(n, nseg, s), end = segment_begin(n, nseg, s + 1);
    gather_range(x + begin, end - begin, begin, lo, hi, parts[s]);
  });
  return parts;
}

// If the heaviest block maxima alone reach the target (a peaked row), every kept token is >= the last of
// them: those few tokens are gathered and walked, and the plan lists them. Returns false (plan untouched)
// when the maxima fall short or more than a few blocks would be needed.
bool bound_by_maxima(const float* x, int64_t n, const TopPPass& pass, double target, RowPlan& plan) {
  const auto nblocks = static_cast<int64_t>(pass.maxima.size());
  std::vector<float> heaviest(nblocks);
  weights_of(plan.wt, pass.maxima.data(), nblocks, heaviest.data());
  double all = 0.0;
  for (float w : heaviest) all += w;
  if (!(all >= target * (1.0 + 1e-6))) return false;  // margin: sums in another order round differently
  const int64_t top = std::min<int64_t>(nblocks, 64);
  heaviest = pass.maxima;
  std::partial_sort(heaviest.begin(), heaviest.begin() + top, heaviest.end(), std::greater<float>());
  double cum = 0.0;
  float bound = kInf;
  for (int64_t i = 0; i < top && bound == kInf; ++i) {
    cum += weight_of(plan.wt, heaviest[i]);
    if (cum >= target * (1.0 + 1e-6)) bound = heaviest[i];
  }
  if (bound == kInf) return false;
  std::vector<Gathered> parts(1);
  for (int64_t k = 0; k < nblocks; ++k) {
    if (!(pass.maxima[k] >= bound)) continue;
    const int64_t lo = k * kPassBlock;
    gather_range(x + lo, std::min(kPassBlock, n - lo), lo, bound, kInf, parts[0]);
  }
  std::vector<Valued> tokens = valued(parts, plan.wt);
  double kept = 0.0;
  plan.theta = refine_top_p(tokens, true, target, kept);
  const Gathered& g = parts[0];
  plan.kept.clear();
  plan.mass = 0.0;
  for (size_t i = 0; i < g.values.size(); ++i) {
    if (g.values[i] < plan.theta) continue;
    plan.kept.push_back({g.values[i], g.indices[i]});
    plan.mass += token_weight(plan, g.values[i]);
  }
  plan.listed = true;
  return true;
}

}  // namespace

TopPPass top_p_first_pass(const float* x, int64_t n, bool is_logits, double temperature, double top_p, int nseg) {
  TopPPass pass;
  float guess_ref;
  pass.bracket = estimate_bracket(x, n, is_logits, temperature, top_p, guess_ref);
  const float inv_t = is_logits ? static_cast<float>(1.0 / temperature) : 1.0f;
  const int64_t nblocks = (n + kPassBlock - 1) / kPassBlock;
  pass.above.resize(kBracketEdges * nblocks);
  pass.refs.resize(nblocks);
  pass.maxima.resize(nblocks);
  std::vector<OnlinePass> segs(nseg);
  std::vector<double> mass(static_cast<size_t>(nseg) * kBracketEdges, 0.0);
  for_segments(nseg, [&](int s) {
    const int64_t lo = segment_begin(n, nseg, s), hi = segment_begin(n, nseg, s + 1);
    const int64_t k = lo / kPassBlock;
    segs[s].ref = guess_ref;
    online_bracket_pass(x + lo, hi - lo, is_logits, inv_t, pass.bracket, segs[s], &mass[s * kBracketEdges],
                        BracketBlocks{&pass.above[k], nblocks, &pass.refs[k], &pass.maxima[k]});
  });
  for (const OnlinePass& seg : segs) {  // segments summed against their own references: bring them to one
    pass.has_nan |= seg.has_nan;
    pass.max = std::max(pass.max, seg.max);
    pass.min = std::min(pass.min, seg.min);
    pass.ref = std::max(pass.ref, seg.ref);
  }
  for (int s = 0; s < nseg; ++s) {
    const double scale = is_logits ? std::exp((static_cast<double>(segs[s].ref) - pass.ref) * inv_t) : 1.0;
    pass.total += segs[s].sum * scale;
    for (int j = 0; j < kBracketEdges; ++j) pass.mass_at[j] += mass[s * kBracketEdges + j] * scale;
  }
  return pass;
}

void resolve_top_p(const float* x, int64_t n, const TopPPass& pass, double top_p, int nseg, RowPlan& plan) {
  const double target = top_p * pass.total;
  const float* t = pass.bracket.edges;
  const double* m = pass.mass_at;
  // The region holding the boundary: the mass above it is < target, and with it >= target. `edge` is the
  // edge just above it (-1: none), whose per-block masses the kept tokens are added to.
  if (bound_by_maxima(x, n, pass, target, plan)) return;
  int edge = kBracketEdges - 1;
  while (edge >= 0 && !(m[edge] < target)) --edge;
  std::vector<Gathered> parts =
      gather(x, n, edge + 1 < kBracketEdges ? t[edge + 1] : -kInf, edge >= 0 ? t[edge] : kInf, nseg);
  double cum = edge >= 0 ? m[edge] : 0.0;
  std::vector<Valued> tokens = valued(parts, plan.wt);
  plan.theta = refine_top_p(tokens, cum == 0.0, target, cum);
  plan.mass = cum;
  // Block masses above the region, plus its kept tokens: a draw then scans one block.
  const int64_t nblocks = static_cast<int64_t>(pass.refs.size());
  plan.blocks.assign(nblocks, 0.0);
  if (edge >= 0) {
    float last_ref = std::numeric_limits<float>::quiet_NaN();
    double scale = 1.0;
    for (int64_t k = 0; k < nblocks; ++k) {
      if (plan.wt.is_exp && !(pass.refs[k] == last_ref)) {  // references change rarely: one exp per change
        last_ref = pass.refs[k];
        scale = std::exp((static_cast<double>(last_ref) - plan.wt.max) / plan.temperature);
      }
      plan.blocks[k] = pass.above[edge * nblocks + k] * scale;
    }
  }
  for (const Gathered& part : parts) {
    for (size_t i = 0; i < part.values.size(); ++i) {
      if (part.values[i] >= plan.theta) plan.blocks[part.indices[i] / kPassBlock] += part.weights[i];
    }
  }
}

}  // namespace fastsample::cpu
