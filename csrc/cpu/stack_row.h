// Pieces of the CPU stack sampler (stack_sampler.cpp, docs/ops.md "sample_stack") that see one row.
//
// The grammar mask, the logit bias and the penalties never produce a modified copy of the logits: a row's
// bias and history ids are first resolved into a short list of overrides (token id -> its processed logit,
// sorted by id, O(L log L) for L ids), and every pass over the row rebuilds the processed logits of one
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

// A token whose logit the bias or the penalties change, and its processed logit (before the mask).
struct Override {
  int64_t id;
  float y;
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

// Resolves a row's bias, prompt and output ids into overrides sorted by id; x_at(i) gives the raw logit.
// Returns false when an id lies outside [-1, V) (the row is then invalid).
template <class XAt>
bool resolve_overrides(const IdList& bias, const IdList& prompt, const IdList& output, int64_t vocab,
                       const Penalties& pen, XAt x_at, std::vector<Override>& out) {
  struct Entry {
    int64_t id;
    double bias;
    int64_t count;  // occurrences in the output
    bool seen;      // in prompt or output
  };
  std::vector<Entry> entries;
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
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.id < b.id; });
  for (size_t j = 0; j < entries.size();) {
    Entry e = entries[j];
    for (++j; j < entries.size() && entries[j].id == e.id; ++j) {
      e.bias += entries[j].bias;
      e.count += entries[j].count;
      e.seen = e.seen || entries[j].seen;
    }
    double z = static_cast<double>(x_at(e.id)) + e.bias;
    if (e.seen) z = z > 0 ? z / pen.repetition : z * pen.repetition;
    if (e.count > 0) z -= pen.frequency * static_cast<double>(e.count) + pen.presence;
    out.push_back({e.id, static_cast<float>(z)});
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

// y[i] = bit i of the words ? x[i] : -inf for i < n (the words start at the block's first token).
void masked_block(const float* x, const uint32_t* words, int64_t n, float* y);

// The max of y[0, n) (NaN ignored) and whether x[0, n) holds a NaN.
float block_max(const float* y, const float* x, int64_t n, bool& x_has_nan);

}  // namespace fastsample::cpu::stack
