// The vectorised leaf loops declared in simd.h, each compiled for AVX-512, AVX2+FMA and baseline x86-64.
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "inverse_cdf.h"
#include "simd_blocks.h"

namespace fastsample::cpu {
namespace {

constexpr double kInfD = std::numeric_limits<double>::infinity();

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

// online_pass's block in one read (logits), on a path of vec_paths.h: sets w, s (the weight sum) and bmax.
// False, with nothing changed, where it cannot run or stand.
inline bool fused_block(const float* xb, int64_t len, bool is_exp, float inv_t, OnlinePass& st, float* w, float& s,
                        float& bmax) {
  if (!fusable(st, is_exp)) return false;
  SpanStats seen;
  s = vec_path().exp_weights_seen(xb, len, st.ref, inv_t, w, &seen);
  if (!fused_block_stands(seen, is_exp, st)) return false;
  bmax = seen.max;
  return true;
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

OnlinePass merge_segments(const std::vector<OnlinePass>& segs, bool is_exp, float inv_t, std::vector<double>* scales) {
  OnlinePass row;
  for (const OnlinePass& seg : segs) {
    row.has_nan |= seg.has_nan;
    row.max = std::max(row.max, seg.max);
    row.min = std::min(row.min, seg.min);
    row.ref = std::max(row.ref, seg.ref);
  }
  if (scales) scales->resize(segs.size());
  for (size_t s = 0; s < segs.size(); ++s) {
    const double scale = rescale_factor(is_exp, segs[s].ref, row.ref, inv_t);
    row.sum += segs[s].sum * scale;
    if (scales) (*scales)[s] = scale;
  }
  return row;
}

// The tokens in range are few and spread at random, so a branch per token would mispredict: the paths'
// gather compresses each vector into place instead. A chunk at a time: room is made for a whole chunk
// (plus the vector loop's spare entries) before it, then trimmed. resize grows the capacity geometrically,
// so the vectors are reallocated O(log n) times.
void gather_range(const float* x, int64_t n, int64_t base, float lo, float hi, Gathered& out) {
  const VecPath& vp = vec_path();
  constexpr int64_t kChunk = 4096;
  auto k = static_cast<int64_t>(out.values.size());
  for (int64_t i = 0; i < n; i += kChunk) {
    const int64_t len = std::min(kChunk, n - i);
    const auto need = static_cast<size_t>(k + len + kVecRoom);
    if (need > out.values.size()) {
      out.values.resize(need);
      out.indices.resize(need);
    }
    k = vp.gather_span(x + i, len, base + i, lo, hi, out.values.data(), out.indices.data(), k);
  }
  out.values.resize(k);
  out.indices.resize(k);
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
  float w[kBlock];  // the weights of the block last weighed
  float block_sum = 0.0f;
  auto len_of = [&](int64_t j) { return std::min(kBlock, n - j * kBlock); };
  auto weigh_block = [&](int64_t j) {
    block_sum = block_kept_weights(x + j * kBlock, len_of(j), wt, theta, w);
    return static_cast<double>(block_sum);
  };
  auto weight_in_block = [&](int64_t i) { return static_cast<double>(w[i]); };
  const int64_t nblocks = (n + kBlock - 1) / kBlock;
  int64_t last_block = -1;  // the last block with positive kept weight: holds the fallback token
  for (int64_t j = cdf_step(0, nblocks, weigh_block, target, cum, last_block); j >= 0;
       j = cdf_step(j + 1, nblocks, weigh_block, target, cum, last_block)) {
    double c = cum;  // the step is inside block j: walk it in double, in index order
    int64_t unused = -1;
    const int64_t i = cdf_step(0, len_of(j), weight_in_block, target, c, unused);
    if (i >= 0) return j * kBlock + i;
    cum += block_sum;  // rounding: the block's tokens fell short of its sum
  }
  if (last_block >= 0) {
    weigh_block(last_block);
    double c = 0.0;
    int64_t last = -1;
    cdf_step(0, len_of(last_block), weight_in_block, kInfD, c, last);
    if (last >= 0) last_kept = last_block * kBlock + last;
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
