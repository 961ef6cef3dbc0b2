// One row of the CPU stack sampler's processed logits, rebuilt block by block from the raw logits, the mask and
// the overrides (stack_row.h), and the passes over them (stack_sampler.cpp). Exactness invariant: every pass
// sees the same float32 y for a token, the one the first pass took the maxima of.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "select.h"
#include "stack_row.h"

namespace fastsample::cpu::stack {

template <class T>
inline float to_float(T v) {
  return static_cast<float>(v);
}

// One row's processed logits, block by block.
template <class T>
struct RowSource {
  const T* x;
  const uint32_t* mask;  // null: all allowed
  int64_t vocab;
  const std::vector<Override>& overrides;
  const Penalties& pen;
  bool override_nan = false;  // an allowed override token's processed logit was NaN
  bool x_nan = false;         // a raw logit was NaN
  size_t cursor = 0;          // the first override at or after the last block's start
  float xbuf[kStackBlock], ybuf[kStackBlock];

  bool allowed(int64_t i) const { return !mask || ((mask[i / 32] >> (i % 32)) & 1u); }

  // The raw logits of tokens [lo, lo + n) as float.
  const float* raw_logits(int64_t lo, int64_t n) {
    if constexpr (std::is_same_v<T, float>) return x + lo;
    for (int64_t i = 0; i < n; ++i) xbuf[i] = to_float(x[lo + i]);
    return xbuf;
  }

  // y of tokens [lo, lo + n); xf receives the block's raw logits as float, sub_max the maxima of y's
  // sub-blocks; x_nan records a NaN in the raw logits.
  const float* block(int64_t lo, int64_t n, const float*& xf, float* sub_max) {
    xf = raw_logits(lo, n);
    // Passes read blocks in order: the cursor moves forward, a jump back (a draw) searches again.
    if (cursor > 0 && overrides[cursor - 1].id >= lo) cursor = 0;
    while (cursor < overrides.size() && overrides[cursor].id < lo) ++cursor;
    auto it = overrides.begin() + cursor;
    const bool touched = it != overrides.end() && it->id < lo + n;
    if (mask) {
      masked_block(xf, mask + lo / 32, n, ybuf, sub_max, x_nan);
    } else {
      block_stats(xf, n, sub_max, x_nan);
      if (!touched) return xf;
      std::copy(xf, xf + n, ybuf);
    }
    for (; it != overrides.end() && it->id < lo + n; ++it) {
      if (!allowed(it->id)) continue;
      const int64_t i = it->id - lo;
      const float y = override_logit(*it, xf[i], pen), before = ybuf[i];
      override_nan = override_nan || y != y;
      ybuf[i] = y;
      const int64_t s = i / kSubBlock;
      if (!(before == sub_max[s] && y < before)) {
        sub_max[s] = y > sub_max[s] ? y : sub_max[s];
        continue;
      }
      // The override lowered the sub-block's max token (rare): take that sub-block's max again.
      float m = -kInf;
      for (int64_t k = s * kSubBlock; k < std::min(n, (s + 1) * kSubBlock); ++k) m = ybuf[k] > m ? ybuf[k] : m;
      sub_max[s] = m;
    }
    return ybuf;
  }

  // Pass 1's read: the exact max of y in every sub-block of the row, into sub_max (room for kSubBlocks per block; -inf
  // past the vocabulary), and in every block, into block_max; calls raw(lo, n, xf) on each block's raw logits. The
  // masked maxima of the raw logits come without writing y (masked_stats); each allowed override then raises its sub-
  // block's max to its processed logit. That is exact unless an override lowered the token that held the max (a token
  // whose logit was >= the running max): then the block is rebuilt whole (rare).
  template <class F>
  void exact_sub_maxima(float* sub_max, float* block_max, F&& raw) {
    size_t j = 0;
    for (int64_t lo = 0; lo < vocab; lo += kStackBlock) {
      const int64_t n = std::min(kStackBlock, vocab - lo);
      const float* xf = raw_logits(lo, n);
      float* sm = sub_max + lo / kSubBlock;
      masked_stats(xf, mask ? mask + lo / 32 : nullptr, n, sm, x_nan);
      bool lowered = false;
      for (; j < overrides.size() && overrides[j].id < lo + n; ++j) {
        if (!allowed(overrides[j].id)) continue;
        const int64_t i = overrides[j].id - lo;
        const float y = override_logit(overrides[j], xf[i], pen);
        override_nan = override_nan || y != y;
        float& m = sm[i / kSubBlock];
        lowered = lowered || (xf[i] >= m && y < xf[i]);
        m = y > m ? y : m;
      }
      if (lowered) block(lo, n, xf, sm);
      block_max[lo / kStackBlock] = *std::max_element(sm, sm + kSubBlocks);
      raw(lo, n, xf);
    }
  }

  // Every token whose y is >= the k-th largest y of the row (ties kept; all of them when fewer than k are > -inf),
  // sorted by y descending, ties to the lower id. sub_max (`subs` of them) and block_max: exact_sub_maxima's.
  // Exact by TopKBuffer's invariant (select.h). The threshold starts at the k-th largest block max (for k much below
  // the block count that is close to the k-th largest y, at a quarter of the selection's cost over sub-blocks), so
  // only the sub-blocks whose max reaches it are rebuilt, about k of them.
  void collect(const float* sub_max, int64_t subs, const float* block_max, int64_t k, std::vector<Candidate>& out) {
    out.clear();
    TopKBuffer top(k, kth_block_max(block_max, (vocab + kStackBlock - 1) / kStackBlock, k, out), out);
    for (int64_t s = 0; s < subs; ++s) {
      if (!(sub_max[s] >= top.threshold() && sub_max[s] > -kInf)) continue;
      const int64_t lo = s * kSubBlock, n = std::min(kSubBlock, vocab - lo);
      const float* xf;
      float unused[kSubBlocks];
      const float* y = block(lo, n, xf, unused);
      for (int64_t i = 0; i < n; ++i) {
        if (y[i] >= top.threshold() && y[i] > -kInf) top.push(y[i], lo + i);
      }
    }
    top.finish();
    sort_descending(out);
  }

  // f(lo, n, y, xf) for every block, in order: y the processed logits, xf the raw ones as float.
  template <class F>
  void scan(F&& f) {
    for (int64_t lo = 0; lo < vocab; lo += kStackBlock) {
      const int64_t n = std::min(kStackBlock, vocab - lo);
      const float* xf;
      float sub_max[kSubBlocks];
      const float* y = block(lo, n, xf, sub_max);
      f(lo, n, y, xf);
    }
  }
};

}  // namespace fastsample::cpu::stack
