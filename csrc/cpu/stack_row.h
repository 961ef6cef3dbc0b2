// Pieces of the CPU stack sampler (stack_sampler.cpp, docs/ops.md "sample_stack") that see one row.
//
// The grammar mask, the logit bias and the penalties never produce a modified copy of the logits: a row's
// bias and history ids are first resolved into a table of overrides (token id -> its summed bias, count and
// seen flag, O(L) for L ids), and every pass over the row rebuilds the processed logits of one
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

// A row's bias, prompt and output ids resolved into one override per token, O(L) for L listed ids: a
// per-thread slot index over the vocabulary (int32, -1 = no override) finds a token's entry, and a bitmap
// of the vocabulary marks the overridden tokens so that a pass finds those of a 64-token word with one load.
// Both stay allocated per thread across rows and calls (O(V) once), and only the entries a row touched are
// reset (by `clear`, also on the early returns: the destructor of the row's Resolved calls it).
class OverrideTable {
 public:
  // Fills the table from the lists; returns false when an id lies outside [-1, V) (the row is then invalid).
  bool resolve(const IdList& bias, const IdList& prompt, const IdList& output, int64_t vocab) {
    clear();
    if (static_cast<int64_t>(slot_.size()) < vocab) {
      slot_.assign(vocab, -1);
      bits_.assign((vocab + 63) / 64, 0);
    }
    return add(bias, 0, vocab) && add(prompt, 1, vocab) && add(output, 2, vocab);
  }
  void clear() {
    for (const Override& o : entries_) {
      slot_[o.id] = -1;
      bits_[o.id / 64] = 0;
    }
    entries_.clear();
  }
  // The overridden tokens among [64 w, 64 w + 64): bit i = token 64 w + i.
  uint64_t word(int64_t w) const { return bits_[w]; }
  const Override& at(int64_t id) const { return entries_[slot_[id]]; }
  bool empty() const { return entries_.empty(); }

 private:
  // kind 0: bias (values added, in list order), 1: prompt (seen), 2: output (seen, counted).
  bool add(const IdList& list, int kind, int64_t vocab) {
    for (int64_t j = 0; j < list.len; ++j) {
      const int64_t id = list.ids[j];
      if (id == -1) continue;
      if (id < -1 || id >= vocab) return false;
      int32_t& slot = slot_[id];
      if (slot < 0) {
        slot = static_cast<int32_t>(entries_.size());
        entries_.push_back({id, 0.0, 0, false});
        bits_[id / 64] |= uint64_t{1} << (id % 64);
      }
      Override& o = entries_[slot];
      if (kind == 0) {
        o.bias += static_cast<double>(list.values[j]);
      } else {
        o.seen = true;
        o.count += kind == 2;
      }
    }
    return true;
  }

  std::vector<int32_t> slot_;
  std::vector<uint64_t> bits_;
  std::vector<Override> entries_;
};

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
