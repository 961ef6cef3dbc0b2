// chain_speculative_sampling (docs/ops.md): the acceptance test of n draft tokens per row, then one token
// sampled at the first rejected position from norm(max(0, p - q)) (or from p when that is all zero), or
// the bonus token from p_n when every draft token passes.
//
// Launches: memset -> speculative_accept (1 thread/row: n tests with Philox draws 0..n-1, the accepted
// prefix and the -1 padding) -> stats_pass over the sampled distribution and over p at that position ->
// speculative_prepare (1 thread/row) -> mass_pass -> scan_pass with draw n, which writes the final token
// at output[b, emitted_num[b]]. The sampling passes are those of `sample` (pipeline.cuh), split over
// several CTAs per row, so the final step costs about three reads of one V-row per batch row.
#pragma once

#include "fastsample/cuda/pipeline.cuh"

namespace fastsample {
namespace cuda {

// The row sampled at the end: max(0, p_pos - q_pos) with NaN propagated (like numpy's maximum), or p_pos.
struct SpecSource {
  const float* draft;   // q [rows, n, vocab]
  const float* target;  // p [rows, n + 1, vocab]
  int64_t n, vocab;
  bool plain;  // read p even where RowInfo.use_residual is set

  __device__ __forceinline__ float value(const RowInfo& r, int64_t b, int64_t i) const {
    const float p = target[(b * (n + 1) + r.pos) * vocab + i];
    if (plain || !r.use_residual) return p;
    const float d = p - draft[(b * n + r.pos) * vocab + i];
    return d > 0.0f ? d : (d != d ? d : 0.0f);
  }
  __device__ __forceinline__ float weight(const RowInfo&, float v) const { return v; }
  __device__ __forceinline__ float log_weight(const RowInfo&, float v) const { return logf(v); }
};

struct SpecArgs {
  const float* draft_probs;        // q [rows, n, vocab]
  const int64_t* draft_token_ids;  // [rows, n]
  const float* target_probs;       // p [rows, n + 1, vocab]
  int64_t rows, n, vocab;
  const int64_t* seed;             // [rows]
  const int64_t* offset;           // [rows]
  int64_t* output_token_ids;       // [rows, n + 1] out
  int64_t* accepted_num;           // [rows] out
  int64_t* emitted_num;            // [rows] out
};

// Position i passes iff its draft id is in [0, V) and u_i * q_i(x) < p_i(x); the product of two float32
// values is exact in double, so the comparison is the real-number one (NaN fails).
static __global__ void speculative_accept(SpecArgs a, RowWorkspace ws) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= a.rows) return;
  const int64_t n = a.n, vocab = a.vocab;
  int64_t accepted = 0, emitted = n;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t x = a.draft_token_ids[b * n + i];
    bool pass = false;
    if (x >= 0 && x < vocab) {
      const double u = philox_uniform(a.seed[b], a.offset[b], static_cast<u32>(i));
      const double q = a.draft_probs[(b * n + i) * vocab + x];
      const double p = a.target_probs[(b * (n + 1) + i) * vocab + x];
      pass = u * q < p;
    }
    accepted += pass;
    if (!pass && emitted == n) emitted = i;
  }
  int64_t* out = a.output_token_ids + b * (n + 1);
  for (int64_t j = 0; j <= n; ++j) out[j] = j < emitted ? a.draft_token_ids[b * n + j] : -1;
  a.accepted_num[b] = accepted;
  a.emitted_num[b] = emitted;
  RowInfo info = {};
  info.pos = emitted;
  info.use_residual = emitted < n;
  ws.info[b] = info;
}

// Chooses the distribution (residual, or p when the residual is all zero) and checks it: a NaN, a negative
// or +inf entry, or zero total makes the final token -1.
static __global__ void speculative_prepare(RowWorkspace ws, int64_t rows, int frac_bits) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= rows) return;
  RowInfo info = ws.info[b];
  const RowStats chosen = ws.stats[b], p = ws.stats2[b];
  constexpr u32 bad = kHasNaN | kHasNegative | kHasPosInf;
  float wmax = key_to_float(chosen.max_key);
  bool valid = !(chosen.flags & bad);
  if (valid && info.use_residual && wmax == 0.0f) {
    info.use_residual = 0;
    wmax = key_to_float(p.max_key);
    valid = !(p.flags & bad);
  }
  valid = valid && wmax > 0.0f;
  info.status = valid ? kRowSample : kRowInvalid;
  info.top_p = 1.0f;
  if (valid) set_fixed_scale(info, wmax, frac_bits);
  ws.info[b] = info;
}

struct SpecEmit {
  int64_t* output;             // [rows, n + 1]
  const int64_t* emitted_num;  // [rows]
  int64_t n;
  __device__ __forceinline__ void operator()(int64_t b, int64_t token, float) const {
    output[b * (n + 1) + emitted_num[b]] = token;
  }
};

inline size_t chain_speculative_sampling_workspace_bytes(int64_t rows, int64_t vocab) {
  return row_workspace_bytes(rows, row_chunks(rows, vocab));
}

inline cudaError_t chain_speculative_sampling(const SpecArgs& a, void* workspace, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  if (a.rows > kMaxRows) return cudaErrorInvalidValue;
  const int chunks = row_chunks(a.rows, a.vocab);
  const RowWorkspace ws = carve_row_workspace(workspace, a.rows, chunks);
  FS_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(workspace, 0, row_workspace_bytes(a.rows, chunks), stream));
  const unsigned row_blocks = static_cast<unsigned>((a.rows + 127) / 128);
  speculative_accept<<<row_blocks, 128, 0, stream>>>(a, ws);
  FS_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  const SpecSource chosen{a.draft_probs, a.target_probs, a.n, a.vocab, false};
  const SpecSource plain{a.draft_probs, a.target_probs, a.n, a.vocab, true};
  const dim3 grid = row_grid(a.rows, chunks);
  stats_pass<SpecSource><<<grid, kThreads, 0, stream>>>(chosen, ws, chunks, ws.stats);
  FS_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  stats_pass<SpecSource><<<grid, kThreads, 0, stream>>>(plain, ws, chunks, ws.stats2);
  FS_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  speculative_prepare<<<row_blocks, 128, 0, stream>>>(ws, a.rows, fixed_frac_bits(a.vocab));
  FS_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  mass_pass<SpecSource><<<grid, kThreads, 0, stream>>>(chosen, ws, chunks);
  FS_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  scan_pass<SpecSource, SpecEmit><<<grid, kThreads, 0, stream>>>(chosen, ws, chunks, a.seed, a.offset,
                                                                 static_cast<u32>(a.n),
                                                                 SpecEmit{a.output_token_ids, a.emitted_num, a.n});
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fastsample
