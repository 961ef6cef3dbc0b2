// The vectorised leaf loops declared in simd.h, each compiled for AVX-512, AVX2+FMA and baseline x86-64.
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FS_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FS_MULTIVERSION
#endif

namespace fastsample::cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Weights of one block into w[0..len), kept ones only (others 0); returns their float sum.
inline float block_kept_weights(const float* x, int64_t len, const Weighting& wt, float theta, float* w) {
  float s = 0.0f;
  if (wt.is_exp) {
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < len; ++i) {
      const float v = x[i] >= theta ? exp_nonpositive((x[i] - wt.max) * wt.inv_t) : 0.0f;
      w[i] = v;
      s += v;
    }
  } else {
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < len; ++i) {
      const float v = x[i] >= theta ? x[i] : 0.0f;
      w[i] = v;
      s += v;
    }
  }
  return s;
}

// Appends the `hits` tokens of a block for which in(x) holds, without a branch per token: such tokens are
// spread at random, so a branch would mispredict.
template <class In>
inline void append_where(const float* x, const float* w, int64_t len, int64_t base, int hits, In in,
                         Gathered& out) {
  size_t k = out.values.size();
  out.values.resize(k + hits);
  out.weights.resize(k + hits);
  out.indices.resize(k + hits);
  for (int64_t i = 0; i < len && k < out.values.size(); ++i) {
    out.values[k] = x[i];
    out.weights[k] = w[i];
    out.indices[k] = base + i;
    k += in(x[i]);
  }
}

}  // namespace

FS_MULTIVERSION SpanStats span_stats(const float* x, int64_t n) {
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

FS_MULTIVERSION void online_pass(const float* x, int64_t n, bool is_exp, float inv_t, OnlinePass& st,
                                 double* hist, int hist_stride, PassBlocks blocks) {
  // Long exact spans use two interleaved histograms: consecutive tokens in one bucket would otherwise
  // chain every add on the previous store. Merged into hist at the end.
  static thread_local double pair[2][kMassBuckets];
  const bool split = hist && hist_stride == 1 && n >= 8 * kMassBuckets;
  double* h[2] = {hist, hist};
  if (split) {
    std::memset(pair, 0, sizeof pair);
    h[0] = pair[0];
    h[1] = pair[1];
  }
  const float slack = 8.0f / inv_t;  // new references sit 8 temperatures above the block max
  float w[kPassBlock];
  int32_t bucket[kPassBlock];
  for (int64_t b = 0; b < n; b += kPassBlock) {
    const int64_t len = n - b < kPassBlock ? n - b : kPassBlock;
    const float* xb = x + b;
    float bmax = -kInf, bmin = kInf;
    int nan = 0;
#pragma omp simd reduction(max : bmax) reduction(min : bmin) reduction(| : nan)
    for (int64_t i = 0; i < len; ++i) {
      nan |= xb[i] != xb[i];
      bmax = xb[i] > bmax ? xb[i] : bmax;
      bmin = xb[i] < bmin ? xb[i] : bmin;
    }
    st.has_nan |= nan != 0;
    st.max = bmax > st.max ? bmax : st.max;
    st.min = bmin < st.min ? bmin : st.min;
    float s = 0.0f;
    if (st.has_nan || st.max == kInf) {
      // such rows are decided by their stats alone
    } else if (is_exp) {
      if (bmax > st.ref) {
        const float ref = bmax + slack;
        const double scale = std::exp(static_cast<double>(st.ref - ref) * inv_t);  // 0 from -inf
        st.sum *= scale;
        if (hist) {
          for (int k = 0; k < kMassBuckets; ++k) h[0][k] *= scale;
          if (split) {
            for (int k = 0; k < kMassBuckets; ++k) h[1][k] *= scale;
          }
        }
        st.ref = ref;
      }
      const float ref = st.ref;
      if (ref == -kInf) {  // every token so far is -inf: weight 0 (and x - ref would be NaN)
        std::fill(w, w + len, 0.0f);
      } else {
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < len; ++i) {
          w[i] = exp_nonpositive((xb[i] - ref) * inv_t);
          s += w[i];
        }
      }
    } else {
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < len; ++i) {
        w[i] = xb[i];
        s += w[i];
      }
    }
    st.sum += s;
    if (blocks.sums) blocks.sums[b / kPassBlock] = s;
    if (blocks.refs) blocks.refs[b / kPassBlock] = st.ref;
    if (blocks.weights) std::memcpy(blocks.weights + b, w, len * sizeof(float));
    if (hist && s > 0.0f && hist_stride > 1) {
      // The block's heaviest token counts exactly (peaked rows keep most of their mass in a few such
      // tokens); every other stride-th token stands for stride tokens.
      int64_t heaviest = len;
#pragma omp simd reduction(min : heaviest)
      for (int64_t i = 0; i < len; ++i) heaviest = xb[i] == bmax && i < heaviest ? i : heaviest;
      h[0][key_bucket(bmax)] += w[heaviest];
      for (int64_t i = 0; i < len; i += hist_stride) {
        if (i != heaviest) h[0][key_bucket(xb[i])] += w[i] * hist_stride;
      }
    } else if (hist && s > 0.0f) {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) bucket[i] = key_bucket(xb[i]);
      double *h0 = h[0], *h1 = h[1];
      int64_t i = 0;
      for (; i + 1 < len; i += 2) {
        h0[bucket[i]] += w[i];
        h1[bucket[i + 1]] += w[i + 1];
      }
      if (i < len) h0[bucket[i]] += w[i];
    }
  }
  if (split) {
    for (int k = 0; k < kMassBuckets; ++k) hist[k] += pair[0][k] + pair[1][k];
  }
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

