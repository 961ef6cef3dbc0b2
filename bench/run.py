"""`python -m bench [options]` (from the repository root): times every op of the suite for every available provider, next to
the single-pass limit, then prints the markdown table and the issue targets, writes
bench/results/<device>.md, appends rows to bench/results/<device>.csv and redraws bench/results/<device>.png."""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from . import gpu, sampling, softmax, speculative, stack_sampler, topk, topp
from .common import (REPO, BenchOp, Progress, Shape, Timing, device_description, device_slug, git_commit,
                     measure, pooled)
from .inputs import DISTS, make_logits
from .limit import SUBSTITUTE, copy_bandwidth, single_pass
from .providers import ALL, CPU_PATHS, availability, isa_of, on_cpu_path
from .report import PASS_OP, Result, append_csv, csv_rows, fill_speedups, markdown_table
from .targets import headline_table, target_lines

OPS: list[BenchOp] = [*softmax.OPS, *topk.OPS, *topp.OPS, *sampling.OPS, *speculative.OPS]
OPS += stack_sampler.OPS
FULL_BATCHES = (1, 8, 32, 128)
FULL_VOCABS = (32000, 128256, 151936, 262144)
# The default suite (under 3 minutes on 2 idle CPU cores, most of it in the sort-based baselines): the issue
# targets' shapes (B = 1 and 32 at V = 128256, both distributions), plus B = 8 at every V of the grid for the
# plot's time-vs-V lines (B = 8 costs a quarter of B = 32, so the sweep fits in the budget).
DEFAULT_SHAPES = (((1, 128256), DISTS), ((32, 128256), DISTS),
                  *(((8, v), ("flat",)) for v in (32000, 128256, 151936, 262144)))
EPILOG = """default suite: B=1 and B=32 at V=128256 (flat and peaked logits), B=8 at V=32000, 128256, 151936,
262144 (flat); float32. On a GPU: B=1, 32, 256 at V=128256 and 151936, both distributions, float32 and
bfloat16 (bench/gpu.py). Examples:
  python -m bench --ops sample --shapes 32x128256 --dists flat
  python -m bench --providers fastsample,reference --full
  python -m bench.plot bench/results/cpu.csv      # redraw the plot alone"""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="the whole grid: B in 1,8,32,128 x V in 32000,128256,"
                   "151936,262144 x both distributions (long on a CPU)")
    p.add_argument("--ops", help="comma list of ops (sample, top_k, ...), exact labels or families (topk, topp)")
    p.add_argument("--providers", help=f"comma list from {', '.join(ALL)}; 'fastsample' means every backend")
    p.add_argument("--shapes", help="comma list of BxV, e.g. 1x128256,32x32000 (with every --dists)")
    p.add_argument("--dists", help=f"comma list from {', '.join(DISTS)} (default: both)")
    p.add_argument("--dtypes", help="comma list from float32, bfloat16, float16 (default: float32, "
                   "plus bfloat16 on a GPU)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    p.add_argument("--min-time", type=float, default=0.3, metavar="S",
                   help="seconds of timed calls per measurement, at least 5 calls (default 0.3)")
    p.add_argument("--threads", type=int, metavar="N", help="torch.set_num_threads(N) first (also the OpenMP "
                   "threads of fastsample's CPU kernels); default: torch's default, one per core")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="results folder")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--list", action="store_true", help="list ops and providers, then exit")
    return p


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _select_ops(tokens: list[str] | None) -> list[BenchOp]:
    if tokens is None:
        return OPS
    chosen = [op for op in OPS if any(t in (op.name, op.name.split("(")[0], op.family) for t in tokens)]
    unknown = [t for t in tokens if not any(t in (op.name, op.name.split("(")[0], op.family) for op in OPS)]
    if unknown:
        raise ValueError(f"unknown op(s) {unknown}; choose from {[op.name for op in OPS]} or families "
                         f"{sorted({op.family for op in OPS})}")
    return chosen


def _select_providers(tokens: list[str] | None) -> list[str]:
    if tokens is None:
        return list(ALL)
    unknown = [t for t in tokens if not any(t in (name, name.split(":")[0]) for name in ALL)]
    if unknown:
        raise ValueError(f"unknown provider(s) {unknown}; choose from {list(ALL)} or 'fastsample'")
    return [name for name in ALL if any(t in (name, name.split(":")[0]) for t in tokens)]


