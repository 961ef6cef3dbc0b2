// The vectorised leaf loops declared in simd.h, each compiled for AVX-512, AVX2+FMA and baseline x86-64.
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 intrinsics (max, roundscale, shuffles) start from _mm512_undefined_ps() and warn on their
// own code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif


namespace fastsample::cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// Whether the hand-written AVX-512 loops run. FASTSAMPLE_NO_AVX512=1 turns them off, so that the generic
// loops other machines take are tested here too.
bool use_avx512() {
  static const bool on = __builtin_cpu_supports("avx512f") && std::getenv("FASTSAMPLE_NO_AVX512") == nullptr;
  return on;
}
#endif

// GCC vector extensions, where the auto-vectoriser falls short: 16 floats, lowered to whatever width the
// instruction set at hand has.
typedef float F16 __attribute__((vector_size(64)));

// w[i] = (x[i] >= theta ? exp_nonpositive((x[i] - ref) * inv_t) : 0) over a span; returns their float sum.
inline float exp_weights_generic(const float* x, int64_t n, float ref, float inv_t, float theta, float* w) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i] >= theta ? exp_nonpositive((x[i] - ref) * inv_t) : 0.0f;
    w[i] = v;
    s += v;
  }
  return s;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// exp_weights_generic written out for AVX-512, step for step as exp_nonpositive: GCC predicates the
// generic loop with masks and runs it at about half this speed, and exp throughput bounds every pass.
// exp16_avx512: exp_nonpositive((v - ref) * inv_t) of 16 lanes, 0 where not `lanes`, below the range or
// v < theta (the range clamp and the kept test become one mask that zeroes the result). kTheta = false: no
// theta (-inf), and one compare less in loops that the exp bounds. Unlike exp_nonpositive, NaN gives NaN
// (kTheta = false), so that a sum of weights tells whether its span held NaN.
template <bool kTheta>
__attribute__((target("avx512f"))) inline __m512 exp16_avx512(__m512 v, __mmask16 lanes, __m512 ref, __m512 inv_t,
                                                              __m512 theta) {
  const __m512 low = _mm512_set1_ps(-87.33654f);
  const __m512 y = _mm512_mul_ps(_mm512_sub_ps(v, ref), inv_t);
  __mmask16 keep = lanes & _mm512_cmp_ps_mask(y, low, _CMP_NLT_UQ);  // NaN kept
  if constexpr (kTheta) keep &= _mm512_cmp_ps_mask(v, theta, _CMP_GE_OQ);
  const __m512 c = _mm512_max_ps(low, y);  // the second operand, NaN, where either is NaN
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(c, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fmadd_ps(k, _mm512_set1_ps(2.12194440e-4f), _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), c));
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f)), r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(keep, p, k);
}

// Running stats of 16 lanes (the `lanes` ones): vmaxps/vminps return their second operand when either is
// NaN, so NaN lanes leave the running values alone.
struct Stats16 {
  __m512 max, min;
  __mmask16 nan;
};

__attribute__((target("avx512f"))) inline void see16(Stats16& st, __m512 v, __mmask16 lanes) {
  st.nan |= _mm512_mask_cmp_ps_mask(lanes, v, v, _CMP_UNORD_Q);
  st.max = _mm512_mask_max_ps(st.max, lanes, v, st.max);
  st.min = _mm512_mask_min_ps(st.min, lanes, v, st.min);
}

// Halves of a vector folded onto each other (8 + 8, 4 + 4, 2 + 2, 1 + 1 lanes): a tree of four steps,
// where a scalar walk of the lanes would chain 16 dependent ops, once per block and per reduction.
enum class Fold { kSum, kMax, kMin };

template <Fold kOp>
__attribute__((target("avx512f"))) inline __m512 fold_step(__m512 a, __m512 b) {
  if constexpr (kOp == Fold::kSum) return _mm512_add_ps(a, b);
  if constexpr (kOp == Fold::kMax) return _mm512_max_ps(a, b);
  return _mm512_min_ps(a, b);
}

