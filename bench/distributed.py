"""`python -m bench.distributed`: vocab-parallel sampling (fastsample.distributed) against gathering the logits.

Spawns W ranks (default 2) that each hold [B, V / W] of the same logits and times, per call, with every rank
in lock-step:

- ``fastsample.distributed``: `fastsample.distributed.sample` (a fixed number of small collectives);
- ``gather+sample+broadcast``: gather the slices on rank 0, `fastsample.sample` there, broadcast the tokens;
- ``all_gather+torch``: all-gather the full logits to every rank, then pure-torch sampling (fastsample's
  `torch` backend: sort + cumsum + searchsorted) on each rank.

``--baseline MODULE`` adds a provider ``MODULE`` (a package with the same `sample`, e.g. a copy of an earlier
fastsample/distributed placed at fastsample/_distributed_before) and ``--interleave`` times the providers of
a case call by call in turn (the fair comparison on a shared, loaded machine).

Bytes sent per rank are counted from the payloads each provider hands to its collectives (the maximum over
ranks, per call) with a ring model: an all-gather of n bytes per rank sends (W - 1) * n from each rank, an
all-reduce of n bytes 2 * (W - 1) / W * n, a gather n from each non-root rank, a broadcast (W - 1) * n from
the root. Results are printed as a markdown table and written to bench/results/distributed-<device>.md/.csv.

GPUs: with at least W CUDA devices the script uses NCCL and rank r's logits live on cuda:r (or pass
``--backend nccl``); nothing else changes: the same providers, the same collectives.
"""
from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastsample
import fastsample.distributed as fsd
from fastsample.distributed import _exchange

from .common import REPO, Shape, device_description, git_commit, timing_of
from .inputs import make_logits

VOCAB = 128256
BATCHES = (1, 32, 256)
OPS = {  # label -> sample keyword arguments
    "sample(T=1)": {},
    "sample(T=0.8,p=0.9)": {"temperature": 0.8, "top_p": 0.9},
    "sample(T=0.8,k=50,p=0.9,min_p=0.05)": {"temperature": 0.8, "top_k": 50, "top_p": 0.9, "min_p": 0.05},
    # sample_stack: a grammar mask, 64 output ids with repetition/frequency penalties, filters, logprobs + top-5.
    "sample_stack(mask,penalties,T=0.8,k=50,p=0.9,logprobs,top5)": {
        "stack": True, "repetition_penalty": 1.1, "frequency_penalty": 0.2, "temperature": 0.8, "top_k": 50,
        "top_p": 0.9, "logprobs": "processed", "top_logprobs": 5},
}


