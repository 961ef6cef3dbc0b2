"""The CPU kernels' generic loops: machines without AVX-512 run auto-vectorised loops where this machine runs
hand-written AVX-512 ones (csrc/cpu/simd.cpp). FASTSAMPLE_NO_AVX512=1 makes the library take the generic
loops, so a child process with it set reruns the CPU kernel tests that reach them (exp and stats passes,
the top-p bracket pass and gathers, sampling, softmax, renorm) against the oracle.
"""
import os
import pathlib
import subprocess
import sys

TESTS = pathlib.Path(__file__).parent
FILES = ["test_cpu_topp_paths.py", "test_cpu_segments.py", "test_softmax.py", "test_topp.py", "test_sampling.py"]


def test_generic_loops_match_the_oracle():
    env = dict(os.environ, FASTSAMPLE_NO_AVX512="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "cpu or long_rows or fused or split_row or leading_masked",
           *[str(TESTS / f) for f in FILES]]
    run = subprocess.run(cmd, env=env, cwd=TESTS.parent, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout, run.stdout[-2000:]
