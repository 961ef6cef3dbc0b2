// Shared building blocks of the CUDA kernels: float order keys, fixed-point weights, per-row state in a
// caller-provided workspace, and launch geometry. Torch-free: raw pointers, sizes and a cudaStream_t.
//
// GPU notes (why the kernels look the way they do):
// - One op is a short sequence of kernel launches over a grid of (chunks, B) CTAs: B rows, each split into
//   `chunks` contiguous slices so that small batches still fill the GPU (multi-block for small B / large V).
//   Row-wide decisions (a radix digit, a threshold) are taken by the last CTA of a row to finish a pass
//   (threadfence + ticket counter), so no grid-wide sync and no cooperative launch is needed, and nothing
//   ever reads a device value on the host: every op is CUDA-graph capturable.
// - Probability mass is summed as unsigned 64-bit fixed point (w * 2^s, with s chosen per row so that a
//   row's total cannot overflow). Integer sums are exact and order-independent, so thresholds and sampled
//   tokens do not depend on the grid shape, on atomics' order or on the GPU model, and a CDF step can be
//   compared against u * W exactly (see scan_pass in pipeline.cuh).
// - The workspace is zeroed with one cudaMemsetAsync per op; each pass's histogram is zeroed again by the
//   CTA that consumed it, ready for the next pass.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "fastsample/philox.h"

