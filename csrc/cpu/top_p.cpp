#include "top_p.h"

#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>

#include "segments.h"

namespace fastsample::cpu {
namespace {

// The sample: kSampleChunks runs of kSampleChunk consecutive tokens spread evenly over the row (all
// tokens of short rows). Runs rather than a stride: a stride short of a cache line would read every line
// of the row, runs read one in sixteen.
constexpr int64_t kSampleChunk = 64;
constexpr int64_t kSampleChunks = 128;
constexpr int64_t kLineFloats = 16;  // floats per 64-byte cache line
// The estimate buckets the sample's tokens 1/32 octave of weight apart below the heaviest one, 32 octaves
// in all (lighter tokens share the last bucket): logits by their distance from the max, probs by their
// float bits (a cheap log2). Each token then counts for its bucket's middle weight, within 1.1% of its own:
// the estimate only places edges, the pass measures the exact masses.
constexpr int kEstBuckets = 1024;
constexpr int kEstPerOctave = 32;
constexpr int kEstShift = 18;  // float bits per bucket: 2^23 mantissa steps an octave / 32
// Bracket edge j sits kSpread[j] standard errors of the estimated mass fraction from p. The central
// region holds at least the guessed bucket, and the outer edges lie at least kOuterGap buckets beyond it:
// the sample's and the pass's float weights differ a little, and a row sampled whole has no error.
// Half a standard error either side of the guess holds the boundary in most rows (all 480 flat rows at
// T = 0.8, p = 0.9 tried; 75-95% at T = 0.5): wider only adds tokens to sort, and a miss costs a second,
// compare-only pass over the row. The outer regions also hold at most kOuterSample sampled tokens (about
// 16k of a 128k row), so that the tokens a miss sorts out stay few even where the error is large.
constexpr double kSpread[kBracketEdges] = {-6.0, -0.5, 0.5, 6.0};
constexpr int64_t kOuterGap = 4;
constexpr int32_t kOuterSample = 1024;
static_assert(kOuterHigh + 1 == kCentralHigh && kCentralHigh + 1 == kCentralLow && kCentralLow + 1 == kOuterLow,
              "one outer edge on each side of the central region");
// Tokens of the central region each segment's pass may gather (more: gathered again, by a second pass).
constexpr int64_t kCentralCapacity = 16384;
// Sums of the same weights in another order round differently: the block-maxima bound must reach the
// target by this relative margin to be trusted.
constexpr double kOrderMargin = 1e-6;
// The block-maxima bound looks at this many of the heaviest maxima at most (more: the row is not peaked).
constexpr int64_t kMaxBoundBlocks = 64;

// Rows per route since the last reset (top_p_route_counts): relaxed counters, one add per row.
std::atomic<int64_t> route_count[kTopPRoutes];

// The weight whose float bits are `edge` buckets below `top`'s (0 past the last): a probs bucket's edge.
float bucket_edge_weight(float top, int64_t edge) {
  const int64_t bits = static_cast<int64_t>(std::bit_cast<uint32_t>(top)) - (edge << kEstShift);
  if (bits <= 0) return 0.0f;
  const auto u = static_cast<uint32_t>(bits);
  float v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

// The middle weight of each logits bucket relative to the max: 2^(-(b + 1/2) / 32).
const float* logit_bucket_weights() {
  static const auto table = [] {
    std::vector<float> t(kEstBuckets);
    for (int b = 0; b < kEstBuckets; ++b) t[b] = static_cast<float>(std::exp2(-(b + 0.5) / kEstPerOctave));
    return t;
  }();
  return table.data();
}

// The sample, into `sample` (m tokens). The runs are prefetched first: they lie far apart, so each would
// otherwise wait on memory in turn.
void take_sample(const float* x, int64_t n, int64_t m, std::vector<float>& sample) {
  sample.resize(m);
  if (m == n) {
    std::copy(x, x + n, sample.data());
    return;
  }
  auto run_at = [&](int64_t c) { return std::min(c * n / kSampleChunks, n - kSampleChunk); };
  for (int64_t c = 0; c < kSampleChunks; ++c) {
    for (int64_t l = 0; l < kSampleChunk; l += kLineFloats) __builtin_prefetch(x + run_at(c) + l);
  }
  for (int64_t c = 0; c < kSampleChunks; ++c) {
    std::copy(x + run_at(c), x + run_at(c) + kSampleChunk, &sample[c * kSampleChunk]);
  }
}

// The sample's bucket (kEstBuckets below its heaviest token `top`) of each of its m tokens into bk.
// Multiversioned for its vector loops.
FS_MULTIVERSION void bucket_sample(const float* v, int64_t m, bool is_logits, float top, double temperature,
                                   int32_t* bk) {
  if (is_logits) {  // -inf lands past the last bucket and is clamped into it
    const auto per_logit = static_cast<float>(kEstPerOctave * std::numbers::log2e / temperature);
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) {
      bk[i] = static_cast<int32_t>(std::min((top - v[i]) * per_logit, static_cast<float>(kEstBuckets - 1)));
    }
  } else {
    const auto top_bits = std::bit_cast<uint32_t>(top);
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) {
      // Unsigned difference: for a negative v[i] (result discarded below) a signed one would overflow (UB).
      const int32_t below = static_cast<int32_t>(top_bits - std::bit_cast<uint32_t>(v[i])) >> kEstShift;
      bk[i] = v[i] > 0.0f ? std::min(std::max(below, 0), kEstBuckets - 1) : kEstBuckets - 1;
    }
  }
}

// The sample's tokens per bucket, and the running sums from the top of their middle weights (relative to
// the sample's heaviest token) and of those weights squared, for the standard error.
struct BucketMasses {
  int32_t count[kEstBuckets];
  double cum[kEstBuckets + 1], cum2[kEstBuckets + 1];
  double total() const { return cum[kEstBuckets]; }
  // The bucket in which the mass from the top reaches the fraction f of the sample's.
  int64_t bucket_at(double f) const {
    const double* it = std::lower_bound(cum + 1, cum + kEstBuckets + 1, std::clamp(f, 0.0, 1.0) * total());
    return std::min<int64_t>(it - cum - 1, kEstBuckets - 1);
  }
};

// bk holds m buckets and room for one pad entry after them.
void weigh_buckets(int32_t* bk, int64_t m, bool is_logits, float top, BucketMasses& bm) {
  bk[m] = kEstBuckets - 1;  // a pad for the pairwise loop below (its count is never read as a token's)
  // Two interleaved counts: tokens in one bucket would otherwise chain every increment on the last store.
  int32_t count[2][kEstBuckets] = {};
  for (int64_t i = 0; i < m; i += 2) {
    ++count[0][bk[i]];
    ++count[1][bk[i + 1]];
  }
  if (m % 2 == 1) --count[1][kEstBuckets - 1];  // the pad
  float probs_mid[kEstBuckets];
  const float* mid = logit_bucket_weights();
  if (!is_logits) {
    for (int b = 0; b < kEstBuckets; ++b) {
      probs_mid[b] = 0.5f * (bucket_edge_weight(top, b) + bucket_edge_weight(top, b + 1)) / top;
    }
    mid = probs_mid;
  }
  bm.cum[0] = bm.cum2[0] = 0.0;
  for (int k = 0; k < kEstBuckets; ++k) {
    bm.count[k] = count[0][k] + count[1][k];
    const double c = bm.count[k], w = mid[k];
    bm.cum[k + 1] = bm.cum[k] + c * w;
    bm.cum2[k + 1] = bm.cum2[k] + c * w * w;
  }
}

// The edges as bucket numbers (edge j keeps the tokens of the buckets < e[j]): the guess's bucket for
// top_p, the central ones kSpread standard errors of the estimated fraction either side of it (each
// sampled token stands for `stride` tokens), the outer ones at least kOuterGap buckets further and moved
// in while they hold more than kOuterSample sampled tokens.
void place_edges(const BucketMasses& bm, double top_p, double stride, int64_t* e) {
  const int64_t guess = bm.bucket_at(top_p);
  // A token above the guess misses the fraction by 1 - p of its weight, one below by p.
  const double above2 = bm.cum2[guess + 1], below2 = bm.cum2[kEstBuckets] - above2;
  const double var = above2 * (1.0 - top_p) * (1.0 - top_p) + below2 * top_p * top_p;
  const double z = bm.total();
  const double se = z > 0.0 ? std::sqrt((stride - 1.0) * var) / z : 0.0;
  auto edge_at = [&](BracketEdge j) { return bm.bucket_at(top_p + kSpread[j] * se); };
  e[kCentralHigh] = std::min(edge_at(kCentralHigh), guess);
  e[kCentralLow] = std::max(edge_at(kCentralLow), guess) + 1;
  e[kOuterHigh] = std::max<int64_t>(std::min(edge_at(kOuterHigh), e[kCentralHigh] - kOuterGap), 0);
  e[kOuterLow] = std::min<int64_t>(std::max(edge_at(kOuterLow) + 1, e[kCentralLow] + kOuterGap), kEstBuckets);
  int32_t held = 0;  // sampled tokens in an outer region, which then moves in while it holds too many
  int64_t& high = e[kOuterHigh];
  for (int64_t b = high; b < e[kCentralHigh]; ++b) held += bm.count[b];
  for (; high < e[kCentralHigh] - kOuterGap && held > kOuterSample; ++high) held -= bm.count[high];
  held = 0;
  int64_t& low = e[kOuterLow];
  for (int64_t b = e[kCentralLow]; b < low; ++b) held += bm.count[b];
  for (; low > e[kCentralLow] + kOuterGap && held > kOuterSample; --low) held -= bm.count[low - 1];
}

// Bucket edges as values of x: logits (temperature-scaled distance from top), or probs (float bits).
Bracket edge_values(const int64_t* e, bool is_logits, float top, double temperature) {
  Bracket br;
  for (int j = 0; j < kBracketEdges; ++j) {
    const int64_t edge = std::clamp<int64_t>(e[j], 0, kEstBuckets);
    if (!is_logits) {
      br.edges[j] = bucket_edge_weight(top, edge);
    } else if (edge < kEstBuckets) {
      br.edges[j] = static_cast<float>(top - edge * temperature * std::numbers::ln2 / kEstPerOctave);
    } else {
      br.edges[j] = -kInf;
    }
  }
  return br;
}

// Step 1, the estimate: a bracket around the top-p boundary from a sample of the row, bucketed by weight.
// Exactness does not rest on it: the edges only decide which tokens the pass gathers; the pass measures
// the exact masses above each edge, and a boundary outside the bracket costs a second pass, not a wrong
// token. guess_ref: the reference to start the pass from (the sample max plus the usual slack).
Bracket estimate_bracket(const float* x, int64_t n, bool is_logits, double temperature, double top_p,
                         float& guess_ref) {
  Bracket br;
  std::fill(br.edges, br.edges + kBracketEdges, kInf);  // no estimate: the resolve step finds the boundary
  guess_ref = -kInf;
  const int64_t m = std::min(n, kSampleChunk * kSampleChunks);
  thread_local std::vector<float> sample;  // scratch reused across rows
  thread_local std::vector<int32_t> bucket;
  take_sample(x, n, m, sample);
  const SpanStats stats = span_stats(sample.data(), m);
  if (stats.has_nan || !(stats.max > -kInf) || stats.max == kInf || (!is_logits && !(stats.max > 0.0f))) return br;
  if (is_logits) guess_ref = stats.max + kRefSlack * static_cast<float>(temperature);
  bucket.resize(m + 1);
  bucket_sample(sample.data(), m, is_logits, stats.max, temperature, bucket.data());
  BucketMasses bm;
  weigh_buckets(bucket.data(), m, is_logits, stats.max, bm);
  int64_t e[kBracketEdges];
  place_edges(bm, top_p, static_cast<double>(n) / m, e);
  return edge_values(e, is_logits, stats.max, temperature);
}

// Which of at most 2048 buckets over the key range [lo, lo + (2047 << shift)] holds the boundary, given
// the bucket masses (descending walk from cum, as walk_top_p_groups; bucket 0 is never empty). Adds the
// mass of the buckets above it to cum.
int boundary_bucket(const double* hist, int buckets, bool& row_top, double target, double& cum) {
  int boundary = -1;
  for (int d = buckets - 1; d >= 0; --d) {
    if (hist[d] == 0.0 && d > 0) continue;
    if (boundary >= 0) row_top = false;
    boundary = d;
    if (!(cum + hist[d] < target)) break;
    cum += hist[d];
  }
  return boundary;
}

// The shift that splits a key range into about count / 8 buckets (at least 64, at most 2048): walking
// empty buckets costs as much as sorting out the survivors of the boundary's.
int split_shift(uint32_t range, int64_t count) {
  const int bits = std::clamp(static_cast<int>(std::bit_width(static_cast<uint64_t>(count / 8))), 6, 11);
  return std::max(0, static_cast<int>(std::bit_width(range)) - bits);
}

// One split of m tokens (values x, weights w): their value range into buckets (split_shift), and the
// tokens of the bucket holding the boundary copied to out_x/out_w (equal values share a bucket, so ties
// never split). Returns how many; -1, with nothing done, when all keys are equal.
// Keys are linear in the value where the range is finite: float bits are logarithmic in the magnitude, so
// a region around 0 (the boundary of flat rows at p = 0.9) would crowd most tokens into a few buckets.
// Rounding makes the linear keys non-decreasing in the value, never out of order, and tokens closer than
// range / 2^24 that share a key are told apart by the walk over the survivors.
FS_MULTIVERSION int64_t split_at_boundary(const float* x, const float* w, int64_t m, bool& row_top, double target,
                                          double& cum, float* out_x, float* out_w) {
  thread_local std::vector<int32_t> keys;  // each token's key, then its bucket (loops that vectorise)
  keys.resize(m);
  int32_t* key = keys.data();
  float mn = kInf, mx = -kInf;  // region values are never NaN: rows with NaN never get here
#pragma omp simd reduction(min : mn) reduction(max : mx)
  for (int64_t i = 0; i < m; ++i) {
    mn = x[i] < mn ? x[i] : mn;
    mx = x[i] > mx ? x[i] : mx;
  }
  const float scale = 16777216.0f / (mx - mn);  // 2^24 over the range
  if (std::isfinite(scale) && scale > 0.0f) {
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) key[i] = static_cast<int32_t>(std::min((x[i] - mn) * scale, 16777216.0f));
  } else {  // an infinite range: the order of the float bits, shifted into int32 without changing it
    for (int64_t i = 0; i < m; ++i) key[i] = static_cast<int32_t>(float_key(x[i]) ^ 0x80000000u);
  }
  int32_t lo = INT32_MAX, hi = INT32_MIN;
#pragma omp simd reduction(min : lo) reduction(max : hi)
  for (int64_t i = 0; i < m; ++i) {
    lo = key[i] < lo ? key[i] : lo;
    hi = key[i] > hi ? key[i] : hi;
  }
  if (lo == hi) return -1;
  const uint32_t range = static_cast<uint32_t>(hi) - static_cast<uint32_t>(lo);
  const int shift = split_shift(range, m);
  const int buckets = static_cast<int>(range >> shift) + 1;
#pragma omp simd
  for (int64_t i = 0; i < m; ++i) key[i] = static_cast<int32_t>((static_cast<uint32_t>(key[i]) - static_cast<uint32_t>(lo)) >> shift);
  double hist[2048];
  std::fill(hist, hist + buckets, 0.0);
  for (int64_t i = 0; i < m; ++i) hist[key[i]] += w[i];
  const int32_t boundary = boundary_bucket(hist, buckets, row_top, target, cum);
  // The boundary's bucket holds few of the tokens: groups of 16 are tested at once, and only groups that
  // hold some are copied token by token.
  int64_t k = 0;
  for (int64_t g = 0; g < m; g += kLanes) {
    const int64_t end = std::min(m, g + kLanes);
    int hit = 0;
#pragma omp simd reduction(| : hit)
    for (int64_t i = g; i < end; ++i) hit |= key[i] == boundary;
    for (int64_t i = g; hit && i < end; ++i) {
      out_x[k] = x[i];
      out_w[k] = w[i];
      k += key[i] == boundary;
    }
  }
  return k;
}

