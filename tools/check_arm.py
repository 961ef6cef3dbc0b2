"""Cross-compiles the CPU sources (csrc/ops.cpp, csrc/cpu/*.cpp) for aarch64, compile only, against the
installed torch's headers: proves the Arm build (the NEON path of csrc/cpu/vec_neon.h, no x86 intrinsics
reached) without an Arm machine. Needs an aarch64 g++ (Debian/Ubuntu: apt-get install g++-aarch64-linux-gnu).
Where qemu-aarch64 exists (apt-get install qemu-user), it also runs tools/vec_check.cpp, the NEON loops on
fixed inputs, and compares its lines with the AVX2 build's on this machine (when it has AVX2 + FMA): the same
exact weights, stats and gathers. `make check-arm` runs it."""
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
    return 1 if failed or not run_vec_check(args.cxx) else 0


def host_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as info:
            flags = info.read()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def run_vec_check(cxx: str) -> bool:
    """tools/vec_check.cpp under qemu-aarch64 (NEON) and natively (AVX2): both must pass and print the same
    lines. Skipped (True) without qemu-aarch64."""
    if shutil.which("qemu-aarch64") is None:
        print("check-arm: qemu-aarch64 not found, the NEON loops were compiled but not run (apt-get install qemu-user)")
        return True
    src = os.path.join(ROOT, "tools", "vec_check.cpp")
    flags = ["-std=c++20", "-O2", "-Wall", "-Werror", "-I", os.path.join(ROOT, "csrc", "cpu")]
    with tempfile.TemporaryDirectory() as out:
        arm = os.path.join(out, "vec_check_arm")
        build = subprocess.run([cxx, *flags, "-static", src, "-o", arm], capture_output=True, text=True)
        if build.returncode != 0:
            print(f"check-arm: tools/vec_check.cpp failed to build for aarch64:\n{build.stderr[-3000:]}", file=sys.stderr)
            return False
        neon = subprocess.run(["qemu-aarch64", arm], capture_output=True, text=True, timeout=120)
        if neon.returncode != 0:
            print(f"check-arm: the NEON loops failed under qemu:\n{neon.stdout[-3000:]}{neon.stderr[-2000:]}",
                  file=sys.stderr)
            return False
        if not host_has_avx2() or shutil.which("g++") is None:
            print("check-arm: the NEON loops pass under qemu (no AVX2 here to compare with)")
            return True
        x86 = os.path.join(out, "vec_check_x86")
        build = subprocess.run(["g++", *flags, src, "-o", x86], capture_output=True, text=True)
        avx2 = subprocess.run([x86], capture_output=True, text=True, timeout=120) if build.returncode == 0 else build
        if avx2.returncode != 0 or avx2.stdout != neon.stdout:
            print(f"check-arm: NEON and AVX2 loops disagree:\n--- neon\n{neon.stdout}\n--- avx2\n{avx2.stdout}"
                  f"{avx2.stderr[-2000:]}", file=sys.stderr)
            return False
    print("check-arm: the NEON loops pass under qemu and match the AVX2 loops line for line")
    return True


if __name__ == "__main__":
    sys.exit(main())
