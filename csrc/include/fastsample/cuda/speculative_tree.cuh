// tree_speculative_sampling (docs/ops.md): one CTA per row walks the token tree in node index order, exactly as
// the CPU kernel (csrc/cpu/speculative_tree.cpp) does, with the same float64 arithmetic per node:
//   - node i is tested iff its token != -1 and its parent is the current node; an id outside [0, V) fails;
//     draw j = i: pass iff u * q_i(t) * mass < r(t) (sampled children) or u * mass < r(t) (deterministic);
//   - on acceptance the walk descends (r <- the target row after node i, mass 1, read in place);
//   - on rejection the residual is materialised in float64 in the workspace row [V] and updated:
//     r <- max(r / mass - q_i, 0) with its sum as the new mass (sampled: a NaN, negative or infinite entry
//     turns r all NaN; zero mass leaves r as it was), or r(t) <- 0, mass -= r(t) (deterministic);
//   - where the walk stops one token is drawn from r by inverse CDF with draw j = N: warp segments in id
//     order, their sums, the segment holding the step, then a 32-wide scan of that segment (rounding that
//     leaves the walk short of the target gives the last positive weight, as cdf_step on the CPU).
// A row with a used node whose parent is outside [-1, i) is left all -1 (emitted_num 0). Indices are int64
// throughout (B * (N + 1) * V may exceed 2^31); rows map to gridDim.x.
#pragma once

#include <cfloat>

#include "fastsample/cuda/common.cuh"

namespace fastsample {
namespace cuda {

constexpr int kTreeThreads = 256;
constexpr int kTreeWarps = kTreeThreads / 32;

template <class T>
struct TreeArgs {
  const int64_t* draft_token_ids;  // [rows, n]
  const int64_t* parents;          // [rows, n]
  const T* target_probs;           // [rows, n + 1, vocab]
  const T* draft_probs;            // [rows, n, vocab], or null: deterministic children
  int64_t rows, n, vocab;
  const int64_t* seed;             // [rows]
  const int64_t* offset;           // [rows]
  int64_t* output_token_ids;       // [rows, n + 1] out
  int64_t* accepted_nodes;         // [rows, n] out
  int64_t* emitted_num;            // [rows] out
};

// The float64 residual rows, [rows, vocab] (written only where a row rejects a node).
inline size_t tree_speculative_sampling_workspace_bytes(int64_t rows, int64_t n, int64_t vocab) {
  return n > 0 ? static_cast<size_t>(rows) * static_cast<size_t>(vocab) * sizeof(double) : 0;
}

struct TreeShared {
  double sum[kTreeWarps];
  int flag[kTreeWarps];
  int64_t token;
};

__device__ __forceinline__ bool tree_bad(double x) { return (x != x) | (x < 0.0) | (x > DBL_MAX); }

// The block's sum of v (warp sums added in warp order, so every thread gets the same double) and OR of bad.
__device__ __forceinline__ double tree_block_sum(double v, int& bad, TreeShared& s) {
  for (int o = 16; o > 0; o >>= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, o);
    bad |= __shfl_xor_sync(0xffffffffu, bad, o);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) s.sum[warp] = v, s.flag[warp] = bad;
  __syncthreads();
  double total = 0.0;
  int any = 0;
  for (int w = 0; w < kTreeWarps; ++w) total += s.sum[w], any |= s.flag[w];
  __syncthreads();
  bad = any;
  return total;
}

// Weight v of the residual: the target row itself while fresh, else the materialised float64 row.
template <class T>
__device__ __forceinline__ double tree_weight(bool fresh, const T* p, const double* w, int64_t v) {
  return fresh ? static_cast<double>(to_float(p[v])) : w[v];
}

// Inverse-CDF draw from the residual with uniform u: -1 if an entry is NaN, negative or infinite or the sum is
// not positive. Every thread returns the token.
template <class T>
__device__ int64_t tree_draw(bool fresh, const T* p, const double* w, int64_t vocab, double u, TreeShared& s) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t seg = (vocab + kTreeWarps - 1) / kTreeWarps;
  const int64_t lo = min(static_cast<int64_t>(warp) * seg, vocab), hi = min(lo + seg, vocab);
  double own = 0.0;
  int bad = 0;
  for (int64_t v = lo + lane; v < hi; v += 32) {
    const double x = tree_weight(fresh, p, w, v);
    bad |= tree_bad(x);
    own += x;
  }
  for (int o = 16; o > 0; o >>= 1) {
    own += __shfl_xor_sync(0xffffffffu, own, o);
    bad |= __shfl_xor_sync(0xffffffffu, bad, o);
  }
  if (lane == 0) s.sum[warp] = own, s.flag[warp] = bad;
  __syncthreads();
  double total = 0.0;
  int any = 0;
  for (int k = 0; k < kTreeWarps; ++k) total += s.sum[k], any |= s.flag[k];
  if (any || !(total > 0.0)) {
    __syncthreads();
    return -1;
  }
  const double target = u * total;
  // The segment holding the step: the first whose running sum passes the target, else the last with weight.
  double before = 0.0, pick_before = 0.0;
  int pick = -1, last = -1;
  double last_before = 0.0;
  for (int k = 0; k < kTreeWarps; ++k) {
    if (s.sum[k] > 0.0) {
      last = k, last_before = before;
      if (pick < 0 && before + s.sum[k] > target) pick = k, pick_before = before;
    }
    before += s.sum[k];
  }
  if (pick < 0) pick = last, pick_before = last_before;
  if (pick < 0) {  // unreachable with total > 0; no segment to walk
    __syncthreads();
    return -1;
  }
  if (warp == pick) {
    const int64_t plo = min(static_cast<int64_t>(pick) * seg, vocab), phi = min(plo + seg, vocab);
    double cum = pick_before;
    int64_t token = -1, last_positive = -1;
    for (int64_t base = plo; base < phi; base += 32) {
      const int64_t v = base + lane;
      double x = v < phi ? tree_weight(fresh, p, w, v) : 0.0;
      if (!(x > 0.0)) x = 0.0;
      double incl = x;
      for (int o = 1; o < 32; o <<= 1) {
        const double y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
      }
      const unsigned cross = __ballot_sync(0xffffffffu, x > 0.0 && cum + incl > target);
      const unsigned positive = __ballot_sync(0xffffffffu, x > 0.0);
      if (cross) {
        token = base + __ffs(cross) - 1;
        break;
      }
      if (positive) last_positive = base + 31 - __clz(positive);
      cum += __shfl_sync(0xffffffffu, incl, 31);
    }
    if (lane == 0) s.token = token >= 0 ? token : last_positive;
  }
  __syncthreads();
  const int64_t token = s.token;
  __syncthreads();
  return token;
}