// The walk of walk_top_p_groups over many tokens (values x, weights w): splits while more than a few
// remain (each split keeps one bucket's tokens, in buffers that take turns), then walks groups exactly.
float refine_top_p(const float* x, const float* w, int64_t count, bool row_top, double target, double& cum) {
  thread_local std::vector<float> buf[2][2];  // [turn][values, weights]
  int64_t m = count;
  for (int turn = 0; m > 64; turn ^= 1) {
    for (auto& b : buf[turn]) b.resize(m);
    const int64_t kept = split_at_boundary(x, w, m, row_top, target, cum, buf[turn][0].data(), buf[turn][1].data());
    if (kept < 0) break;
    x = buf[turn][0].data();
    w = buf[turn][1].data();
    m = kept;
  }
  thread_local std::vector<Valued> work;
  work.resize(m);
  for (int64_t i = 0; i < m; ++i) work[i] = {x[i], w[i]};
  return walk_top_p_groups(work, [](const Valued& t) { return t.w; }, row_top, target, cum);
}

// Adds each block's kept region weight (values >= theta) to blocks[k]; the region's tokens lie in index
// order, block k's at [starts[k], starts[k + 1]). A block holds a few of them: they are summed 16 lanes
// at once, a select rather than a branch (kept or not is a coin toss), where scalar adds would chain.
FS_MULTIVERSION void add_kept_runs(const float* v, const float* w, int64_t count, const int64_t* starts,
                                   int64_t nblocks, float theta, double* blocks) {
  for (int64_t k = 0; k < nblocks; ++k) {
    float s = 0.0f;
    for (int64_t i = starts[k]; i < starts[k + 1]; i += kLanes) {
      const int64_t len = std::min<int64_t>(kLanes, starts[k + 1] - i);
      if (i + kLanes > count) {  // the list's last few tokens: no 16 to read
        for (int64_t l = 0; l < len; ++l) s += v[i + l] >= theta ? w[i + l] : 0.0f;
        continue;
      }
      float part = 0.0f;
#pragma omp simd reduction(+ : part)
      for (int64_t l = 0; l < kLanes; ++l) part += (l < len) & (v[i + l] >= theta) ? w[i + l] : 0.0f;
      s += part;
    }
    blocks[k] += s;
  }
}