template <Fold kOp>
__attribute__((target("avx512f"))) inline float fold16(__m512 v) {
  v = fold_step<kOp>(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = fold_step<kOp>(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  v = fold_step<kOp>(v, _mm512_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = fold_step<kOp>(v, _mm512_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_cvtss_f32(v);
}

__attribute__((target("avx512f"))) SpanStats seen_of(const Stats16& st) {
  return {fold16<Fold::kMax>(st.max), fold16<Fold::kMin>(st.min), st.nan != 0};
}

__attribute__((target("avx512f"))) float lane_sum(__m512 v) { return fold16<Fold::kSum>(v); }

// exp_weights_generic for AVX-512; with kSee it also takes the span's stats into *seen in the same read
// (logits only: probs have their own loop). kTheta as exp16_avx512.
template <bool kSee, bool kTheta>
__attribute__((target("avx512f"))) float exp_weights_avx512(const float* x, int64_t n, float ref, float inv_t,
                                                             float theta, float* w, SpanStats* seen) {
  const __m512 vref = _mm512_set1_ps(ref), vinv = _mm512_set1_ps(inv_t), vtheta = _mm512_set1_ps(theta);
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();  // two chains: adds do not wait on each other
  Stats16 st{_mm512_set1_ps(-kInf), _mm512_set1_ps(kInf), 0};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {  // full vectors: plain stores (masked ones are slow on some cores)
    const __m512 v0 = _mm512_loadu_ps(x + i), v1 = _mm512_loadu_ps(x + i + 16);
    if constexpr (kSee) {
      see16(st, v0, 0xFFFF);
      see16(st, v1, 0xFFFF);
    }
    const __m512 e0 = exp16_avx512<kTheta>(v0, 0xFFFF, vref, vinv, vtheta);
    const __m512 e1 = exp16_avx512<kTheta>(v1, 0xFFFF, vref, vinv, vtheta);
    _mm512_storeu_ps(w + i, e0);
    _mm512_storeu_ps(w + i + 16, e1);
    acc0 = _mm512_add_ps(acc0, e0);
    acc1 = _mm512_add_ps(acc1, e1);
  }
  for (; i < n; i += 16) {
    const __mmask16 lanes = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1u);
    const __m512 v = _mm512_maskz_loadu_ps(lanes, x + i);
    if constexpr (kSee) see16(st, v, lanes);
    const __m512 e = exp16_avx512<kTheta>(v, lanes, vref, vinv, vtheta);
    _mm512_mask_storeu_ps(w + i, lanes, e);
    acc0 = _mm512_add_ps(acc0, e);
  }
  if constexpr (kSee) *seen = seen_of(st);
  return lane_sum(_mm512_add_ps(acc0, acc1));
}
#endif

inline float exp_weights(const float* x, int64_t n, float ref, float inv_t, float theta, float* w) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if (use_avx512()) {
    return theta == -kInf ? exp_weights_avx512<false, false>(x, n, ref, inv_t, theta, w, nullptr)
                          : exp_weights_avx512<false, true>(x, n, ref, inv_t, theta, w, nullptr);
  }
#endif
  return exp_weights_generic(x, n, ref, inv_t, theta, w);
}

// Weights of one block into w[0..len), kept ones only (others 0); returns their float sum.
inline float block_kept_weights(const float* x, int64_t len, const Weighting& wt, float theta, float* w) {
  if (wt.is_exp) return exp_weights(x, len, wt.max, wt.inv_t, theta, w);
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < len; ++i) {
    const float v = x[i] >= theta ? x[i] : 0.0f;
    w[i] = v;
    s += v;
  }
  return s;
}

inline SpanStats span_stats_generic(const float* x, int64_t n) {
  float mx = -kInf, mn = kInf;
  int nan = 0;
#pragma omp simd reduction(max : mx) reduction(min : mn) reduction(| : nan)
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    nan |= v != v;
    mx = v > mx ? v : mx;  // a NaN compares false: ignored
    mn = v < mn ? v : mn;
  }
  return {mx, mn, nan != 0};
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// span_stats_generic for AVX-512: GCC spills the generic loop's three reductions to memory. vmaxps and
// vminps return their second operand when either is NaN, so NaN lanes leave the running values alone.
__attribute__((target("avx512f"))) SpanStats span_stats_avx512(const float* x, int64_t n) {
  Stats16 st{_mm512_set1_ps(-kInf), _mm512_set1_ps(kInf), 0};
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 lanes = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1u);
    see16(st, _mm512_maskz_loadu_ps(lanes, x + i), lanes);
  }
  return seen_of(st);
}
#endif