def _shapes(args, device: torch.device) -> list[Shape]:
    dists = _split(args.dists) or list(DISTS)
    if bad := [d for d in dists if d not in DISTS]:
        raise ValueError(f"unknown distribution(s) {bad}; choose from {list(DISTS)}")
    dtype_names = _split(args.dtypes) or (["float32", "bfloat16"] if device.type == "cuda" else ["float32"])
    if bad := [d for d in dtype_names if d not in DTYPES]:
        raise ValueError(f"unknown dtype(s) {bad}; choose from {list(DTYPES)}")
    if args.shapes:
        try:
            sizes = [tuple(int(n) for n in s.lower().split("x")) for s in _split(args.shapes)]
        except ValueError:
            raise ValueError(f"--shapes must look like 1x128256,32x32000, got {args.shapes!r}") from None
        if any(len(s) != 2 or min(s) < 1 for s in sizes):
            raise ValueError(f"--shapes must be positive BxV pairs, got {args.shapes!r}")
        plan = [(size, dists) for size in sizes]
    elif args.full:
        plan = [((b, v), dists) for b in FULL_BATCHES for v in FULL_VOCABS]
    else:
        default = gpu.SHAPES if device.type == "cuda" else DEFAULT_SHAPES  # bench/gpu.py: the GPU suite
        plan = [(size, [d for d in ds if d in dists]) for size, ds in default]
    return [Shape(b, v, dist, DTYPES[name]) for name in dtype_names for (b, v), ds in plan for dist in ds]


def _cases(shape: Shape, ops: list[BenchOp], providers: list[str]) -> list[tuple[BenchOp, str]]:
    return [(op, p) for op in ops if not (op.probs_only and shape.dtype != torch.float32)
            for p in providers if p in op.impls]


def _time_passes(logits, device, limit, min_time, failures, where) -> tuple[str, Callable, dict[str, Timing]]:
    """The single-pass limit and a plain torch.softmax pass over `logits`; returns the limit's label and
    function with the timings. If fastsample's limit op fails on these logits (a dtype it lacks), the
    substitute stands in and the failure is reported."""
    label, fn = limit
    try:
        timings = {label: measure(lambda: fn(logits), device, min_time_s=min_time)}
    except Exception as exc:
        failures.append(f"{PASS_OP} / {label} / {where}: {type(exc).__name__}: {str(exc)[:200]}")
        label, fn = SUBSTITUTE
        timings = {label: measure(lambda: fn(logits), device, min_time_s=min_time)}
    timings["torch.softmax"] = measure(lambda: torch.softmax(logits, dim=-1, dtype=torch.float32), device,
                                       min_time_s=min_time)
    return label, fn, timings


def _time_on_path(provider, limit_fn, logits, device, min_time) -> tuple[Timing, str]:
    """The single-pass limit timed on a forced CPU path, and that path's name."""
    with on_cpu_path(provider):
        return measure(lambda: limit_fn(logits), device, min_time_s=min_time), isa_of(provider, device)


def _run(shapes, ops, providers, device, min_time) -> tuple[list[Result], list[str]]:
    """Time every case; returns the results and one note per case that failed."""
    limit = single_pass(device)
    bandwidth = copy_bandwidth(device) if device.type == "cuda" else None
    progress = Progress(sum(1 + len(_cases(s, ops, providers)) for s in shapes))
    results, failures = [], []
    for shape in shapes:
        where = f"B={shape.batch} V={shape.vocab} {shape.dist} {shape.dtype_name}"
        logits = make_logits(shape, device)
        bw_ms = None if bandwidth is None else logits.numel() * logits.element_size() / bandwidth * 1e3
        limit_kind, limit_fn, timings = _time_passes(logits, device, limit, min_time, failures, where)
        # Forced CPU paths: each has its own limit, timed on that path (before and after the cases, like the
        # default one) and named after it, and the rows of that path are compared with it.
        forced = sorted({p for _, p in _cases(shape, ops, providers)} & set(CPU_PATHS))
        path_limits = {p: _time_on_path(p, limit_fn, logits, device, min_time) for p in forced}
        progress.step(f"{PASS_OP} {where}")
        prepared: dict[str, dict] = {}
        cases: list[tuple[str, str, Timing, str]] = []
        for op, provider in _cases(shape, ops, providers):
            try:
                if op.name not in prepared:
                    prepared.clear()  # one op's inputs alive at a time (the speculative ones are large)
                    prepared[op.name] = op.prepare(logits)
                with on_cpu_path(provider):
                    cases.append((op.name, provider, measure(op.impls[provider](prepared[op.name]), device,
                                                             min_time_s=min_time), isa_of(provider, device)))
            except Exception as exc:  # one broken provider must not end a long run; it is reported instead
                failures.append(f"{op.name} / {provider} / {where}: {type(exc).__name__}: {str(exc)[:200]}")
            progress.step(f"{op.name} {provider} {where}")
        # The limit once more after the cases, pooled with the first: a shared machine drifts over the tens
        # of seconds the cases take, and the ratios should not hinge on the moment the limit was taken.
        timings[limit_kind] = pooled(timings[limit_kind], measure(lambda: limit_fn(logits), device,
                                                                  min_time_s=min_time))
        limit_ms = timings[limit_kind].median_ms
        pass_isa = {label: isa_of("fastsample:cpu" if label.startswith("fastsample") else "torch", device) for label in timings}
        results += [Result(PASS_OP, label, shape, t, limit_ms, limit_kind, bw_ms, isa=pass_isa[label])
                    for label, t in timings.items()]
        own_limit = {}  # provider -> (limit_ms, limit_kind) of its forced path
        for provider, (before, isa) in path_limits.items():
            t = pooled(before, _time_on_path(provider, limit_fn, logits, device, min_time)[0])
            own_limit[provider] = (t.median_ms, f"{limit_kind} ({isa})")
            results.append(Result(PASS_OP, own_limit[provider][1], shape, t, *own_limit[provider], bw_ms, isa=isa))
        results += [Result(name, provider, shape, t, *own_limit.get(provider, (limit_ms, limit_kind)), bw_ms, isa=isa)
                    for name, provider, t, isa in cases]
        del logits, prepared
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    progress.close()
    return results, failures


