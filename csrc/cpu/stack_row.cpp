// Vectorised leaf loops of the stack sampler's block rebuild (stack_row.h), one clone per instruction set.
#include "stack_row.h"

#include <algorithm>
#include <utility>

#include "simd.h"

namespace fastsample::cpu::stack {
namespace {

// The sub-block maxima of y[i] = (words: bit i set) ? x[i] : -inf over x[0, n), n <= kStackBlock, y written
// only when kStore, and the NaN flag of x: one loop for every variant, inlined into each clone.
template <bool kStore>
__attribute__((always_inline)) inline void sub_maxima(const float* x, const uint32_t* words, int64_t n, float* y,
                                                      float* sub_max, bool& x_has_nan) {
  int nan = 0;
  for (int s = 0; s < kSubBlocks; ++s) {
    float m = -kInf;
    const int64_t lo = s * kSubBlock, hi = std::min(n, lo + kSubBlock);
    if (!words) {
#pragma omp simd reduction(max : m) reduction(| : nan)
      for (int64_t i = lo; i < hi; ++i) {
        m = x[i] > m ? x[i] : m;
        nan |= x[i] != x[i];
      }
    } else if (hi - lo == kSubBlock) {
      // The mask bits spread to one float per token first (+inf: allowed, -inf: not; y = min(it, x), NaN
      // kept), so that the max folds once per sub-block: folding once per mask word cost as much as the loads.
      float allow[kSubBlock];
      for (int64_t w = 0; w < kSubBlock / 32; ++w) {
        const uint32_t bits = words[lo / 32 + w];
#pragma omp simd
        for (int t = 0; t < 32; ++t) allow[32 * w + t] = ((bits >> t) & 1u) ? kInf : -kInf;
      }
      const float* xs = x + lo;
#pragma omp simd reduction(max : m) reduction(| : nan)
      for (int64_t i = 0; i < kSubBlock; ++i) {
        const float v = allow[i] < xs[i] ? allow[i] : xs[i];
        if constexpr (kStore) y[lo + i] = v;
        m = v > m ? v : m;
        nan |= xs[i] != xs[i];
      }
    } else {
      for (int64_t i = lo; i < hi; ++i) {
        const float v = ((words[i / 32] >> (i % 32)) & 1u) ? x[i] : -kInf;
        if constexpr (kStore) y[i] = v;
        m = v > m ? v : m;
        nan |= x[i] != x[i];
      }
    }
    sub_max[s] = m;
  }
  x_has_nan = x_has_nan || nan;
}

}  // namespace

bool resolve_overrides(const IdList& bias, const IdList& prompt, const IdList& output, int64_t vocab,
                       ResolveScratch& scratch, std::vector<Override>& out) {
  // Every used id becomes a key (id << 32 | position), position = its index in bias, prompt, output laid end to
  // end, so that sorting the keys groups each token's entries in list order. The sort is LSD radix over
  // the id's bits only, stable, so positions stay in order within an id: O(L) per digit, without the
  // mispredicted branches of a comparison sort (as costly as the pass over the logits for a 1k history).
  const IdList* lists[3] = {&bias, &prompt, &output};
  std::vector<uint64_t>& keys = scratch.keys;
  keys.clear();
  uint32_t position = 0;
  for (const IdList* list : lists) {
    for (int64_t j = 0; j < list->len; ++j, ++position) {
      const int64_t id = list->ids[j];
      if (id == -1) continue;
      if (id < -1 || id >= vocab) return false;
      keys.push_back(static_cast<uint64_t>(id) << 32 | position);
    }
  }
  constexpr int kDigitBits = 9;  // two digits cover vocabularies up to 2^18 tokens
  const size_t n = keys.size();
  scratch.swap.resize(n);
  scratch.counts.resize(size_t{1} << kDigitBits);
  for (int shift = 32; n > 1 && (uint64_t{1} << (shift - 32)) < static_cast<uint64_t>(vocab); shift += kDigitBits) {
    std::vector<uint32_t>& counts = scratch.counts;
    std::fill(counts.begin(), counts.end(), 0u);
    for (uint64_t k : keys) ++counts[(k >> shift) & ((1u << kDigitBits) - 1)];
    uint32_t at = 0;
    for (uint32_t& c : counts) at += std::exchange(c, at);
    for (uint64_t k : keys) scratch.swap[counts[(k >> shift) & ((1u << kDigitBits) - 1)]++] = k;
    keys.swap(scratch.swap);
  }
  const uint32_t prompt_at = static_cast<uint32_t>(bias.len), output_at = static_cast<uint32_t>(bias.len + prompt.len);
  out.resize(n);  // an upper bound; filled field by field (a whole Override built on the stack stalled on its copy)
  size_t m = 0;
  for (size_t j = 0; j < n; ++m) {
    Override& o = out[m];
    o.id = static_cast<int64_t>(keys[j] >> 32);
    double sum = 0.0;
    int64_t count = 0;
    bool seen = false;
    for (; j < n && static_cast<int64_t>(keys[j] >> 32) == o.id; ++j) {
      const uint32_t at = static_cast<uint32_t>(keys[j]);
      if (at < prompt_at) {
        sum += static_cast<double>(bias.values[at]);
      } else {
        seen = true;
        count += at >= output_at;
      }
    }
    o.bias = sum;
    o.count = count;
    o.seen = seen;
  }
  out.resize(m);
  return true;
}

FS_MULTIVERSION void masked_block(const float* x, const uint32_t* words, int64_t n, float* y, float* sub_max,
                                  bool& x_has_nan) {
  sub_maxima<true>(x, words, n, y, sub_max, x_has_nan);
}

FS_MULTIVERSION void block_stats(const float* x, int64_t n, float* sub_max, bool& x_has_nan) {
  sub_maxima<false>(x, nullptr, n, nullptr, sub_max, x_has_nan);
}

FS_MULTIVERSION void masked_stats(const float* x, const uint32_t* words, int64_t n, float* sub_max, bool& x_has_nan) {
  sub_maxima<false>(x, words, n, nullptr, sub_max, x_has_nan);
}

}  // namespace fastsample::cpu::stack