inline SpanStats span_stats_dispatch(const float* x, int64_t n) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if (use_avx512()) return span_stats_avx512(x, n);
#endif
  return span_stats_generic(x, n);
}

// Stats of one block into st and, for logits, the reference raised (with slack) when the block exceeds
// it. Returns the factor that sums taken against the old reference must be multiplied by (1 if unchanged)
// and sets bmax to the block max.
inline double block_stats(const float* xb, int64_t len, bool is_exp, float inv_t, OnlinePass& st, float& bmax) {
  const SpanStats stats = span_stats_dispatch(xb, len);
  const float mx = stats.max, mn = stats.min;
  bmax = mx;
  st.has_nan |= stats.has_nan;
  st.max = mx > st.max ? mx : st.max;
  st.min = mn < st.min ? mn : st.min;
  if (!is_exp || !(mx > st.ref) || st.has_nan || st.max == kInf) return 1.0;
  const float ref = mx + 8.0f / inv_t;  // new references sit 8 temperatures above the block max
  const double scale = std::exp(static_cast<double>(st.ref - ref) * inv_t);  // 0 from -inf
  st.ref = ref;
  return scale;
}

// Whether the span's weights can be summed: rows with NaN or +inf are decided by their stats alone, and
// while every logit so far is -inf there is no reference (x - ref would be NaN).
inline bool weighable(const OnlinePass& st, bool is_exp) {
  return !st.has_nan && st.max != kInf && !(is_exp && st.ref == -kInf);
}

// The weights of one block into w[0..len) against the current reference (all 0 while the span is not
// weighable); returns their float sum.
inline float block_weights(const float* xb, int64_t len, const OnlinePass& st, bool is_exp, float inv_t, float* w) {
  float s = 0.0f;
  if (!weighable(st, is_exp)) {
    std::fill(w, w + len, 0.0f);
  } else if (is_exp) {
    s = exp_weights(xb, len, st.ref, inv_t, -kInf, w);
  } else {
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < len; ++i) {
      w[i] = xb[i];
      s += w[i];
    }
  }
  return s;
}

// One block of the bracket pass, from its weights w (len a multiple of 16, or the block padded with
// tokens of no weight; only the first `real` tokens are gathered): sums[j] = sum of w[i] with
// x[i] >= edges[j], and the central region's values appended to g. Independent
// accumulators: the edges' sums do not wait on each other.
inline void bracket_block(const float* xb, const float* w, int64_t len, int64_t real, const Bracket& br,
                          float* sums, PassGather& g) {
  F16 acc[kBracketEdges] = {};
  const float lo = br.edges[kCentral + 1], hi = br.edges[kCentral];
  for (int64_t i = 0; i < len; i += 16) {
    F16 v, wv;
    std::memcpy(&v, xb + i, sizeof v);
    std::memcpy(&wv, w + i, sizeof wv);
    for (int j = 0; j < kBracketEdges; ++j) acc[j] += v >= br.edges[j] ? wv : F16{};
    // The gather (machines without AVX-512): a bit mask of the group, then its set bits.
    typedef int32_t I16 __attribute__((vector_size(64)));
    const I16 bit = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768};
    const I16 bits = (v >= lo) & (v < hi) & bit;
    uint32_t mask = 0;
    for (int l = 0; l < 16; ++l) mask |= static_cast<uint32_t>(bits[l]);
    const int64_t rem = real - i;
    mask &= rem >= 16 ? 0xFFFFu : rem <= 0 ? 0u : (1u << rem) - 1u;
    for (; mask != 0; mask &= mask - 1, ++g.count) {
      if (g.count >= g.capacity) continue;
      g.values[g.count] = xb[i + __builtin_ctz(mask)];
    }
  }
  for (int j = 0; j < kBracketEdges; ++j) {
    float s = 0.0f;
    for (int l = 0; l < 16; ++l) s += acc[j][l];
    sums[j] = s;
  }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// The whole bracket block for AVX-512, weights included (they never leave registers): a compare into a
