"""GPU readiness without a GPU: every Triton kernel and every CUDA unit compiled for sm_80 and sm_90, with the
registers, spills and shared memory ptxas reports for each, in one table.

- Triton: tools/triton_specs.py finds the specialisations the launchers pick (block sizes, chunk padding,
  flags, radix levels, warps, argument dtypes) for V in 32000, 128256, 151936, 262144, float32/float16/bfloat16
  and batch sizes from 1 to 1024. Specialisations that differ only in C_PAD (the padded chunk count, a
  [C_PAD, 16] float64 tile of partials) are compiled once, at their largest C_PAD (the most registers), and
  radix levels 2..7 (which differ only in shift constants) once, at level 7. Each is compiled with
  ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 80 | 90, 32))`` (no GPU needed), whose ptxas
  step runs with ``-v`` (Triton's own ptxas and flags; the log is captured).
- CUDA C++: tools/check_cuda.py's units (every kernel template instantiated, and the torch glue) compiled by
  nvcc with ``-Xptxas -v``; this is ``make check-cuda`` with resource usage.

A kernel or unit that does not compile fails the check; so does any spill (bytes of spill stores or loads),
unless the kernel is on SPILL_ALLOWED below with the reason. Results are cached per specialisation and
sources (under ~/.cache/fastsample-check-gpu), so a second run of unchanged kernels takes seconds.

Usage: ``python tools/check_gpu.py [--arch 80 90] [--jobs N] [--no-cuda] [--no-triton] [--budget S]``.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path[:0] = [str(ROOT), str(TOOLS)]

# Kernels allowed to spill, with the reason (kernel names as in the table). Keep it short.
SPILL_ALLOWED: dict[str, str] = {
    # 8 bytes (one float64) spilled with LOGPROBS=1 only, once per row at the end of the walk, on sm_80 and
    # sm_90 since the inverse-CDF walk became the shared triton/cdf.py helpers; not worth a register budget
    # change before a GPU has timed it (issue 20 measures it).
    "sampling.pick_kernel": "8 B spill of the logprob's float64 with LOGPROBS=1, once per row",
}

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fastsample-check-gpu"
_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas(log: str) -> dict[tuple[str, str], dict]:
    """{(entry, arch): {regs, stack, spill_st, spill_ld, smem}} from ptxas -v output."""
    out, current = {}, None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            current = (m.group(1), m.group(2))
            out[current] = dict(regs=0, stack=0, spill_st=0, spill_ld=0, smem=0)
        elif current and (m := _SPILL.search(line)):
            out[current].update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
        elif current and (m := _USED.search(line)):
            out[current].update(regs=int(m.group(1)), smem=int(m.group(2) or 0))
    return out


# ------------------------------------------------------------------------------------------------- Triton
def representatives(specs) -> list[tuple[object, int]]:
    """One spec per class (see the module docstring) with the number of launcher specs it stands for."""
    classes: dict[tuple, list] = defaultdict(list)
    for spec in specs:
        const = tuple((k, min(v, 2) if k == "LEVEL" else v) for k, v in spec.constexprs if k != "C_PAD")
        classes[(spec.kernel, const, tuple(t for _, t in spec.signature), spec.num_warps)].append(spec)
    chosen = []
    for members in classes.values():
        best = max(members, key=lambda s: (dict(s.constexprs).get("C_PAD", 0), dict(s.constexprs).get("LEVEL", 0),
                                           len(s.divisible)))
        chosen.append((best, len(members)))
    # Biggest first (sort tiles, then wide chunk padding), so that the slowest compilations do not come last.
    return sorted(chosen, key=lambda c: -_weight(c[0]))


def _weight(spec) -> int:
    const = dict(spec.constexprs)
    return const.get("K_PAD", 0) * 64 + const.get("C_PAD", 0)


def sources_hash() -> str:
    """Hash of the Triton sources and the Triton version: the result cache's key prefix."""
    import triton

    digest = hashlib.sha256(triton.__version__.encode())
    for path in sorted((ROOT / "fastsample" / "triton").glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def compile_spec(job) -> dict:
    """Compile one spec for one capability; returns the row record (or the error).

    Triton runs ptxas with -v itself; its log is captured (TRITON_DUMP_PTXAS_LOG prints it) and Triton's
    cache is bypassed so that ptxas always runs: the parsed result is cached here instead, per spec and sources.
    """
    spec, capability, count, sources = job
    record = dict(kernel=spec.kernel, arch=f"sm_{capability}", setting=spec.label(), covers=count)
    key = hashlib.sha256(f"{sources}|{capability}|{spec!r}".encode()).hexdigest()
    cached = CACHE / f"{key}.json"
    if cached.exists():
        return {**record, **json.loads(cached.read_text()), "secs": 0.0}
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, without its warning
    import importlib

    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    knobs.compilation.always_compile = True
    knobs.nvidia.dump_ptxas_log = True
    start = time.monotonic()
    try:
        module, name = spec.kernel.split(".")
        fn = getattr(importlib.import_module(f"fastsample.triton.{module}"), name)
        src = ASTSource(fn, dict(spec.signature), constexprs=dict(spec.constexprs),
                        attrs={(i,): [["tt.divisibility", 16]] for i in spec.divisible})
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(src, target=GPUTarget("cuda", capability, 32),
                                    options={"num_warps": spec.num_warps})
        entries = parse_ptxas(log.getvalue())
        if not entries:
            raise RuntimeError(f"no ptxas report in Triton's output: {log.getvalue()[-500:]!r}")
        usage = dict(next(iter(entries.values())), shared=int(kernel.metadata.shared))
        CACHE.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(usage))
        record.update(usage)
    except Exception as exc:  # reported in the table; the check fails
        record["error"] = f"{type(exc).__name__}: {str(exc)[-1500:]}"
    record["secs"] = time.monotonic() - start
    return record


