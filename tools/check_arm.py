"""Cross-compiles the CPU sources (csrc/ops.cpp, csrc/cpu/*.cpp) for aarch64, compile only, against the
installed torch's headers: proves the Arm build (NEON by auto-vectorisation, no x86 intrinsics reached)
without an Arm machine. Needs an aarch64 g++ (Debian/Ubuntu: apt-get install g++-aarch64-linux-gnu).
`make check-arm` runs it."""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cxx", default="aarch64-linux-gnu-g++", help="the aarch64 C++ compiler")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    if shutil.which(args.cxx) is None:
        print(f"check-arm: {args.cxx} not found (apt-get install g++-aarch64-linux-gnu)", file=sys.stderr)
        return 2
    import torch  # the headers only: the wheel's x86 libraries are never linked

    torch_inc = os.path.join(os.path.dirname(torch.__file__), "include")
    flags = ["-std=c++20", "-O3", "-fopenmp", "-fno-math-errno", "-Wall", "-Werror", "-Wno-unknown-pragmas", "-fPIC",
             "-march=armv8-a", "-I", os.path.join(ROOT, "csrc", "include"), "-I", torch_inc,
             "-I", os.path.join(torch_inc, "torch", "csrc", "api", "include"), "-I", sysconfig.get_paths()["include"],
             "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C"]
    sources = [os.path.join(ROOT, "csrc", "ops.cpp")] + sorted(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    with tempfile.TemporaryDirectory() as out:
        def compile_one(src: str) -> tuple[str, subprocess.CompletedProcess]:
            obj = os.path.join(out, os.path.basename(src) + ".o")
            return src, subprocess.run([args.cxx, *flags, "-c", src, "-o", obj], capture_output=True, text=True)

        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(compile_one, sources))
    failed = [(src, run) for src, run in results if run.returncode != 0]
    for src, run in failed:
        print(f"check-arm: {os.path.relpath(src, ROOT)} failed:\n{run.stderr[-3000:]}", file=sys.stderr)
    print(f"check-arm: {len(sources) - len(failed)}/{len(sources)} CPU sources compile for aarch64")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
