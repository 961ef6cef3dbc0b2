// Glue shared by the CPU ops: argument checks that name the argument (ValueError for a bad shape, TypeError for a
// wrong dtype, as in the CUDA glue), and per-row parameter access.
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <memory>
#include <optional>

#include "segments.h"
#include "widen.h"

namespace fastsample::cpu {

// Checks that x is [batch, vocab] in a dtype the kernels take; returns it contiguous, in its own dtype.
inline at::Tensor checked_rows(const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(x.dim() == 2, name, " must be 2-D [batch, vocab], got shape ", x.sizes());
  const auto dtype = x.scalar_type();
  const bool ok = dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16;
  TORCH_CHECK_TYPE(ok, name, " must be float32, float16 or bfloat16, got ", dtype);
  return x.contiguous();
}

// A kernel's input rows: [B, V] contiguous in the input's dtype (the math is float32: for_input_rows gives
// each row as float32), and how many segments each row is split into (segments.h) for this batch.
struct InputRows {
  at::Tensor x;
  int64_t batch, vocab;
  int nseg;
  at::TensorOptions float_options() const { return x.options().dtype(at::kFloat); }
};

inline InputRows input_rows(const at::Tensor& x_in, const char* name) {
  InputRows in;
  in.x = checked_rows(x_in, name);
  in.batch = in.x.size(0);
  in.vocab = in.x.size(1);
  in.nseg = segments_for(in.batch, in.vocab);
  return in;
}

// Row b's tokens [lo, hi) of a float16/bfloat16 input (rows of length size(-1)), widened into out.
inline void widen_row(const at::Tensor& x, int64_t b, int64_t lo, int64_t hi, float* out) {
  const int64_t start = b * x.size(-1) + lo;  // int64: B * V may exceed 2^31
  if (x.scalar_type() == at::kHalf) {
    widen(x.const_data_ptr<c10::Half>() + start, hi - lo, out);
  } else {
    widen(x.const_data_ptr<c10::BFloat16>() + start, hi - lo, out);
  }
}

// Runs f(b, row) for every row b, row = its V values as float32, on for_rows' threads. float32 input is read
// in place; float16/bfloat16 rows are widened one at a time into a buffer of the thread that runs the row
// (split rows: one buffer, widened by the segments' threads). So the extra memory is threads * V floats,
// never a float32 copy of the whole input, and the widened row is still in cache when the kernel reads it.
template <class F>
void for_input_rows(const InputRows& in, F&& f) {
  if (in.x.scalar_type() == at::kFloat) {
    const float* data = in.x.const_data_ptr<float>();
    for_rows(in.batch, in.nseg, [&](int64_t b) { f(b, data + b * in.vocab); });
    return;
  }
  // Uninitialised buffers: every token is written before it is read.
  auto widened = [&](std::unique_ptr<float[]>& row, int64_t b) {
    if (!row) row.reset(new float[in.vocab]);
    widen_row(in.x, b, 0, in.vocab, row.get());
    f(b, static_cast<const float*>(row.get()));
  };
  if (in.nseg > 1) {
    const std::unique_ptr<float[]> row(new float[in.vocab]);
    for (int64_t b = 0; b < in.batch; ++b) {
      for_segments(in.vocab, in.nseg, [&](int, int64_t lo, int64_t hi) { widen_row(in.x, b, lo, hi, row.get() + lo); });
      f(b, static_cast<const float*>(row.get()));
    }
  } else if (in_forked_child()) {
    std::unique_ptr<float[]> row;
    for (int64_t b = 0; b < in.batch; ++b) widened(row, b);
  } else {
#pragma omp parallel if (in.batch > 1)
    {
      std::unique_ptr<float[]> row;  // this thread's
#pragma omp for schedule(dynamic, 1)
      for (int64_t b = 0; b < in.batch; ++b) widened(row, b);
    }
  }
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
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == batch, name, " must have shape [", batch, "], got ", t->sizes());
    arg.tensor = t->to(at::CppTypeToScalarType<T>::value).contiguous();
    arg.data = arg.tensor.template data_ptr<T>();
  }
  return arg;
}

// seed / offset: int64 [B].
inline at::Tensor seed_rows(const at::Tensor& t, int64_t batch, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == batch, name, " must have shape [", batch, "], got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, name, " must be int64, got ", t.scalar_type());
  return t.contiguous();
}

}  // namespace fastsample::cpu
