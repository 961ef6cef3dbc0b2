"""The CPU kernels' vector paths (csrc/cpu/isa.h): the loops of vec_loops.h over AVX-512 (vec_avx512.h),
AVX2 + FMA (vec_avx2.h) or NEON (vec_neon.h, aarch64) primitives, and over the portable ones of
vec_generic.h on the generic path every machine can run. The library picks the best path the CPU has when it loads;
FASTSAMPLE_ISA=avx512|avx2|neon|generic asks for another (never more than the CPU has) and
FASTSAMPLE_NO_AVX512=1 still means generic. The main suite runs the default path; here a child process
reruns the CPU kernel tests that reach the vector loops (exp and stats passes, the top-p bracket pass and
gathers, sampling, softmax, renorm) on each other path this CPU has, against the oracle, and the tokens
of every path are compared with each other directly.
"""
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import fastsample
import fastsample._C  # noqa: F401  (registers torch.ops.fastsample_cpu)

TESTS = pathlib.Path(__file__).parent
FILES = ["test_cpu_topp_paths.py", "test_cpu_segments.py", "test_softmax.py", "test_topp.py", "test_sampling.py"]
PATHS = ["avx512", "avx2", "neon", "generic"]


def _child(env_extra: dict, code: str) -> str:
    env = dict(os.environ, **env_extra)
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=TESTS.parent, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.strip()


def _path_in(env_extra: dict) -> str:
    return _child(env_extra, "import torch, fastsample._C; print(torch.ops.fastsample_cpu.isa())")


def test_default_path_is_the_best_the_cpu_has():
    default = torch.ops.fastsample_cpu.isa()
    assert default in ("avx512", "avx2", "neon", "generic")
    assert _path_in({"FASTSAMPLE_NO_AVX512": "1"}) == "generic"
    assert _path_in({"FASTSAMPLE_ISA": "generic"}) == "generic"
    if default == "avx512":
        assert _path_in({"FASTSAMPLE_ISA": "avx2"}) == "avx2"
    if default in ("avx2", "neon", "generic"):  # a path the CPU lacks falls back to its best
        assert _path_in({"FASTSAMPLE_ISA": "avx512"}) == default
    if default != "neon":
        assert _path_in({"FASTSAMPLE_ISA": "neon"}) == default


@pytest.mark.parametrize("path", PATHS)
def test_path_matches_the_oracle(path):
    default = torch.ops.fastsample_cpu.isa()
    if path == default:
        pytest.skip(f"{path} is the default path here: the main suite runs it")
    env_extra = {"FASTSAMPLE_ISA": path}
    if _path_in(env_extra) != path:
        pytest.skip(f"this CPU has no {path}")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k",
           "cpu or long_rows or fused or split_row or leading_masked or route", *[str(TESTS / f) for f in FILES]]
    run = subprocess.run(cmd, env=dict(os.environ, **env_extra), cwd=TESTS.parent, capture_output=True, text=True,
                         timeout=1200)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout, run.stdout[-2000:]


TOKENS = """
import torch, fastsample
gen = torch.Generator().manual_seed(3)
x = torch.cat([torch.randn(6, 70000, generator=gen) * 2, torch.rand(2, 70000, generator=gen) * 30])
rows = []
for kw in [dict(top_p=0.9), dict(), dict(top_k=50, top_p=0.9), dict(min_p=0.05), dict(top_p=0.3, min_p=0.1)]:
    for t in (0.7, 1.3):
        rows += fastsample.sample(x, temperature=t, seed=11, backend="cpu", **kw).tolist()
probs = torch.softmax(x, -1)
rows += fastsample.top_p_sampling_from_probs(probs, 0.8, seed=5, backend="cpu").tolist()
print(rows)
"""


def test_tokens_do_not_depend_on_the_path():
    """The same rows and seeds give the same tokens on every path this CPU has (the paths' weights agree to
    float rounding, which moves a token only where u * W lies within rounding of a CDF step: not here)."""
    default = torch.ops.fastsample_cpu.isa()
    runs = {default: _child({}, TOKENS)}
    for path in PATHS:
        if path != default and _path_in({"FASTSAMPLE_ISA": path}) == path:
            runs[path] = _child({"FASTSAMPLE_ISA": path}, TOKENS)
    assert len(runs) >= 2, runs.keys()
    first = next(iter(runs.values()))
    for path, tokens in runs.items():
        assert tokens == first, f"{path} differs from {next(iter(runs))}"


def test_asking_for_a_path_the_cpu_lacks_warns():
    """FASTSAMPLE_ISA naming a path this CPU lacks (or no path at all) runs another path and says which; a
    path the CPU has runs without a word."""
    lacking = 0
    for want in [*PATHS, "avx-512"]:
        env = dict(os.environ, FASTSAMPLE_ISA=want)
        run = subprocess.run([sys.executable, "-c", "import fastsample, torch; print(torch.ops.fastsample_cpu.isa())"],
                             env=env, cwd=TESTS.parent, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        got = run.stdout.strip().splitlines()[-1]
        if got == want:
            assert "FASTSAMPLE_ISA" not in run.stderr, run.stderr[-2000:]
        else:
            lacking += 1
            assert f"FASTSAMPLE_ISA={want}" in run.stderr and f"run the {got} path" in run.stderr, run.stderr[-2000:]
    assert lacking >= 2  # "avx-512", and neon on x86-64 or the x86 paths on aarch64


def test_avx512_loops_match_avx2_under_simde():
    """The AVX-512 loops on fixed inputs (tools/vec_check.cpp over SIMDe's emulation of the intrinsics, and
    natively where the CPU has AVX-512F) print the same lines as the AVX2 ones: tested on any x86-64 CPU with
    AVX2 (make check-avx512 also runs the kernel tests on an emulated build; CI installs simde-py for both)."""
    pytest.importorskip("simde_py", reason="simde-py (a test-only dependency) is not installed: pip install simde-py")
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        pytest.skip("the AVX-512 path is x86-64 only")
    run = subprocess.run([sys.executable, str(TESTS.parent / "tools" / "check_avx512.py")], capture_output=True,
                         text=True, timeout=600)
    if "skipped" in run.stderr:
        pytest.skip(run.stderr.strip())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "vec_check on avx512-simde matches AVX2 line for line" in run.stdout
