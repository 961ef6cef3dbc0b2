// Steps 1-3 of the stack sampler (docs/ops.md "sample_stack"): grammar bitmask, sparse logit bias and
// repetition / frequency / presence penalties, written as processed float32 logits [B, V] that the `sample`
// kernels (sampling.cuh) or the torch steps of fastsample/stack/cuda.py then read.
//
// Exactness invariant: a processed logit is the float32 rounding of the float64 formula of docs/ops.md
// (x + the sum of the token's bias values, the repetition penalty by the sign of that sum, then f * c + q for
// an output count c > 0), then -inf where the bitmask clears the token; untouched tokens are x itself. Only the
// order in which float64 atomics add repeated bias values of one token may differ from the reference, which
// changes the float32 result only when the float64 sum lies within a float64 ulp of a float32 rounding
// boundary (the compiler may also contract f * c + q into an FMA).
//
// Launch sequence (work O(V) for the one pass, O(L) for the L history and bias ids, no dense [B, V] scratch):
//   memset(bad, table) -> mask_pass ((chunks, B) grid: out = mask ? x : -inf, flags raw NaN)
//   -> overrides_pass (one CTA per row, skipped when no ids are given): the row's ids go into an
//      open-addressing hash table in the workspace (capacity a power of two >= 2 L, so probing ends), keyed
//      by id, accumulating the bias sum (float64), the output count and a "seen in the prompt" bit; after a
//      barrier each occupied slot writes its token's processed logit over the mask pass's value.
// bad[b] (int32) is set to 1 for a row with an id outside [-1, V), a NaN raw logit, or a penalty out of
// range (r <= 0, or r, f, q not finite): the row's result is then -1 whatever the sampling steps find.
#pragma once

#include "fastsample/cuda/common.cuh"
#include "fastsample/stack_rules.h"

