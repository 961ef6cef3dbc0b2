"""Pure-torch tree speculative verification (docs/ops.md "tree_speculative_sampling"): the `torch` backend of
the tree ops, their baseline in bench/speculative.py, and the tree walk of `tree_greedy_verify` on every backend.

Both ops walk the nodes once in index order. Because every parent precedes its children, that order meets
each node's children in index order while the walk sits at that node, and the children of an accepted node
only after it: a node is tested iff its parent is the row's current node. One pass of N vectorised steps
over the batch, no host sync.
"""
from __future__ import annotations

import torch

from .reference import _inverse_cdf, philox_uniform

Tensor = torch.Tensor


def tree_rows_valid(draft_token_ids: Tensor, parents: Tensor) -> Tensor:
    """bool [B]: rows whose used nodes (token != -1) all have a parent in [-1, own index)."""
    index = torch.arange(parents.shape[1], device=parents.device)
    ok = ((parents >= -1) & (parents < index)) | (draft_token_ids == -1)
    return ok.all(dim=1)


def _bad(w: Tensor) -> Tensor:
    """bool [B]: rows holding a NaN, a negative or an infinite entry."""
    return (w.isnan() | (w < 0) | w.isinf()).any(dim=1)


class _Path:
    """The accepted path of each row while the walk runs: output tokens, node indices, depth."""

    def __init__(self, batch: int, n: int, device):
        self.output = torch.full((batch, n + 1), -1, dtype=torch.int64, device=device)
        self.nodes = torch.full((batch, n), -1, dtype=torch.int64, device=device)
        self.depth = torch.zeros(batch, dtype=torch.int64, device=device)
        self.position = torch.arange(n + 1, device=device).unsqueeze(0)

    def accept(self, passed: Tensor, node: int, token: Tensor) -> None:
        here = passed.unsqueeze(1) & (self.position == self.depth.unsqueeze(1))
        self.output = torch.where(here, token.unsqueeze(1), self.output)
        self.nodes = torch.where(here[:, :-1], node, self.nodes)
        self.depth += passed.to(torch.int64)

    def finish(self, final: Tensor, valid_rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        here = self.position == self.depth.unsqueeze(1)
        output = torch.where(here, final.unsqueeze(1), self.output)
        invalid = ~valid_rows.unsqueeze(1)
        return (output.masked_fill(invalid, -1), self.nodes.masked_fill(invalid, -1),
                self.depth.masked_fill(~valid_rows, 0))


def tree_speculative_sampling(draft_token_ids: Tensor, parents: Tensor, target_probs: Tensor,
                              draft_probs: Tensor | None, seed: Tensor,
                              offset: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(output_token_ids [B, N + 1], accepted_nodes [B, N], emitted_num [B]); arguments as checked by
    fastsample.speculative. The residual at the current node is w / mass (float64, as the oracle keeps it)."""
    batch, n = draft_token_ids.shape
    vocab = target_probs.shape[2]
    device = target_probs.device
    u = philox_uniform(seed.unsqueeze(1), offset.unsqueeze(1), torch.arange(n + 1, device=device)).to(torch.float64)
    valid_rows = tree_rows_valid(draft_token_ids, parents)
    path = _Path(batch, n, device)
    cur = torch.full((batch,), -1, dtype=torch.int64, device=device)
    w = target_probs[:, 0].to(torch.float64)
    mass = torch.ones(batch, dtype=torch.float64, device=device)
    for i in range(n):
        token = draft_token_ids[:, i].to(torch.int64)
        in_range = (token >= 0) & (token < vocab)
        safe = token.clamp(0, vocab - 1).unsqueeze(1)
        tested = valid_rows & (token != -1) & (parents[:, i] == cur)
        w_t = w.gather(1, safe).squeeze(1)
        if draft_probs is None:
            lhs = u[:, i] * mass
        else:
            q = draft_probs[:, i].to(torch.float64)
            lhs = u[:, i] * q.gather(1, safe).squeeze(1) * mass
        passed = tested & in_range & (lhs < w_t)  # a NaN compares False: rejected
        rejected = tested & ~passed
        if draft_probs is None:  # r <- norm(r without the token)
            drop = rejected & in_range
            mass = torch.where(drop, mass - w_t, mass)
            w = torch.where(drop.unsqueeze(1), w.scatter(1, safe, 0.0), w)
        else:  # r <- norm(max(r - q, 0)); a residual of zero mass leaves r as it was; bad rows turn all-NaN
            residual = (w / mass.unsqueeze(1) - q).clamp(min=0)
            residual_mass = residual.sum(dim=1)
            bad = _bad(w) | _bad(q)
            update = rejected & (residual_mass > 0) & ~bad
            w = torch.where(update.unsqueeze(1), residual, w)
            mass = torch.where(update, residual_mass, mass)
            w = torch.where((rejected & bad).unsqueeze(1), float("nan"), w)
        path.accept(passed, i, token)
        cur = torch.where(passed, i, cur)
        w = torch.where(passed.unsqueeze(1), target_probs[:, i + 1].to(torch.float64), w)
        mass = torch.where(passed, 1.0, mass)
    drawable = ~_bad(w) & (w.sum(dim=1) > 0)
    final, _ = _inverse_cdf(w.nan_to_num(0.0).clamp(min=0), u[:, n])
    return path.finish(torch.where(drawable, final, -1), valid_rows)


def tree_greedy_walk(draft_token_ids: Tensor, parents: Tensor, best: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`tree_greedy_verify` given the target's argmax at every node, best [B, N + 1] (-1 on invalid rows):
    the longest root path of tokens equal to the argmax at their parent (the first such child on
    duplicates), then the argmax after it."""
    batch, n = draft_token_ids.shape
    valid_rows = tree_rows_valid(draft_token_ids, parents)
    path = _Path(batch, n, best.device)
    cur = torch.full((batch,), -1, dtype=torch.int64, device=best.device)
    for i in range(n):
        token = draft_token_ids[:, i].to(torch.int64)
        want = best.gather(1, (cur + 1).unsqueeze(1)).squeeze(1)
        passed = valid_rows & (token >= 0) & (parents[:, i] == cur) & (token == want)
        path.accept(passed, i, token)
        cur = torch.where(passed, i, cur)
    return path.finish(best.gather(1, (cur + 1).unsqueeze(1)).squeeze(1), valid_rows)