// The calling thread's list of a row's region tokens, emptied (kept allocated across rows).
Gathered& region_scratch() {
  thread_local Gathered tokens;
  tokens.values.clear();
  tokens.weights.clear();
  tokens.indices.clear();
  return tokens;
}

// Their float weights: the vectorised loops' own, like the masses they are compared with.
void weigh(Gathered& tokens, const Weighting& wt) {
  tokens.weights.resize(tokens.values.size());
  weights_of(wt, tokens.values.data(), static_cast<int64_t>(tokens.values.size()), tokens.weights.data());
}

// The tokens with lo <= x < hi, on nseg threads, appended to `out`. The buffers stay allocated across rows
// (each thread's own): fresh pages fault, and a large region cost more to map than to gather.
void gather(const float* x, int64_t n, float lo, float hi, int nseg, Gathered& out) {
  if (nseg == 1) return gather_range(x, n, 0, lo, hi, out);
  std::vector<const Gathered*> parts(nseg);
  for_segments(n, nseg, [&](int s, int64_t begin, int64_t end) {
    // One buffer per segment, not per thread: a team may get fewer threads than segments (a call from
    // inside another parallel region runs them all on one thread), and segments must not share one.
    thread_local std::vector<Gathered> by_segment;
    if (static_cast<int>(by_segment.size()) < nseg) by_segment.resize(nseg);
    Gathered& part = by_segment[s];
    part.values.clear();
    part.indices.clear();
    gather_range(x + begin, end - begin, begin, lo, hi, part);
    parts[s] = &part;
  });
  for (const Gathered* part : parts) {
    out.values.insert(out.values.end(), part->values.begin(), part->values.end());
    out.indices.insert(out.indices.end(), part->indices.begin(), part->indices.end());
  }
}

