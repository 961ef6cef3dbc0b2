// Shared glue of the CUDA ops: argument checks that name the argument (TypeError / ValueError in Python),
// workspace allocation from torch's caching allocator, and the dtype dispatch to the torch-free kernels of
// include/fastsample/cuda/. Nothing here reads a tensor value on the host.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <optional>

namespace fastsample {
namespace cuda_glue {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// A CUDA tensor of `dim` dimensions, contiguous.
inline void check_tensor(const Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK_VALUE(t.is_cuda(), name, " must be a CUDA tensor, got a tensor on ", t.device());
  TORCH_CHECK_VALUE(t.dim() == dim, name, " must have ", dim, " dimensions, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous (rows contiguous in the last dimension)");
}

inline void check_same_device(const Tensor& t, const char* name, const Tensor& like) {
  TORCH_CHECK_VALUE(t.device() == like.device(), name, " must be on ", like.device(), ", got ", t.device());
}

inline void check_dtype(const Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ", t.scalar_type());
}

// logits / x: float32, float16 or bfloat16 [B, V], V >= 1.
inline void check_scores(const Tensor& t, const char* name) {
  check_tensor(t, name, 2);
  const auto dtype = t.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, name,
                   " must have dtype float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK_VALUE(t.size(1) >= 1, name, " must have a vocabulary of at least 1, got shape ", t.sizes());
}

// A per-row tensor: [rows] of `dtype` on like's device, contiguous.
inline void check_row_tensor(const Tensor& t, const char* name, const Tensor& like, at::ScalarType dtype) {
  check_tensor(t, name, 1);
  check_same_device(t, name, like);
  check_dtype(t, name, dtype);
  TORCH_CHECK_VALUE(t.size(0) == like.size(0), name, " must have shape [", like.size(0), "], got ", t.sizes());
}

template <class T>
inline const T* row_ptr(const OptTensor& t, const char* name, const Tensor& like, at::ScalarType dtype) {
  if (!t.has_value()) return nullptr;
  check_row_tensor(*t, name, like, dtype);
  return t->data_ptr<T>();
}

inline Tensor workspace(size_t bytes, const Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)}, like.options().dtype(at::kByte));
}

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "fastsample::", op, " (CUDA): ", cudaGetErrorString(err));
}

inline void check_rows(const Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.size(0) <= 65535, name, " may have at most 65535 rows on CUDA, got ", t.size(0));
}

// Calls f(T{}) with T the CUDA type of x's dtype: float, __half or __nv_bfloat16.
template <class F>
inline void dispatch_scores(const Tensor& x, F&& f) {
  switch (x.scalar_type()) {
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(__half{}); break;
    case at::kBFloat16: f(__nv_bfloat16{}); break;
    default: TORCH_CHECK_TYPE(false, "unsupported dtype ", x.scalar_type());
  }
}

template <class T>
inline const T* data_as(const Tensor& t) {
  return reinterpret_cast<const T*>(t.data_ptr());
}

template <class T>
inline T* mutable_data_as(Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

}  // namespace cuda_glue
}  // namespace fastsample
