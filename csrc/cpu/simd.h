// Vectorised leaf loops of the CPU kernels: one pass over a float32 span each.
//
// They are compiled once per instruction set (AVX-512, AVX2+FMA, baseline x86-64) by GCC function
// multiversioning and the best clone is picked when the library loads, so one build runs on any x86-64
// and still uses the wide units where they exist. Loops are written for the auto-vectoriser: fixed-size
// blocks, no early exits inside a block, `omp simd` reductions.
#pragma once
#include <cstdint>
#include <vector>

namespace fastsample::cpu {

// Weights of a row (docs/ops.md): probs are their own weights; logits weigh exp((x - max) * inv_t).
struct Weighting {
  bool is_exp;  // logits
  float max;    // row max (logits)
  float inv_t;  // 1 / temperature (logits)
};

struct SpanStats {
  float max;     // NaN ignored
  float min;     // NaN ignored
  bool has_nan;
};

SpanStats span_stats(const float* x, int64_t n);

// Online softmax normaliser over a span: on return `max` is the span max and `sum` = sum exp((x-max)*inv_t),
// both updated from their input values (start with -inf, 0). One read of x. Undefined if the span holds
// +inf or NaN: callers check span_stats or handle those rows first.
void online_exp_sum(const float* x, int64_t n, float inv_t, float& max, double& sum);

// sum of the weights, and (if w != nullptr) the weights themselves stored to w.
double weight_sum(const float* x, int64_t n, Weighting wt, float* w);

// sum of the weights of the tokens with x >= theta.
double kept_weight_sum(const float* x, int64_t n, Weighting wt, float theta);

// Inverse-CDF step over a span: adds the kept weights (x >= theta) to `cum` in index order and returns
// the first index at which cum > target, or -1 (cum then holds the span's total added). `last_kept` gets
// the last kept index seen (or stays as passed in), the fallback where float rounding never crosses.
int64_t find_crossing(const float* x, int64_t n, Weighting wt, float theta, double target, double& cum,
                      int64_t& last_kept);

// Adds each token's weight to hist[mass_bucket(w)] (kMassBuckets doubles) and returns the total weight.
double mass_histogram(const float* x, int64_t n, Weighting wt, double* hist);

// Writes out[i] = (x[i] >= theta ? weight(x[i]) * scale : 0).
void write_kept_weights(const float* x, int64_t n, Weighting wt, float theta, float scale, float* out);

// Blocks of this many elements are tested at once by the candidate filter (csrc/cpu/select.h).
constexpr int64_t kBlock = 64;

// Max of each kBlock-sized block of x (the last one may be shorter), and the span's stats. Lets the top-k
// filter skip whole blocks below its running threshold without a branch per element.
SpanStats block_maxima(const float* x, int64_t n, float* block_max);

struct WeightedToken {
  float x;  // the token's value (logit or prob)
  float w;  // its weight
  int64_t index;
};

// Appends every token of the span whose weight falls in mass bucket `bucket` (index = base + position).
void gather_bucket(const float* x, int64_t n, int64_t base, Weighting wt, int bucket,
                   std::vector<WeightedToken>& out);

// Probability-mass buckets: bits 30..20 of a non-negative float (8 exponent bits, 3 mantissa bits -> 1/8
// relative width); monotone in the weight, so in the token's value.
constexpr int kMassBuckets = 2048;
inline int mass_bucket(float w) {
  uint32_t bits;
  __builtin_memcpy(&bits, &w, sizeof bits);
  return static_cast<int>(bits >> 20);
}

}  // namespace fastsample::cpu