// The central values the pass gathered, into `out`, and where each block's run starts in it.
void central_tokens(const TopPPass& pass, int64_t n, int nseg, Gathered& out, std::vector<int64_t>& starts) {
  const auto nblocks = static_cast<int64_t>(pass.central_start.size());
  starts.resize(nblocks + 1);
  for (int s = 0; s < nseg; ++s) {
    const PassGather& g = pass.central[s];
    const auto before = static_cast<int64_t>(out.values.size());
    const int64_t end = (segment_begin(n, nseg, s + 1) + kPassBlock - 1) / kPassBlock;
    for (int64_t k = segment_begin(n, nseg, s) / kPassBlock; k < end; ++k) {
      starts[k] = before + pass.central_start[k];
    }
    out.values.insert(out.values.end(), g.values, g.values + g.count);
  }
  starts[nblocks] = static_cast<int64_t>(out.values.size());
}

// Where each block's run starts among tokens gathered in index order.
void block_starts(const Gathered& tokens, int64_t nblocks, std::vector<int64_t>& starts) {
  starts.assign(nblocks + 1, 0);
  for (int64_t i : tokens.indices) ++starts[i / kPassBlock + 1];
  for (int64_t k = 0; k < nblocks; ++k) starts[k + 1] += starts[k];
}