def triton_rows(archs: list[int], jobs: int, budget: float) -> tuple[list[dict], list[str]]:
    import triton_specs

    start = time.monotonic()
    sources = sources_hash()
    work = []
    for cap in archs:
        specs = triton_specs.specs(cap)
        reps = representatives(specs)
        print(f"triton sm_{cap}: {len(specs)} launcher specialisations -> {len(reps)} compilations", flush=True)
        work += [(spec, cap, count, sources) for spec, count in reps]
    work.sort(key=lambda job: -_weight(job[0]))
    print(f"planned in {time.monotonic() - start:.0f} s; compiling on {jobs} processes", flush=True)
    rows, problems = [], []
    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(jobs)
    try:
        pending = pool.imap_unordered(compile_spec, work)
        for i in range(len(work)):
            remaining = budget - (time.monotonic() - start)
            try:
                rows.append(pending.next(timeout=max(remaining, 1)))
            except multiprocessing.TimeoutError:
                problems.append(f"Triton: time budget of {budget:.0f} s spent with {len(work) - i} compilations left")
                break
            if (i + 1) % 50 == 0:
                print(f"  {i + 1}/{len(work)} compiled ({time.monotonic() - start:.0f} s)", flush=True)
    finally:
        pool.terminate()
    for r in rows:
        if "error" in r:
            problems.append(f"{r['kernel']} {r['arch']} [{r['setting']}]: {r['error']}")
    return rows, problems


