"""The GPU tooling's code paths that run without a GPU: the Triton specialisation sweep of tools/check_gpu.py,
its ptxas parser, tools/gpu_check.py's per-backend test counts, tools/flashinfer_wheels.py's wheel trimming,
and the bench's GPU suite and provider selection with CUDA absent. Nothing here times or compiles anything."""
import argparse
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tools")]

import check_gpu  # noqa: E402
import flashinfer_wheels  # noqa: E402
import gpu_check  # noqa: E402
import triton_specs  # noqa: E402
from bench import gpu as bench_gpu  # noqa: E402
from bench.providers import availability  # noqa: E402
from bench.run import _shapes  # noqa: E402

PTXAS_LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'pick_kernel' for 'sm_90a'
ptxas info    : Function properties for pick_kernel
    8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 1024 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function '_Z4scanPf' for 'sm_80'
ptxas info    : Function properties for _Z4scanPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers, 400 bytes cmem[0]
"""


def test_ptxas_log_is_parsed_per_entry_and_arch():
    usage = check_gpu.parse_ptxas(PTXAS_LOG)
    assert usage[("pick_kernel", "sm_90a")] == dict(regs=255, stack=8, spill_st=12, spill_ld=16, smem=1024)
    assert usage[("_Z4scanPf", "sm_80")] == dict(regs=40, stack=0, spill_st=0, spill_ld=0, smem=0)


def test_spills_fail_unless_allowed(monkeypatch):
    row = dict(kernel="radix.level_kernel", arch="sm_90", setting="LEVEL=0", covers=1, regs=255, stack=8,
               spill_st=4, spill_ld=4, smem=0, shared=0)
    assert len(check_gpu.spill_problems([row])) == 1
    monkeypatch.setitem(check_gpu.SPILL_ALLOWED, "radix.level_kernel", "test")
    assert check_gpu.spill_problems([row]) == []
    assert "4/4 (allowed)" in check_gpu.table([row])


def _jit_kernels() -> set[str]:
    """Every kernel defined in fastsample/triton/ (kernels are named *_kernel; helpers are not)."""
    names = set()
    for path in (REPO / "fastsample" / "triton").glob("*.py"):
        module = importlib.import_module(f"fastsample.triton.{path.stem}")
        for name, obj in inspect.getmembers(module):
            if name.endswith("_kernel") and getattr(getattr(obj, "fn", None), "__module__", "") == module.__name__:
                names.add(f"{path.stem}.{name}")
    return names


@pytest.fixture(scope="module")
def small_sweep():
    return triton_specs.specs(90, vocabs=(32000,), batches=(1, 1024))


def test_sweep_reaches_every_triton_kernel(small_sweep):
    """A kernel no launcher sweep reaches would never be compiled by make check-gpu."""
    kernels = _jit_kernels()
    assert len(kernels) >= 15
    assert {s.kernel for s in small_sweep} == kernels


def test_sweep_uses_the_gpu_launch_plan(small_sweep):
    from fastsample.triton import launch

    softmax = [s for s in small_sweep if s.kernel == "softmax.partial_kernel"]
    assert {dict(s.constexprs)["BLOCK"] for s in softmax} == {launch.BLOCK}
    assert {dict(s.constexprs)["R"] for s in small_sweep if "R" in dict(s.constexprs)} == {1}
    levels = {dict(s.constexprs)["LEVEL"] for s in small_sweep if s.kernel == "radix.level_kernel"}
    assert levels == set(range(8))
    # B = 1 at V = 32000 on 132 SMs splits the row into 8 chunks (C_PAD 8); B = 1024 gives one chunk (C_PAD 2).
    pads = {dict(s.constexprs)["C_PAD"] for s in small_sweep if s.kernel == "softmax.write_kernel"}
    assert pads == {2, 8}
    dtypes = {dict(s.signature)["x_ptr"] for s in softmax}
    assert dtypes == {"*fp32", "*fp16", "*bf16"}


def test_representatives_keep_the_widest_padding(small_sweep):
    reps = check_gpu.representatives(small_sweep)
    assert sum(count for _, count in reps) == len(small_sweep)
    for spec, _ in reps:
        const = dict(spec.constexprs)
        if "C_PAD" in const:
            assert const["C_PAD"] == 8
        if spec.kernel == "radix.level_kernel":
            assert const["LEVEL"] in (0, 1, 7)


def test_per_backend_counts(tmp_path):
    junit = tmp_path / "t.xml"
    junit.write_text("""<testsuites><testsuite>