namespace fastsample {
namespace cuda {

constexpr int kOverrideThreads = 256;
constexpr u32 kSeenInPrompt = 1u << 30;  // table state: bit 30 = in the prompt, bits below = output count

// One id list of the rows: [rows, len] ids, -1 = unused slot; `values` (bias only) the amounts added.
struct StackIdList {
  const int64_t* ids;
  const float* values;
  int64_t len;
};

template <class T>
struct StackOverrideArgs {
  const T* logits;  // [rows, vocab]
  int64_t rows, vocab;
  const int32_t* mask;  // [rows, mask_words] or null; bit i % 32 of word i / 32 = token i allowed
  int64_t mask_words;
  StackIdList bias, prompt, output;  // len 0 = not given
  const float* repetition;  // [rows] or null (then the scalar)
  float repetition_val;
  const float* frequency;
  float frequency_val;
  const float* presence;
  float presence_val;
  float* out;    // [rows, vocab] processed logits
  int32_t* bad;  // [rows]
};

// Hash-table capacity per row for `ids` listed ids: a power of two >= 2 * ids (at least 32).
inline int64_t stack_table_capacity(int64_t ids) {
  int64_t cap = 32;
  while (cap < 2 * ids) cap *= 2;
  return cap;
}

inline int64_t stack_listed_ids(const StackIdList& a, const StackIdList& b, const StackIdList& c) {
  return a.len + b.len + c.len;
}

// Workspace of one call: keys (id + 1, 0 = empty), states and bias sums of every row's table.
inline size_t stack_overrides_workspace_bytes(int64_t rows, int64_t listed) {
  if (listed == 0) return 0;
  const size_t slots = static_cast<size_t>(rows) * stack_table_capacity(listed);
  return 2 * align_up(slots * sizeof(u32)) + align_up(slots * sizeof(double));
}

template <class T>
__global__ void __launch_bounds__(kThreads) stack_mask_pass(const T* x, int64_t vocab, int chunks,
                                                            const int32_t* mask, int64_t mask_words, float* out,
                                                            int32_t* bad) {
  const int64_t b = blockIdx.y;
  const Slice sl = chunk_slice(vocab, chunks, blockIdx.x);
  const T* row = x + b * vocab;
  float* dst = out + b * vocab;
  const int32_t* words = mask ? mask + b * mask_words : nullptr;
  int has_nan = 0;
  for (int64_t i = sl.begin + threadIdx.x; i < sl.end; i += kThreads) {
    const float v = to_float(row[i]);
    has_nan |= v != v;
    const bool allowed = !words || ((static_cast<u32>(words[i >> 5]) >> (i & 31)) & 1u);
    dst[i] = allowed ? v : -INFINITY;
  }
  if (__syncthreads_or(has_nan) && threadIdx.x == 0) atomicOr(&bad[b], 1);
}

// Slot of `key` (id + 1) in a table of `cap` slots: inserted if absent. cap >= 2 * ids, so a free slot exists.
__device__ __forceinline__ int64_t stack_table_slot(u32* keys, int64_t cap, u32 key) {
  u32 h = key * 0x9E3779B1u;
  int64_t slot = static_cast<int64_t>(h ^ (h >> 15)) & (cap - 1);
  while (true) {
    const u32 prev = atomicCAS(&keys[slot], 0u, key);
    if (prev == 0u || prev == key) return slot;
    slot = (slot + 1) & (cap - 1);
  }
}

// Scatters one row's id list into its table (kind 0: bias, 1: prompt, 2: output); returns 1 when an id lies
// outside [-1, V).
__device__ __forceinline__ int stack_scatter(const StackIdList& list, int64_t b, int64_t vocab, int kind, u32* keys,
                                             u32* states, double* bias, int64_t cap) {
  int out_of_range = 0;
  for (int64_t j = threadIdx.x; j < list.len; j += blockDim.x) {
    const int64_t id = list.ids[b * list.len + j];
    if (id == -1) continue;
    if (id < -1 || id >= vocab) {
      out_of_range = 1;
      continue;
    }
    const int64_t slot = stack_table_slot(keys, cap, static_cast<u32>(id + 1));
    if (kind == 0) {
      atomicAdd(&bias[slot], static_cast<double>(list.values[b * list.len + j]));
    } else if (kind == 1) {
      atomicOr(&states[slot], kSeenInPrompt);
    } else {
      atomicAdd(&states[slot], 1u);
    }
  }
  return out_of_range;
}

__device__ __forceinline__ float stack_row_param(const float* arr, float val, int64_t b) {
  return arr ? arr[b] : val;
}

template <class T>
__global__ void __launch_bounds__(kOverrideThreads) stack_overrides_pass(StackOverrideArgs<T> a, u32* keys_all,
                                                                        u32* states_all, double* bias_all,
                                                                        int64_t cap) {
  const int64_t b = blockIdx.x;
  u32* keys = keys_all + b * cap;
  u32* states = states_all + b * cap;
  double* bias = bias_all + b * cap;
  int bad = stack_scatter(a.bias, b, a.vocab, 0, keys, states, bias, cap);
  bad |= stack_scatter(a.prompt, b, a.vocab, 1, keys, states, bias, cap);
  bad |= stack_scatter(a.output, b, a.vocab, 2, keys, states, bias, cap);
  // The barrier makes every thread's atomics on the table visible to the whole CTA.
  if (__syncthreads_or(bad) && threadIdx.x == 0) atomicOr(&a.bad[b], 1);
  const double r = stack_row_param(a.repetition, a.repetition_val, b);
  const double f = stack_row_param(a.frequency, a.frequency_val, b);
  const double q = stack_row_param(a.presence, a.presence_val, b);
  if (threadIdx.x == 0 && !stack_penalties_valid(r, f, q)) atomicOr(&a.bad[b], 1);
  const int32_t* words = a.mask ? a.mask + b * a.mask_words : nullptr;
  for (int64_t slot = threadIdx.x; slot < cap; slot += blockDim.x) {
    const u32 key = __ldcg(&keys[slot]);
    if (key == 0u) continue;
    const int64_t id = static_cast<int64_t>(key) - 1;
    const u32 state = __ldcg(&states[slot]);
    const u32 count = state & (kSeenInPrompt - 1u);
    double z = static_cast<double>(to_float(a.logits[b * a.vocab + id])) + __ldcg(&bias[slot]);
    if (state != 0u) z = z > 0.0 ? z / r : z * r;  // seen in the prompt or the output
    if (count > 0u) z -= f * static_cast<double>(count) + q;
    const bool allowed = !words || ((static_cast<u32>(words[id >> 5]) >> (id & 31)) & 1u);
    a.out[b * a.vocab + id] = allowed ? static_cast<float>(z) : -INFINITY;
  }
}

// Needs stack_overrides_workspace_bytes(rows, listed ids) bytes of workspace; a.bad is zeroed here.
template <class T>
cudaError_t stack_overrides(const StackOverrideArgs<T>& a, void* workspace, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  if (a.rows > kMaxRows) return cudaErrorInvalidValue;
  FS_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(a.bad, 0, static_cast<size_t>(a.rows) * sizeof(int32_t), stream));
  const int chunks = row_chunks(a.rows, a.vocab);
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(a.rows));
  stack_mask_pass<T><<<grid, kThreads, 0, stream>>>(a.logits, a.vocab, chunks, a.mask, a.mask_words, a.out, a.bad);
  FS_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  const int64_t listed = stack_listed_ids(a.bias, a.prompt, a.output);
  if (listed == 0) {
    // No table: only the parameter check of the overrides pass is left, done by a table-less launch.
    stack_overrides_pass<T><<<static_cast<unsigned>(a.rows), kOverrideThreads, 0, stream>>>(a, nullptr, nullptr,
                                                                                             nullptr, 0);
    return cudaGetLastError();
  }
  const int64_t cap = stack_table_capacity(listed);
  const size_t slots = static_cast<size_t>(a.rows) * cap;
  char* p = static_cast<char*>(workspace);
  FS_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(p, 0, stack_overrides_workspace_bytes(a.rows, listed), stream));
  u32* keys = reinterpret_cast<u32*>(p);
  u32* states = reinterpret_cast<u32*>(p + align_up(slots * sizeof(u32)));
  double* bias = reinterpret_cast<double*>(p + 2 * align_up(slots * sizeof(u32)));
  stack_overrides_pass<T><<<static_cast<unsigned>(a.rows), kOverrideThreads, 0, stream>>>(a, keys, states, bias, cap);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fastsample