template <class T>
__global__ void __launch_bounds__(kTreeThreads, 1) tree_speculative_kernel(TreeArgs<T> a, double* work) {
  __shared__ TreeShared s;
  const int64_t b = blockIdx.x, n = a.n, vocab = a.vocab;
  const int tid = threadIdx.x;
  const int64_t* tok = a.draft_token_ids + b * n;
  const int64_t* par = a.parents + b * n;
  int64_t* out = a.output_token_ids + b * (n + 1);
  int64_t* nodes = a.accepted_nodes + b * n;
  int ok = 1;
  for (int64_t j = tid; j <= n; j += kTreeThreads) {
    out[j] = -1;
    if (j < n) {
      nodes[j] = -1;
      const int64_t t = tok[j], pj = par[j];
      if (t != -1 && !(pj >= -1 && pj < j)) ok = 0;
    }
  }
  if (!__syncthreads_and(ok)) {  // malformed tree: the row stays all -1
    if (tid == 0) a.emitted_num[b] = 0;
    return;
  }
  const bool sampled = a.draft_probs != nullptr;
  double* w = work + b * vocab;
  const T* prow = a.target_probs + b * (n + 1) * vocab;
  const int64_t seed = a.seed[b], offset = a.offset[b];
  bool fresh = true;
  double mass = 1.0;
  int64_t cur = -1, depth = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = tok[i];
    if (t == -1 || par[i] != cur) continue;
    const bool in_range = t >= 0 && t < vocab;
    const T* qrow = sampled ? a.draft_probs + (b * n + i) * vocab : nullptr;
    bool pass = false;
    if (in_range) {
      const double u = philox_uniform(seed, offset, static_cast<u32>(i));
      const double rt = tree_weight(fresh, prow, w, t);
      const double lhs = sampled ? u * static_cast<double>(to_float(qrow[t])) * mass : u * mass;
      pass = lhs < rt;  // a NaN compares false: rejected
    }
    if (pass) {
      if (tid == 0) out[depth] = t, nodes[depth] = i;
      ++depth;
      cur = i;
      prow = a.target_probs + (b * (n + 1) + i + 1) * vocab;
      fresh = true;
      mass = 1.0;
    } else if (sampled) {  // r <- norm(max(r - q, 0))
      int bad = 0;
      double total = 0.0;
      for (int64_t v = tid; v < vocab; v += kTreeThreads) {
        const double x = tree_weight(fresh, prow, w, v), q = to_float(qrow[v]);
        bad |= tree_bad(x) | tree_bad(q);
        const double d = x / mass - q;
        total += d < 0.0 ? 0.0 : d;
      }
      total = tree_block_sum(total, bad, s);
      // Each thread rewrites only the entries it read above.
      for (int64_t v = tid; v < vocab; v += kTreeThreads) {
        const double x = tree_weight(fresh, prow, w, v), q = to_float(qrow[v]);
        const double d = x / mass - q;
        w[v] = bad ? __longlong_as_double(0x7ff8000000000000LL) : total > 0.0 ? (d < 0.0 ? 0.0 : d) : x;
      }
      if (!bad && total > 0.0) mass = total;
      fresh = false;
      __syncthreads();
    } else if (in_range) {  // r <- norm(r without t)
      const double rt = tree_weight(fresh, prow, w, t);
      __syncthreads();  // every thread has read r(t)
      if (fresh) {
        for (int64_t v = tid; v < vocab; v += kTreeThreads) {
          w[v] = v == t ? 0.0 : static_cast<double>(to_float(prow[v]));
        }
      } else if (tid == 0) {
        w[t] = 0.0;
      }
      mass -= rt;
      fresh = false;
      __syncthreads();
    }
  }
  const double u = philox_uniform(seed, offset, static_cast<u32>(n));
  const int64_t token = tree_draw(fresh, prow, w, vocab, u, s);
  if (tid == 0) {
    out[depth] = token;
    a.emitted_num[b] = depth;
  }
}

template <class T>
cudaError_t tree_speculative_sampling(const TreeArgs<T>& a, void* workspace, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  if (a.rows > 0x7fffffffLL || a.vocab < 1) return cudaErrorInvalidValue;
  if (a.n > 0 && workspace == nullptr) return cudaErrorInvalidValue;
  tree_speculative_kernel<T><<<static_cast<unsigned>(a.rows), kTreeThreads, 0, stream>>>(
      a, static_cast<double*>(workspace));
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fastsample