# --------------------------------------------------------------------------------------------------- CUDA
def cuda_rows(archs: list[int], nvcc: str) -> tuple[list[dict], list[str], str]:
    """Compile check_cuda's units with -Xptxas -v; one row per (kernel, arch) with the worst instantiation."""
    cmd = [sys.executable, str(TOOLS / "check_cuda.py"), "--nvcc", nvcc, "--arch", *map(str, archs), "--ptxas-verbose"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    usage = parse_ptxas(proc.stdout + proc.stderr)
    names = _demangle(sorted({entry for entry, _ in usage}))
    rows: dict[tuple[str, str], dict] = {}
    for (entry, arch), u in usage.items():
        name = "cuda." + names.get(entry, entry)
        row = rows.setdefault((name, arch), dict(kernel=name, arch=arch, covers=0, setting="", **u))
        row["covers"] += 1
        for k in ("regs", "stack", "spill_st", "spill_ld", "smem"):
            row[k] = max(row[k], u[k])
    problems = [] if proc.returncode == 0 else [f"CUDA: tools/check_cuda.py failed (exit {proc.returncode})"]
    summary = "\n".join(line for line in proc.stdout.splitlines() if not line.startswith("ptxas"))
    return list(rows.values()), problems, summary


def _demangle(entries: list[str]) -> dict[str, str]:
    """Mangled entry -> the kernel's name without namespaces and arguments (template arguments kept short)."""
    try:
        out = subprocess.run(["c++filt"], input="\n".join(entries), capture_output=True, text=True).stdout
        plain = out.splitlines()
    except OSError:
        plain = entries
    names = {}
    for entry, text in zip(entries, plain):
        head = text.split("(")[0].replace("fastsample::cuda::", "").replace("(anonymous namespace)::", "")
        head = head.replace("__nv_bfloat16", "bf16").replace("__half", "fp16").replace("float", "fp32")
        names[entry] = re.sub(r"^void ", "", head)
    return names


# ---------------------------------------------------------------------------------------------------- table
def table(rows: list[dict]) -> str:
    """One line per (kernel, arch): the worst compiled setting's registers, spills and shared memory."""
    worst: dict[tuple[str, str], dict] = {}
    for r in rows:
        if "error" in r:
            continue
        key = (r["kernel"], r["arch"])
        agg = worst.setdefault(key, dict(r, n=0, covered=0, regs_min=r["regs"]))
        agg["n"] += 1
        agg["covered"] += r["covers"]
        agg["regs_min"] = min(agg["regs_min"], r["regs"])
        if (r["spill_st"] + r["spill_ld"], r["regs"]) > (agg["spill_st"] + agg["spill_ld"], agg["regs"]):
            agg.update({k: r[k] for k in ("regs", "stack", "spill_st", "spill_ld", "setting")})
        for k in ("shared", "smem"):
            agg[k] = max(agg.get(k, 0), r.get(k, 0))
    head = "| kernel | arch | compiled (launch specs) | registers | spill st/ld B | stack B | smem B | worst setting |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for (kernel, arch), a in sorted(worst.items()):
        regs = f"{a['regs_min']}–{a['regs']}" if a["regs_min"] != a["regs"] else str(a["regs"])
        smem = max(a.get("shared", 0), a.get("smem", 0))
        flag = " (allowed)" if kernel in SPILL_ALLOWED and a["spill_st"] + a["spill_ld"] else ""
        lines.append(f"| {kernel} | {arch} | {a['n']} ({a['covered']}) | {regs} | {a['spill_st']}/{a['spill_ld']}{flag} "
                     f"| {a['stack']} | {smem} | {a['setting'][:70]} |")
    return "\n".join(lines)


def spill_problems(rows: list[dict]) -> list[str]:
    return [f"{r['kernel']} {r['arch']} [{r['setting']}] spills {r['spill_st']} B stores / {r['spill_ld']} B loads"
            for r in rows if "error" not in r and r["spill_st"] + r["spill_ld"] and r["kernel"] not in SPILL_ALLOWED]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", type=int, default=[80, 90])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="Triton compile processes")
    parser.add_argument("--nvcc", default="nvcc")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA C++ units")
    parser.add_argument("--no-triton", action="store_true", help="skip the Triton kernels")
    parser.add_argument("--budget", type=float, default=840, help="seconds for the Triton compilations")
    args = parser.parse_args()
    start = time.monotonic()
    rows, problems = [], []
    cuda = None
    if not args.no_cuda and not shutil.which(args.nvcc):
        print(f"note: {args.nvcc} not found: the CUDA C++ units are not compiled (make check-cuda needs nvcc)")
    elif not args.no_cuda:
        # nvcc compiles one unit at a time (nvcc -t 1), beside the Triton processes.
        cuda = concurrent.futures.ThreadPoolExecutor(1).submit(cuda_rows, args.arch, args.nvcc)
    if not args.no_triton:
        triton, triton_problems = triton_rows(args.arch, args.jobs, args.budget)
        rows += triton
        problems += triton_problems
    if cuda is not None:
        cuda_table, cuda_problems, summary = cuda.result()
        print(summary, flush=True)
        rows += cuda_table
        problems += cuda_problems
    problems += spill_problems(rows)
    print(table(rows))
    for kernel, why in SPILL_ALLOWED.items():
        print(f"spills allowed in {kernel}: {why}")
    print(f"\n{len(rows)} (kernel, arch) results in {time.monotonic() - start:.0f} s")
    if problems:
        print(f"{len(problems)} problem(s):\n" + "\n".join(f"- {p}" for p in problems))
        return 1
    print("check-gpu: every kernel compiles for " + ", ".join(f"sm_{a}" for a in args.arch) + " without unlisted spills")
    return 0


if __name__ == "__main__":
    sys.exit(main())
