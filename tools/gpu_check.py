"""`make gpu-check`: one command for a machine with a GPU. Builds, tests, sanitizes and benchmarks, then writes
a summary.

Steps (each logged to its own file; the run goes on after a failing step and the summary says what failed):
1. environment: Python, torch, CUDA, Triton, nvcc, compute-sanitizer, FlashInfer, the GPU (or, loudly, that there
   is none); FlashInfer is installed from .whl/ first when it does not import (tools/flashinfer_wheels.py);
2. build: ``setup.py build_ext --inplace`` against the torch already installed (nothing is pip-installed), CUDA
   for the present GPU only (TORCH_CUDA_ARCH_LIST from torch.cuda.get_device_capability()), MAX_JOBS = all cores;
   FlashInfer's sampling and top-k kernels compile beside it;
3. tests: the whole suite (``--quick``: the op families), counted per backend from pytest's JUnit XML;
4. compute-sanitizer memcheck and racecheck over tools/sanitize_ops.py (every CUDA op once, small and large V);
5. the GPU benchmark (bench/gpu.py's suite: B in 1, 32, 256, V in 128256, 151936, float32 and bfloat16;
   fastsample's cuda and triton backends, the sort-based reference, plain torch and FlashInfer when it imports).

Files: the bench's <gpu>.csv/.md/.png and gpu-check-<gpu>.md in --out (default bench/results), and build.log,
tests.log, sanitizer.log, bench.log in --logs (default bench/results/gpu-check-logs): 8 at most. The summary is
printed at the end. Without a GPU the build and the tests run (on CPU, Triton in the interpreter) and the GPU
steps say they were skipped: a rehearsal.

Usage: ``python tools/gpu_check.py [--out DIR] [--logs DIR] [--quick]``.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import flashinfer_wheels  # noqa: E402
QUICK_TESTS = ["tests/test_softmax.py", "tests/test_topk.py", "tests/test_topp.py", "tests/test_minp.py",
               "tests/test_sampling.py", "tests/test_speculative.py", "tests/test_speculative_tree.py",
               "tests/test_cuda.py", "tests/test_rng.py"]
BENCH = "import sys; from bench.run import main; sys.exit(main(sys.argv[1:]))"
# Step time limits in seconds (full run, --quick run); together they bound the whole command.
LIMITS = {"build": (600, 600), "tests": (1500, 600), "sanitizer": (300, 180), "bench": (600, 240)}
FLASHINFER_WAIT = 240  # seconds the run waits for FlashInfer's kernels after its own build


class Run:
    def __init__(self, args):
        self.args, self.quick = args, args.quick
        self.logs = args.logs
        self.notes: list[str] = []
        self.failed: list[str] = []
        self.times: dict[str, float] = {}

    def step(self, name: str, cmd: list[str], log: str, env: dict | None = None, append: bool = False) -> int | None:
        """Runs ``cmd`` with output to logs/<log>, echoing a one-line status; returns the exit code (None on
        timeout)."""
        limit = LIMITS[name][self.quick]
        print(f"[gpu-check] {name}: {' '.join(cmd)[:160]}", flush=True)
        start = time.monotonic()
        with open(self.logs / log, "a" if append else "w") as f:
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            # A session of its own, so that a timeout stops the whole tree (ninja's compilers, pytest's children).
            proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = None
                f.write(f"\n[gpu-check] stopped after {limit} s\n")
        secs = time.monotonic() - start
        self.times[name] = self.times.get(name, 0.0) + secs
        status = "ok" if rc == 0 else ("timed out" if rc is None else f"exit {rc}")
        print(f"[gpu-check] {name}: {status} in {secs:.0f} s (log: {self.logs / log})", flush=True)
        return rc


def environment() -> tuple[dict, str | None]:
    """Versions and the GPU; the second value is the GPU's name, None without one."""
    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "torch CUDA": torch.version.cuda or "none"}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = "not installed"
    nvcc = shutil.which("nvcc")
    if nvcc:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
        info["nvcc"] = (re.findall(r"release ([\d.]+)", out) or ["?"])[0]
    else:
        info["nvcc"] = "not found"
    info["compute-sanitizer"] = shutil.which("compute-sanitizer") or "not found"
    info["cores"] = str(os.cpu_count())
    try:
        info["flashinfer"] = importlib.metadata.version("flashinfer-python")
    except importlib.metadata.PackageNotFoundError:
        info["flashinfer"] = "not installed (tools/flashinfer_wheels.py brings it)"
    # The GPU machines have no network: what the tests and the bench import must already be there.
    missing = [m for m in ("numpy", "scipy", "pytest", "hypothesis", "ninja", "transformers", "matplotlib")
               if importlib.util.find_spec(m) is None]
    info["missing packages"] = ", ".join(missing) or "none"
    if not torch.cuda.is_available():
        return info, None
    cap = torch.cuda.get_device_capability()
    info["gpu"] = f"{torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]}, {torch.cuda.device_count()} visible)"
    return info, torch.cuda.get_device_name()


