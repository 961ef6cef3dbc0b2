#include "isa.h"

#include <cstdlib>
#include <cstring>

namespace fastsample::cpu {
namespace {

bool cpu_has_avx2() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

// The best path this CPU runs.
Isa best_isa() {
#if FASTSAMPLE_SIMDE
  return Isa::kAvx512;  // the test build whose AVX-512 path runs on SIMDe's emulation (vec_avx512.h), anywhere
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if (__builtin_cpu_supports("avx512f")) return Isa::kAvx512;
  if (cpu_has_avx2()) return Isa::kAvx2;
#elif defined(__aarch64__)
  return Isa::kNeon;  // part of every ARMv8-A core
#endif
  return Isa::kGeneric;
}

// The path named `want` (null: the best), no more than the CPU has.
Isa granted(const char* want) {
  const Isa best = best_isa();
  if (want == nullptr) return best;
  if (std::strcmp(want, "generic") == 0) return Isa::kGeneric;
  // AVX2 on an AVX-512 CPU; anything else the CPU lacks (or an unknown name): its best.
  if (std::strcmp(want, "avx2") == 0 && best == Isa::kAvx512 && cpu_has_avx2()) return Isa::kAvx2;
  return best;
}

}  // namespace

Isa pick_isa() {
  if (const char* off = std::getenv("FASTSAMPLE_NO_AVX512"); off != nullptr && std::strcmp(off, "0") != 0) {
    return Isa::kGeneric;
  }
  return granted(std::getenv("FASTSAMPLE_ISA"));
}

Isa set_isa(const char* name) {
  const Isa isa = granted(name);
  active_isa().store(isa, std::memory_order_relaxed);
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kNeon: return "neon";
    case Isa::kGeneric: return "generic";
  }
  return "generic";
}

}  // namespace fastsample::cpu