// mask register and a masked add per edge (generic vector code takes a blend more), and the gather
// compressing each group of 16 into place without a branch: the region's tokens are spread at random, so
// a branch per group would mispredict. Writes land at min(count, capacity), inside the buffers' 16 spare
// entries. Returns the block's weight sum.
// kSee: also the block's max and whether it may hold NaN into *seen (min not taken): exp16_avx512 makes
// NaN weights of NaN logits, and NaN ones of +inf too, which the caller's redo sorts out.
template <bool kSee>
__attribute__((target("avx512f"))) float weigh_bracket_block_avx512(const float* xb, int64_t len, int64_t real,
                                                                    bool is_exp, float ref, float inv_t,
                                                                    const Bracket& br, float* sums, PassGather& g,
                                                                    SpanStats* seen) {
  __m512 acc[kBracketEdges], edge[kBracketEdges];
  for (int j = 0; j < kBracketEdges; ++j) {
    acc[j] = _mm512_setzero_ps();
    edge[j] = _mm512_set1_ps(br.edges[j]);
  }
  const __m512 vref = _mm512_set1_ps(ref), vinv = _mm512_set1_ps(inv_t), no_theta = _mm512_set1_ps(-kInf);
  __m512 total = _mm512_setzero_ps(), vmax = no_theta;
  int64_t count = g.count;
  float* const values = g.values;  // locals: the stores below could alias g's fields for all GCC knows
  const int64_t capacity = g.capacity;
  for (int64_t i = 0; i < len; i += 16) {
    const __m512 v = _mm512_loadu_ps(xb + i);
    if constexpr (kSee) vmax = _mm512_max_ps(v, vmax);  // NaN lanes keep vmax (the second operand)
    const int64_t rem = real - i;
    const __mmask16 valid = rem >= 16 ? 0xFFFF : rem <= 0 ? 0 : static_cast<__mmask16>((1u << rem) - 1u);
    const __m512 wv = is_exp ? exp16_avx512<false>(v, 0xFFFF, vref, vinv, no_theta) : v;
    total = _mm512_add_ps(total, wv);
    __mmask16 ge[kBracketEdges];
    for (int j = 0; j < kBracketEdges; ++j) {
      ge[j] = _mm512_cmp_ps_mask(v, edge[j], _CMP_GE_OQ);
      acc[j] = _mm512_mask_add_ps(acc[j], ge[j], acc[j], wv);
    }
    const __mmask16 central = ge[kCentral + 1] & ~ge[kCentral] & valid;
    const int64_t at = count < capacity ? count : capacity;
    _mm512_storeu_ps(values + at, _mm512_maskz_compress_ps(central, v));
    count += __builtin_popcount(central);
  }
  g.count = count;
  for (int j = 0; j < kBracketEdges; ++j) sums[j] = lane_sum(acc[j]);
  const float s = lane_sum(total);
  if constexpr (kSee) *seen = {fold16<Fold::kMax>(vmax), kInf, s != s};
  return s;
}
#endif

// Whether a block of logits can be weighed before its stats are known (the fused AVX-512 loops), against
// the reference as it stands.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
inline bool fusable(const OnlinePass& st, bool is_exp) { return use_avx512() && is_exp && weighable(st, is_exp); }
#endif

