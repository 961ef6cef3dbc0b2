// Which instruction set the CPU kernels' vector loops use, picked once when the library loads: the best the
// CPU has, capped by FASTSAMPLE_ISA=avx512|avx2|neon|generic (a path the CPU lacks falls back to the best it
// has). FASTSAMPLE_NO_AVX512=1 means generic, as before FASTSAMPLE_ISA existed. Every path is the loops of
// vec_loops.h over its own primitives: avx512 and avx2 on x86-64 (vec_avx512.h, vec_avx2.h), neon on
// aarch64 (vec_neon.h, every ARMv8-A core), generic anywhere (vec_generic.h). Tests force each path in turn,
// and every path gives the oracle's tokens.
#pragma once
#include <atomic>

namespace fastsample::cpu {

enum class Isa { kGeneric, kAvx2, kAvx512, kNeon };

// The path the CPU and the environment ask for (isa.cpp).
Isa pick_isa();

// The path in use: pick_isa()'s on first use; set_isa switches it (benchmarks time each path in one run).
inline std::atomic<Isa>& active_isa() {
  static std::atomic<Isa> isa{pick_isa()};
  return isa;
}

inline Isa cpu_isa() { return active_isa().load(std::memory_order_relaxed); }

// Switches to the named path (as FASTSAMPLE_ISA: never more than the CPU has) and returns the path now in
// use. Only between calls of the kernels: a kernel running meanwhile may mix paths within a row.
Isa set_isa(const char* name);

// Its name: "avx512", "avx2", "neon" or "generic".
const char* isa_name(Isa isa);

}  // namespace fastsample::cpu
