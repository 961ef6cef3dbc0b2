// top_k (values + indices, like torch.topk(largest=True, sorted=True) with ties to the lower index and NaN
// largest) and top_k_mask_logits, both on the radix select of pipeline.cuh (AIR top-k style: one 8-bit
// digit of the k-th largest key per pass, split over several CTAs per row when B is small).
//
// top_k: radix select of the k-th largest key -> per-CTA counts of keys above / equal to it -> gather in
// ascending id order (exact prefix counts, so ties go to the lowest ids) -> cub's stable segmented sort,
// descending, of the k (key, id) pairs per row (stability keeps equal values in id order) -> values read
// back from x by id, so they keep x's dtype and bits (NaN payloads included).
#pragma once

#include <cub/device/device_segmented_sort.cuh>

#include "fastsample/cuda/sampling.cuh"

namespace fastsample {
namespace cuda {

// Keys compared through this mask ignore the bits below the type's precision (see RadixPasses).
__host__ __device__ __forceinline__ u32 significant_mask(int passes) {
  return passes >= 4 ? 0xFFFFFFFFu : (0xFFFFFFFFu << (32 - 8 * passes));
}

static __global__ void topk_prepare(RowWorkspace ws, int64_t rows, int64_t k) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= rows) return;
  RowInfo info = {};
  info.status = kRowSample;
  info.k = k;
  info.rank_rem = static_cast<u64>(k);
  ws.info[b] = info;
}

// Per CTA: how many keys of its slice are above the threshold (chunk_a) and equal to it (chunk_b).
template <class T>
__global__ void __launch_bounds__(kThreads) topk_count_pass(XSource<T> src, RowWorkspace ws, int chunks, u32 mask) {
  using Reduce = cub::BlockReduce<u64, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const int64_t b = blockIdx.y;
  const RowInfo info = ws.info[b];
  const Slice s = chunk_slice(src.vocab, chunks, blockIdx.x);
  u64 packed = 0;  // (above << 32) | equal: a slice has < 2^32 elements
  for (int64_t i = s.begin + threadIdx.x; i < s.end; i += kThreads) {
    const u32 key = order_key(src.value(info, b, i)) & mask;
    packed += key > info.topk_thr ? (u64{1} << 32) : (key == info.topk_thr ? 1u : 0u);
  }
  packed = Reduce(tmp).Sum(packed);
  if (threadIdx.x == 0) {
    ws.chunk_a[b * chunks + blockIdx.x] = packed >> 32;
    ws.chunk_b[b * chunks + blockIdx.x] = packed & 0xFFFFFFFFu;
  }
}

// Writes the k selected (key, id) pairs of each row in ascending id order: every key above the threshold
// and the first rank_rem keys equal to it.
template <class T>
__global__ void __launch_bounds__(kThreads) topk_gather_pass(XSource<T> src, RowWorkspace ws, int chunks, u32 mask,
                                                             int64_t k, u32* keys, int64_t* ids) {
  using Scan = cub::BlockScan<u64, kThreads>;
  __shared__ typename Scan::TempStorage tmp;
  const int64_t b = blockIdx.y;
  const int chunk = blockIdx.x;
  const RowInfo info = ws.info[b];
  const u64 need = info.rank_rem;
  u64 above = 0, equal = 0;
  for (int j = 0; j < chunk; ++j) {
    above += ws.chunk_a[b * chunks + j];
    equal += ws.chunk_b[b * chunks + j];
  }
  if (ws.chunk_a[b * chunks + chunk] == 0 && (equal >= need || ws.chunk_b[b * chunks + chunk] == 0)) return;
  u32* row_keys = keys + b * k;
  int64_t* row_ids = ids + b * k;
  const Slice s = chunk_slice(src.vocab, chunks, chunk);
  for (int64_t tile = s.begin; tile < s.end; tile += kTile) {
    const int64_t first = tile + static_cast<int64_t>(threadIdx.x) * kItems;
    u32 key[kItems];
    u64 mine = 0;
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      key[j] = first + j < s.end ? order_key(src.value(info, b, first + j)) & mask : 0u;
      const bool valid = first + j < s.end;
      mine += valid && key[j] > info.topk_thr ? (u64{1} << 32) : (valid && key[j] == info.topk_thr ? 1u : 0u);
    }
    u64 excl, step;
    Scan(tmp).ExclusiveSum(mine, excl, step);
    u64 a = above + (excl >> 32), e = equal + (excl & 0xFFFFFFFFu);
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      if (first + j >= s.end) break;
      if (key[j] > info.topk_thr) {
        const u64 pos = a + (e < need ? e : need);
        row_keys[pos] = key[j];
        row_ids[pos] = first + j;
        ++a;
      } else if (key[j] == info.topk_thr) {
        if (e < need) {
          row_keys[a + e] = key[j];
          row_ids[a + e] = first + j;
        }
        ++e;
      }
    }
    above += step >> 32;
    equal += step & 0xFFFFFFFFu;
    __syncthreads();  // tmp is reused by the next tile's scan
  }
}