def build(run: Run, gpu: str | None) -> None:
    """Builds the extension; on a GPU FlashInfer's kernels compile beside it (its log is appended to
    build.log) so that the benchmark times no compilation."""
    import torch

    env = {"MAX_JOBS": str(os.cpu_count() or 1)}
    flashinfer = None
    if gpu:
        major, minor = torch.cuda.get_device_capability()
        env["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
        if importlib.util.find_spec("flashinfer") is not None:
            flashinfer = flashinfer_wheels.warm_up((major, minor), run.logs / "flashinfer.tmp")
    if gpu and not shutil.which("nvcc"):
        run.notes.append("nvcc not found: the extension is built without CUDA, the cuda backend is absent")
    rc = run.step("build", [sys.executable, "setup.py", "build_ext", "--inplace", "-j", env["MAX_JOBS"]], "build.log",
                  env)
    if rc != 0:
        run.failed.append("build")
    if flashinfer is not None:
        start = time.monotonic()
        try:
            status = "ok" if flashinfer.wait(timeout=FLASHINFER_WAIT) == 0 else "failed (the bench skips it)"
        except subprocess.TimeoutExpired:
            os.killpg(flashinfer.pid, signal.SIGKILL)
            status = f"not done {FLASHINFER_WAIT} s after the build (stopped)"
        run.notes.append(f"FlashInfer's kernels compiled beside the build: {status}, "
                         f"{time.monotonic() - start:.0f} s after it")
        tmp = run.logs / "flashinfer.tmp"
        with open(run.logs / "build.log", "a") as f:
            f.write("\n[gpu-check] FlashInfer's sampling and top-k modules:\n" + tmp.read_text())
        tmp.unlink()


def per_backend(junit: Path) -> dict[str, Counter]:
    """{backend: Counter(passed=, failed=, skipped=)} from pytest's JUnit XML; tests without a backend
    parameter count as 'other'."""
    counts: dict[str, Counter] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        ids = re.search(r"\[(.*)\]", case.get("name", ""))
        parts = ids.group(1).split("-") if ids else []
        backend = next((p for p in parts if p in ("cpu", "cuda", "triton", "torch")), "other")
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        counts.setdefault(backend, Counter())[outcome] += 1
    return counts


def tests(run: Run, gpu: str | None) -> str:
    junit = run.logs / "tests.xml"
    targets = QUICK_TESTS if run.quick else ["tests"]
    if not gpu:
        # Without a GPU the triton backend runs in the interpreter, far too slow for this step's limit on a
        # small machine; `make test` covers it. The rehearsal proves the step and its per-backend report.
        targets = [*targets, "-k", "not triton"]
        run.notes.append("no GPU: tests ran without the triton backend (the interpreter); make test runs it")
    rc = run.step("tests", [sys.executable, "-m", "pytest", *targets, "-q", "-p", "no:cacheprovider",
                            f"--junitxml={junit}"], "tests.log")
    if rc != 0:
        run.failed.append("tests")
    if not junit.exists():
        return "no test report (see tests.log)"
    counts = per_backend(junit)
    junit.unlink()  # the counts go into the summary; the log keeps the details
    lines = ["| backend | passed | failed | skipped |", "|---|---|---|---|"]
    for backend in sorted(counts):
        c = counts[backend]
        lines.append(f"| {backend} | {c['passed']} | {c['failed']} | {c['skipped']} |")
    return "\n".join(lines)


def sanitizer(run: Run, gpu: str | None) -> str:
    if not gpu:
        return "skipped: no GPU"
    tool = shutil.which("compute-sanitizer")
    if not tool:
        return "skipped: compute-sanitizer not found (it ships with the CUDA toolkit, bin/compute-sanitizer)"
    from fastsample import _ops

    if not _ops.cuda_built():
        return "skipped: fastsample._C was built without CUDA"
    vocabs = ["1000", "151936"]
    results = []
    for i, check in enumerate(("memcheck", "racecheck")):
        extra = ["--racecheck-report", "all"] if check == "racecheck" else ["--leak-check", "no"]
        rc = run.step("sanitizer", [tool, "--tool", check, "--error-exitcode", "99", *extra, sys.executable,
                                    "tools/sanitize_ops.py", "--vocabs", *vocabs], "sanitizer.log", append=i > 0)
        text = (run.logs / "sanitizer.log").read_text()
        summary = (re.findall(r"ERROR SUMMARY: (\d+ errors?)", text) or ["no summary"])[-1]
        if rc == 0:
            results.append(f"{check}: clean ({summary})")
        elif rc == 99:
            results.append(f"{check}: ERRORS ({summary}, see sanitizer.log)")
            run.failed.append(check)
        elif rc is None:
            results.append(f"{check}: timed out (see sanitizer.log)")
            run.failed.append(check)
        else:
            # The sanitizer refuses some devices/drivers (exit 1 before any kernel runs): say so, do not fail.
            results.append(f"{check}: did not run (exit {rc}; see sanitizer.log)")
    return "; ".join(results)


def bench(run: Run, gpu: str | None) -> str:
    if not gpu:
        return "skipped: no GPU"
    # The default suite on a GPU is bench/gpu.py's; 0.1 s per case is hundreds of calls of a GPU kernel.
    cmd = [sys.executable, "-c", BENCH, "--out", str(run.args.out), "--min-time", "0.1",
           "--providers", "fastsample,reference,torch,flashinfer"]
    if run.quick:
        cmd += ["--ops", "sample,sampling_from_logits,softmax,top_k", "--shapes", "1x128256,256x151936",
                "--dists", "flat"]
    rc = run.step("bench", cmd, "bench.log")
    if rc != 0:
        run.failed.append("bench")
    from bench.common import device_slug
    import torch

    md = run.args.out / f"{device_slug(torch.device('cuda'))}.md"
    return md.read_text() if rc == 0 and md.exists() else "no bench table (see bench.log)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder")
    parser.add_argument("--logs", type=Path, default=None, help="logs folder (default: OUT/gpu-check-logs)")
    parser.add_argument("--quick", action="store_true", help="op tests only, two bench shapes (under 3 minutes)")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.logs = (args.logs or args.out / "gpu-check-logs").resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.logs.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    run, start = Run(args), time.monotonic()

    installed = flashinfer_wheels.install()  # from .whl/ (tools/flashinfer_wheels.py), before anything imports
    info, gpu = environment()
    if installed:
        run.notes.append(installed)
    print("[gpu-check] " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    if not gpu:
        print("[gpu-check] NO GPU PRESENT: torch.cuda.is_available() is False. Building and testing on the CPU "
              "only (a rehearsal); the sanitizer and GPU benchmark steps will be skipped.", flush=True)
    build(run, gpu)
    test_table = tests(run, gpu)
    sanitized = sanitizer(run, gpu)
    bench_md = bench(run, gpu)

    from bench.common import device_slug
    import torch

    slug = device_slug(torch.device("cuda")) if gpu else "no-gpu"
    total = time.monotonic() - start
    verdict = "PASSED" if not run.failed else "FAILED: " + ", ".join(run.failed)
    summary = "\n".join([
        f"# gpu-check: {gpu or 'NO GPU (rehearsal)'}", "",
        f"{verdict}. {'Quick run' if args.quick else 'Full run'} in {total:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in run.times.items()) + ").", "",
        "## Environment", *(f"- {k}: {v}" for k, v in info.items()), *(f"- note: {n}" for n in run.notes), "",
        "## Tests per backend", test_table, "",
        "## compute-sanitizer", sanitized, "",
        "## Benchmark", bench_md, "",
        f"Logs: {args.logs}",
    ]) + "\n"
    path = args.out / f"gpu-check-{slug}.md"
    path.write_text(summary)
    print("\n" + summary)
    print(f"[gpu-check] wrote {path}")
    return 0 if not run.failed else 1


if __name__ == "__main__":
    sys.exit(main())
