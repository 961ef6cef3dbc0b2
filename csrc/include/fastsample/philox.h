// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), bit-exact with
// Random123 and Triton's tl.philox. Shared by the CPU and CUDA kernels: the random-number contract of
// docs/design.md section 4 lives here and nowhere else in C++.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define FS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FS_HOST_DEVICE inline
#endif

namespace fastsample {

struct Philox4 {
  uint32_t w[4];
};

FS_HOST_DEVICE void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Ten rounds of Philox4x32 on counter (c0..c3) with key (k0, k1).
FS_HOST_DEVICE Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                      uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kMul0, c0, hi0, lo0);
    philox_mulhilo(kMul1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// The uniform of docs/design.md section 4: row seed/offset, draw index j -> float32 in [0, 1) with 24 random bits.
FS_HOST_DEVICE float philox_uniform(int64_t seed, int64_t offset, uint32_t draw) {
  const uint64_t s = static_cast<uint64_t>(seed), o = static_cast<uint64_t>(offset);
  const Philox4 r = philox4x32_10(static_cast<uint32_t>(o), static_cast<uint32_t>(o >> 32), draw, 0u,
                                  static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32));
  return static_cast<float>(r.w[0] >> 8) * (1.0f / 16777216.0f);
}

}  // namespace fastsample
