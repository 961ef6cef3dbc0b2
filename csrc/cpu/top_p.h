// Top-p without top-k over a whole row (docs/ops.md): the exact threshold without sorting the vocabulary
// and without a histogram scattered per token.
//
// Exactness (whatever the estimate did): the estimate only places the bracket's edges. The pass then
// measures the exact weight above each edge, summed from the same float weights a draw uses, and the
// region that holds the boundary is chosen from those masses alone: the edge just above it has mass
// < p * W and the one below >= p * W (no edge above: from the row's top; none below: down to -inf). Every
// token of that region is at hand (gathered by the pass, or by a second pass when it is not the central
// region or the central region overflowed), and they are walked from the exact mass above the region,
// groups of equal value whole. So a bad estimate costs time (a second pass, more tokens to sort), never a
// different kept set. The block-maxima route decides nothing from the estimate either: it runs only when
// the weights of the heaviest block maxima alone reach p * W (with a margin for summation order), so every
// kept token is >= the last of them, and all those tokens are gathered and walked from the top.
//
// 1. An estimate from a sample of the row (128 runs of 64 tokens) places a bracket (top_p_bracket.h): four
//    thresholds, the two central ones half a standard error of the estimate either side of the guessed
//    boundary, the outer ones six.
// 2. One fused pass (online_bracket_pass) computes the row's stats and weight sum, the exact mass above
//    each threshold (also per block of kPassBlock tokens), each block's max, and gathers the tokens of the
//    central region as it goes (a compress per 16 tokens, no branch). It first runs with the bracket
//    narrowed (outer edges moved onto the central ones: two compares and masked adds a vector instead of
//    four); only where the exact masses of that pass put the boundary outside its central region (or the
//    region overflowed) does a second pass with all four edges follow. A narrowed bracket is a bracket
//    like any other, so the invariant above holds for whichever pass step 3 reads.
// 3. The exact masses say between which two thresholds the boundary lies: nearly always the central
//    pair, whose tokens (a few thousand) are already at hand; otherwise a light pass (compares, no exp)
//    gathers the region that holds it. Only those tokens are sorted out (radix narrowing, then groups of
//    equal value). When the boundary lies above every threshold (a peaked row whose heavy tokens the
//    sample missed), the blocks' maxima bound it instead: the heaviest maxima alone reach the target, so
//    only the few tokens >= the last of them can be kept.
// A draw then walks the per-block masses and scans one block.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "select.h"
#include "simd.h"
#include "top_p_bracket.h"

namespace fastsample::cpu {

struct Valued {
  float x;
  double w;
};

// Top-p over tokens sorted by value (descending): walks groups of equal value from `cum` (the mass of
// everything above them) and keeps a group while the mass above it is < target; the row's first group
// is always kept. Returns the last kept value and updates cum to the kept mass.
template <class Token, class Weight>
float walk_top_p_groups(std::vector<Token>& tokens, Weight weight, bool row_top, double target, double& cum) {
  std::sort(tokens.begin(), tokens.end(), [](const Token& a, const Token& b) { return a.x > b.x; });
  float theta = kInf;
  for (size_t i = 0; i < tokens.size();) {
    if (!row_top && !(cum < target)) break;
    row_top = false;
    theta = tokens[i].x;
    for (; i < tokens.size() && tokens[i].x == theta; ++i) cum += weight(tokens[i]);
  }
  return theta;
}

// What the fused first pass learned about a row.
struct TopPPass {
  bool has_nan = false;
  float max = -kInf, min = kInf;  // min: probs only (the logits' pass skips it)
  float ref = -kInf;              // logits: the reference every mass below is taken against
  double total = 0.0;             // the row's weight sum
  Bracket bracket{};
  double mass_at[kBracketEdges] = {};  // exact weight of the tokens >= each edge
  std::vector<float> above;            // [edge][block] masses, each block against its own reference
  std::vector<float> refs, maxima;     // per block
  std::vector<PassGather> central;     // per segment: the central region's values (the thread's scratch)
  std::vector<int64_t> central_start;  // per block: where its central values start in its segment's
};

// Steps 1 and 2 for a row split into nseg segments. The central tokens live in the segment threads'
// scratch: resolve the row before those threads start another.
TopPPass top_p_first_pass(const float* x, int64_t n, bool is_logits, double temperature, double top_p, int nseg);

// How step 3 found the boundary.
enum class TopPRoute : int {
  kCentralHit = 0,       // in the central region, whose tokens the pass gathered
  kOuterRegather = 1,    // in another region: gathered by a second pass
  kCentralOverflow = 2,  // in the central region, which held more tokens than the pass keeps: gathered again
  kBlockMaxima = 3,      // above every edge, bounded by the heaviest block maxima
  kNoEstimate = 4,       // the sample placed no bracket (NaN, +inf or nothing positive in it): the whole row
};
constexpr int kTopPRoutes = 5;

// The kept set: tokens with x >= theta, of total weight `mass`; with the kept weight of each block of
// kPassBlock tokens, or (listed) the kept tokens themselves in index order.
struct TopPResult {
  float theta = kInf;
  double mass = 0.0;
  bool listed = false;
  std::vector<double> blocks;
  std::vector<Candidate> kept;
  TopPRoute route = TopPRoute::kNoEstimate;
};

// Step 3 for a row whose stats did not decide it, weighed by wt (temperature: the exact divisor for
// weights in double).
TopPResult resolve_top_p(const float* x, int64_t n, const TopPPass& pass, double top_p, int nseg,
                         const Weighting& wt, double temperature);

// For tests: how many rows took each route since the last reset (indexed by TopPRoute); reset: start
// counting again from 0.
std::array<int64_t, kTopPRoutes> top_p_route_counts(bool reset);

}  // namespace fastsample::cpu
