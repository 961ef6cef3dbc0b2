"""FlashInfer's frequency-test workload through ``indices``: 5,000,000 draws from one row of V = 128256.

    python -m bench.flashinfer_indices [--draws N] [--vocab V] [--write]

Times each fastsample.flashinfer sampler on that call (median of --repeats runs, first run excluded) and the
process's peak resident-memory growth over the whole run; prints a markdown table and, with --write, writes
it to bench/results/flashinfer-indices.md. Like the rest of bench/, it records and never asserts.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from fastsample import _ops
from fastsample import flashinfer as fi

RESULTS = Path(__file__).resolve().parent / "results" / "flashinfer-indices.md"
CALLS = {
    "sampling_from_probs": lambda p, idx: fi.sampling_from_probs(p, idx, seed=1, offset=0),
    "top_p_sampling_from_probs(0.9)": lambda p, idx: fi.top_p_sampling_from_probs(p, 0.9, idx, seed=1, offset=0),
    "top_k_sampling_from_probs(100)": lambda p, idx: fi.top_k_sampling_from_probs(p, 100, idx, seed=1, offset=0),
    "sampling_from_logits": lambda p, idx: fi.sampling_from_logits(p.log(), idx, seed=1, offset=0),
}


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _status_kib(key: str) -> int:
    """A memory line of /proc/self/status in KiB (VmRSS now, VmHWM the peak since the last reset)."""
    return int(re.search(key + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=5_000_000)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(42)
    probs = torch.softmax(torch.randn(1, args.vocab), dim=-1)
    indices = torch.zeros(args.draws, dtype=torch.int32)  # as FlashInfer's test_sampling_freq
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS, so the peak below is this run's
    before = _status_kib("VmRSS")
    rows = []
    for name, call in CALLS.items():
        times = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            call(probs, indices)
            times.append(time.perf_counter() - start)
        rows.append(f"| {name} | {statistics.median(times[1:]):.2f} | {min(times[1:]):.2f} |")
    growth = (_status_kib("VmHWM") - before) / 1024
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [f"# {args.draws:,} draws from one row through `indices`, V = {args.vocab}",
             "",
             f"{_cpu_name()}, {torch.get_num_threads()} threads, CPU ISA path "
             f"`{torch.ops.fastsample_cpu.isa() if _ops.AVAILABLE else 'none'}`; commit {commit}, "
             f"{datetime.now(timezone.utc):%Y-%m-%d}, load average {os.getloadavg()[0]:.1f} (a shared machine). "
             f"Peak resident-memory growth over all calls: {growth:.0f} MiB "
             f"(a copy of the rows would be {args.draws * args.vocab * 4 / 2**30:,.0f} GiB).",
             "",
             "| call | median s | min s |", "|---|---|---|", *rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
