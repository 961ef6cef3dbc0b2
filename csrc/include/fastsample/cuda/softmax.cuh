// Fused temperature + safe softmax (docs/ops.md "softmax"), single pass over the input plus one write pass.
//
// Pass 1 (online softmax): each CTA folds its slice of the row into (max m, sum s of exp((x - m) / T),
// count of maxima, NaN seen) one element at a time, merges its threads in a fixed order and stores the
// partial. Pass 2: each CTA merges the row's partials in chunk order (deterministic) and writes
// exp((x - m) / T) / s, or 1 / count on the maxima when T == 0 or the row has +inf logits.
#pragma once

#include "fastsample/cuda/common.cuh"

namespace fastsample {
namespace cuda {

struct SoftmaxPartial {
  float m;    // max over the non-NaN, non -inf elements (-inf when none)
  float s;    // sum of exp((x - m) / T) over them
  u32 count;  // how many equal m (0 when none)
  u32 nan;    // 1 if a NaN was seen
};

// Merges two partials; `t` is the temperature used for s (> 0).
__device__ __forceinline__ SoftmaxPartial softmax_merge(SoftmaxPartial a, SoftmaxPartial b, float t) {
  const u32 nan = a.nan | b.nan;
  if (b.count == 0) {
    a.nan = nan;
    return a;
  }
  if (a.count == 0) {
    b.nan = nan;
    return b;
  }
  const float m = a.m > b.m ? a.m : b.m;
  SoftmaxPartial r;
  r.m = m;
  r.s = (a.m == m ? a.s : a.s * expf((a.m - m) / t)) + (b.m == m ? b.s : b.s * expf((b.m - m) / t));
  r.count = (a.m == m ? a.count : 0u) + (b.m == m ? b.count : 0u);
  r.nan = nan;
  return r;
}

__device__ __forceinline__ float row_temperature(const float* t_arr, float t_val, int64_t b) {
  return t_arr ? t_arr[b] : t_val;
}

// Folds a CTA's partials: warps by shuffles, then warp results in warp order (fixed, so deterministic).
__device__ __forceinline__ SoftmaxPartial softmax_block_merge(SoftmaxPartial p, float t) {
  __shared__ SoftmaxPartial warps[kThreads / 32];
  for (int d = 16; d > 0; d >>= 1) {
    SoftmaxPartial o;
    o.m = __shfl_down_sync(0xFFFFFFFFu, p.m, d);
    o.s = __shfl_down_sync(0xFFFFFFFFu, p.s, d);
    o.count = __shfl_down_sync(0xFFFFFFFFu, p.count, d);
    o.nan = __shfl_down_sync(0xFFFFFFFFu, p.nan, d);
    p = softmax_merge(p, o, t);
  }
  if ((threadIdx.x & 31) == 0) warps[threadIdx.x / 32] = p;
  __syncthreads();
  if (threadIdx.x == 0) {
    p = warps[0];
    for (int w = 1; w < kThreads / 32; ++w) p = softmax_merge(p, warps[w], t);
  }
  return p;  // valid in thread 0
}

template <class T>
__global__ void __launch_bounds__(kThreads) softmax_partial_pass(const T* x, int64_t vocab, int chunks,
                                                                 const float* t_arr, float t_val,
                                                                 SoftmaxPartial* partials) {
  const int64_t b = blockIdx.y;
  const float temp = row_temperature(t_arr, t_val, b);
  const float t = temp > 0.0f ? temp : 1.0f;  // s is unused when T == 0 (1/count) or the row is invalid
  const Slice sl = chunk_slice(vocab, chunks, blockIdx.x);
  const T* row = x + b * vocab;
  SoftmaxPartial p{-INFINITY, 0.0f, 0u, 0u};
  for (int64_t i = sl.begin + threadIdx.x; i < sl.end; i += kThreads) {
    const float v = to_float(row[i]);
    if (v != v) {
      p.nan = 1u;
    } else if (v == -INFINITY) {
      continue;  // weight 0 in every valid row
    } else if (v > p.m) {
      p.s = p.s * expf((p.m - v) / t) + 1.0f;
      p.m = v;
      p.count = 1u;
    } else if (v == p.m) {
      p.s += 1.0f;
      ++p.count;
    } else {
      p.s += expf((v - p.m) / t);
    }
  }
  p = softmax_block_merge(p, t);
  if (threadIdx.x == 0) partials[b * chunks + blockIdx.x] = p;
}

template <class T>
__global__ void __launch_bounds__(kThreads) softmax_write_pass(const T* x, int64_t vocab, int chunks,
                                                               const float* t_arr, float t_val,
                                                               const SoftmaxPartial* partials, float* out) {
  __shared__ SoftmaxPartial total;
  const int64_t b = blockIdx.y;
  const float temp = row_temperature(t_arr, t_val, b);
  const float t = temp > 0.0f ? temp : 1.0f;
  if (threadIdx.x == 0) {
    SoftmaxPartial p = partials[b * chunks];
    for (int j = 1; j < chunks; ++j) p = softmax_merge(p, partials[b * chunks + j], t);
    total = p;
  }
  __syncthreads();
  const SoftmaxPartial p = total;
  const Slice sl = chunk_slice(vocab, chunks, blockIdx.x);
  const T* row = x + b * vocab;
  float* dst = out + b * vocab;
  // NaN seen, every logit -inf, or T < 0 / NaN (which fails temp >= 0): the row is NaN.
  if (p.nan || p.count == 0 || !(temp >= 0.0f)) {
    for (int64_t i = sl.begin + threadIdx.x; i < sl.end; i += kThreads) dst[i] = NAN;
    return;
  }
  if (temp == 0.0f || p.m == INFINITY) {
    const float share = 1.0f / static_cast<float>(p.count);
    for (int64_t i = sl.begin + threadIdx.x; i < sl.end; i += kThreads) dst[i] = to_float(row[i]) == p.m ? share : 0.0f;
    return;
  }
  for (int64_t i = sl.begin + threadIdx.x; i < sl.end; i += kThreads) {
    const float v = to_float(row[i]);
    dst[i] = v == -INFINITY ? 0.0f : expf((v - p.m) / t) / p.s;
  }
}

template <class T>
struct SoftmaxArgs {
  const T* logits;  // [rows, vocab]
  int64_t rows, vocab;
  const float* temperature;  // [rows] or null
  float temperature_val;
  float* out;  // [rows, vocab] float32
};

inline size_t softmax_workspace_bytes(int64_t rows, int64_t vocab) {
  return align_up(static_cast<size_t>(rows) * row_chunks(rows, vocab) * sizeof(SoftmaxPartial));
}

template <class T>
cudaError_t softmax(const SoftmaxArgs<T>& a, void* workspace, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  if (a.rows > kMaxRows) return cudaErrorInvalidValue;
  const int chunks = row_chunks(a.rows, a.vocab);
  auto* partials = static_cast<SoftmaxPartial*>(workspace);
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(a.rows));
  softmax_partial_pass<T><<<grid, kThreads, 0, stream>>>(a.logits, a.vocab, chunks, a.temperature,
                                                         a.temperature_val, partials);
  FS_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  softmax_write_pass<T><<<grid, kThreads, 0, stream>>>(a.logits, a.vocab, chunks, a.temperature,
                                                       a.temperature_val, partials, a.out);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fastsample
