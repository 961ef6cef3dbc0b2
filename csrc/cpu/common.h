// Glue shared by the CPU ops: argument checks that name the argument, and per-row parameter access.
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

#include "segments.h"

namespace fastsample::cpu {

// [B, V] rows as contiguous float32: float16/bfloat16 logits are widened once (the math is float32).
inline at::Tensor float_rows(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 2, name, " must be 2-D [batch, vocab], got shape ", x.sizes());
  const auto dtype = x.scalar_type();
  const bool ok = dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16;
  TORCH_CHECK(ok, name, " must be float32, float16 or bfloat16, got ", dtype);
  return x.to(at::kFloat).contiguous();
}

// A kernel's input rows: [B, V] contiguous float32, and how many segments each row is split into
// (segments.h) for this batch.
struct InputRows {
  at::Tensor x;
  int64_t batch, vocab;
  const float* data;
  int nseg;
  const float* row(int64_t b) const { return data + b * vocab; }
};

inline InputRows input_rows(const at::Tensor& x_in, const char* name) {
  InputRows in;
  in.x = float_rows(x_in, name);
  in.batch = in.x.size(0);
  in.vocab = in.x.size(1);
  in.data = in.x.data_ptr<float>();
  in.nseg = segments_for(in.batch, in.vocab);
  return in;
}

// A per-row parameter: the [B] tensor when given (it wins), else the scalar. Holds its converted tensor.
template <class T>
struct RowArg {
  at::Tensor tensor;
  const T* data = nullptr;
  double scalar = 0;
  double operator[](int64_t b) const { return data ? static_cast<double>(data[b]) : scalar; }
};

template <class T>
RowArg<T> row_arg(const std::optional<at::Tensor>& t, double scalar, int64_t batch, const char* name) {
  RowArg<T> arg;
  arg.scalar = scalar;
  if (t.has_value()) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == batch, name, " must have shape [", batch, "], got ", t->sizes());
    arg.tensor = t->to(at::CppTypeToScalarType<T>::value).contiguous();
    arg.data = arg.tensor.template data_ptr<T>();
  }
  return arg;
}

// seed / offset: int64 [B].
inline at::Tensor seed_rows(const at::Tensor& t, int64_t batch, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == batch, name, " must have shape [", batch, "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kLong, name, " must be int64, got ", t.scalar_type());
  return t.contiguous();
}

}  // namespace fastsample::cpu
