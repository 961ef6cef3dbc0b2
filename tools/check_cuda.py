"""Compile-checks the CUDA code with nvcc for sm_80 and sm_90, without a GPU and without a CUDA build of torch.

Two kinds of translation units are compiled (``-c`` only, nothing is linked or run):

- one per header ``csrc/include/fastsample/cuda/*.cuh``: it includes the header and explicitly instantiates
  every kernel template (through the launchers, for float, half and bfloat16), with nvcc and the CUDA
  toolkit alone, warnings as errors;
- every glue file ``csrc/cuda/*.cu``, against torch's headers, in C++20 (the standard torch >= 2.10's headers
  and torch.utils.cpp_extension use; the kernels themselves need only C++17). A CPU wheel of torch ships the ATen/c10 CUDA
  headers the glue uses (c10/cuda/CUDAGuard.h, c10/cuda/CUDAStream.h) but not the one file a CUDA build
  generates at configure time, ``c10/cuda/impl/cuda_cmake_macros.h``; when it is missing, this script
  writes a stand-in with the content a CUDA build generates (``#define C10_CUDA_BUILD_SHARED_LIBS``) in a
  temporary include directory and says so.

Usage: ``python tools/check_cuda.py [--nvcc nvcc] [--arch 80 90] [--only NAME ...]``. Exit status 0 when every
unit compiles. Units are compiled one at a time (nvcc -t 1): the check is meant for small shared machines.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INCLUDE = os.path.join(ROOT, "csrc", "include")
HEADERS = os.path.join(INCLUDE, "fastsample", "cuda")
GLUE = os.path.join(ROOT, "csrc", "cuda")
TYPES = ("float", "__half", "__nv_bfloat16")

# A test row source for pipeline.cuh on its own (the ops' sources are instantiated through their headers).
_PIPELINE_SOURCE = """
struct CheckSource {
  const float* x;
  int64_t vocab;
  __device__ float value(const RowInfo&, int64_t b, int64_t i) const { return x[b * vocab + i]; }
  __device__ float weight(const RowInfo&, float v) const { return v; }
  __device__ float log_weight(const RowInfo&, float v) const { return logf(v); }
};
struct CheckEmit {
  int64_t* out;
  __device__ void operator()(int64_t b, int64_t token, float) const { out[b] = token; }
};
template __global__ void stats_pass<CheckSource>(CheckSource, RowWorkspace, int, RowStats*);
template __global__ void argmax_pass<CheckSource>(CheckSource, RowWorkspace, int);
template __global__ void radix_select_pass<CheckSource>(CheckSource, RowWorkspace, int, int, int);
template __global__ void mass_select_pass<CheckSource>(CheckSource, RowWorkspace, int, int, int);
template __global__ void mass_pass<CheckSource>(CheckSource, RowWorkspace, int);
template __global__ void scan_pass<CheckSource, CheckEmit>(CheckSource, RowWorkspace, int, const int64_t*,
                                                           const int64_t*, u32, CheckEmit);
