// Glue shared by the CPU ops: argument checks that name the argument, and per-row parameter access.
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <optional>

namespace fastsample::cpu {

// [B, V] rows as contiguous float32: float16/bfloat16 logits are widened once (the math is float32).
inline at::Tensor float_rows(const at::Tensor& x, const char* name, bool allow_half) {
  TORCH_CHECK(x.dim() == 2, name, " must be 2-D [batch, vocab], got shape ", x.sizes());
  const auto dtype = x.scalar_type();
  const bool ok = dtype == at::kFloat || (allow_half && (dtype == at::kHalf || dtype == at::kBFloat16));
  TORCH_CHECK(ok, name, allow_half ? " must be float32, float16 or bfloat16" : " must be float32", ", got ",
              dtype);
  return x.to(at::kFloat).contiguous();
}

// Checks that x is [batch, vocab] with a dtype the op takes, without converting it (see for_float_blocks).
inline void check_rows(const at::Tensor& x, const char* name, bool allow_half) {
  TORCH_CHECK(x.dim() == 2, name, " must be 2-D [batch, vocab], got shape ", x.sizes());
  const auto dtype = x.scalar_type();
  const bool ok = dtype == at::kFloat || (allow_half && (dtype == at::kHalf || dtype == at::kBFloat16));
  TORCH_CHECK(ok, name, allow_half ? " must be float32, float16 or bfloat16" : " must be float32", ", got ",
              dtype);
}

// float32 bytes of widened rows held at once: enough rows for every thread, never a float32 copy of a whole
// large float16/bfloat16 input (peak extra memory stays O(threads * V), not O(B * V)).
constexpr int64_t kWidenBytes = int64_t{8} << 20;

// Calls f(rows, first) over x [B, V] in blocks of rows as contiguous float32 (rows = x[first : first + n]):
// float32 input in one block without a copy (unless it is not contiguous); float16/bfloat16 input widened a
// block at a time. Every row's result depends on that row alone, so blocking changes no result.
template <class F>
void for_float_blocks(const at::Tensor& x, F&& f) {
  const int64_t batch = x.size(0), vocab = x.size(1);
  if (x.scalar_type() == at::kFloat || batch == 0) {
    f(x.to(at::kFloat).contiguous(), int64_t{0});
    return;
  }
  const int64_t per_block = std::max<int64_t>(omp_get_max_threads(), kWidenBytes / (4 * std::max<int64_t>(vocab, 1)));
  for (int64_t first = 0; first < batch; first += per_block) {
    const int64_t n = std::min(per_block, batch - first);
    f(x.narrow(0, first, n).to(at::kFloat).contiguous(), first);
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