// Whether a block weighed before its stats were known (the fused AVX-512 loops, against the reference as
// it stood) stands: its max did not exceed the reference, and it held no NaN or +inf. Then folds its stats
// into st; otherwise the caller weighs the block again the generic way (stats first).
inline bool fused_block_stands(const SpanStats& seen, bool is_exp, OnlinePass& st) {
  if (seen.has_nan || seen.max == kInf || (is_exp && !(seen.max <= st.ref))) return false;
  st.max = seen.max > st.max ? seen.max : st.max;
  st.min = seen.min < st.min ? seen.min : st.min;
  return true;
}

// online_pass's block in one AVX-512 read (logits): sets w, s (the weight sum) and bmax. False, with
// nothing changed, where it cannot run or stand.
inline bool fused_block(const float* xb, int64_t len, bool is_exp, float inv_t, OnlinePass& st, float* w, float& s,
                        float& bmax) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if (!fusable(st, is_exp)) return false;
  SpanStats seen;
  s = exp_weights_avx512<true, false>(xb, len, st.ref, inv_t, -kInf, w, &seen);
  if (!fused_block_stands(seen, is_exp, st)) return false;
  bmax = seen.max;
  return true;
#else
  return false;
#endif
}

// One block of online_bracket_pass, after its stats (xb padded to kPassBlock past `real` tokens): adds to
// st.sum, fills sums and gathers into g; w is scratch. AVX-512 keeps the weights in registers.
inline void weigh_bracket_block(const float* xb, int64_t real, bool is_exp, float inv_t, const Bracket& br,
                                OnlinePass& st, float* sums, PassGather& g, float* w) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if (use_avx512() && weighable(st, is_exp)) {
    st.sum += weigh_bracket_block_avx512<false>(xb, kPassBlock, real, is_exp, st.ref, inv_t, br, sums, g, nullptr);
    return;
  }
#endif
  st.sum += block_weights(xb, kPassBlock, st, is_exp, inv_t, w);
  bracket_block(xb, w, kPassBlock, real, br, sums, g);
}

// The same block in one AVX-512 read (logits with a reference), its max taken alongside: the separate
// stats loop cost as much as an eighth of the pass. Sets bmax. False, with g.count possibly advanced and
// nothing else changed, where it cannot run or its block must be weighed again (as fused_block).
inline bool fused_bracket_block(const float* xb, int64_t real, bool is_exp, float inv_t, const Bracket& br,
                                OnlinePass& st, float* sums, PassGather& g, float& bmax) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if (!fusable(st, is_exp)) return false;
  SpanStats seen;
  const float s = weigh_bracket_block_avx512<true>(xb, kPassBlock, real, true, st.ref, inv_t, br, sums, g, &seen);
  if (!fused_block_stands(seen, is_exp, st)) return false;
  st.sum += s;
  bmax = seen.max;
  return true;
#else
  return false;
#endif
}

}  // namespace

SpanStats span_stats(const float* x, int64_t n) { return span_stats_dispatch(x, n); }

FS_MULTIVERSION void online_pass(const float* x, int64_t n, bool is_exp, float inv_t, OnlinePass& st,
                                 PassBlocks blocks) {
  float w[kPassBlock];
  for (int64_t b = 0; b < n; b += kPassBlock) {
    const int64_t len = n - b < kPassBlock ? n - b : kPassBlock;
    const float* xb = x + b;
    float bmax, s;
    if (!fused_block(xb, len, is_exp, inv_t, st, w, s, bmax)) {
      st.sum *= block_stats(xb, len, is_exp, inv_t, st, bmax);
      s = block_weights(xb, len, st, is_exp, inv_t, w);
    }
    st.sum += s;
    if (blocks.sums) blocks.sums[b / kPassBlock] = s;
    if (blocks.refs) blocks.refs[b / kPassBlock] = st.ref;
    if (blocks.weights) std::memcpy(blocks.weights + b, w, len * sizeof(float));
  }
}