def _document(results, failures, skipped, device, description, commit, date, seconds, load) -> str:
    """The markdown that is printed and written to <device>.md."""
    # Other processes on the cores inflate CPU times; the load the run started on says how much to trust them.
    loaded = "" if load is None else f", load average {load:.1f} before the run"
    busy = load is not None and load > 0.5 * (os.cpu_count() or 1)
    limit_kind = results[0].limit_kind if results else "n/a"
    parts = [f"## fastsample benchmark: {description}",
             f"commit {commit}, {date}, torch {torch.__version__}, {seconds:.0f} s{loaded}. Medians of single "
             f"calls with p20–p80; 'vs reference' = reference.py's median / this median; '× limit' = this median "
             f"/ the single-pass limit ({limit_kind}: one read of the logits, max + exp-sum per row).", "",
             markdown_table(results, [op.name for op in OPS])]
    if busy:
        # With every core taken, a multi-threaded op waits for descheduled threads (whole scheduler slices).
        parts[2:2] = ["", f"**Warning: the machine was busy (load {load:.1f} on {os.cpu_count()} cores): timings are "
                      f"inflated, multi-threaded ones often to multiples of the scheduler slice. Rerun on an idle "
                      f"machine, or with --threads 1 for steadier (single-core) numbers.**"]
    if device.type == "cpu":
        parts += ["", "### Targets (issues 2 and 6, fp32)", *target_lines(results)]
        if headline := headline_table(results):
            parts += ["", "### sample(T=0.8, k=50, p=0.9), V=128256", headline]
    if skipped:
        parts += ["", "Providers not available here: " + "; ".join(f"{p} ({why})" for p, why in skipped.items())]
    if failures:
        parts += ["", "Cases that failed:", *(f"- {f}" for f in failures)]
    return "\n".join(parts) + "\n"


def _write(results, text: str, device, description, commit, date, out: Path, plot: bool) -> list[str]:
    """Writes <device>.md, appends to <device>.csv, redraws <device>.png; returns what it wrote or skipped."""
    slug = device_slug(device)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{slug}.md").write_text(text)
    append_csv(out / f"{slug}.csv", csv_rows(results, description, commit, date))
    notes = [f"wrote {out / slug}.md", f"appended {len(results)} rows to {out / slug}.csv"]
    if plot:
        try:
            from .plot import plot_csv

            if png := plot_csv(out / f"{slug}.csv", out / f"{slug}.png"):
                notes.append(f"wrote {png}")
        except Exception as exc:  # matplotlib missing or broken: the table and CSV still stand
            notes.append(f"plot skipped: {type(exc).__name__}: {exc}")
    return notes


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    try:
        ops, wanted, shapes = _select_ops(_split(args.ops)), _select_providers(_split(args.providers)), \
            _shapes(args, device)
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    reasons = availability(device)
    providers = [p for p in wanted if reasons[p] is None]
    skipped = {p: reasons[p] for p in wanted if reasons[p] is not None}
    if args.list:
        print("ops:\n" + "\n".join(f"  {op.name}  [{op.family}]: {', '.join(op.impls)}" for op in OPS))
        print("providers:\n" + "\n".join(f"  {p}: {reasons[p] or 'available'}" for p in ALL))
        return 0
    torch.manual_seed(0)
    load = os.getloadavg()[0] if device.type == "cpu" and hasattr(os, "getloadavg") else None
    threads = torch.get_num_threads()
    start = time.perf_counter()
    try:  # restore the thread count: main() also runs inside other processes (the test suite)
        torch.set_num_threads(args.threads or threads)
        description = device_description(device)
        n_cases = sum(len(_cases(s, ops, providers)) for s in shapes)
        print(f"bench: {len(shapes)} shapes x {len(ops)} ops on {description}: {n_cases} cases, "
              f"providers {', '.join(providers)}", file=sys.stderr)
        with torch.inference_mode():
            results, failures = _run(shapes, ops, providers, device, args.min_time)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    fill_speedups(results)
    commit, date = git_commit(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    text = _document(results, failures, skipped, device, description, commit, date, seconds, load)
    print(text)
    print("\n".join(_write(results, text, device, description, commit, date, args.out, not args.no_plot)),
          file=sys.stderr)
    return 0 if results else 1