def _stack_kwargs(kwargs: dict, batch: int, vocab: int, device) -> dict:
    """The stack case's full arguments (the same on every rank): mask words and ids in global ids."""
    gen = torch.Generator().manual_seed(batch)
    mask = torch.randint(-2**31, 2**31 - 1, (batch, (vocab + 31) // 32), generator=gen, dtype=torch.int64)
    out = {k: v for k, v in kwargs.items() if k != "stack"}
    out["allowed_mask"] = (mask | 0x0F0F0F0F).to(torch.int32).to(device)  # ~60% of tokens allowed
    out["output_ids"] = torch.randint(0, vocab, (batch, 64), generator=gen).to(device)
    return out
PROVIDERS = ("fastsample.distributed", "gather+sample+broadcast", "all_gather+torch")


# -------------------------------------------------------------------------------------- byte accounting
class ByteCounter:
    """Bytes one rank sends per call under the ring model of the module docstring."""

    def __init__(self, world: int):
        self.world, self.sent, self.collectives = world, 0, 0

    def all_gather(self, n: int):
        self.sent += (self.world - 1) * n
        self.collectives += 1

    def all_reduce(self, n: int):
        self.sent += 2 * (self.world - 1) * n // self.world
        self.collectives += 1


def _count_fastsample(counter: ByteCounter, exchange=_exchange):
    """Wrap fastsample.distributed's collective helpers so that every payload is counted."""
    gather, reduce = exchange.all_gather, exchange.all_reduce_sum

    def counted_gather(group, t):
        counter.all_gather(t.numel() * t.element_size())
        return gather(group, t)

    def counted_reduce(group, t):
        counter.all_reduce(t.numel() * t.element_size())
        return reduce(group, t)

    exchange.all_gather, exchange.all_reduce_sum = counted_gather, counted_reduce


# --------------------------------------------------------------------------------------------- providers
def _providers(x: torch.Tensor, kwargs: dict, rank: int, world: int, counter: ByteCounter, baseline=None):
    """label -> zero-argument callable for this rank's slice x (every rank calls the same ones in order)."""
    batch, local_vocab = x.shape
    if kwargs.get("stack"):
        return _stack_providers(x, _stack_kwargs(kwargs, batch, vocab_of(x, world), x.device), rank, world, counter)

    def distributed():
        return fsd.sample(x, **kwargs, seed=1)

    def gather_sample_broadcast():
        parts = [torch.empty_like(x) for _ in range(world)] if rank == 0 else None
        dist.gather(x, parts, dst=0)
        tokens = fastsample.sample(torch.cat(parts, dim=1), **kwargs, seed=1) if rank == 0 else \
            torch.empty(batch, dtype=torch.int64, device=x.device)
        dist.broadcast(tokens, src=0)
        counter.sent += x.numel() * x.element_size() if rank != 0 else (world - 1) * tokens.numel() * 8
        counter.collectives += 2
        return tokens

    def all_gather_torch():
        full = torch.empty(world * batch, local_vocab, dtype=x.dtype, device=x.device)
        _exchange._all_gather_single(full, x)
        full = full.view(world, batch, local_vocab).permute(1, 0, 2).reshape(batch, -1)
        counter.all_gather(x.numel() * x.element_size())
        return fastsample.sample(full, **kwargs, seed=1, backend="torch")

    providers = dict(zip(PROVIDERS, (distributed, gather_sample_broadcast, all_gather_torch)))
    if baseline is not None:
        providers[baseline.__name__] = lambda: baseline.sample(x, **kwargs, seed=1)
    return providers


def vocab_of(x: torch.Tensor, world: int) -> int:
    sizes = torch.tensor([x.shape[1]], device=x.device)
    out = torch.empty(world, dtype=sizes.dtype, device=x.device)
    _exchange._all_gather_single(out, sizes)
    return int(out.sum())


def _stack_providers(x: torch.Tensor, kwargs: dict, rank: int, world: int, counter: ByteCounter):
    """The providers of the stack case: fastsample.distributed.sample_stack, and fastsample.sample_stack
    after a gather (rank 0, then broadcast) or an all-gather (the torch backend)."""
    batch, local_vocab = x.shape

    def distributed():
        return fsd.sample_stack(x, **kwargs, seed=1).tokens

    def gather_sample_broadcast():
        parts = [torch.empty_like(x) for _ in range(world)] if rank == 0 else None
        dist.gather(x, parts, dst=0)
        tokens = fastsample.sample_stack(torch.cat(parts, dim=1), **kwargs, seed=1).tokens if rank == 0 else \
            torch.empty(batch, dtype=torch.int64, device=x.device)
        dist.broadcast(tokens, src=0)
        counter.sent += x.numel() * x.element_size() if rank != 0 else (world - 1) * tokens.numel() * 8
        counter.collectives += 2
        return tokens

    def all_gather_torch():
        full = torch.empty(world * batch, local_vocab, dtype=x.dtype, device=x.device)
        _exchange._all_gather_single(full, x)
        full = full.view(world, batch, local_vocab).permute(1, 0, 2).reshape(batch, -1)
        counter.all_gather(x.numel() * x.element_size())
        return fastsample.sample_stack(full, **kwargs, seed=1, backend="torch").tokens

    return dict(zip(PROVIDERS, (distributed, gather_sample_broadcast, all_gather_torch)))


def _time(fn, device, reps: int, warmup: int = 3) -> list[float]:
    """Per-call times in ms; a fixed number of calls, so that every rank makes the same collectives."""
    return _time_each([fn], device, reps, warmup)[0]


def _time_each(fns, device, reps: int, warmup: int = 3) -> list[list[float]]:
    """Per-call times in ms of each of fns, called in turn (fn 0, fn 1, ..., fn 0, ...), so that a change of
    load on a shared machine hits them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, out in zip(fns, times):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            out.append((time.perf_counter() - start) * 1e3)
    return times


def _rank_main(rank: int, world: int, backend: str, init_file: str, args, out: str) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=600))
    counter = ByteCounter(world)
    _count_fastsample(counter)
    baseline = None
    if args.baseline:
        import importlib

        baseline = importlib.import_module(args.baseline)
        _count_fastsample(counter, importlib.import_module(args.baseline + "._exchange"))
    rows = []
    for batch in args.batches:
        for dist_name in args.dists:
            vocab = args.vocab
            full = make_logits(Shape(batch, vocab, dist_name, torch.float32), device, seed=batch)
            size = vocab // world
            x = full[:, rank * size:(rank + 1) * size if rank < world - 1 else vocab].contiguous()
            for op, kwargs in OPS.items():
                if args.ops and not any(part in op for part in args.ops):
                    continue
                results, counted, first = {}, {}, len(rows)
                providers = {name: fn for name, fn in _providers(x, kwargs, rank, world, counter, baseline).items()
                             if name in args.providers or name == args.baseline}
                for provider, fn in providers.items():
                    counter.sent = counter.collectives = 0
                    results[provider] = fn()  # one counted call
                    counted[provider] = counter.sent, counter.collectives
                reps = args.reps if batch < 8 else max(5, args.reps // 3)
                if args.interleave:
                    times = _time_each(list(providers.values()), device, reps)
                else:
                    times = [_time(fn, device, reps) for fn in providers.values()]
                for provider, samples in zip(providers, times):
                    timing = timing_of(samples)
                    rows.append({"op": op, "provider": provider, "W": world, "B": batch, "V": vocab,
                                 "dist": dist_name, "median_ms": timing.median_ms, "p20_ms": timing.p20_ms,
                                 "p80_ms": timing.p80_ms, "reps": timing.reps, "bytes_sent": counted[provider][0],
                                 "collectives": counted[provider][1]})
                if rank == 0:
                    exact = [r for name, r in results.items() if name != PROVIDERS[2]]  # torch: float32 steps
                    same = all(torch.equal(exact[0], r) for r in exact[1:])
                    for r in rows[first:]:
                        r["note"] = "" if same else "tokens differ"
    # Bytes: the maximum over ranks (rank 0 sends the broadcast, the others the gathered slices).
    sent = torch.tensor([r["bytes_sent"] for r in rows], dtype=torch.int64, device=device)
    dist.all_reduce(sent, op=dist.ReduceOp.MAX)
    if rank == 0:
        for r, s in zip(rows, sent.tolist()):
            r["bytes_sent"] = s
        torch.save(rows, out)
    dist.barrier()
    dist.destroy_process_group()


# -------------------------------------------------------------------------------------------------- report
def _fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB" if n >= 2**10 else f"{n} B"


def markdown(rows: list[dict]) -> str:
    lines = ["| op | B | dist | provider | median ms (p20-p80) | vs gather | bytes sent / rank | collectives |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = next((o for o in rows if (o["op"], o["B"], o["dist"]) == (r["op"], r["B"], r["dist"])
                     and o["provider"] == PROVIDERS[1]), r)
        lines.append(f"| {r['op']} | {r['B']} | {r['dist']} | {r['provider']} | {r['median_ms']:.3f} "
                     f"({r['p20_ms']:.3f}-{r['p80_ms']:.3f}) | {base['median_ms'] / r['median_ms']:.2f}x | "
                     f"{_fmt_bytes(r['bytes_sent'])} | {r['collectives']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.distributed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=int, default=2, help="ranks (default 2)")
    p.add_argument("--backend", choices=("gloo", "nccl"), help="default: nccl with >= W GPUs, else gloo")
    p.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=list(BATCHES))
    p.add_argument("--dists", type=lambda s: s.split(","), default=["flat", "peaked"])
    p.add_argument("--vocab", type=int, default=VOCAB, help=f"vocabulary size (default {VOCAB})")
    p.add_argument("--reps", type=int, default=30, help="timed calls per case at B = 1 (a third at B >= 8)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank (default 1)")
    p.add_argument("--providers", type=lambda s: s.split(","), default=list(PROVIDERS),
                   help="comma-separated subset of: " + ", ".join(PROVIDERS))
    p.add_argument("--ops", type=lambda s: s.split(","), default=None,
                   help="only the ops whose label contains one of these comma-separated strings")
    p.add_argument("--baseline", help="also time MODULE.sample (a package like fastsample.distributed)")
    p.add_argument("--interleave", action="store_true", help="time the providers of a case call by call in turn")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args(argv)
    backend = args.backend or ("nccl" if torch.cuda.device_count() >= args.world else "gloo")
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "rows.pt")
        mp.start_processes(_rank_main, args=(args.world, backend, os.path.join(tmp, "init"), args, result),
                           nprocs=args.world, join=True, start_method="spawn")
        rows = torch.load(result)
    device = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")
    torch.set_num_threads(args.threads)
    where = f"{device_description(device)} per rank, {args.world} ranks, {backend}"
    table = markdown(rows)
    print(f"fastsample.distributed, V = {args.vocab}, {where}\n\n{table}")
    if any(r.get("note") for r in rows):
        print("\nWARNING: fastsample.distributed and gather+sample gave different tokens in some case")
    slug = "cuda" if backend == "nccl" else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    commit, date = git_commit(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    (args.out / f"distributed-{slug}.md").write_text(f"{where}, commit {commit}, {date}\n\n{table}\n")
    path = args.out / f"distributed-{slug}.csv"
    fields = ["op", "provider", "W", "B", "V", "dist", "median_ms", "p20_ms", "p80_ms", "reps", "bytes_sent",
              "collectives", "device", "commit", "date"]
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        for r in rows:
            writer.writerow(dict(r, device=where, commit=commit, date=date))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
