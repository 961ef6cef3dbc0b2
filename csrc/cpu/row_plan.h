// Which tokens of one row survive temperature -> top-k -> top-p -> min-p, and their total weight
// (docs/ops.md). Shared by the `sample` and `renorm_probs` CPU kernels.
//
// Every filter keeps the tokens whose value is >= a threshold, so a plan is a threshold theta plus the
// kept mass W. When top-k is on, the kept tokens are also listed (few), and nothing after the first pass
// touches the whole row again. A row may be split into `nseg` segments processed by nseg threads (small
// batches with large vocabularies); otherwise the whole plan runs on the calling thread.
#pragma once
#include <cstdint>
#include <vector>

#include "segments.h"
#include "select.h"
#include "simd.h"

namespace fastsample::cpu {

struct RowParams {
  bool is_logits;
  float temperature;  // logits only; 0 = greedy
  int64_t top_k;
  double top_p;
  double min_p;
};

struct RowPlan {
  enum Kind { kInvalid, kGreedy, kUniformInf, kThreshold };
  Kind kind = kInvalid;
  Weighting wt{};
  double temperature = 1.0;  // kThreshold on logits: the exact divisor for weights in double
  float theta = 0.0f;        // kThreshold: kept iff x >= theta
  double mass = 0.0;         // kThreshold: W, the kept weight
  int64_t count = 0;         // kGreedy: number of maxima (when asked for); kUniformInf: number of +inf
  int64_t first = -1;        // kGreedy: lowest index of the max
  bool listed = false;       // kThreshold: `kept` lists every kept token, in index order
  std::vector<Candidate> kept;
  // kThreshold, when known: kept weight of each block of kPassBlock tokens (a draw then scans one block).
  std::vector<double> blocks;
};

// count_maxima: also count the maxima of greedy rows (their logprob needs it).
RowPlan plan_row(const float* x, int64_t n, const RowParams& params, int nseg, bool count_maxima);

// The weight of token value x under the plan, in double.
double token_weight(const RowPlan& plan, float x);

}  // namespace fastsample::cpu
