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

// A lower bound of the k-th largest value of a span, from the maxima of its `count` blocks (never NaN): the
// k-th largest maximum, since those k blocks hold at least k tokens >= it; usually only about k blocks reach
// it. -inf when there are fewer than k blocks. `scratch` is left empty.
inline float kth_block_max(const float* block_max, int64_t count, int64_t k, std::vector<Candidate>& scratch) {
  if (count < k) return -__builtin_inff();
  scratch.resize(count);
  for (int64_t j = 0; j < count; ++j) scratch[j] = {block_max[j], j};
  const float bound = kth_largest(scratch, k);
  scratch.clear();
  return bound;
}

// The filter's buffer: keeps every pushed token >= a threshold that only rises. Invariant: the threshold
// never exceeds the k-th largest value pushed so far (it starts at a caller's lower bound of the final k-th
// largest, and a full buffer raises it to the k-th largest of its contents), so no token of the final top k
// is ever dropped; pushes below threshold() are the caller's to skip.
class TopKBuffer {
 public:
  TopKBuffer(int64_t k, float threshold, std::vector<Candidate>& out)
      : k_(k), threshold_(threshold), capacity_(static_cast<size_t>(k < 256 ? 1024 : 4 * k)), out_(out) {
    out_.reserve(capacity_);
  }
  float threshold() const { return threshold_; }
  void push(float x, int64_t index) {
    out_.push_back({x, index});
    if (out_.size() < capacity_) return;
    threshold_ = kth_largest(out_, k_);
    drop_below(out_, threshold_);
    if (out_.size() > capacity_ / 2) capacity_ *= 2;  // many ties at the threshold: grow instead
  }
  // Drops what lies below the k-th largest (ties kept); all stays when fewer than k were pushed.
  void finish() {
    if (static_cast<int64_t>(out_.size()) > k_) drop_below(out_, kth_largest(out_, k_));
  }

 private:
  int64_t k_;
  float threshold_;
  size_t capacity_;
  std::vector<Candidate>& out_;
};

// Appends to `out` every token of x[0, n) that may be among the k largest (k >= 1), with index base + i,
// in index order. `block_max` is scratch of n / kBlock + 1 floats. NaNs are never candidates; the span's
// stats (NaN flag, max, min) are returned.
inline SpanStats collect_candidates(const float* x, int64_t n, int64_t base, int64_t k, float* block_max,
                                    std::vector<Candidate>& out) {
  const SpanStats stats = block_maxima(x, n, block_max);
  std::vector<Candidate> buf;
  TopKBuffer top(k, kth_block_max(block_max, (n + kBlock - 1) / kBlock, k, buf), buf);
  for (int64_t b = 0; b < n; b += kBlock) {
    if (block_max[b / kBlock] < top.threshold()) continue;
    const int64_t end = b + kBlock < n ? b + kBlock : n;
    for (int64_t i = b; i < end; ++i) {
      if (x[i] >= top.threshold()) top.push(x[i], base + i);
    }
  }
  out.insert(out.end(), buf.begin(), buf.end());
  return stats;
}

}  // namespace fastsample::cpu
