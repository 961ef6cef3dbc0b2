// Pieces of the CPU stack sampler (stack_sampler.cpp, docs/ops.md "sample_stack") that see one row.
//
// The grammar mask, the logit bias and the penalties never produce a modified copy of the logits: a row's
// bias and history ids are first resolved into a short list of overrides (token id -> its processed logit,
// sorted by id, O(L) per radix digit for L ids), and every pass over the row rebuilds the processed logits of one
// block of kStackBlock tokens at a time in a per-thread scratch: x where the mask allows, -inf elsewhere,
// then the overrides that fall into the block. Exactness: a processed logit is the float32 rounding of the
// float64 formula of docs/ops.md, the same number in every pass and in the reference.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "fastsample/stack_rules.h"
#include "select.h"

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
  bool valid() const { return stack_penalties_valid(repetition, frequency, presence); }
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

// The buffers of resolve_overrides, kept per thread across rows (fresh pages for every row cost more than the work).
struct ResolveScratch {
  std::vector<uint64_t> keys, swap;
  std::vector<uint32_t> counts;
};

// Resolves a row's bias, prompt and output ids into overrides sorted by id, one per token, a token's bias
// values summed in list order. Returns false when an id lies outside [-1, V) (the row is then invalid).
bool resolve_overrides(const IdList& bias, const IdList& prompt, const IdList& output, int64_t vocab,
                       ResolveScratch& scratch, std::vector<Override>& out);

// Sorts by value descending, ties to the lower id.
inline void sort_descending(std::vector<Candidate>& items) {
  std::sort(items.begin(), items.end(),
            [](const Candidate& a, const Candidate& b) { return a.x > b.x || (a.x == b.x && a.index < b.index); });
}

// The first pass keeps the exact max of y in sub-blocks of this many tokens; only those that reach the top-k
// threshold are rebuilt and searched.
constexpr int64_t kSubBlock = 64;
constexpr int kSubBlocks = kStackBlock / kSubBlock;

// y[i] = bit i of the words ? x[i] : -inf for i < n <= kStackBlock (the words start at the block's first
// token), with the max of each sub-block of y (NaN ignored; -inf past n) and whether x holds a NaN, in one read.
void masked_block(const float* x, const uint32_t* words, int64_t n, float* y, float* sub_max, bool& x_has_nan);

// The max of each sub-block of x[0, n) (NaN ignored; -inf past n), and whether x holds a NaN.
void block_stats(const float* x, int64_t n, float* sub_max, bool& x_has_nan);

// The same maxima over the tokens whose bit is set in the words (all of them when words is null): the
// maxima of masked_block's y, without writing y.
void masked_stats(const float* x, const uint32_t* words, int64_t n, float* sub_max, bool& x_has_nan);

}  // namespace fastsample::cpu::stack
