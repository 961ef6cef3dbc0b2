// The fused `sample` op (temperature -> top-k -> top-p -> min-p -> one token per row, logprobs) and
// `renorm_probs` (the same filters, probabilities renormalised over the kept set). docs/ops.md is the
// contract; the passes are in pipeline.cuh.
//
// Launch sequence of `sample` (each a (chunks, B) grid unless noted; the filter launches are skipped on
// the host when the scalar parameters switch a filter off and no per-row tensor is given):
//   memset workspace -> stats_pass -> filter_prepare (1 thread/row) -> argmax_pass (if T can be 0)
//   -> radix_select_pass x P (top-k) -> mass_select_pass x P (top-p) -> mass_pass -> scan_pass
// P = 4 radix passes for float32 inputs, 3 for float16, 2 for bfloat16. Each pass reads the row once, so a
// `sample` with top-k and top-p on float32 logits reads it 2P + 3 times; for V = 128256 a row (501 KiB)
// stays in L2 when B is small, and the cost is then launch latency, which CUDA graphs remove.
#pragma once

#include "fastsample/cuda/pipeline.cuh"

namespace fastsample {
namespace cuda {

// A per-row parameter is a device array [B] (may be null) or a scalar; the array wins.
struct RowParams {
  const float* temperature;
  float temperature_val;
  const int64_t* top_k;
  int64_t top_k_val;
  const float* top_p;
  float top_p_val;
  const float* min_p;
  float min_p_val;
};

// Rows of logits (weights exp((x - max) / T), +inf logits sharing the mass) or of probabilities (w = x).
template <class T>
struct XSource {
  const T* x;
  int64_t vocab;
  bool is_logits;

  __device__ __forceinline__ float value(const RowInfo&, int64_t b, int64_t i) const {
    return to_float(x[b * vocab + i]);
  }
  __device__ __forceinline__ float weight(const RowInfo& r, float v) const {
    if (!is_logits) return v;
    if (r.max_value == INFINITY) return v == INFINITY ? 1.0f : 0.0f;
    if (v == -INFINITY) return 0.0f;  // also when T = +inf, where (v - max) / T would be NaN
    return expf((v - r.max_value) / r.temperature);
  }
  __device__ __forceinline__ float log_weight(const RowInfo& r, float v) const {
    if (!is_logits) return logf(v);
    if (r.max_value == INFINITY) return 0.0f;
    return (v - r.max_value) / r.temperature;
  }
};

// Validity, greedy rows, fixed-point scale and filter parameters of every row (docs/ops.md "Row
// parameters", "Weights"). Probabilities ignore the temperature; with `sampling`, logits rows with T == 0
// are greedy.
static __global__ void filter_prepare(RowParams prm, RowWorkspace ws, int64_t rows, int64_t vocab, bool is_logits,
                               bool sampling, int frac_bits) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= rows) return;
  const RowStats st = ws.stats[b];
  const float temp = prm.temperature ? prm.temperature[b] : prm.temperature_val;
  const int64_t k = prm.top_k ? prm.top_k[b] : prm.top_k_val;
  const float p = prm.top_p ? prm.top_p[b] : prm.top_p_val;
  const float mp = prm.min_p ? prm.min_p[b] : prm.min_p_val;
  const float m = key_to_float(st.max_key);
  // NaN parameters fail these comparisons and make the row invalid.
  bool valid = p >= 0.0f && p <= 1.0f && mp >= 0.0f && mp <= 1.0f && !(st.flags & kHasNaN);
  if (is_logits) {
    valid = valid && temp >= 0.0f && m != -INFINITY;
  } else {
    valid = valid && !(st.flags & (kHasNegative | kHasPosInf)) && m > 0.0f;
  }
  RowInfo info = {};
  info.status = !valid ? kRowInvalid : (is_logits && sampling && temp == 0.0f) ? kRowGreedy : kRowSample;
  const float wmax = is_logits ? 1.0f : m;
  info.temperature = temp;
  info.max_value = m;
  if (valid) set_fixed_scale(info, wmax, frac_bits);
  info.k = (k > 0 && k < vocab) ? k : 0;
  info.rank_rem = static_cast<u64>(info.k);
  info.top_p = 1.0f;
  if (p < 1.0f) {
    if (p > 0.0f) {
      info.top_p = p;
    } else {
      info.topp_thr = st.max_key;  // p == 0 keeps the most probable token(s) only
    }
  }
  info.minp_w = mp > 0.0f ? mp * wmax : 0.0f;
  ws.info[b] = info;
}

inline bool may_filter_top_k(const RowParams& p, int64_t vocab) {
  return p.top_k != nullptr || (p.top_k_val > 0 && p.top_k_val < vocab);
}
inline bool may_filter_top_p(const RowParams& p) {
  return p.top_p != nullptr || (p.top_p_val > 0.0f && p.top_p_val < 1.0f);
}

