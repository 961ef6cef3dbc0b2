"""Sampling n outputs from R rows through a row map (FlashInfer's ``indices``) without copying rows.

Output i draws from row ``indices[i]`` of x. When outputs outnumber rows (FlashInfer's frequency tests draw
5,000,000 times from one row; serving stacks draw n samples per prompt), gathering ``x[indices]`` would copy
n x V values. Here the outputs are grouped by (row, filter parameters): each group's kept weights and their
float64 prefix sums are built once, a few groups at a time, and every output inverts its group's CDF with its
own uniform. Memory: O(n) for the result and the group ids, plus a bounded block of CDF rows; time:
O(groups x V + n log V).

Random numbers (docs/design.md section 4): output i uses draw j = 0 of its own (seed_i, offset_i), the pair it
would get as row i of a batch of n; so output i's token is the token ``sample`` gives for the copied row
``x[indices[i]]`` (up to rounding within a CDF step), whatever the other outputs are, and it is reproducible
output by output.
"""
from __future__ import annotations

from typing import Callable, Union

import torch

from . import _ops
from .backends import resolve_backend
from .reference import philox_uniform

Tensor = torch.Tensor
Param = Union[Tensor, int, float]
CDF_ENTRIES = 1 << 20  # float64 CDF values held at once (8 MB), whatever the number of groups
OUTPUT_BLOCK = 1 << 18  # outputs handled at once: bounds the per-output temporaries