// The last of the heaviest block maxima whose weights alone reach the target (by kOrderMargin), or +inf
// when all of them fall short or more than kMaxBoundBlocks would be needed.
float maxima_bound(const TopPPass& pass, double target, const Weighting& wt) {
  const auto nblocks = static_cast<int64_t>(pass.maxima.size());
  const double reach = target * (1.0 + kOrderMargin);
  std::vector<float> heaviest(nblocks);
  weights_of(wt, pass.maxima.data(), nblocks, heaviest.data());
  double all = 0.0;
  for (float w : heaviest) all += w;
  if (!(all >= reach)) return kInf;
  const int64_t top = std::min<int64_t>(nblocks, kMaxBoundBlocks);
  heaviest = pass.maxima;
  // The top ones by selection, then sorted: a heap-based partial sort cost ~5 us a row here.
  std::nth_element(heaviest.begin(), heaviest.begin() + (top - 1), heaviest.end(), std::greater<float>());
  std::sort(heaviest.begin(), heaviest.begin() + top, std::greater<float>());
  double cum = 0.0;
  for (int64_t i = 0; i < top; ++i) {
    cum += weight_of(wt, heaviest[i]);
    if (cum >= reach) return heaviest[i];
  }
  return kInf;
}

// If the heaviest block maxima alone reach the target (a peaked row), every kept token is >= the last of
// them: those few tokens are gathered and walked, and the result lists them. Returns false (result
// untouched) when the maxima fall short or more than a few blocks would be needed.
bool bound_by_maxima(const float* x, int64_t n, const TopPPass& pass, double target, const Weighting& wt,
                     double temperature, TopPResult& result) {
  const float bound = maxima_bound(pass, target, wt);
  if (bound == kInf) return false;
  const auto nblocks = static_cast<int64_t>(pass.maxima.size());
  Gathered& g = region_scratch();
  for (int64_t k = 0; k < nblocks; ++k) {
    if (!(pass.maxima[k] >= bound)) continue;
    const int64_t lo = k * kPassBlock;
    gather_range(x + lo, std::min(kPassBlock, n - lo), lo, bound, kInf, g);
  }
  weigh(g, wt);
  double kept = 0.0;
  result.theta = refine_top_p(g.values.data(), g.weights.data(), static_cast<int64_t>(g.values.size()), true, target, kept);
  result.kept.clear();
  result.mass = 0.0;
  for (size_t i = 0; i < g.values.size(); ++i) {
    if (g.values[i] < result.theta) continue;
    result.kept.push_back({g.values[i], g.indices[i]});
    result.mass += exact_weight(wt, temperature, g.values[i]);
  }
  result.listed = true;
  return true;
}