// stats -> prepare -> (argmax) -> top-k and top-p thresholds -> kept mass per CTA: shared by both ops.
template <class T>
cudaError_t launch_filters(const XSource<T>& src, const RowParams& prm, const RowWorkspace& ws, void* workspace,
                           int64_t rows, int chunks, bool sampling, cudaStream_t stream) {
  FS_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(workspace, 0, row_workspace_bytes(rows, chunks), stream));
  const dim3 grid = row_grid(rows, chunks);
  stats_pass<XSource<T>><<<grid, kThreads, 0, stream>>>(src, ws, chunks, ws.stats);
  FS_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  const unsigned prep_blocks = static_cast<unsigned>((rows + 255) / 256);
  filter_prepare<<<prep_blocks, 256, 0, stream>>>(prm, ws, rows, src.vocab, src.is_logits, sampling,
                                                  fixed_frac_bits(src.vocab));
  FS_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  if (sampling && src.is_logits && (prm.temperature != nullptr || prm.temperature_val == 0.0f)) {
    argmax_pass<XSource<T>><<<grid, kThreads, 0, stream>>>(src, ws, chunks);
    FS_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  constexpr int passes = RadixPasses<T>::value;
  if (may_filter_top_k(prm, src.vocab)) {
    FS_CUDA_RETURN_IF_ERROR(launch_topk_threshold(src, ws, rows, chunks, passes, stream));
  }
  if (may_filter_top_p(prm)) {
    FS_CUDA_RETURN_IF_ERROR(launch_topp_threshold(src, ws, rows, chunks, passes, stream));
  }
  mass_pass<XSource<T>><<<grid, kThreads, 0, stream>>>(src, ws, chunks);
  return cudaGetLastError();
}

// ------------------------------------------------------------------------------------------- sample
template <class T>
struct SampleArgs {
  const T* x;             // [rows, vocab] logits (is_logits) or float32 probabilities
  int64_t rows, vocab;
  bool is_logits;
  RowParams params;
  const int64_t* seed;    // [rows]
  const int64_t* offset;  // [rows]
  int64_t* tokens;        // [rows] out
  float* logprobs;        // [rows] out, or null
};

struct SampleEmit {
  int64_t* tokens;
  float* logprobs;
  __device__ __forceinline__ void operator()(int64_t b, int64_t token, float logprob) const {
    tokens[b] = token;
    if (logprobs) logprobs[b] = logprob;
  }
};

inline size_t sample_workspace_bytes(int64_t rows, int64_t vocab) {
  return row_workspace_bytes(rows, row_chunks(rows, vocab));
}

template <class T>
cudaError_t sample(const SampleArgs<T>& a, void* workspace, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  if (a.rows > kMaxRows) return cudaErrorInvalidValue;
  const int chunks = row_chunks(a.rows, a.vocab);
  const RowWorkspace ws = carve_row_workspace(workspace, a.rows, chunks);
  const XSource<T> src{a.x, a.vocab, a.is_logits};
  FS_CUDA_RETURN_IF_ERROR(launch_filters(src, a.params, ws, workspace, a.rows, chunks, true, stream));
  scan_pass<XSource<T>, SampleEmit><<<row_grid(a.rows, chunks), kThreads, 0, stream>>>(
      src, ws, chunks, a.seed, a.offset, 0u, SampleEmit{a.tokens, a.logprobs});
  return cudaGetLastError();
}

// ------------------------------------------------------------------------------------- renorm_probs
struct RenormArgs {
  const float* probs;  // [rows, vocab]
  int64_t rows, vocab;
  RowParams params;    // temperature unused
  float* out;          // [rows, vocab]
};

// out_i = p_i / sum_kept p on kept tokens, 0 elsewhere; an invalid row is all zeros.
static __global__ void __launch_bounds__(kThreads) renorm_write(XSource<float> src, RowWorkspace ws, int chunks,
                                                         float* out) {
  const int64_t b = blockIdx.y;
  const RowInfo info = ws.info[b];
  const Slice s = chunk_slice(src.vocab, chunks, blockIdx.x);
  float* row = out + b * src.vocab;
  if (info.status != kRowSample) {
    for (int64_t i = s.begin + threadIdx.x; i < s.end; i += kThreads) row[i] = 0.0f;
    return;
  }
  u64 total = 0;
  for (int j = 0; j < chunks; ++j) total += ws.chunk_a[b * chunks + j];
  const float norm = static_cast<float>(ldexp(static_cast<double>(total), -info.log2_scale));
  for (int64_t i = s.begin + threadIdx.x; i < s.end; i += kThreads) {
    const float v = src.value(info, b, i);
    row[i] = is_kept(info, order_key(v), v) ? v / norm : 0.0f;
  }
}

inline size_t renorm_probs_workspace_bytes(int64_t rows, int64_t vocab) { return sample_workspace_bytes(rows, vocab); }

inline cudaError_t renorm_probs(const RenormArgs& a, void* workspace, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  if (a.rows > kMaxRows) return cudaErrorInvalidValue;
  const int chunks = row_chunks(a.rows, a.vocab);
  const RowWorkspace ws = carve_row_workspace(workspace, a.rows, chunks);
  const XSource<float> src{a.probs, a.vocab, false};
  FS_CUDA_RETURN_IF_ERROR(launch_filters(src, a.params, ws, workspace, a.rows, chunks, false, stream));
  renorm_write<<<row_grid(a.rows, chunks), kThreads, 0, stream>>>(src, ws, chunks, a.out);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fastsample
