"""Builds fastsample._C: the CPU kernels always; the CUDA kernels too when torch has CUDA and nvcc exists."""
import glob
import os
import shutil

import torch
from setuptools import find_packages, setup
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
nvcc_flags = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo",
              "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
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

if WITH_CUDA:
    ext = CUDAExtension("fastsample._C", CPU_SOURCES + CUDA_SOURCES, include_dirs=include_dirs,
                        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}, extra_link_args=link_flags)
else:
    ext = CppExtension("fastsample._C", CPU_SOURCES, include_dirs=include_dirs,
                       extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)

setup(
    name="fastsample",
    version="0.1.0",
    description="Fused LLM-sampling kernels (CPU C++, Triton, CUDA C++) and decoders for PyTorch",
    packages=find_packages(include=["fastsample", "fastsample.*"]),
    python_requires=">=3.10",
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
