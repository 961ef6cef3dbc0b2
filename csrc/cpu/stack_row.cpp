// Vectorised leaf loops of the stack sampler's block rebuild (stack_row.h), one clone per instruction set.
#include "stack_row.h"

#include "simd.h"

namespace fastsample::cpu::stack {

FS_MULTIVERSION void masked_block(const float* x, const uint32_t* words, int64_t n, float* y) {
  const int64_t full = n / 32;
  for (int64_t w = 0; w < full; ++w) {
    const uint32_t bits = words[w];
    const float* xw = x + 32 * w;
    float* yw = y + 32 * w;
#pragma omp simd
    for (int t = 0; t < 32; ++t) yw[t] = ((bits >> t) & 1u) ? xw[t] : -kInf;
  }
  for (int64_t i = 32 * full; i < n; ++i) y[i] = ((words[i / 32] >> (i % 32)) & 1u) ? x[i] : -kInf;
}

FS_MULTIVERSION float block_max(const float* y, const float* x, int64_t n, bool& x_has_nan) {
  float m = -kInf;
  int nan = 0;
#pragma omp simd reduction(max : m) reduction(| : nan)
  for (int64_t i = 0; i < n; ++i) {
    m = y[i] > m ? y[i] : m;
    nan |= x[i] != x[i];
  }
  x_has_nan = x_has_nan || nan;
  return m;
}

}  // namespace fastsample::cpu::stack