FS_MULTIVERSION void online_bracket_pass(const float* x, int64_t n, bool is_exp, float inv_t, const Bracket& br,
                                         OnlinePass& st, double* mass_at, BracketBlocks blocks, PassGather& g) {
  float w[kPassBlock], xs[kPassBlock];
  for (int64_t b = 0; b < n; b += kPassBlock) {
    const int64_t len = n - b < kPassBlock ? n - b : kPassBlock;
    const int64_t k = b / kPassBlock;
    const float* xb = x + b;
    if (len < kPassBlock) {  // a short last block: padded with tokens of no weight
      std::fill(std::copy(xb, xb + len, xs), xs + kPassBlock, is_exp ? -kInf : 0.0f);
      xb = xs;
    }
    blocks.central[k] = g.count;
    float sums[kBracketEdges];
    if (!fused_bracket_block(xb, len, is_exp, inv_t, br, st, sums, g, blocks.max[k])) {
      g.count = blocks.central[k];  // stats first, then the weights against the reference they set
      const double scale = block_stats(x + b, len, is_exp, inv_t, st, blocks.max[k]);
      if (scale != 1.0) {
        st.sum *= scale;
        for (int j = 0; j < kBracketEdges; ++j) mass_at[j] *= scale;
      }
      weigh_bracket_block(xb, len, is_exp, inv_t, br, st, sums, g, w);
    }
    blocks.refs[k] = st.ref;
    for (int j = 0; j < kBracketEdges; ++j) {
      mass_at[j] += sums[j];
      blocks.above[j * blocks.stride + k] = sums[j];
    }
  }
}

// gather_range: the tokens in range are few and spread at random, so a branch per token would mispredict.
// AVX-512 compresses each group of 16 into place without a branch; other machines reduce the group to a
// bit mask (vector extensions) and visit its set bits. Both write into the vectors grown ahead (so the
// loop makes no calls that would spill its registers) and trim them at the end.
namespace {

// Makes room for 16 more tokens after the first k.
inline void room_for_16(Gathered& out, size_t k) {
  if (k + 16 <= out.values.size()) return;
  const size_t size = std::max<size_t>(2 * out.values.size(), k + 1024);
  out.values.resize(size);
  out.indices.resize(size);
}

}  // namespace

void gather_range_generic(const float* x, int64_t n, int64_t base, float lo, float hi, Gathered& out) {
  typedef int32_t I16 __attribute__((vector_size(64)));
  const I16 bit = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768};
  size_t k = out.values.size();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    F16 v;
    std::memcpy(&v, x + i, sizeof v);
    const I16 bits = (v >= lo) & (v < hi) & bit;
    uint32_t mask = 0;
    for (int l = 0; l < 16; ++l) mask |= static_cast<uint32_t>(bits[l]);
    if (mask == 0) continue;
    room_for_16(out, k);
    for (; mask != 0; mask &= mask - 1, ++k) {
      const int64_t j = i + __builtin_ctz(mask);
      out.values[k] = x[j];
      out.indices[k] = base + j;
    }
  }
  for (; i < n; ++i) {
    room_for_16(out, k);
    out.values[k] = x[i];
    out.indices[k] = base + i;
    k += x[i] >= lo && x[i] < hi;
  }
  out.values.resize(k);
  out.indices.resize(k);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target("avx512f"))) void gather_range_avx512(const float* x, int64_t n, int64_t base, float lo,
                                                             float hi, Gathered& out) {
  const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  const __m512i lanes = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  size_t k = out.values.size();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    room_for_16(out, k);
    const __m512 v = _mm512_loadu_ps(x + i);
    const __mmask16 mask = _mm512_cmp_ps_mask(v, vlo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(v, vhi, _CMP_LT_OQ);
    const auto low = static_cast<__mmask8>(mask), high = static_cast<__mmask8>(mask >> 8);
    const __m512i at = _mm512_add_epi64(lanes, _mm512_set1_epi64(base + i));
    _mm512_storeu_ps(&out.values[k], _mm512_maskz_compress_ps(mask, v));
    _mm512_storeu_si512(&out.indices[k], _mm512_maskz_compress_epi64(low, at));
    const size_t k_high = k + __builtin_popcount(low);
    _mm512_storeu_si512(&out.indices[k_high], _mm512_maskz_compress_epi64(high, _mm512_add_epi64(at, _mm512_set1_epi64(8))));
    k = k_high + __builtin_popcount(high);
  }
  out.values.resize(k);
  out.indices.resize(k);
  gather_range_generic(x + i, n - i, base + i, lo, hi, out);  // the tail
}
#endif