namespace fastsample {
namespace cuda {

using u32 = uint32_t;
using u64 = unsigned long long;  // the type CUDA's 64-bit atomics take

constexpr int kThreads = 512;               // threads per CTA in every row kernel
constexpr int kItems = 4;                   // consecutive elements per thread in ordered (id-order) scans
constexpr int kTile = kThreads * kItems;    // elements per CTA per step of an ordered scan
constexpr int kBins = 256;                  // radix digit: 8 bits
constexpr int64_t kMinChunk = 4096;         // fewest elements a CTA gets when a row is split
constexpr int kMaxRows = 65535;             // rows map to gridDim.y

// ------------------------------------------------------------------------------------------ values
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Radix passes over the 32-bit order key of a value of type T converted to float. The bits below the
// type's precision are a function of the bits above it, so 8-bit digits over the significant bits suffice:
// float 32 bits, half 19 (sign, 8 exponent bits as a float, 10 mantissa), bfloat16 16.
template <class T>
struct RadixPasses {
  static constexpr int value = 4;
};
template <>
struct RadixPasses<__half> {
  static constexpr int value = 3;
};
template <>
struct RadixPasses<__nv_bfloat16> {
  static constexpr int value = 2;
};

// Order-preserving map float -> u32: a < b <=> key(a) < key(b). -0.0 and +0.0 share one key (they are
// equal values, so ties); every NaN maps to the largest key (torch.topk's "NaN is largest").
__device__ __forceinline__ u32 order_key(float v) {
  if (v != v) return 0xFFFFFFFFu;
  const u32 bits = __float_as_uint(v == 0.0f ? 0.0f : v);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ float key_to_float(u32 key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
}

// 2^n as a float for n in [-126, 127], exactly (exp2f is not guaranteed exact).
__host__ __device__ __forceinline__ float pow2f(int n) {
  union {
    u32 u;
    float f;
  } v;
  v.u = static_cast<u32>(n + 127) << 23;
  return v.f;
}

// ---------------------------------------------------------------------------------------- row state
enum RowStatus : int { kRowSample = 0, kRowGreedy = 1, kRowInvalid = 2 };
enum RowFlag : u32 { kHasNaN = 1u, kHasNegative = 2u, kHasPosInf = 4u };

// Reductions of a stats pass, accumulated with atomics (the workspace starts zeroed).
struct RowStats {
  u32 max_key;      // order key of the largest non-NaN value (0 when there is none)
  u32 flags;        // RowFlag bits
  u64 argmax_rev;   // max of (V - 1 - i) over the maxima: the lowest index of the row max
  u64 max_count;    // number of maxima
};

// Per-row decisions of a prepare kernel, refined by the radix passes. Kept tokens: key >= topk_thr,
// key >= topp_thr and w >= minp_w (each threshold is 0 when its filter is off).
struct RowInfo {
  int status;            // RowStatus
  float temperature;     // logits rows: w = exp((x - max) / T)
  float max_value;       // the row max of x (logits) or of the weights (probs)
  float minp_w;          // min-p bound on w (0: off)
  float scale_hi;        // fixed-point weight = rn(w * scale_hi * scale_lo) = rn(w * 2^log2_scale)
  float scale_lo;
  int log2_scale;
  float top_p;           // in (0, 1) while the top-p passes run; 1 when top-p is off or already resolved
  long long k;           // top-k rank, 0 when top-k is off
  u32 topk_thr;
  u32 topp_thr;
  u32 prefix;            // radix prefix of the pass in progress (high bits decided so far)
  u64 rank_rem;          // top-k: rank of the k-th largest within the prefix group
  u64 above;             // top-p: fixed-point mass strictly above the prefix group
  u64 target;            // top-p: ceil(p * W_S), W_S = mass of the top-k survivors
  long long pos;         // speculative: the draft position whose distribution is sampled
  int use_residual;      // speculative: sample max(0, p - q) (1) or p (0)
};

// Fixed-point scale for weights in [0, wmax] summed over V elements: every term < 2^(frac + 1) and the sum
// < 2^63. frac = 62 - ceil(log2 V).
inline int fixed_frac_bits(int64_t vocab) {
  int bits = 0;
  while ((int64_t{1} << bits) < vocab) ++bits;
  return 62 - bits;
}

// Sets info.log2_scale/scale_hi/scale_lo so that wmax (> 0) maps below 2^(frac + 1).
__device__ __forceinline__ void set_fixed_scale(RowInfo& info, float wmax, int frac_bits) {
  const int shift = frac_bits - ilogbf(wmax);
  const int hi = shift > 127 ? 127 : shift;
  info.log2_scale = shift;
  info.scale_hi = pow2f(hi);
  info.scale_lo = pow2f(shift - hi);  // shift - hi <= 62 + 149 - 127, always a normal power of two
}

__device__ __forceinline__ u64 to_fixed(const RowInfo& info, float w) {
  return __float2ull_rn(w * info.scale_hi * info.scale_lo);
}

// log of a fixed-point mass as a real number.
__device__ __forceinline__ float fixed_log(const RowInfo& info, u64 mass) {
  return static_cast<float>(log(static_cast<double>(mass)) - info.log2_scale * 0.69314718055994530942);
}

// floor(r * W / 2^24) for the 24-bit integer r of a uniform u = r / 2^24: the inverse-CDF target u * W,
// rounded down, computed exactly in 128-bit arithmetic (cum > u * W <=> cum > floor(u * W) for integers).
__device__ __forceinline__ u64 scaled_target(u32 r24, u64 total) {
  const u64 lo = static_cast<u64>(r24) * total;
  const u64 hi = __umul64hi(static_cast<u64>(r24), total);
  return (hi << 40) | (lo >> 24);
}

__device__ __forceinline__ u32 philox_bits24(int64_t seed, int64_t offset, u32 draw) {
  const uint64_t s = static_cast<uint64_t>(seed), o = static_cast<uint64_t>(offset);
  const Philox4 r = philox4x32_10(static_cast<u32>(o), static_cast<u32>(o >> 32), draw, 0u,
                                  static_cast<u32>(s), static_cast<u32>(s >> 32));
  return r.w[0] >> 8;  // philox_uniform(seed, offset, draw) == this * 2^-24 exactly
}

// -------------------------------------------------------------------------------------- workspace
// Per-row arrays carved out of one caller-provided buffer, in this order.
struct RowWorkspace {
  RowStats* stats;      // [B]
  RowStats* stats2;     // [B] a second stats slot (speculative: p next to the residual)
  RowInfo* info;        // [B]
  u64* hist;            // [B, kBins] radix histogram of the pass in progress
  u32* tickets;         // [B] CTAs of the row done with the pass in progress
  u64* chunk_a;         // [B, chunks] per-CTA results (mass, or counts)
  u64* chunk_b;         // [B, chunks]
};

__host__ __device__ inline size_t align_up(size_t n) { return (n + 255) / 256 * 256; }

inline size_t row_workspace_bytes(int64_t rows, int chunks) {
  const size_t b = static_cast<size_t>(rows);
  return 2 * align_up(b * sizeof(RowStats)) + align_up(b * sizeof(RowInfo)) + align_up(b * kBins * sizeof(u64)) +
         align_up(b * sizeof(u32)) + 2 * align_up(b * chunks * sizeof(u64));
}

inline RowWorkspace carve_row_workspace(void* base, int64_t rows, int chunks) {
  const size_t b = static_cast<size_t>(rows);
  char* p = static_cast<char*>(base);
  RowWorkspace ws;
  ws.stats = reinterpret_cast<RowStats*>(p);
  p += align_up(b * sizeof(RowStats));
  ws.stats2 = reinterpret_cast<RowStats*>(p);
  p += align_up(b * sizeof(RowStats));
  ws.info = reinterpret_cast<RowInfo*>(p);
  p += align_up(b * sizeof(RowInfo));
  ws.hist = reinterpret_cast<u64*>(p);
  p += align_up(b * kBins * sizeof(u64));
  ws.tickets = reinterpret_cast<u32*>(p);
  p += align_up(b * sizeof(u32));
  ws.chunk_a = reinterpret_cast<u64*>(p);
  p += align_up(b * chunks * sizeof(u64));
  ws.chunk_b = reinterpret_cast<u64*>(p);
  return ws;
}

// ---------------------------------------------------------------------------------------- geometry
// How many CTAs share a row: enough for about two CTAs per SM over the batch, each with >= kMinChunk
// elements. A pure function of (B, V, SM count), so the workspace size and the launches agree.
inline int row_chunks(int64_t rows, int64_t vocab) {
  int device = 0, sms = 1;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    sms = 1;
  }
  const int64_t want = (2 * static_cast<int64_t>(sms) + rows - 1) / rows;
  const int64_t most = (vocab + kMinChunk - 1) / kMinChunk;
  const int64_t chunks = want < most ? want : most;
  return static_cast<int>(chunks < 1 ? 1 : chunks);
}

// The slice [begin, end) of row elements owned by CTA `chunk` when a row of `vocab` is cut in `chunks`.
struct Slice {
  int64_t begin, end;
};
__device__ __forceinline__ Slice chunk_slice(int64_t vocab, int chunks, int chunk) {
  const int64_t len = (vocab + chunks - 1) / chunks;
  const int64_t begin = len * chunk;
  return Slice{begin < vocab ? begin : vocab, begin + len < vocab ? begin + len : vocab};
}

// The last CTA of row b to reach this point gets true (all other CTAs' global atomics are then visible to
// it) and resets the row's ticket for the next pass. Every thread of the CTA must call it.
__device__ __forceinline__ bool last_cta_of_row(u32* tickets, int64_t b) {
  __shared__ bool is_last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    const u32 done = atomicAdd(&tickets[b], 1u);
    is_last = done == gridDim.x - 1;
    if (is_last) {
      tickets[b] = 0;
      __threadfence();
    }
  }
  __syncthreads();
  return is_last;
}

#define FS_CUDA_RETURN_IF_ERROR(expr)        \
  do {                                       \
    const cudaError_t fs_err_ = (expr);      \
    if (fs_err_ != cudaSuccess) return fs_err_; \
  } while (0)

}  // namespace cuda
}  // namespace fastsample