def sample_indexed(x: Tensor, indices: Tensor, params: dict[str, Param],
                   weights: Callable[[Tensor, dict[str, Param]], Tensor], seed: Tensor, offset: Tensor,
                   offset_step: int) -> Tensor:
    """One token per output from the kept weights of its row.

    Parameters
    ----------
    x : Tensor [R, V], the rows (logits or probabilities: ``weights`` knows which).
    indices : Tensor [n] int32 or int64, each in [0, R) (checked by the caller).
    params : filter parameters, each a scalar or a tensor [n] (one value per output).
    weights : ``weights(rows [g, V], group_params)`` -> float32 [g, V] kept weights, all zeros on an invalid
        row; ``group_params`` has the scalars as given and the tensors as one value per row of ``rows``.
    seed, offset : Tensor int64 [1] or [n]; output i uses seed[i] (or seed[0]) and offset[i], or
        offset[0] + offset_step * i when offset is [1].

    Returns
    -------
    Tensor [n] int64 token ids, -1 where the row has no valid token.
    """
    group_rows, group_params, group_of = _groups(x.shape[0], indices, params)
    per_block = max(1, CDF_ENTRIES // x.shape[1])
    draw = _draw_cpu if x.device.type == "cpu" and _ops.AVAILABLE and resolve_backend(x) != "torch" else _draw_torch
    tokens = torch.empty(indices.shape[0], dtype=torch.int64, device=x.device)
    for g0 in range(0, group_rows.shape[0], per_block):
        g1 = min(g0 + per_block, group_rows.shape[0])
        block_params = {k: v[g0:g1] if isinstance(v, Tensor) else v for k, v in group_params.items()}
        cdf = weights(x.index_select(0, group_rows[g0:g1]), block_params).to(torch.float64).cumsum(dim=1)
        for start in range(0, indices.shape[0], OUTPUT_BLOCK):
            stop = min(start + OUTPUT_BLOCK, indices.shape[0])
            group = group_of(start, stop)
            if g0 == 0 and g1 == group_rows.shape[0]:  # every group is in this block
                pos, seed_at, offset_at, step = None, *_rng_slice(seed, offset, offset_step, start, stop), offset_step
            else:  # host sync: the outputs of this block's groups
                pos = ((group >= g0) & (group < g1)).nonzero().squeeze(1)
                if pos.numel() == 0:
                    continue
                group = group[pos]
                seed_at, offset_at = _rng_at(seed, offset, offset_step, start + pos)
                step = 0
            drawn = draw(cdf, group - g0, seed_at, offset_at, step)
            if pos is None:
                tokens[start:stop] = drawn
            else:
                tokens[start + pos] = drawn
    return tokens


def _groups(rows: int, indices: Tensor, params: dict[str, Param]):
    """(group rows [G], group params, group_of(start, stop) -> group ids of those outputs).

    With scalar parameters a group is a row: a per-row table maps outputs to groups a block at a time (no
    n-sized temporaries). Per-output parameter tensors split a row's outputs by their values (torch.unique
    over the (row, parameter bits) keys).
    """
    tensors = {k: v for k, v in params.items() if isinstance(v, Tensor)}
    if not tensors:
        used = torch.zeros(rows, dtype=torch.bool, device=indices.device)
        used[indices] = True
        group_rows = used.nonzero().squeeze(1)
        table = torch.full((rows,), -1, dtype=torch.int64, device=indices.device)
        table[group_rows] = torch.arange(group_rows.shape[0], device=indices.device)
        return group_rows, dict(params), lambda start, stop: table[indices[start:stop]]
    # Float parameters take part by their bits, so equal values group together and NaN is one value.
    columns = [indices.to(torch.int64)] + [v.view(torch.int32).to(torch.int64) if v.dtype == torch.float32 else v
                           for v in tensors.values()]
    keys, group = torch.unique(torch.stack(columns, dim=1), dim=0, return_inverse=True)
    group_params = dict(params)
    for i, (name, value) in enumerate(tensors.items(), start=1):
        column = keys[:, i]
        group_params[name] = column.to(torch.int32).view(torch.float32) if value.dtype == torch.float32 else column
    return keys[:, 0], group_params, lambda start, stop: group[start:stop]


def _rng_slice(seed: Tensor, offset: Tensor, step: int, start: int, stop: int) -> tuple[Tensor, Tensor]:
    """seed and offset of outputs [start, stop), still [1] where the input is [1] (the op adds step * i)."""
    per_output = lambda t: t.shape[0] != 1  # noqa: E731
    seed_at = seed[start:stop] if per_output(seed) else seed
    offset_at = offset[start:stop] if per_output(offset) else offset + step * start
    return seed_at, offset_at


def _rng_at(seed: Tensor, offset: Tensor, step: int, outputs: Tensor) -> tuple[Tensor, Tensor]:
    """seed and offset of the outputs ``outputs`` (int64 positions), offsets made explicit."""
    seed_at = seed[outputs] if seed.shape[0] != 1 else seed
    offset_at = offset[outputs] if offset.shape[0] != 1 else offset + step * outputs
    return seed_at, offset_at


def _draw_cpu(cdf: Tensor, group: Tensor, seed: Tensor, offset: Tensor, step: int) -> Tensor:
    return _ops.draw_from_cdfs(cdf, group, seed, offset, step)


def _draw_torch(cdf: Tensor, group: Tensor, seed: Tensor, offset: Tensor, step: int) -> Tensor:
    """The op draw_from_cdfs in torch ops (any device): the smallest t with cdf[group, t] > u * total."""
    n, vocab = group.shape[0], cdf.shape[1]
    position = torch.arange(n, dtype=torch.int64, device=cdf.device)
    u = philox_uniform(seed, offset + step * position, 0)
    total = cdf[:, -1][group]
    target = u.to(torch.float64) * total
    flat, base = cdf.reshape(-1), group * vocab
    lo, hi = torch.zeros_like(group), torch.full_like(group, vocab)
    for _ in range(vocab.bit_length()):  # halves [lo, hi], V + 1 candidates
        mid = (lo + hi) // 2
        right = flat[base + mid.clamp(max=vocab - 1)] <= target
        lo, hi = torch.where(right & (lo < hi), mid + 1, lo), torch.where(right, hi, mid)
    return torch.where(torch.isfinite(total) & (total > 0), lo, -1)
