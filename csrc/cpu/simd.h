// Vectorised leaf loops of the CPU kernels: one pass over a float32 span each, free of any one kernel's
// rules (the top-p bracket pass built on them lives with top-p, csrc/cpu/top_p_bracket.h).
//
// They are compiled once per instruction set (AVX-512, AVX2+FMA, baseline x86-64) by GCC function
// multiversioning and the best clone is picked when the library loads, so one build runs on any x86-64
// and still uses the wide units where they exist. Loops are written for the auto-vectoriser: fixed-size
// blocks, no early exits inside a block, `omp simd` reductions. The hottest ones (exp, row stats, gathers,
// the top-p bracket block) also have hand-written vector versions, picked at run time (isa.h): the loops of
// vec_loops.h over AVX-512, AVX2 or NEON primitives (vec_paths.h).
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

// x86-64 with GCC: the function multiversioning and the intrinsics code paths exist.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FS_X86_GCC 1
#else
#define FS_X86_GCC 0
#endif

// Compiles a function once per instruction set, the best clone picked when the library loads.
#if FS_X86_GCC
#define FS_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FS_MULTIVERSION
#endif

namespace fastsample::cpu {

constexpr float kInf = __builtin_inff();
// The vector loops work in groups of this many floats (one AVX-512 register).
constexpr int64_t kLanes = 16;

// Weights of a row (docs/ops.md): probs are their own weights; logits weigh exp((x - max) * inv_t).
struct Weighting {
  bool is_exp;  // logits
  float max;    // row max (logits)
  float inv_t;  // 1 / temperature (logits)
};

// exp(y) for y <= 0 (y = -inf included), vectorisable: Cody-Waite reduction by ln 2 (kLn2Hi - kLn2Lo) and
// a degree-7 polynomial, in Horner form: kExpPoly, then its last two coefficients, 1 and 1 (relative error
// < 1.3 ulp). Below kExpLow the float result would be denormal: return exactly 0 so masked (-inf) tokens
// weigh nothing. The primitives of vec_loops.h (vec_avx512.h, ...) compute the same, step for step.
constexpr float kExpLow = -87.33654f;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = 2.12194440e-4f;  // ln 2 = kLn2Hi - kLn2Lo
constexpr int kExpPolyTerms = 6;
constexpr float kExpPoly[kExpPolyTerms] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                           4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

inline float exp_nonpositive(float y) {
  const float c = y > kExpLow ? y : kExpLow;  // max(y, kExpLow): -inf and NaN-free inputs map into range
  const float n = (c * kLog2e + 12582912.0f) - 12582912.0f;  // round to nearest integer (1.5 * 2^23)
  float r = c - n * kLn2Hi;
  r = r + n * kLn2Lo;
  float p = kExpPoly[0];
  for (int j = 1; j < kExpPolyTerms; ++j) p = p * r + kExpPoly[j];
  p = (p * r + 1.0f) * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof scale);
  return p * scale * static_cast<float>(y >= kExpLow);  // a multiply, not a select: vectorises on AVX2 too
}

// A token's weight exactly as the vectorised loops compute it (so a token's share of a sum they made is
// consistent with it).
inline float weight_of(const Weighting& wt, float x) {
  return wt.is_exp ? exp_nonpositive((x - wt.max) * wt.inv_t) : x;
}

// The same weight in double, exactly: exp((x - max) / temperature) for logits. Where a few tokens are
// weighed one by one (listed plans, the top-p walks), they use this.
inline double exact_weight(const Weighting& wt, double temperature, float x) {
  return wt.is_exp ? std::exp((static_cast<double>(x) - wt.max) / temperature) : x;
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
  float max = -kInf;
  float min = kInf;
  bool has_nan = false;
  float ref = -kInf;  // logits: the weights are exp((x - ref) * inv_t); probs: unused
  double sum = 0.0;   // sum of the weights
};

// A new reference sits this many temperatures above the value that raised it: rescales stay rare even
// for ascending rows. The top-p estimate's guessed reference uses the same slack.
constexpr float kRefSlack = 8.0f;

// The factor that brings a weight sum taken against reference `from` to reference `to` (logits; 0 from
// -inf). Probs have no reference: 1.
inline double rescale_factor(bool is_exp, float from, float to, double inv_t) {
  return is_exp ? std::exp((static_cast<double>(from) - to) * inv_t) : 1.0;
}

// The passes of a row's segments as one: stats merged and the sums brought to the largest reference.
// scales[s] (when given) gets segment s's factor, for other sums taken against its reference.
OnlinePass merge_segments(const std::vector<OnlinePass>& segs, bool is_exp, float inv_t,
                          std::vector<double>* scales = nullptr);

// Per-block sums recorded against their blocks' references, brought to one: references change rarely
// along a row, so the factor is computed once per change. factor(ref) is the caller's rescale.
template <class Factor>
class BlockRescale {
 public:
  explicit BlockRescale(Factor factor) : factor_(factor) {}
  double operator()(float ref) {
    if (!(ref == last_)) {
      last_ = ref;
      scale_ = factor_(ref);
    }
    return scale_;
  }

 private:
  Factor factor_;
  float last_ = __builtin_nanf("");
  double scale_ = 1.0;
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

// Gathers the tokens of a span with lo <= x < hi (index = base + position), without weights.
void gather_range(const float* x, int64_t n, int64_t base, float lo, float hi, Gathered& out);

// w[i] = weight_of(wt, x[i]), vectorised.
void weights_of(const Weighting& wt, const float* x, int64_t n, float* w);

// sums[j] = kept weight (x >= theta) of block j of kPassBlock tokens.
void kept_block_sums(const float* x, int64_t n, Weighting wt, float theta, float* sums);

// sum of the weights of the tokens with x >= theta.
double kept_weight_sum(const float* x, int64_t n, Weighting wt, float theta);

// Inverse-CDF step over a span (inverse_cdf.h), on the kept weights (x >= theta) from `cum`: the first
// index at which the running mass exceeds target, or -1 (cum then holds the span's total added).
// `last_kept` gets the last kept index of positive weight seen (or stays as passed in), the fallback where
// float rounding never crosses.
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
