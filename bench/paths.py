"""`python -m bench.paths [--paths avx512,avx2,generic] [--reps N]`: the CPU ops of the issue targets on each
vector path this CPU has (csrc/cpu/isa.h), one thread, B = 32, V = 128256, flat float32 logits, in ms of the
calling thread's CPU time (the lower quartile of N calls): on a shared machine, CPU time and a low quantile
move far less with the other load than wall time does. Every path runs in the same process, switched with
torch.ops.fastsample_cpu.set_isa, so their rows compare; the last column is top-p alone over the single
pass."""
from __future__ import annotations

import argparse
import time

import torch

import fastsample
import fastsample._C  # noqa: F401  (registers torch.ops.fastsample_cpu)

from .common import Shape
from .inputs import make_logits

OPS = {
    "single pass (logsumexp)": lambda x: torch.ops.fastsample.logsumexp(x),
    "softmax(T=0.8)": lambda x: fastsample.softmax(x, 0.8, backend="cpu"),
    "top_k(k=50)": lambda x: fastsample.top_k(x, 50, backend="cpu"),
    "sample(T=0.8,k=50,p=0.9)": lambda x: fastsample.sample(x, temperature=0.8, top_k=50, top_p=0.9, backend="cpu"),
    "sample(T=0.8,p=0.9)": lambda x: fastsample.sample(x, temperature=0.8, top_p=0.9, backend="cpu"),
    "sample(T=0.8)": lambda x: fastsample.sample(x, temperature=0.8, backend="cpu"),
}


def cpu_ms(fn, x: torch.Tensor, reps: int) -> float:
    fn(x)  # warm-up
    times = []
    for _ in range(reps):
        start = time.thread_time()
        fn(x)
        times.append(time.thread_time() - start)
    return 1e3 * sorted(times)[len(times) // 4]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--paths", default="avx512,avx2,neon,generic")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)  # also the CPU kernels' OpenMP threads: all the work on this thread
    x = make_logits(Shape(32, 128256, "flat", torch.float32), torch.device("cpu"))
    ops = torch.ops.fastsample_cpu
    default = ops.isa()
    print("| path | " + " | ".join(OPS) + " | top-p / single pass |")
    print("|---" * (len(OPS) + 2) + "|")
    try:
        for path in args.paths.split(","):
            if ops.set_isa(path) != path:
                continue  # this CPU lacks it
            ms = [cpu_ms(fn, x, args.reps) for fn in OPS.values()]
            print(f"| `{path}` | " + " | ".join(f"{t:.2f}" for t in ms) + f" | {ms[4] / ms[0]:.2f}x |", flush=True)
    finally:
        ops.set_isa(default)


if __name__ == "__main__":
    main()
