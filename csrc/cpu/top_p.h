// Top-p without top-k over a whole row (docs/ops.md): the exact threshold without sorting the vocabulary
// and without a histogram scattered per token.
//
// 1. An estimate from a sample of the row (128 runs of 64 tokens) places a bracket: four thresholds, the
//    two central ones half a standard error of the estimate either side of the guessed boundary, the
//    outer ones six.
// 2. One fused pass (online_bracket_pass) computes the row's stats and weight sum, the exact mass above
//    each threshold (also per block of kPassBlock tokens), each block's max, and gathers the tokens of the
//    central region as it goes (a compress per 16 tokens, no branch).
// 3. The exact masses say between which two thresholds the boundary lies: nearly always the central
//    pair, whose tokens (a few thousand) are already at hand; otherwise a light pass (compares, no exp)
//    gathers the region that holds it. Only those tokens are sorted out (radix narrowing, then groups of
//    equal value). When the boundary lies above every threshold (a peaked row whose heavy tokens the
//    sample missed), the blocks' maxima bound it instead: the heaviest maxima alone reach the target, so
//    only the few tokens >= the last of them can be kept.
// A draw then walks the per-block masses and scans one block.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "row_plan.h"

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
  float theta = __builtin_inff();
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
  float max = -__builtin_inff(), min = __builtin_inff();  // min: probs only (the logits' pass skips it)
  float ref = -__builtin_inff();  // logits: the reference every mass below is taken against
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

// Step 3 for a row whose stats did not decide it: sets plan.theta and plan.mass, and plan.blocks (or the
// kept tokens, listed, when the maxima bound the boundary).
void resolve_top_p(const float* x, int64_t n, const TopPPass& pass, double top_p, int nseg, RowPlan& plan);

}  // namespace fastsample::cpu
