"""tree_speculative_sampling alone: one call verifying a token tree of N nodes per row, V = 128256.

Inputs: the target's rows are softmax of Gaussian logits (scale 2); the draft's are the target's logits plus
Gaussian noise of scale DRAFT_NOISE, so that most children are accepted and some rejected (both paths of the
kernels run). The tree is breadth-first with BRANCHING children per node; children are drawn from the draft
(sampled mode, the heavier one: every rejection updates a full residual row).

Providers, each timed on the same inputs (bench.common.measure: median and p20/p80):
- the op on its backend (cpu: the C++ kernel; triton/cuda tensors: the Triton kernel),
- the torch reference (fastsample/reference_tree.py),
- N chain calls: what verifying the tree costs with only `chain_speculative_sampling`, one call of one
  draft position per node (the chain op cannot try siblings against a shared residual, so this is a cost
  baseline, not the same result).

Run: ``python -m bench.speculative_tree [--batches 1 8 32] [--nodes 8 32 64] [--vocab 128256]``; prints a
markdown table (bench/results/cpu-tree.md holds one run).
"""
from __future__ import annotations

import argparse

import torch

import fastsample

from .common import device_description, git_commit, measure

BRANCHING = 4
DRAFT_NOISE = 0.5


def _inputs(batch: int, nodes: int, vocab: int, device: torch.device) -> dict:
    gen = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(batch, nodes + 1, vocab, generator=gen, device=device) * 2
    target = torch.softmax(logits, dim=-1)
    parents = torch.tensor([(i // BRANCHING) - 1 for i in range(nodes)], device=device).expand(batch, nodes)
    at_parent = logits.gather(1, (parents + 1).unsqueeze(2).expand(batch, nodes, vocab))
    draft = torch.softmax(at_parent + DRAFT_NOISE * torch.randn(at_parent.shape, generator=gen, device=device), -1)
    del logits, at_parent
    ids = torch.multinomial(draft.view(-1, vocab), 1, generator=gen).view(batch, nodes)
    return {"ids": ids, "parents": parents.contiguous(), "target": target, "draft": draft}


def _chain_calls(d: dict) -> None:
    for i in range(d["ids"].shape[1]):
        fastsample.chain_speculative_sampling(d["draft"][:, i:i + 1], d["ids"][:, i:i + 1],
                                              d["target"][:, i:i + 2], seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--nodes", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device: {device_description(device)}; commit {git_commit()}; V = {args.vocab}; sampled tree, "
          f"branching {BRANCHING}")
    print("| B | N | tree op (ms) | torch reference (ms) | N chain calls (ms) | vs reference | vs chain calls "
          "| mean path |\n|---|---|---|---|---|---|---|---|")
    for batch in args.batches:
        for nodes in args.nodes:
            d = _inputs(batch, nodes, args.vocab, device)

            def op(backend=None):
                return fastsample.tree_speculative_sampling(d["ids"], d["parents"], d["target"], d["draft"], seed=0,
                                                            backend=backend)

            emitted = op()[2].double().mean().item()
            fast = measure(op, device, min_time_s=0.2, min_reps=3)
            ref = measure(lambda: op("torch"), device, min_time_s=0.2, min_reps=3)
            chain = measure(lambda: _chain_calls(d), device, min_time_s=0.2, min_reps=3)
            print(f"| {batch} | {nodes} | {fast.median_ms:.3g} | {ref.median_ms:.3g} | {chain.median_ms:.3g} | "
                  f"{ref.median_ms / fast.median_ms:.1f}x | {chain.median_ms / fast.median_ms:.1f}x | {emitted:.2f} |",
                  flush=True)
            del d


if __name__ == "__main__":
    main()
