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

// Splits [0, n) into nseg ranges aligned to kPassBlock (so per-block records of the segments line up);
// segment s is [segment_begin(s), segment_begin(s + 1)).
inline int64_t segment_begin(int64_t n, int nseg, int s) {
  return s == nseg ? n : (n * s / nseg) / kPassBlock * kPassBlock;
}

// Runs f(s) for s in [0, nseg): on nseg threads, or inline when nseg == 1.
template <class F>
void for_segments(int nseg, F&& f) {
  if (nseg == 1) {
    f(0);
    return;
  }
#pragma omp parallel for num_threads(nseg) schedule(static, 1)
  for (int s = 0; s < nseg; ++s) f(s);
}

// How many segments to split rows of length n into, given the batch size.
int segments_for(int64_t batch, int64_t n);

// Runs f(b) for every row: rows spread over threads when rows are not split, else one row at a time
// (each row then uses all threads through its segments).
template <class F>
void for_rows(int64_t batch, int nseg, F&& f) {
  if (nseg == 1) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t b = 0; b < batch; ++b) f(b);
  } else {
    for (int64_t b = 0; b < batch; ++b) f(b);
  }
}

// count_maxima: also count the maxima of greedy rows (their logprob needs it).
RowPlan plan_row(const float* x, int64_t n, const RowParams& params, int nseg, bool count_maxima);

// The weight of token value x under the plan, in double.
double token_weight(const RowPlan& plan, float x);

}  // namespace fastsample::cpu
