// How the CPU kernels spread work over threads: whole rows per thread for batches, or one long row split
// into segments run by all threads (small batches with large vocabularies).
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "simd.h"

namespace fastsample::cpu {

// True in a process made by fork() (fork_guard.cpp): the kernels then never enter an OpenMP team of more
// than one thread and run every loop on the calling thread.
bool in_forked_child();

// Splits [0, n) into nseg ranges aligned to kPassBlock (so per-block records of the segments line up);
// segment s is [segment_begin(s), segment_begin(s + 1)).
inline int64_t segment_begin(int64_t n, int nseg, int s) {
  return s == nseg ? n : (n * s / nseg) / kPassBlock * kPassBlock;
}

// Runs f(s, lo, hi) for each segment [lo, hi) of [0, n): on nseg threads, or inline when nseg == 1.
template <class F>
void for_segments(int64_t n, int nseg, F&& f) {
  if (nseg == 1 || in_forked_child()) {
    for (int s = 0; s < nseg; ++s) f(s, segment_begin(n, nseg, s), segment_begin(n, nseg, s + 1));
    return;
  }
#pragma omp parallel for num_threads(nseg) schedule(static, 1)
  for (int s = 0; s < nseg; ++s) f(s, segment_begin(n, nseg, s), segment_begin(n, nseg, s + 1));
}

// How many segments to split rows of length n into, given the batch size: batches of at least one row per
// thread, or rows under 32k tokens, are not split; segments hold at least 16k tokens.
inline int segments_for(int64_t batch, int64_t n) {
  const int threads = in_forked_child() ? 1 : omp_get_max_threads();
  if (threads <= 1 || batch >= threads || n < 32768) return 1;
  return static_cast<int>(std::min<int64_t>(threads, n / 16384));
}

// Runs f(b) for every row: rows spread over threads when rows are not split, else one row at a time
// (each row then uses all threads through its segments).
template <class F>
void for_rows(int64_t batch, int nseg, F&& f) {
  if (nseg == 1 && !in_forked_child()) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t b = 0; b < batch; ++b) f(b);
  } else {
    for (int64_t b = 0; b < batch; ++b) f(b);
  }
}

}  // namespace fastsample::cpu
