// The top-p bracket (top_p.h) and the fused first pass that measures it: one read of the row that takes
// its stats and weight sum, the exact mass above each edge of the bracket (per block too) and gathers the
// tokens of the central region.
#pragma once
#include <cstdint>

#include "simd.h"

namespace fastsample::cpu {

// A bracket's thresholds, descending. The boundary most likely lies in the central region
// [kCentralLow, kCentralHigh), whose tokens the pass gathers as it goes; the outer edges narrow the search
// when it does not. An edge of +inf holds no token (no estimate: every edge is +inf).
enum BracketEdge : int { kOuterHigh = 0, kCentralHigh = 1, kCentralLow = 2, kOuterLow = 3, kBracketEdges = 4 };

struct Bracket {
  float edges[kBracketEdges];
  // Whether the estimate placed the edges (else they are all +inf).
  bool estimated() const { return edges[kOuterLow] != kInf; }
  // Whether the outer edges coincide with the central ones: the pass then compares and sums only two
  // edges, and the outer masses are the central ones (the same edges, so still exact).
  bool narrow() const { return edges[kOuterHigh] == edges[kCentralHigh] && edges[kOuterLow] == edges[kCentralLow]; }
  // This bracket with its outer edges moved onto the central ones.
  Bracket narrowed() const {
    Bracket b = *this;
    b.edges[kOuterHigh] = edges[kCentralHigh];
    b.edges[kOuterLow] = edges[kCentralLow];
    return b;
  }
};

// Per-block record of online_bracket_pass (ceil(n / kPassBlock) entries per array): above[j * stride + k]
// is the weight of block k's tokens with x >= edges[j], against reference refs[k]; max[k] the block max;
// central[k] how many central tokens the span's earlier blocks held (block k's follow them).
struct BracketBlocks {
  float* above;
  int64_t stride;
  float* refs;
  float* max;
  int64_t* central;
};

// The central region's values as online_bracket_pass gathers them, in index order (which block each
// came from is in BracketBlocks::central). The buffer holds capacity + kLanes entries; `count` goes on
// past `capacity` when the region holds more tokens, and then only the first `capacity` were kept.
struct PassGather {
  float* values;
  int64_t capacity;
  int64_t count = 0;
  bool overflowed() const { return count > capacity; }
};

// online_pass (simd.h) fused with a bracket: also adds the weight of the tokens with x >= edges[j] to
// mass_at[j] (against the span's final reference), records the blocks and gathers the central region.
void online_bracket_pass(const float* x, int64_t n, bool is_exp, float inv_t, const Bracket& bracket,
                         OnlinePass& state, double* mass_at, BracketBlocks blocks, PassGather& gather);

}  // namespace fastsample::cpu