"""


def _per_type(template: str) -> str:
    return "".join(template.format(T=t) for t in TYPES)


# Header -> explicit instantiations that reach every kernel template it defines.
INSTANTIATIONS = {
    "common.cuh": "",  # no kernels; checks that the header stands alone
    "pipeline.cuh": _PIPELINE_SOURCE,
    "softmax.cuh": _per_type("template cudaError_t softmax<{T}>(const SoftmaxArgs<{T}>&, void*, cudaStream_t);\n"),
    "sampling.cuh": _per_type("template cudaError_t sample<{T}>(const SampleArgs<{T}>&, void*, cudaStream_t);\n")
    # Non-template launchers: taking their address makes the unit emit them and the kernels they launch.
    + "cudaError_t (*check_renorm)(const RenormArgs&, void*, cudaStream_t) = renorm_probs;\n",
    "topk.cuh": _per_type("template cudaError_t top_k<{T}>(const TopKArgs<{T}>&, void*, cudaStream_t);\n")
    + _per_type("template cudaError_t top_k_mask_logits<{T}>(const MaskArgs<{T}>&, void*, cudaStream_t);\n"),
    "stack_sampler.cuh": _per_type("template cudaError_t stack_overrides<{T}>(const StackOverrideArgs<{T}>&, void*, "
                                   "cudaStream_t);\n"),
    "speculative.cuh": "cudaError_t (*check_speculative)(const SpecArgs&, void*, cudaStream_t) = "
    "chain_speculative_sampling;\n",
    "speculative_tree.cuh": _per_type("template cudaError_t tree_speculative_sampling<{T}>(const TreeArgs<{T}>&, "
                                      "void*, cudaStream_t);\n"),
}


def header_unit(name: str) -> str:
    body = INSTANTIATIONS[name]
    return (f'#include "fastsample/cuda/{name}"\n\nnamespace fastsample {{\nnamespace cuda {{\n{body}}}  '
            f"// namespace cuda\n}}  // namespace fastsample\n")


def torch_includes(shim_dir: str) -> tuple[list[str], list[str]]:
    """Include flags for the glue, and notes on what had to be stood in for."""
    import torch  # imported here so that the header checks need no torch at all

    base = os.path.join(os.path.dirname(torch.__file__), "include")
    flags = [f"-I{base}", f"-I{os.path.join(base, 'torch', 'csrc', 'api', 'include')}",
             f"-I{sysconfig.get_paths()['include']}"]
    notes = []
    macros = os.path.join(base, "c10", "cuda", "impl", "cuda_cmake_macros.h")
    if not os.path.exists(macros):
        path = os.path.join(shim_dir, "c10", "cuda", "impl")
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "cuda_cmake_macros.h"), "w") as f:
            f.write("#pragma once\n// Stand-in for the header a CUDA build of torch generates.\n"
                    "#define C10_CUDA_BUILD_SHARED_LIBS\n")
        flags.append(f"-I{shim_dir}")
        notes.append(f"torch {torch.__version__} lacks c10/cuda/impl/cuda_cmake_macros.h (generated by CUDA builds); "
                     "used a stand-in defining C10_CUDA_BUILD_SHARED_LIBS")
    return flags, notes


def compile_unit(nvcc: str, source: str, flags: list[str], archs: list[str], out_dir: str,
                 std: str) -> tuple[bool, str, float]:
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    obj = os.path.join(out_dir, os.path.basename(source) + ".o")
    cmd = [nvcc, "-t", "1", "-c", source, "-o", obj, f"-std={std}", "-O3", "--expt-relaxed-constexpr",
           f"-I{INCLUDE}", *gencode, *flags]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip(), time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nvcc", default="nvcc")
    parser.add_argument("--arch", nargs="+", default=["80", "90"], help="SM versions (default: 80 90)")
    parser.add_argument("--only", nargs="*", default=None, help="compile only these file names")
    parser.add_argument("--ptxas-verbose", action="store_true",
                        help="pass -Xptxas -v and print ptxas's resource usage (tools/check_gpu.py reads it)")
    args = parser.parse_args()

    headers = sorted(f for f in os.listdir(HEADERS) if f.endswith(".cuh"))
    glue = sorted(f for f in os.listdir(GLUE) if f.endswith(".cu"))
    missing = [h for h in headers if h not in INSTANTIATIONS]
    if missing:
        print(f"no instantiation list for {missing}: add them to INSTANTIATIONS in {__file__}")
        return 1
    if args.only:
        headers = [h for h in headers if h in args.only]
        glue = [g for g in glue if g in args.only]

    failures = 0
    verbose = ["-Xptxas", "-v"] if args.ptxas_verbose else []
    archs = "/".join(f"sm_{a}" for a in args.arch)
    with tempfile.TemporaryDirectory(prefix="fastsample-check-cuda-") as tmp:
        header_flags = ["--Werror", "all-warnings", "-Xcompiler", "-Wall"]
        for name in headers:
            unit = os.path.join(tmp, f"check_{name.replace('.cuh', '')}.cu")
            with open(unit, "w") as f:
                f.write(header_unit(name))
            ok, log, secs = compile_unit(args.nvcc, unit, header_flags + verbose, args.arch, tmp, "c++17")
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {archs} include/fastsample/cuda/{name} ({secs:.0f} s)", flush=True)
            if not ok or verbose:
                print(log)
        if glue:
            flags, notes = torch_includes(os.path.join(tmp, "shim"))
            for note in notes:
                print(f"note: {note}")
            flags += ["-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C", "-Xcompiler", "-fPIC",
                      "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                      "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]
            for name in glue:
                ok, log, secs = compile_unit(args.nvcc, os.path.join(GLUE, name), flags, args.arch, tmp, "c++20")
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {archs} cuda/{name} ({secs:.0f} s)", flush=True)
                if not ok:
                    print(log)
    total = len(headers) + len(glue)
    print(f"{total - failures}/{total} CUDA translation units compile for {archs}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
