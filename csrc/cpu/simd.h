// Vectorised leaf loops of the CPU kernels: one pass over a float32 span each.
//
// They are compiled once per instruction set (AVX-512, AVX2+FMA, baseline x86-64) by GCC function
// multiversioning and the best clone is picked when the library loads, so one build runs on any x86-64
// and still uses the wide units where they exist. Loops are written for the auto-vectoriser: fixed-size
// blocks, no early exits inside a block, `omp simd` reductions. The hottest ones (exp, row stats, the top-p
// bracket block, gathers) also have AVX-512 intrinsics versions in simd.cpp, picked at run time
// (FASTSAMPLE_NO_AVX512=1 keeps the generic ones).
#pragma once
#include <cstdint>
#include <vector>

// Compiles a function once per instruction set, the best clone picked when the library loads.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FS_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FS_MULTIVERSION
#endif

namespace fastsample::cpu {

// Weights of a row (docs/ops.md): probs are their own weights; logits weigh exp((x - max) * inv_t).
struct Weighting {
  bool is_exp;  // logits
  float max;    // row max (logits)
  float inv_t;  // 1 / temperature (logits)
};

// exp(y) for y <= 0 (y = -inf included), vectorisable: Cody-Waite reduction by ln 2 and a degree-7
// polynomial, in Horner form down to its last two coefficients, 1 and 1 (relative error < 1.3 ulp).
// Below -87.33 the float result would be denormal: return exactly 0 so masked (-inf) tokens weigh nothing.
inline float exp_nonpositive(float y) {
  constexpr float kLow = -87.33654f;
  const float c = y > kLow ? y : kLow;  // max(y, kLow): -inf and NaN-free inputs map into range
  const float n = (c * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest integer
  float r = c - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = (p * r + 1.0f) * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof scale);
  return p * scale * static_cast<float>(y >= kLow);  // a multiply, not a select: vectorises on AVX2 too
}

// A token's weight exactly as the vectorised loops compute it (so a token's share of a sum they made is
// consistent with it).
inline float weight_of(const Weighting& wt, float x) {
  return wt.is_exp ? exp_nonpositive((x - wt.max) * wt.inv_t) : x;
}

struct SpanStats {
  float max;     // NaN ignored
  float min;     // NaN ignored
  bool has_nan;
};

SpanStats span_stats(const float* x, int64_t n);

// State of the fused first pass over a span (online softmax normaliser + stats).
// Logit weights are taken relative to a reference `ref` >= every value seen, raised with some slack
// whenever a block exceeds it (the running sums are rescaled then), so weights never exceed 1 and
// rescales are rare even for ascending inputs. Start from OnlinePass{} (or with `ref` preset to a good
// guess) and merge spans by bringing their sums to the largest reference.
struct OnlinePass {
  float max = -__builtin_inff();
  float min = __builtin_inff();
  bool has_nan = false;
  float ref = -__builtin_inff();  // logits: the weights are exp((x - ref) * inv_t); probs: unused
  double sum = 0.0;               // sum of the weights
};

// The first pass reads x in blocks of this many tokens and can record per-block facts (weight sums,
// maxima), so that a draw later walks block sums and scans a single block instead of the row.
constexpr int64_t kPassBlock = 256;

// Per-block record of online_pass: sums[j] is block j's weight sum against reference refs[j]
// (ceil(n / kPassBlock) entries each) and weights[i] token i's weight against its block's reference
// (n entries). Null pointers: not recorded.
struct PassBlocks {
  float* sums = nullptr;
  float* refs = nullptr;
  float* weights = nullptr;
};

// One read of x: stats, the weight sum and the block records. Spans holding +inf or NaN get stats only.
void online_pass(const float* x, int64_t n, bool is_exp, float inv_t, OnlinePass& state, PassBlocks blocks);

// Tokens gathered from a span, in index order; weights are filled in by whoever needs them.
struct Gathered {
  std::vector<float> values, weights;
  std::vector<int64_t> indices;
};

// A top-p bracket (csrc/cpu/top_p.h): thresholds, descending, at which the first pass finds exact masses.
// The boundary most likely lies in the central region [edges[kCentral + 1], edges[kCentral]), whose tokens
// the pass gathers as it goes; the outer edges narrow the search when it does not.
constexpr int kBracketEdges = 4;
constexpr int kCentral = 1;
struct Bracket {
  float edges[kBracketEdges];
};

// Per-block record of online_bracket_pass (ceil(n / kPassBlock) entries per array): above[j * stride + k]
// is the weight of block k's tokens with x >= edges[j], against reference refs[k]; max[k] the block max;
// central[k] how many central tokens the span's earlier blocks held (block k's follow them).
struct BracketBlocks {
  float* above;
  int64_t stride;
  float* refs;
  float* max;
  int64_t* central;
};

// The central region's values as online_bracket_pass gathers them, in index order (which block each
// came from is in BracketBlocks::central). The buffer holds capacity + 16 entries; `count` goes on past
// `capacity` when the region holds more tokens, and then only the first `capacity` were kept.
struct PassGather {
  float* values;
  int64_t capacity;
  int64_t count = 0;
  bool overflowed() const { return count > capacity; }
};

// online_pass fused with a bracket: also adds the weight of the tokens with x >= edges[j] to mass_at[j]
// (against the span's final reference), records the blocks and gathers the central region.
void online_bracket_pass(const float* x, int64_t n, bool is_exp, float inv_t, const Bracket& bracket,
                         OnlinePass& state, double* mass_at, BracketBlocks blocks, PassGather& gather);

// Gathers the tokens of a span with lo <= x < hi (index = base + position), without weights.
void gather_range(const float* x, int64_t n, int64_t base, float lo, float hi, Gathered& out);

// w[i] = weight_of(wt, x[i]), vectorised.
void weights_of(const Weighting& wt, const float* x, int64_t n, float* w);

// sums[j] = kept weight (x >= theta) of block j of kPassBlock tokens.
void kept_block_sums(const float* x, int64_t n, Weighting wt, float theta, float* sums);

// sum of the weights of the tokens with x >= theta.
double kept_weight_sum(const float* x, int64_t n, Weighting wt, float theta);

// Inverse-CDF step over a span: adds the kept weights (x >= theta) to `cum` in index order and returns
// the first index at which cum > target, or -1 (cum then holds the span's total added). `last_kept` gets
// the last kept index of positive weight seen (or stays as passed in), the fallback where float rounding
// never crosses.
int64_t find_crossing(const float* x, int64_t n, Weighting wt, float theta, double target, double& cum,
                      int64_t& last_kept);

// Writes out[i] = (x[i] >= theta ? weight(x[i]) * scale : 0).
void write_kept_weights(const float* x, int64_t n, Weighting wt, float theta, float scale, float* out);

// Blocks of this many elements are tested at once by the candidate filter (csrc/cpu/select.h).
constexpr int64_t kBlock = 64;

// Max of each kBlock-sized block of x (the last one may be shorter), and the span's stats. Lets the top-k
// filter skip whole blocks below its running threshold without a branch per element.
SpanStats block_maxima(const float* x, int64_t n, float* block_max);

// Order-preserving map of a non-NaN float to uint32 (-0 and +0 map to the same key).
inline uint32_t float_key(float x) {
  x += 0.0f;  // -0 -> +0
  uint32_t u;
  __builtin_memcpy(&u, &x, sizeof u);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

}  // namespace fastsample::cpu
