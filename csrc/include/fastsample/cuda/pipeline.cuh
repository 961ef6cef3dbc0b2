// The row passes every filtering/sampling op is built from, templated on a row source `Src`:
//
//   struct Src {
//     int64_t vocab;
//     __device__ float value(const RowInfo&, int64_t b, int64_t i) const;  // x_i: ordering, thresholds
//     __device__ float weight(const RowInfo&, float value) const;          // w_i >= 0 of a valid row
//     __device__ float log_weight(const RowInfo&, float value) const;      // log w_i, for logprobs
//   };
//
// Each kernel runs on a grid of (chunks, B) CTAs of kThreads threads and reads RowInfo written by the
// previous launch. A row that a pass does not concern returns at once in all of its CTAs.
//
//   stats_pass         max key, NaN / negative / +inf flags                       -> RowStats
//   argmax_pass        lowest index and count of the row max (greedy rows)       -> RowStats
//   radix_select_pass  one 8-bit digit of the k-th largest key (top-k)           -> RowInfo.topk_thr
//   mass_select_pass   one 8-bit digit of the top-p threshold, by mass           -> RowInfo.topp_thr
//   mass_pass          fixed-point mass of the kept tokens per CTA               -> chunk_a
//   scan_pass          inverse CDF in ascending id order, one Philox draw        -> Emit(b, token, logprob)
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "fastsample/cuda/common.cuh"