// The buffer for the central tokens segment s of a pass gathers, the calling thread's own: valid until its
// next pass. One per segment (not one per thread): when a team gets fewer threads than segments (a call
// from inside another parallel region), one thread runs several segments, which must not share a buffer.
PassGather central_scratch(int s, int nseg) {
  thread_local std::vector<std::vector<float>> by_segment;
  if (static_cast<int>(by_segment.size()) < nseg) by_segment.resize(nseg);
  std::vector<float>& values = by_segment[s];
  if (values.empty()) values.resize(kCentralCapacity + kLanes);
  return PassGather{values.data(), kCentralCapacity};
}

// One fused pass over the row (step 2) with bracket br, its segments on nseg threads, merged.
TopPPass bracket_pass(const float* x, int64_t n, bool is_logits, double temperature, const Bracket& br,
                      float guess_ref, int nseg) {
  TopPPass pass;
  pass.bracket = br;
  const float inv_t = is_logits ? static_cast<float>(1.0 / temperature) : 1.0f;
  const int64_t nblocks = (n + kPassBlock - 1) / kPassBlock;
  pass.above.resize(kBracketEdges * nblocks);
  pass.refs.resize(nblocks);
  pass.maxima.resize(nblocks);
  pass.central.resize(nseg);
  pass.central_start.resize(nblocks);
  std::vector<OnlinePass> segs(nseg);
  std::vector<double> mass(static_cast<size_t>(nseg) * kBracketEdges, 0.0);
  for_segments(n, nseg, [&](int s, int64_t lo, int64_t hi) {
    const int64_t k = lo / kPassBlock;
    segs[s].ref = guess_ref;
    pass.central[s] = central_scratch(s, nseg);
    online_bracket_pass(x + lo, hi - lo, is_logits, inv_t, pass.bracket, segs[s], &mass[s * kBracketEdges],
                        BracketBlocks{&pass.above[k], nblocks, &pass.refs[k], &pass.maxima[k], &pass.central_start[k]},
                        pass.central[s]);
  });
  std::vector<double> scales;  // segments summed against their own references: bring them to one
  const OnlinePass row = merge_segments(segs, is_logits, inv_t, &scales);
  pass.has_nan = row.has_nan;
  pass.max = row.max;
  pass.min = row.min;
  pass.ref = row.ref;
  pass.total = row.sum;
  for (int s = 0; s < nseg; ++s) {
    for (int j = 0; j < kBracketEdges; ++j) pass.mass_at[j] += mass[s * kBracketEdges + j] * scales[s];
  }
  return pass;
}