<testcase classname="tests.test_softmax" name="test_a[cpu]"/>
<testcase classname="tests.test_softmax" name="test_a[cuda]"><skipped message="no gpu"/></testcase>
<testcase classname="tests.test_softmax" name="test_b[triton-7]"><failure message="x"/></testcase>
<testcase classname="tests.test_rng" name="test_c"/>
</testsuite></testsuites>""")
    counts = gpu_check.per_backend(junit)
    assert counts["cpu"]["passed"] == 1 and counts["cuda"]["skipped"] == 1
    assert counts["triton"]["failed"] == 1 and counts["other"]["passed"] == 1


def _args(**kw):
    base = dict(dists=None, dtypes=None, shapes=None, full=False)
    return argparse.Namespace(**{**base, **kw})


def test_bench_gpu_suite_shapes():
    shapes = _shapes(_args(), torch.device("cuda"))  # planning needs no device
    assert {(s.batch, s.vocab) for s in shapes} == {(b, v) for b in (1, 32, 256) for v in (128256, 151936)}
    assert {s.dtype for s in shapes} == {torch.float32, torch.bfloat16}
    assert {s.dist for s in shapes} == {"flat", "peaked"}
    assert len(shapes) == len(bench_gpu.BATCHES) * len(bench_gpu.VOCABS) * 2 * 2
    cpu = _shapes(_args(), torch.device("cpu"))
    assert {s.dtype for s in cpu} == {torch.float32} and (256, 128256) not in {(s.batch, s.vocab) for s in cpu}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the provider choice without CUDA")
def test_bench_providers_without_cuda(capsys):
    from bench.run import main

    reasons = availability(torch.device("cuda"))
    assert reasons["fastsample:cpu"] == "needs a CPU device"
    assert reasons["reference"] is None and reasons["torch"] is None
    if importlib.util.find_spec("flashinfer") is None:
        assert "flashinfer" in reasons["flashinfer"]  # the import error, listed with the skipped providers
    cpu = availability(torch.device("cpu"))
    for gpu_only in ("fastsample:cuda", "fastsample:triton", "flashinfer"):
        assert cpu[gpu_only] == "needs a CUDA device"
    assert main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_flashinfer_wheel_keeps_python_and_the_sampling_sources(tmp_path):
    """The trimmed wheel keeps every Python file and the JIT sources of sampling and top-k, drops the other
    modules' CUDA sources, and its RECORD lists exactly the files it holds, with their hashes."""
    import hashlib
    import base64
    import zipfile

    files = {
        "flashinfer/__init__.py": b"x = 1\n", "flashinfer/jit/sampling.py": b"y = 2\n",
        "flashinfer/gemm/kernel.cu": b"// gemm", "flashinfer/experimental/cake/data.json": b"{}",
        "flashinfer/data/csrc/sampling.cu": b"// s", "flashinfer/data/csrc/sampling_utils.h": b"// h",
        "flashinfer/data/csrc/gemm.cu": b"// g", "flashinfer/data/csrc/nv_internal/x.h": b"// n",
        "flashinfer/data/include/flashinfer/sampling.cuh": b"// i", "flashinfer/data/cccl/cub/cub.cuh": b"// c",
        "flashinfer/data/cutlass/include/cutlass.h": b"// t",
        "flashinfer_python-0.0.dist-info/METADATA": b"Name: flashinfer-python\n",
        "flashinfer_python-0.0.dist-info/RECORD": b"stale\n",
    }
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    wheel = tmp_path / "in" / "flashinfer_python-0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    with zipfile.ZipFile(flashinfer_wheels.trim(wheel, tmp_path / "out")) as z:
        kept = set(z.namelist())
        record = z.read("flashinfer_python-0.0.dist-info/RECORD").decode().split()
    dropped = {"flashinfer/gemm/kernel.cu", "flashinfer/data/csrc/gemm.cu", "flashinfer/data/csrc/nv_internal/x.h",
               "flashinfer/data/cutlass/include/cutlass.h"}
    assert kept == set(files) - dropped
    listed = {line.split(",")[0]: line for line in record}
    assert set(listed) == kept
    digest = base64.urlsafe_b64encode(hashlib.sha256(b"// s").digest()).rstrip(b"=").decode()
    assert listed["flashinfer/data/csrc/sampling.cu"] == f"flashinfer/data/csrc/sampling.cu,sha256={digest},4"


def test_flashinfer_install_does_nothing_without_wheels(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "before")
    assert flashinfer_wheels.install(tmp_path, tmp_path / "site") is None
    assert not (tmp_path / "site").exists()
    assert __import__("os").environ["PYTHONPATH"] == "before"