static __global__ void segment_offsets(int* offsets, int64_t rows, int64_t k) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j <= rows) offsets[j] = static_cast<int>(j * k);
}

template <class T>
__global__ void gather_values(const T* x, int64_t vocab, int64_t k, int64_t count, const int64_t* ids, T* values) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < count) values[j] = x[(j / k) * vocab + ids[j]];
}

template <class T>
struct TopKArgs {
  const T* x;  // [rows, vocab]
  int64_t rows, vocab, k;  // 1 <= k <= vocab, rows * k < 2^31
  T* values;         // [rows, k] out
  int64_t* indices;  // [rows, k] out
};

// Layout after the row workspace: keys in/out [rows * k] u32, ids [rows * k] int64, offsets [rows + 1] int,
// then cub's scratch.
struct TopKLayout {
  size_t row_bytes, keys_bytes, ids_bytes, offsets_bytes, sort_bytes;
  size_t total() const { return row_bytes + 2 * keys_bytes + ids_bytes + offsets_bytes + sort_bytes; }
};

inline cudaError_t top_k_layout(int64_t rows, int64_t vocab, int64_t k, TopKLayout& out) {
  if (rows > kMaxRows || rows * k >= (int64_t{1} << 31)) return cudaErrorInvalidValue;
  const int64_t count = rows * k;
  out.row_bytes = align_up(row_workspace_bytes(rows, row_chunks(rows, vocab)));
  out.keys_bytes = align_up(static_cast<size_t>(count) * sizeof(u32));
  out.ids_bytes = align_up(static_cast<size_t>(count) * sizeof(int64_t));
  out.offsets_bytes = align_up(static_cast<size_t>(rows + 1) * sizeof(int));
  out.sort_bytes = 0;
  return cub::DeviceSegmentedSort::StableSortPairsDescending(
      nullptr, out.sort_bytes, static_cast<const u32*>(nullptr), static_cast<u32*>(nullptr),
      static_cast<const int64_t*>(nullptr), static_cast<int64_t*>(nullptr), count, rows,
      static_cast<const int*>(nullptr), static_cast<const int*>(nullptr));
}

// Bytes of workspace top_k needs (0 when the shape is out of range: top_k then returns an error).
inline size_t top_k_workspace_bytes(int64_t rows, int64_t vocab, int64_t k) {
  TopKLayout layout;
  return top_k_layout(rows, vocab, k, layout) == cudaSuccess ? layout.total() : 0;
}

template <class T>
cudaError_t top_k(const TopKArgs<T>& a, void* workspace, cudaStream_t stream) {
  if (a.rows == 0 || a.k == 0) return cudaSuccess;
  TopKLayout layout;
  FS_CUDA_RETURN_IF_ERROR(top_k_layout(a.rows, a.vocab, a.k, layout));
  const int chunks = row_chunks(a.rows, a.vocab);
  const RowWorkspace ws = carve_row_workspace(workspace, a.rows, chunks);
  char* p = static_cast<char*>(workspace) + layout.row_bytes;
  u32* keys_in = reinterpret_cast<u32*>(p);
  u32* keys_out = reinterpret_cast<u32*>(p + layout.keys_bytes);
  int64_t* ids_in = reinterpret_cast<int64_t*>(p + 2 * layout.keys_bytes);
  int* offsets = reinterpret_cast<int*>(p + 2 * layout.keys_bytes + layout.ids_bytes);
  void* sort_tmp = p + 2 * layout.keys_bytes + layout.ids_bytes + layout.offsets_bytes;

  FS_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(workspace, 0, row_workspace_bytes(a.rows, chunks), stream));
  const XSource<T> src{a.x, a.vocab, false};
  const dim3 grid = row_grid(a.rows, chunks);
  constexpr int passes = RadixPasses<T>::value;
  const u32 mask = significant_mask(passes);
  topk_prepare<<<static_cast<unsigned>((a.rows + 255) / 256), 256, 0, stream>>>(ws, a.rows, a.k);
  FS_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  FS_CUDA_RETURN_IF_ERROR(launch_topk_threshold(src, ws, a.rows, chunks, passes, stream));
  topk_count_pass<T><<<grid, kThreads, 0, stream>>>(src, ws, chunks, mask);
  FS_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  topk_gather_pass<T><<<grid, kThreads, 0, stream>>>(src, ws, chunks, mask, a.k, keys_in, ids_in);
  FS_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  segment_offsets<<<static_cast<unsigned>((a.rows + 256) / 256), 256, 0, stream>>>(offsets, a.rows, a.k);
  FS_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  const int64_t count = a.rows * a.k;
  size_t sort_bytes = layout.sort_bytes;
  FS_CUDA_RETURN_IF_ERROR(cub::DeviceSegmentedSort::StableSortPairsDescending(
      sort_tmp, sort_bytes, keys_in, keys_out, ids_in, a.indices, count, a.rows, offsets, offsets + 1, stream));
  gather_values<T><<<static_cast<unsigned>((count + 255) / 256), 256, 0, stream>>>(a.x, a.vocab, a.k, count,
                                                                                   a.indices, a.values);
  return cudaGetLastError();
}

