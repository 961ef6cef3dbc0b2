"""The AVX-512 path of the CPU kernels on any x86-64 CPU, through SIMDe's exact emulation of the intrinsics
(PyPI simde-py, headers only; a test/CI dependency, never the library's): `make check-avx512` runs it.

1. tools/vec_check.cpp, the loops of csrc/cpu/vec_loops.h on fixed inputs, built over the AVX-512
   primitives with SIMDe (and natively where the CPU has AVX-512F), must print the same lines as the AVX2
   build (as check-arm does for NEON under qemu); so must the NEON primitives over SIMDe's NEON.
2. With --tests: the extension built with FASTSAMPLE_SIMDE=1 into build/simde (its `avx512` path on the
   emulation, whatever the CPU) and the CPU kernel tests run against it on FASTSAMPLE_ISA=avx512.
Where simde-py is missing or the CPU lacks AVX2 + FMA to compare with, it says "skipped" and why on stderr and
exits 0 (CI installs simde-py first, so there it always runs)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["-std=c++20", "-O2", "-Wall", "-Werror", "-I", os.path.join(ROOT, "csrc", "cpu")]
# The CPU kernel tests (tools/asan_test.sh's set): every op family, the top-p paths and the stack sampler.
# Not test_cpu_isa.py: its child processes would import the in-place build.
TEST_FILES = ["test_softmax.py", "test_topk.py", "test_topp.py", "test_minp.py", "test_sampling.py",
              "test_speculative.py", "test_api.py", "test_cpu_segments.py", "test_cpu_topp_paths.py",
              "test_stack_sampler.py"]


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return info.read()
    except OSError:
        return ""


def build_and_run(out: str, name: str, extra: list[str]) -> subprocess.CompletedProcess:
    exe = os.path.join(out, name)
    build = subprocess.run(["g++", *FLAGS, *extra, os.path.join(ROOT, "tools", "vec_check.cpp"), "-o", exe],
                           capture_output=True, text=True)
    if build.returncode != 0:
        return build
    return subprocess.run([exe], capture_output=True, text=True, timeout=300)


def vec_check(simde_include: str) -> bool:
    """The AVX-512 loops (SIMDe, and native where the CPU has AVX-512F) against the AVX2 ones, line for line."""
    flags = cpu_flags()
    simde = ["-DFASTSAMPLE_SIMDE=1", "-Wno-psabi", "-I", simde_include]
    # The NEON primitives too, on SIMDe's NEON: its vfmaq is fused only over FMA instructions.
    builds = {"avx512-simde": ["-DVEC_CHECK_AVX512=1", *simde],
              "neon-simde": ["-DVEC_CHECK_NEON=1", "-mavx2", "-mfma", *simde]}
    if " avx512f" in flags:
        builds["avx512"] = ["-DVEC_CHECK_AVX512=1"]
    with tempfile.TemporaryDirectory() as out:
        avx2 = build_and_run(out, "avx2", [])
        if avx2.returncode != 0:
            print(f"check-avx512: the AVX2 vec_check failed:\n{avx2.stdout[-3000:]}{avx2.stderr[-3000:]}",
                  file=sys.stderr)
            return False
        for name, extra in builds.items():
            run = build_and_run(out, name, extra)
            if run.returncode != 0 or run.stdout != avx2.stdout:
                print(f"check-avx512: the {name} loops fail or disagree with AVX2:\n--- {name}\n{run.stdout}"
                      f"{run.stderr[-3000:]}\n--- avx2\n{avx2.stdout}", file=sys.stderr)
                return False
            print(f"check-avx512: vec_check on {name} matches AVX2 line for line")
    return True


def kernel_tests(pytest_args: list[str]) -> bool:
    """The extension with the SIMDe AVX-512 path, built into build/simde, and the CPU kernel tests on it."""
    build = os.path.join(ROOT, "build", "simde")
    env = dict(os.environ, FASTSAMPLE_SIMDE="1", FASTSAMPLE_NO_CUDA="1")
    os.makedirs(build, exist_ok=True)
    with open(build + ".log", "w") as log:
        made = subprocess.run([sys.executable, "setup.py", "-q", "build", "--build-base", build,
                               "--build-lib", os.path.join(build, "lib"), "-j", "2"],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if made.returncode != 0:
        print(f"check-avx512: the SIMDe build failed (see {build}.log)", file=sys.stderr)
        return False
    lib = os.path.join(build, "lib")
    # -P: the repository root stays off sys.path, so `import fastsample` finds the SIMDe build.
    env = dict(os.environ, PYTHONPATH=lib, FASTSAMPLE_ISA="avx512")
    probe = subprocess.run([sys.executable, "-P", "-c", "import torch, fastsample._C as c; "
                            "print(c.__file__, torch.ops.fastsample_cpu.isa())"],
                           cwd=ROOT, env=env, capture_output=True, text=True)
    if probe.returncode != 0 or not probe.stdout.startswith(lib) or not probe.stdout.strip().endswith("avx512"):
        print(f"check-avx512: not the SIMDe build: {probe.stdout}{probe.stderr[-2000:]}", file=sys.stderr)
        return False
    tests = [os.path.join("tests", f) for f in TEST_FILES]
    run = subprocess.run([sys.executable, "-P", "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          "-k", "cpu and not opcheck and not compile", *tests, *pytest_args], cwd=ROOT, env=env)
    return run.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", action="store_true", help="also build the extension on SIMDe and run the CPU tests")
    parser.add_argument("pytest_args", nargs="*", help="passed on to pytest (with --tests)")
    args = parser.parse_args()
    try:
        import simde_py
    except ImportError:
        print("check-avx512: skipped, simde-py is not installed (pip install simde-py)", file=sys.stderr)
        return 0
    flags = cpu_flags()
    if not (" avx2" in flags and " fma" in flags):
        print("check-avx512: skipped, this CPU lacks AVX2 + FMA to compare the AVX-512 loops with", file=sys.stderr)
        return 0
    if not vec_check(simde_py.get_include()):
        return 1
    return 0 if not args.tests or kernel_tests(args.pytest_args) else 1


if __name__ == "__main__":
    sys.exit(main())