FS_MULTIVERSION void gather_key_bucket(const float* x, int64_t n, int64_t base, Weighting wt, int bucket,
                                       Gathered& out) {
  float w[kBlock];
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t len = n - b < kBlock ? n - b : kBlock;
    int hits = 0;
#pragma omp simd reduction(+ : hits)
    for (int64_t i = 0; i < len; ++i) hits += key_bucket(x[b + i]) == bucket;
    if (hits == 0) continue;
    block_kept_weights(x + b, len, wt, -kInf, w);
    append_where(x + b, w, len, base + b, hits, [&](float v) { return key_bucket(v) == bucket; }, out);
  }
}

FS_MULTIVERSION void bracket_pass(const float* x, int64_t n, int64_t base, Weighting wt, const float* thresholds,
                                  double* mass_at, int gather_edge, Gathered& out, float* block_above,
                                  int64_t nblocks) {
  static_assert(kBracketEdges == 8, "one accumulator per edge below");
  const float t0 = thresholds[0], t1 = thresholds[1], t2 = thresholds[2], t3 = thresholds[3];
  const float t4 = thresholds[4], t5 = thresholds[5], t6 = thresholds[6], t7 = thresholds[7];
  const float lo = thresholds[gather_edge + 1], hi = thresholds[gather_edge];
  float w[kPassBlock];
  for (int64_t b = 0; b < n; b += kPassBlock) {
    const int64_t len = n - b < kPassBlock ? n - b : kPassBlock;
    const float* xb = x + b;
    block_kept_weights(xb, len, wt, -kInf, w);
    // One loop, independent accumulators: the edges' sums do not wait on each other.
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f, s4 = 0.0f, s5 = 0.0f, s6 = 0.0f, s7 = 0.0f;
    int hits = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7, hits)
    for (int64_t i = 0; i < len; ++i) {
      const float v = xb[i];
      s0 += v >= t0 ? w[i] : 0.0f;
      s1 += v >= t1 ? w[i] : 0.0f;
      s2 += v >= t2 ? w[i] : 0.0f;
      s3 += v >= t3 ? w[i] : 0.0f;
      s4 += v >= t4 ? w[i] : 0.0f;
      s5 += v >= t5 ? w[i] : 0.0f;
      s6 += v >= t6 ? w[i] : 0.0f;
      s7 += v >= t7 ? w[i] : 0.0f;
      hits += (v >= lo) & (v < hi);
    }
    const float sums[kBracketEdges] = {s0, s1, s2, s3, s4, s5, s6, s7};
    for (int j = 0; j < kBracketEdges; ++j) {
      mass_at[j] += sums[j];
      block_above[j * nblocks + b / kPassBlock] = sums[j];
    }
    if (hits == 0) continue;
    append_where(xb, w, len, base + b, hits, [&](float v) { return (v >= lo) & (v < hi); }, out);
  }
}

}  // namespace fastsample::cpu