// ------------------------------------------------------------------------------------ top_k_mask_logits
template <class T>
struct MaskArgs {
  const T* logits;  // [rows, vocab]
  int64_t rows, vocab;
  const int64_t* top_k;  // [rows] or null
  int64_t top_k_val;
  T* out;  // [rows, vocab]
};

// Rows with a NaN are left unchanged (status invalid); k <= 0 or k >= V turns the filter off.
static __global__ void mask_prepare(RowWorkspace ws, int64_t rows, int64_t vocab, const int64_t* top_k,
                                    int64_t top_k_val) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= rows) return;
  const int64_t k = top_k ? top_k[b] : top_k_val;
  RowInfo info = {};
  info.status = (ws.stats[b].flags & kHasNaN) ? kRowInvalid : kRowSample;
  info.k = (k > 0 && k < vocab) ? k : 0;
  info.rank_rem = static_cast<u64>(info.k);
  ws.info[b] = info;
}

template <class T>
__global__ void __launch_bounds__(kThreads) mask_write(XSource<T> src, RowWorkspace ws, int chunks, T* out) {
  const int64_t b = blockIdx.y;
  const RowInfo info = ws.info[b];
  const bool filter = info.status == kRowSample && info.k > 0;
  const Slice s = chunk_slice(src.vocab, chunks, blockIdx.x);
  const T* row = src.x + b * src.vocab;
  T* dst = out + b * src.vocab;
  const T neg_inf = from_float<T>(-INFINITY);
  for (int64_t i = s.begin + threadIdx.x; i < s.end; i += kThreads) {
    const T v = row[i];
    dst[i] = (!filter || order_key(to_float(v)) >= info.topk_thr) ? v : neg_inf;
  }
}

inline size_t top_k_mask_logits_workspace_bytes(int64_t rows, int64_t vocab) {
  return row_workspace_bytes(rows, row_chunks(rows, vocab));
}

template <class T>
cudaError_t top_k_mask_logits(const MaskArgs<T>& a, void* workspace, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  if (a.rows > kMaxRows) return cudaErrorInvalidValue;
  const int chunks = row_chunks(a.rows, a.vocab);
  const RowWorkspace ws = carve_row_workspace(workspace, a.rows, chunks);
  FS_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(workspace, 0, row_workspace_bytes(a.rows, chunks), stream));
  const XSource<T> src{a.logits, a.vocab, true};
  const dim3 grid = row_grid(a.rows, chunks);
  const bool may_filter = a.top_k != nullptr || (a.top_k_val > 0 && a.top_k_val < a.vocab);
  if (may_filter) {
    stats_pass<XSource<T>><<<grid, kThreads, 0, stream>>>(src, ws, chunks, ws.stats);
    FS_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    mask_prepare<<<static_cast<unsigned>((a.rows + 255) / 256), 256, 0, stream>>>(ws, a.rows, a.vocab, a.top_k,
                                                                                  a.top_k_val);
    FS_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    FS_CUDA_RETURN_IF_ERROR(launch_topk_threshold(src, ws, a.rows, chunks, RadixPasses<T>::value, stream));
  }
  mask_write<T><<<grid, kThreads, 0, stream>>>(src, ws, chunks, a.out);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fastsample