namespace fastsample {
namespace cuda {

__device__ __forceinline__ u64 warp_max_u64(u64 v) {
  for (int d = 16; d > 0; d >>= 1) {
    const u64 o = __shfl_xor_sync(0xFFFFFFFFu, v, d);
    v = o > v ? o : v;
  }
  return v;
}

__device__ __forceinline__ bool is_kept(const RowInfo& info, u32 key, float w) {
  return key >= info.topk_thr && key >= info.topp_thr && w >= info.minp_w;
}

template <class Src>
__global__ void __launch_bounds__(kThreads) stats_pass(Src src, RowWorkspace ws, int chunks, RowStats* out) {
  const int64_t b = blockIdx.y;
  const RowInfo info = ws.info[b];
  const Slice s = chunk_slice(src.vocab, chunks, blockIdx.x);
  u32 kmax = 0, flags = 0;
  for (int64_t i = s.begin + threadIdx.x; i < s.end; i += kThreads) {
    const float v = src.value(info, b, i);
    if (v != v) {
      flags |= kHasNaN;
      continue;
    }
    const u32 key = order_key(v);
    kmax = key > kmax ? key : kmax;
    if (v < 0.0f) flags |= kHasNegative;
    if (v == INFINITY) flags |= kHasPosInf;
  }
  kmax = __reduce_max_sync(0xFFFFFFFFu, kmax);
  flags = __reduce_or_sync(0xFFFFFFFFu, flags);
  if ((threadIdx.x & 31) == 0) {
    if (kmax) atomicMax(&out[b].max_key, kmax);
    if (flags) atomicOr(&out[b].flags, flags);
  }
}

// Greedy rows only: the lowest index of the row max and how many entries equal it.
template <class Src>
__global__ void __launch_bounds__(kThreads) argmax_pass(Src src, RowWorkspace ws, int chunks) {
  const int64_t b = blockIdx.y;
  const RowInfo info = ws.info[b];
  if (info.status != kRowGreedy) return;
  const u32 max_key = ws.stats[b].max_key;
  const Slice s = chunk_slice(src.vocab, chunks, blockIdx.x);
  u64 rev = 0;
  u32 count = 0;
  for (int64_t i = s.begin + threadIdx.x; i < s.end; i += kThreads) {
    if (order_key(src.value(info, b, i)) == max_key) {
      const u64 r = static_cast<u64>(src.vocab - 1 - i);
      rev = r > rev ? r : rev;
      ++count;
    }
  }
  rev = warp_max_u64(rev);
  count = __reduce_add_sync(0xFFFFFFFFu, count);
  if ((threadIdx.x & 31) == 0 && count) {
    atomicMax(&ws.stats[b].argmax_rev, rev);
    atomicAdd(&ws.stats[b].max_count, static_cast<u64>(count));
  }
}

// Shared by both radix selections: loads the row's global histogram into shared memory and zeroes it for
// the next pass. Called by the last CTA of the row only.
__device__ __forceinline__ void take_histogram(u64* global, u64* bins) {
  if (threadIdx.x < kBins) {
    bins[threadIdx.x] = __ldcg(&global[threadIdx.x]);
    global[threadIdx.x] = 0;
  }
  __syncthreads();
}

// Pass `pass` (0 = most significant digit) of the radix select of the k-th largest key among the rows
// with status kRowSample and k > 0. RowInfo.rank_rem starts at k; after the last pass, topk_thr holds the
// k-th largest key (its low, insignificant bits zero), so `key >= topk_thr` keeps every tie.
template <class Src>
__global__ void __launch_bounds__(kThreads) radix_select_pass(Src src, RowWorkspace ws, int chunks, int pass,
                                                              int passes) {
  __shared__ u32 local[kBins];
  __shared__ u64 bins[kBins];
  const int64_t b = blockIdx.y;
  const RowInfo info = ws.info[b];
  if (info.status != kRowSample || info.k == 0) return;
  const int shift = 24 - 8 * pass;
  const u32 mask = pass == 0 ? 0u : (0xFFFFFFFFu << (shift + 8));
  if (threadIdx.x < kBins) local[threadIdx.x] = 0;
  __syncthreads();
  const Slice s = chunk_slice(src.vocab, chunks, blockIdx.x);
  for (int64_t i = s.begin + threadIdx.x; i < s.end; i += kThreads) {
    const u32 key = order_key(src.value(info, b, i));
    if ((key & mask) == info.prefix) atomicAdd(&local[(key >> shift) & 0xFFu], 1u);
  }
  __syncthreads();
  u64* hist = ws.hist + b * kBins;
  if (threadIdx.x < kBins && local[threadIdx.x]) atomicAdd(&hist[threadIdx.x], static_cast<u64>(local[threadIdx.x]));
  if (!last_cta_of_row(ws.tickets, b)) return;
  take_histogram(hist, bins);
  if (threadIdx.x == 0) {
    u64 rem = info.rank_rem;
    int digit = 0;
    for (int d = kBins - 1; d >= 0; --d) {
      if (bins[d] >= rem) {
        digit = d;
        break;
      }
      rem -= bins[d];
    }
    RowInfo& out = ws.info[b];
    const u32 prefix = info.prefix | (static_cast<u32>(digit) << shift);
    out.rank_rem = rem;
    if (pass == passes - 1) {
      out.topk_thr = prefix;
      out.prefix = 0;
    } else {
      out.prefix = prefix;
    }
  }
}

// Pass `pass` of the exact top-p threshold over the top-k survivors S (key >= topk_thr) of rows with
// status kRowSample and top_p in (0, 1). Histograms hold fixed-point mass per digit. The threshold is the
// value group g (distinct values, descending) with mass_above(g) < p * W_S <= mass_above(g) + mass(g):
// exactly the groups with mass_above < p * W_S are kept (docs/ops.md, top-p).
template <class Src>
__global__ void __launch_bounds__(kThreads) mass_select_pass(Src src, RowWorkspace ws, int chunks, int pass,
                                                             int passes) {
  __shared__ u64 local[kBins];
  __shared__ u64 bins[kBins];
  const int64_t b = blockIdx.y;
  const RowInfo info = ws.info[b];
  if (info.status != kRowSample || !(info.top_p < 1.0f)) return;
  const int shift = 24 - 8 * pass;
  const u32 mask = pass == 0 ? 0u : (0xFFFFFFFFu << (shift + 8));
  if (threadIdx.x < kBins) local[threadIdx.x] = 0;
  __syncthreads();
  const Slice s = chunk_slice(src.vocab, chunks, blockIdx.x);
  for (int64_t i = s.begin + threadIdx.x; i < s.end; i += kThreads) {
    const float v = src.value(info, b, i);
    const u32 key = order_key(v);
    if (key >= info.topk_thr && (key & mask) == info.prefix) {
      const u64 m = to_fixed(info, src.weight(info, v));
      if (m) atomicAdd(&local[(key >> shift) & 0xFFu], m);
    }
  }
  __syncthreads();
  u64* hist = ws.hist + b * kBins;
  if (threadIdx.x < kBins && local[threadIdx.x]) atomicAdd(&hist[threadIdx.x], local[threadIdx.x]);
  if (!last_cta_of_row(ws.tickets, b)) return;
  take_histogram(hist, bins);
  if (threadIdx.x == 0) {
    u64 target = info.target;
    if (pass == 0) {
      u64 total = 0;
      for (int d = 0; d < kBins; ++d) total += bins[d];
      target = static_cast<u64>(ceil(static_cast<double>(info.top_p) * static_cast<double>(total)));
    }
    // Invariant: above < target <= above + mass(prefix group), so some digit always reaches the target.
    u64 above = pass == 0 ? 0 : info.above;
    int digit = 0;
    for (int d = kBins - 1; d >= 0; --d) {
      if (above + bins[d] >= target) {
        digit = d;
        break;
      }
      above += bins[d];
    }
    RowInfo& out = ws.info[b];
    const u32 prefix = info.prefix | (static_cast<u32>(digit) << shift);
    out.target = target;
    out.above = above;
    if (pass == passes - 1) {
      out.topp_thr = prefix;
      out.prefix = 0;
    } else {
      out.prefix = prefix;
    }
  }
}

// Fixed-point mass of the kept tokens of each CTA's slice (rows with status kRowSample) -> chunk_a.
template <class Src>
__global__ void __launch_bounds__(kThreads) mass_pass(Src src, RowWorkspace ws, int chunks) {
  using Reduce = cub::BlockReduce<u64, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const int64_t b = blockIdx.y;
  const RowInfo info = ws.info[b];
  if (info.status != kRowSample) return;
  const Slice s = chunk_slice(src.vocab, chunks, blockIdx.x);
  u64 sum = 0;
  for (int64_t i = s.begin + threadIdx.x; i < s.end; i += kThreads) {
    const float v = src.value(info, b, i);
    const float w = src.weight(info, v);
    if (is_kept(info, order_key(v), w)) sum += to_fixed(info, w);
  }
  sum = Reduce(tmp).Sum(sum);
  if (threadIdx.x == 0) ws.chunk_a[b * chunks + blockIdx.x] = sum;
}

// The token of each row: greedy rows take the argmax, invalid rows -1, sampled rows the smallest kept id i
// with sum_{kept k <= i} w_k > u * W (u = Philox draw `draw` of the row). The prefix sums are exact
// integers, so exactly one CTA and one thread find the token, whatever the grid.
template <class Src, class Emit>
__global__ void __launch_bounds__(kThreads) scan_pass(Src src, RowWorkspace ws, int chunks, const int64_t* seed,
                                                      const int64_t* offset, u32 draw, Emit emit) {
  using Scan = cub::BlockScan<u64, kThreads>;
  __shared__ typename Scan::TempStorage tmp;
  const int64_t b = blockIdx.y;
  const int chunk = blockIdx.x;
  const bool leader = chunk == 0 && threadIdx.x == 0;
  const RowInfo info = ws.info[b];
  if (info.status == kRowInvalid) {
    if (leader) emit(b, -1, NAN);
    return;
  }
  if (info.status == kRowGreedy) {
    if (leader) {
      const RowStats st = ws.stats[b];
      emit(b, src.vocab - 1 - static_cast<int64_t>(st.argmax_rev), -logf(static_cast<float>(st.max_count)));
    }
    return;
  }
  const u64* mass = ws.chunk_a + b * chunks;
  u64 before = 0, total = 0;
  for (int j = 0; j < chunks; ++j) {
    before += j < chunk ? mass[j] : 0;
    total += mass[j];
  }
  if (total == 0) {  // unreachable for a valid row (its max has weight > 0); kept as a guard
    if (leader) emit(b, -1, NAN);
    return;
  }
  const u64 target = scaled_target(philox_bits24(seed[b], offset[b], draw), total);
  if (before > target || before + mass[chunk] <= target) return;
  const Slice s = chunk_slice(src.vocab, chunks, chunk);
  for (int64_t tile = s.begin; tile < s.end; tile += kTile) {
    const int64_t first = tile + static_cast<int64_t>(threadIdx.x) * kItems;
    u64 w[kItems];
    u64 mine = 0;
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      w[j] = 0;
      if (first + j < s.end) {
        const float v = src.value(info, b, first + j);
        const float wt = src.weight(info, v);
        if (is_kept(info, order_key(v), wt)) w[j] = to_fixed(info, wt);
      }
      mine += w[j];
    }
    u64 excl, step;
    Scan(tmp).ExclusiveSum(mine, excl, step);
    u64 run = before + excl;
    if (run <= target && run + mine > target) {
#pragma unroll
      for (int j = 0; j < kItems; ++j) {
        run += w[j];
        if (run > target) {
          const float v = src.value(info, b, first + j);
          emit(b, first + j, src.log_weight(info, v) - fixed_log(info, total));
          break;
        }
      }
    }
    if (before + step > target) return;
    before += step;
    __syncthreads();  // tmp is reused by the next tile's scan
  }
}

// Launch helpers: the same grid for every pass.
inline dim3 row_grid(int64_t rows, int chunks) { return dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(rows)); }

// Runs the `passes` radix-select launches of top-k.
template <class Src>
cudaError_t launch_topk_threshold(const Src& src, const RowWorkspace& ws, int64_t rows, int chunks, int passes,
                                  cudaStream_t stream) {
  for (int pass = 0; pass < passes; ++pass) {
    radix_select_pass<Src><<<row_grid(rows, chunks), kThreads, 0, stream>>>(src, ws, chunks, pass, passes);
    FS_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return cudaSuccess;
}

// Runs the `passes` mass-select launches of top-p.
template <class Src>
cudaError_t launch_topp_threshold(const Src& src, const RowWorkspace& ws, int64_t rows, int chunks, int passes,
                                  cudaStream_t stream) {
  for (int pass = 0; pass < passes; ++pass) {
    mass_select_pass<Src><<<row_grid(rows, chunks), kThreads, 0, stream>>>(src, ws, chunks, pass, passes);
    FS_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace fastsample
