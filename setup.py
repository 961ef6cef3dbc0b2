"""Builds fastsample._C: the CPU kernels always; the CUDA kernels too when torch has CUDA and nvcc exists.

The package itself (name, dependencies, extras) is described in pyproject.toml."""
import glob
import os
import shutil

import torch
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
CPU_SOURCES = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
CUDA_SOURCES = sorted(glob.glob("csrc/cuda/*.cu"))
# FASTSAMPLE_NO_CUDA=1 forces a CPU-only build even where CUDA is available.
WITH_CUDA = (torch.version.cuda is not None and shutil.which("nvcc") is not None
             and bool(CUDA_SOURCES) and os.environ.get("FASTSAMPLE_NO_CUDA") != "1")

# C++20: torch 2.13's headers use it. No -march: the CPU kernels pick AVX-512 / AVX2 / SSE code at run time (csrc/cpu/simd.h), so one build
# runs on any x86-64.
cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno", "-Wall", "-Wno-unknown-pragmas"]
nvcc_flags = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
# sm_80 and sm_90 by default; TORCH_CUDA_ARCH_LIST (e.g. "9.0", as tools/gpu_check.py sets for the present GPU)
# replaces them: torch then adds its own -gencode flags, which it skips when any are given here.
if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
    nvcc_flags += ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
include_dirs = [os.path.join(ROOT, "csrc", "include")]
link_flags = ["-fopenmp"]
# FASTSAMPLE_SANITIZE=address,undefined: a CPU-only sanitizer build (`make test-asan`, tools/asan_test.sh), no
# recovery so that any report aborts the test run; -O1 -g for usable stacks.
SANITIZE = os.environ.get("FASTSAMPLE_SANITIZE")
if SANITIZE:
    WITH_CUDA = False
    # -fno-wrapv undoes the -fwrapv of Python's own flags, which would hide signed overflow from UBSan.
    sanitize_flags = [f"-fsanitize={SANITIZE}", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g",
                      "-fno-wrapv"]
    cxx_flags = [f for f in cxx_flags if f != "-O3"] + ["-O1"] + sanitize_flags
    link_flags += sanitize_flags

# FASTSAMPLE_SIMDE=1: a CPU-only test build whose AVX-512 path runs on SIMDe's emulation of the intrinsics
# (csrc/cpu/vec_avx512.h), so that its loops are tested on any x86-64 (`make check-avx512`,
# tools/check_avx512.py); needs the headers of the simde-py package, a test-only dependency.
if os.environ.get("FASTSAMPLE_SIMDE") == "1":
    import simde_py

    WITH_CUDA = False
    # -Wno-psabi: GCC notes that 64-byte vectors pass differently without -mavx512f; nothing outside sees them.
    cxx_flags += ["-DFASTSAMPLE_SIMDE=1", "-Wno-psabi"]
    include_dirs.append(simde_py.get_include())

if WITH_CUDA:
    ext = CUDAExtension("fastsample._C", CPU_SOURCES + CUDA_SOURCES, include_dirs=include_dirs,
                        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}, extra_link_args=link_flags)
else:
    ext = CppExtension("fastsample._C", CPU_SOURCES, include_dirs=include_dirs,
                       extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)


class KeptBuildExtension(BuildExtension.with_options(use_ninja=True)):
    """build_ext with its objects and ninja file in one kept folder, build/temp, whatever temporary folder
    pip's editable or wheel build asks for: ninja then recompiles only the sources that changed (none on a
    second `make install`), instead of the whole extension each time. The test builds (SIMDe, sanitizers) keep
    theirs apart, build/temp-simde and build/temp-sanitize, so that neither makes the other recompile all."""

    def finalize_options(self):
        super().finalize_options()
        variant = "-simde" if os.environ.get("FASTSAMPLE_SIMDE") == "1" else "-sanitize" if SANITIZE else ""
        self.build_temp = os.path.join(ROOT, "build", "temp" + variant)


# Name, version, dependencies and packages: pyproject.toml.
setup(ext_modules=[ext], cmdclass={"build_ext": KeptBuildExtension})
