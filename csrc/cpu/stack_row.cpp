// Vectorised leaf loops of the stack sampler's block rebuild (stack_row.h), one clone per instruction set.
#include "stack_row.h"

#include "simd.h"

namespace fastsample::cpu::stack {

FS_MULTIVERSION void masked_block(const float* x, const uint32_t* words, int64_t n, float* y, float* sub_max,
                                  bool& x_has_nan) {
  int nan = 0;
  for (int s = 0; s < kSubBlocks; ++s) {
    float m = -kInf;
    const int64_t lo = s * kSubBlock;
    if (lo + kSubBlock <= n) {
      for (int64_t w = lo / 32; w < (lo + kSubBlock) / 32; ++w) {
        const uint32_t bits = words[w];
        const float* xw = x + 32 * w;
        float* yw = y + 32 * w;
#pragma omp simd reduction(max : m) reduction(| : nan)
        for (int t = 0; t < 32; ++t) {
          const float v = ((bits >> t) & 1u) ? xw[t] : -kInf;
          yw[t] = v;
          m = v > m ? v : m;
          nan |= xw[t] != xw[t];
        }
      }
    } else {
      for (int64_t i = lo; i < n; ++i) {
        const float v = ((words[i / 32] >> (i % 32)) & 1u) ? x[i] : -kInf;
        y[i] = v;
        m = v > m ? v : m;
        nan |= x[i] != x[i];
      }
    }
    sub_max[s] = m;
  }
  x_has_nan = x_has_nan || nan;
}

FS_MULTIVERSION void block_stats(const float* x, int64_t n, float* sub_max, bool& x_has_nan) {
  int nan = 0;
  for (int s = 0; s < kSubBlocks; ++s) {
    float m = -kInf;
    const int64_t lo = s * kSubBlock, hi = std::min(n, lo + kSubBlock);
#pragma omp simd reduction(max : m) reduction(| : nan)
    for (int64_t i = lo; i < hi; ++i) {
      m = x[i] > m ? x[i] : m;
      nan |= x[i] != x[i];
    }
    sub_max[s] = m;
  }
  x_has_nan = x_has_nan || nan;
}

}  // namespace fastsample::cpu::stack
