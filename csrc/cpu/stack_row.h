// Pieces of the CPU stack sampler (stack_sampler.cpp, docs/ops.md "sample_stack") that see one row.
//
// The grammar mask, the logit bias and the penalties never produce a modified copy of the logits: a row's
// bias and history ids are first resolved into a short list of overrides (token id -> its processed logit,
// sorted by id, O(L + V / kStackBlock) for L ids), and every pass over the row rebuilds the processed logits of one
// block of kStackBlock tokens at a time in a per-thread scratch: x where the mask allows, -inf elsewhere,
// then the overrides that fall into the block. Exactness: a processed logit is the float32 rounding of the
// float64 formula of docs/ops.md, the same number in every pass and in the reference.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace fastsample::cpu::stack {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kStackBlock = 256;  // a multiple of 32: a block starts on a mask word

// A token whose logit the bias or the penalties change: its summed bias, output count and whether it was seen.
struct Override {
  int64_t id;
  double bias;
  int64_t count;  // occurrences in the output
  bool seen;      // in prompt or output
};

// One id list of a row: `len` ids, -1 = unused slot; `values` (bias only) the amounts added.
struct IdList {
  const int64_t* ids = nullptr;
  const float* values = nullptr;
  int64_t len = 0;
};

struct Penalties {
  double repetition, frequency, presence;
};

// The processed logit of an override token with raw logit x (before the mask): docs/ops.md steps 2-3 in
// double, rounded to float once. Computed as a pass reads the token's block (the logit is in cache then;
// reading it up front was a cache miss per history token).
inline float override_logit(const Override& o, float x, const Penalties& pen) {
  double z = static_cast<double>(x) + o.bias;
  if (o.seen) z = z > 0 ? z / pen.repetition : z * pen.repetition;
  if (o.count > 0) z -= pen.frequency * static_cast<double>(o.count) + pen.presence;
  return static_cast<float>(z);
}

// Resolves a row's bias, prompt and output ids into overrides sorted by id, one per token.
// Returns false when an id lies outside [-1, V) (the row is then invalid).
// The buffers of resolve_overrides, kept per thread across rows (fresh pages for every row cost more than the work).
struct ResolveScratch {
  std::vector<Override> entries, sorted;
  std::vector<int32_t> start, next;
};

inline bool resolve_overrides(const IdList& bias, const IdList& prompt, const IdList& output, int64_t vocab,
                              ResolveScratch& scratch, std::vector<Override>& out) {
  using Entry = Override;
  std::vector<Entry>& entries = scratch.entries;
  entries.clear();
  entries.reserve(bias.len + prompt.len + output.len);
  auto add = [&](const IdList& list, int kind) {
    for (int64_t j = 0; j < list.len; ++j) {
      const int64_t id = list.ids[j];
      if (id == -1) continue;
      if (id < -1 || id >= vocab) return false;
      entries.push_back({id, kind == 0 ? static_cast<double>(list.values[j]) : 0.0, kind == 2, kind != 0});
    }
    return true;
  };
  out.clear();
  if (!add(bias, 0) || !add(prompt, 1) || !add(output, 2)) return false;
  // Counting sort by block (O(L + V / kStackBlock), where a comparison sort of a 1k-token history cost as
  // much as the pass over the logits), then a short sort inside each block.
  const int64_t blocks = (vocab + kStackBlock - 1) / kStackBlock;
  std::vector<int32_t>& start = scratch.start;
  start.assign(blocks + 1, 0);
  for (const Entry& e : entries) ++start[e.id / kStackBlock + 1];
  for (int64_t b = 0; b < blocks; ++b) start[b + 1] += start[b];
  std::vector<Entry>& sorted = scratch.sorted;
  sorted.resize(entries.size());
  scratch.next.assign(start.begin(), start.end() - 1);
  for (const Entry& e : entries) sorted[scratch.next[e.id / kStackBlock]++] = e;
  auto by_id = [](const Entry& a, const Entry& b) { return a.id < b.id; };
  for (int64_t b = 0; b < blocks; ++b) {
    if (start[b + 1] - start[b] > 16) {  // a history crowded into one block: no quadratic insertion sort
      std::sort(sorted.begin() + start[b], sorted.begin() + start[b + 1], by_id);
      continue;
    }
    for (int32_t i = start[b] + 1; i < start[b + 1]; ++i) {
      for (int32_t j = i; j > start[b] && sorted[j - 1].id > sorted[j].id; --j) std::swap(sorted[j - 1], sorted[j]);
    }
  }
  for (size_t j = 0; j < sorted.size();) {
    Entry e = sorted[j];
    for (++j; j < sorted.size() && sorted[j].id == e.id; ++j) {
      e.bias += sorted[j].bias;
      e.count += sorted[j].count;
      e.seen = e.seen || sorted[j].seen;
    }
    out.push_back(e);
  }
  return true;
}

// The items >= the m-th largest value seen (ties at the boundary all kept), collected while a pass streams
// by: a push compares with a threshold that only rises, so after the first blocks few tokens get in.
struct Collector {
  struct Item {
    float v;
    int64_t id;
  };
  int64_t m = 0;  // 0: inactive
  float threshold = -kInf;
  std::vector<Item> items;

  void start(int64_t m_) {
    m = m_;
    threshold = -kInf;
    items.clear();
    limit_ = static_cast<size_t>(std::max<int64_t>(2 * m_, 64));
  }
  void push(float v, int64_t id) {
    items.push_back({v, id});
    if (items.size() >= limit_) prune();
  }
  // Drops the items below the m-th largest; the limit grows with what ties keep, so pushes stay amortised O(1).
  void prune() {
    if (static_cast<int64_t>(items.size()) <= m) return;
    std::nth_element(items.begin(), items.begin() + (m - 1), items.end(),
                     [](const Item& a, const Item& b) { return a.v > b.v; });
    threshold = items[m - 1].v;
    items.erase(std::remove_if(items.begin(), items.end(), [&](const Item& it) { return it.v < threshold; }),
                items.end());
    limit_ = std::max(limit_, 2 * items.size());
  }
  // Prunes and sorts by value descending, ties to the lower id.
  void finish() {
    prune();
    std::sort(items.begin(), items.end(),
              [](const Item& a, const Item& b) { return a.v > b.v || (a.v == b.v && a.id < b.id); });
  }

 private:
  size_t limit_ = 64;
};

// A block is scanned for the collector in sub-blocks of this many tokens whose maxima reach its threshold.
constexpr int64_t kSubBlock = 64;
constexpr int kSubBlocks = kStackBlock / kSubBlock;

// y[i] = bit i of the words ? x[i] : -inf for i < n <= kStackBlock (the words start at the block's first
// token), with the max of each sub-block of y (NaN ignored; -inf past n) and whether x holds a NaN, in one read.
void masked_block(const float* x, const uint32_t* words, int64_t n, float* y, float* sub_max, bool& x_has_nan);

// The max of each sub-block of x[0, n) (NaN ignored; -inf past n), and whether x holds a NaN.
void block_stats(const float* x, int64_t n, float* sub_max, bool& x_has_nan);

}  // namespace fastsample::cpu::stack
