"""Shared benchmark helpers: the op/case records, timing, the progress bar, device and commit names.

Every op module (softmax.py, topk.py, ...) describes its ops as `BenchOp`s; run.py times each (op, provider,
shape) `Case` with `measure` and hands the `Result`s to report.py.
"""
from __future__ import annotations

import math
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Shape:
    batch: int
    vocab: int
    dist: str  # "flat" or "peaked", see inputs.py
    dtype: torch.dtype

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


@dataclass
class BenchOp:
    """One benchmarked operation: `prepare(logits)` builds its inputs once per shape, and each provider's
    entry of `impls` maps those inputs to a zero-argument callable (the thing that gets timed)."""

    name: str  # the label in tables and CSV rows, e.g. "sample(T=0.8,k=50,p=0.9)"
    family: str  # the module it comes from (softmax, topk, topp, sampling, speculative)
    prepare: Callable[[torch.Tensor], dict]
    impls: dict[str, Callable[[dict], Callable[[], object]]] = field(default_factory=dict)
    probs_only: bool = False  # consumes probabilities (float32), so bf16 logits do not apply


SLOW_CALL_S = 0.2


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    times_ms: list[float] = field(default_factory=list, repr=False)  # the sorted single-call times


def timing_of(times_ms: list[float]) -> Timing:
    """Median, p20/p80 and count of single-call times."""
    times = sorted(times_ms)
    return Timing(_quantile(times, 0.5), _quantile(times, 0.2), _quantile(times, 0.8), len(times), times)


def pooled(*timings: Timing) -> Timing:
    """One Timing from the calls of several measurements of the same thing."""
    return timing_of([t for timing in timings for t in timing.times_ms])


# ------------------------------------------------------------------------------------------------ timing
def _quantile(sorted_values: list[float], q: float) -> float:
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def measure(fn: Callable[[], object], device: torch.device, min_time_s: float = 0.3, min_reps: int = 5,
            max_reps: int = 300) -> Timing:
    """Median and p20/p80 of single-call times in ms.

    Warm-up runs at least twice (first-call allocations, lazy inits, caches) and for a quarter of `min_time_s`
    (CPU frequency, allocator pools). Then calls are timed one at a time until both `min_reps` and
    `min_time_s` are reached, so that fast ops get many samples. A call slower than SLOW_CALL_S (the
    sort-based baselines at large B) gets one warm-up call and 3 timed ones: enough for a median compared
    with ops tens of times faster, and it keeps the suite short.

    On CUDA each call is bracketed by events and the stream is synchronised only every 32 calls: the events
    give device time, which still includes the host overhead whenever the host (argument checks, launches)
    is slower than the kernels, as in a decode loop.
    """
    cuda = device.type == "cuda"
    warmup_s = min_time_s / 4
    start = time.perf_counter()
    for i in range(1000):
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        if i == 0 and elapsed >= SLOW_CALL_S:  # a slow baseline: its first call was warm-up enough
            min_reps = min(min_reps, 3)
            break
        if i >= 1 and elapsed >= warmup_s:
            break
    times: list[float] = []
    events = []
    start = time.perf_counter()
    while len(times) + len(events) < max_reps:
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            events.append((begin, end))
            if len(events) % 32 == 0:  # bound the queue; sync rarely so timings stay back-to-back
                torch.cuda.synchronize(device)
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        done = len(times) + len(events)
        if done >= min_reps and time.perf_counter() - start >= min_time_s:
            break
    if cuda:
        torch.cuda.synchronize(device)
        times = [b.elapsed_time(e) for b, e in events]
    return timing_of(times)


# ------------------------------------------------------------------------------------------- progress bar
class Progress:
    """A one-line progress bar on stderr; on a non-terminal it prints a line every 10% instead of redrawing."""

    def __init__(self, total: int, width: int = 28, stream=sys.stderr):
        self.total, self.width, self.stream = max(total, 1), width, stream
        self.done, self.start, self.tty = 0, time.perf_counter(), stream.isatty()
        self._last_decile = -1

    def step(self, label: str) -> None:
        self.done += 1
        frac = self.done / self.total
        elapsed = time.perf_counter() - self.start
        eta = elapsed / frac - elapsed
        filled = int(frac * self.width)
        line = (f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
                f"{elapsed:5.0f}s elapsed, ~{eta:4.0f}s left  {label}")
        if self.tty:
            self.stream.write("\r" + line[:150].ljust(150))
            self.stream.flush()
        elif int(frac * 10) != self._last_decile:
            self._last_decile = int(frac * 10)
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ------------------------------------------------------------------------------------- device and commit
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: torch.device) -> str:
    """What the CSV's device column holds: the model and the parallelism the run had."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{cpu_model()}, {threads} thread{'s' if threads != 1 else ''}"


def device_slug(device: torch.device) -> str:
    """The results file stem: `cpu` for every CPU (the device column tells machines apart), else the GPU
    model, lower-case with dashes (e.g. nvidia-h100-80gb-hbm3)."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    return "-".join("".join(c if c.isalnum() else " " for c in name).split())


def git_commit() -> str:
    """Short commit of the checkout, with -dirty when tracked files differ from it (then the numbers may
    not belong to that commit)."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=10"], cwd=REPO,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