void gather_range(const float* x, int64_t n, int64_t base, float lo, float hi, Gathered& out) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if (use_avx512()) return gather_range_avx512(x, n, base, lo, hi, out);
#endif
  gather_range_generic(x, n, base, lo, hi, out);
}

FS_MULTIVERSION void weights_of(const Weighting& wt, const float* x, int64_t n, float* w) {
  if (!wt.is_exp) {
    std::copy(x, x + n, w);
    return;
  }
  exp_weights(x, n, wt.max, wt.inv_t, -kInf, w);
}

FS_MULTIVERSION void kept_block_sums(const float* x, int64_t n, Weighting wt, float theta, float* sums) {
  float w[kPassBlock];
  for (int64_t b = 0; b < n; b += kPassBlock) {
    const int64_t len = n - b < kPassBlock ? n - b : kPassBlock;
    sums[b / kPassBlock] = block_kept_weights(x + b, len, wt, theta, w);
  }
}

FS_MULTIVERSION double kept_weight_sum(const float* x, int64_t n, Weighting wt, float theta) {
  double total = 0.0;
  float buf[kBlock];
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t len = n - b < kBlock ? n - b : kBlock;
    total += block_kept_weights(x + b, len, wt, theta, buf);
  }
  return total;
}

FS_MULTIVERSION int64_t find_crossing(const float* x, int64_t n, Weighting wt, float theta, double target,
                                      double& cum, int64_t& last_kept) {
  float w[kBlock];
  int64_t last_block = -1;  // the last block with positive kept weight: holds the fallback token
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t len = n - b < kBlock ? n - b : kBlock;
    const float s = block_kept_weights(x + b, len, wt, theta, w);
    if (s <= 0.0f) continue;
    last_block = b;
    if (cum + s > target) {  // the step is inside this block: walk it in double, in index order
      double c = cum;
      for (int64_t i = 0; i < len; ++i) {
        c += w[i];
        if (w[i] > 0.0f && c > target) {
          cum = c;
          return b + i;
        }
      }
    }
    cum += s;
  }
  if (last_block >= 0) {
    const int64_t len = n - last_block < kBlock ? n - last_block : kBlock;
    block_kept_weights(x + last_block, len, wt, theta, w);
    for (int64_t i = len - 1; i >= 0; --i) {
      if (w[i] > 0.0f) {
        last_kept = last_block + i;
        break;
      }
    }
  }
  return -1;
}

FS_MULTIVERSION void write_kept_weights(const float* x, int64_t n, Weighting wt, float theta, float scale,
                                        float* out) {
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t len = n - b < kBlock ? n - b : kBlock;
    block_kept_weights(x + b, len, wt, theta, out + b);
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) out[b + i] *= scale;
  }
}

FS_MULTIVERSION SpanStats block_maxima(const float* x, int64_t n, float* block_max) {
  int nan = 0;
  float mx = -kInf, mn = kInf;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t len = n - b < kBlock ? n - b : kBlock;
    float m = -kInf;
#pragma omp simd reduction(max : m) reduction(min : mn) reduction(| : nan)
    for (int64_t i = 0; i < len; ++i) {
      const float v = x[b + i];
      nan |= v != v;
      m = v > m ? v : m;
      mn = v < mn ? v : mn;
    }
    block_max[b / kBlock] = m;
    mx = m > mx ? m : mx;
  }
  return {mx, mn, nan != 0};
}

}  // namespace fastsample::cpu
