// Top-k selection without sorting the vocabulary: a one-pass candidate filter, then radix select.
//
// The filter keeps every token >= a running threshold in a small buffer; whenever the buffer fills, a
// radix select finds the k-th largest value in it, which becomes the new threshold, and the buffer is
// compacted. Whole blocks whose maximum is below the threshold are skipped, so after the first few
// blocks the pass costs about one vectorised max per element. At the end the buffer holds every token
// >= the row's k-th largest value (a superset of the top k, ties included).
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "simd.h"

namespace fastsample::cpu {

struct Candidate {
  float x;
  int64_t index;
};

inline float key_float(uint32_t key) {
  const uint32_t u = (key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key;
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// The k-th largest value (1 <= k <= n, duplicates counted) of cands: MSD radix select, 8 bits a pass.
inline float kth_largest(const std::vector<Candidate>& cands, int64_t k) {
  uint32_t prefix = 0, mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    int64_t count[256] = {0};
    for (const Candidate& c : cands) {
      const uint32_t key = float_key(c.x);
      if ((key & mask) == prefix) ++count[(key >> shift) & 0xFFu];
    }
    int digit = 255;
    for (; digit > 0 && k > count[digit]; --digit) k -= count[digit];
    prefix |= static_cast<uint32_t>(digit) << shift;
    mask |= 0xFFu << shift;
  }
  return key_float(prefix);
}

// Drops candidates below `threshold`, keeping order.
inline void drop_below(std::vector<Candidate>& cands, float threshold) {
  size_t kept = 0;
  for (const Candidate& c : cands) {
    if (c.x >= threshold) cands[kept++] = c;
  }
  cands.resize(kept);
}

// Appends to `out` every token of x[0, n) that may be among the k largest (k >= 1), with index base + i,
// in index order. `block_max` is scratch of n / kBlock + 1 floats. NaNs are never candidates; the span's
// stats (NaN flag, max, min) are returned.
inline SpanStats collect_candidates(const float* x, int64_t n, int64_t base, int64_t k, float* block_max,
                                    std::vector<Candidate>& out) {
  const SpanStats stats = block_maxima(x, n, block_max);
  size_t capacity = static_cast<size_t>(k < 256 ? 1024 : 4 * k);
  std::vector<Candidate> buf;
  buf.reserve(capacity);
  // Start from the k-th largest block maximum: those k blocks hold at least k tokens >= it, so it is a
  // lower bound of the span's k-th largest value, and usually only about k blocks reach it.
  const int64_t nblocks = (n + kBlock - 1) / kBlock;
  float threshold = -__builtin_inff();
  if (nblocks >= k) {
    std::vector<Candidate> maxima(nblocks);  // block maxima ignore NaN: never NaN themselves
    for (int64_t j = 0; j < nblocks; ++j) maxima[j] = {block_max[j], j};
    threshold = kth_largest(maxima, k);
  }
  for (int64_t b = 0; b < n; b += kBlock) {
    if (block_max[b / kBlock] < threshold) continue;
    const int64_t end = b + kBlock < n ? b + kBlock : n;
    for (int64_t i = b; i < end; ++i) {
      if (!(x[i] >= threshold)) continue;
      buf.push_back({x[i], base + i});
      if (buf.size() >= capacity) {
        threshold = kth_largest(buf, k);
        drop_below(buf, threshold);
        if (buf.size() > capacity / 2) capacity *= 2;  // many ties at the threshold: grow instead
      }
    }
  }
  out.insert(out.end(), buf.begin(), buf.end());
  return stats;
}

}  // namespace fastsample::cpu