// Whether the exact masses of a pass put the boundary in its central region, whose tokens it gathered
// whole: the mass above the region is < p * W and with it >= p * W.
bool central_holds_boundary(const TopPPass& pass, double top_p) {
  const double target = top_p * pass.total;
  const bool overflowed = std::any_of(pass.central.begin(), pass.central.end(),
                                      [](const PassGather& g) { return g.overflowed(); });
  return pass.mass_at[kCentralHigh] < target && pass.mass_at[kCentralLow] >= target && !overflowed;
}

}  // namespace

TopPPass top_p_first_pass(const float* x, int64_t n, bool is_logits, double temperature, double top_p, int nseg) {
  float guess_ref;
  const Bracket full = estimate_bracket(x, n, is_logits, temperature, top_p, guess_ref);
  // The narrowed bracket first (two edges a token); where its central region misses the boundary, the full
  // bracket's pass measures the outer edges too, so that the region gathered next stays small. Either pass
  // is exact on its own (any bracket is): the second only saves sorting.
  TopPPass pass = bracket_pass(x, n, is_logits, temperature, full.narrowed(), guess_ref, nseg);
  if (full.narrow() || pass.has_nan || central_holds_boundary(pass, top_p)) return pass;
  // Nor where step 3 bounds the row by its block maxima (a peaked row), which no edge decides.
  const float inv_t = is_logits ? static_cast<float>(1.0 / temperature) : 1.0f;
  const Weighting wt{is_logits, is_logits ? pass.ref : pass.max, inv_t};
  if (maxima_bound(pass, top_p * pass.total, wt) != kInf) return pass;
  return bracket_pass(x, n, is_logits, temperature, full, guess_ref, nseg);
}

TopPResult resolve_top_p(const float* x, int64_t n, const TopPPass& pass, double top_p, int nseg,
                         const Weighting& wt, double temperature) {
  TopPResult result;
  const double target = top_p * pass.total;
  const float* t = pass.bracket.edges;
  const double* m = pass.mass_at;
  if (bound_by_maxima(x, n, pass, target, wt, temperature, result)) {
    result.route = TopPRoute::kBlockMaxima;
    route_count[static_cast<int>(result.route)].fetch_add(1, std::memory_order_relaxed);
    return result;
  }
  // The region holding the boundary: the mass above it is < target, and with it >= target. `edge` is the
  // edge just above it (-1: none), whose per-block masses the kept tokens are added to. The pass gathered
  // the central region already, unless it held too many tokens.
  int edge = kBracketEdges - 1;
  while (edge >= 0 && !(m[edge] < target)) --edge;
  const bool overflowed = std::any_of(pass.central.begin(), pass.central.end(),
                                      [](const PassGather& g) { return g.overflowed(); });
  const bool in_pass = edge == kCentralHigh && !overflowed;
  result.route = !pass.bracket.estimated()  ? TopPRoute::kNoEstimate
                 : in_pass                  ? TopPRoute::kCentralHit
                 : edge == kCentralHigh     ? TopPRoute::kCentralOverflow
                                            : TopPRoute::kOuterRegather;
  route_count[static_cast<int>(result.route)].fetch_add(1, std::memory_order_relaxed);
  const int64_t nblocks = static_cast<int64_t>(pass.refs.size());
  Gathered& tokens = region_scratch();
  thread_local std::vector<int64_t> starts;
  if (in_pass) {
    central_tokens(pass, n, nseg, tokens, starts);
  } else {
    gather(x, n, edge + 1 < kBracketEdges ? t[edge + 1] : -kInf, edge >= 0 ? t[edge] : kInf, nseg, tokens);
    block_starts(tokens, nblocks, starts);
  }
  weigh(tokens, wt);
  double cum = edge >= 0 ? m[edge] : 0.0;
  result.theta = refine_top_p(tokens.values.data(), tokens.weights.data(),
                              static_cast<int64_t>(tokens.values.size()), cum == 0.0, target, cum);
  result.mass = cum;
  // Block masses above the region, plus its kept tokens: a draw then scans one block.
  result.blocks.assign(nblocks, 0.0);
  if (edge >= 0) {
    BlockRescale to_row_max([&](float ref) {
      return wt.is_exp ? std::exp((static_cast<double>(ref) - wt.max) / temperature) : 1.0;
    });
    for (int64_t k = 0; k < nblocks; ++k) result.blocks[k] = pass.above[edge * nblocks + k] * to_row_max(pass.refs[k]);
  }
  add_kept_runs(tokens.values.data(), tokens.weights.data(), static_cast<int64_t>(tokens.values.size()),
                starts.data(), nblocks, result.theta, result.blocks.data());
  return result;
}

std::array<int64_t, kTopPRoutes> top_p_route_counts(bool reset) {
  std::array<int64_t, kTopPRoutes> counts;
  for (int r = 0; r < kTopPRoutes; ++r) {
    counts[r] = reset ? route_count[r].exchange(0, std::memory_order_relaxed) : route_count[r].load(std::memory_order_relaxed);
  }
  return counts;
}

}  // namespace fastsample::cpu
