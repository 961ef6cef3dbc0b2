"""The inverse-CDF draw shared by sampling.py and speculative.py (docs/ops.md "sample").

A row's token is the smallest id i with w_i > 0 and sum_{k <= i} w_k > u * W (ascending ids), W the row's total
weight. The row is cut into chunks (launch.py); one program per chunk. ``chunk_owner`` gives each program the
float64 mass before and up to its chunk from the per-chunk masses; every program rebuilds the same inclusive
prefix, so exactly one chunk's program sees below <= u * W < upto and walks its chunk: ``walk_start``, then
``walk_block`` per block, then ``walk_token``.
"""
from __future__ import annotations

import triton.language as tl

from .jit import helper


@helper
def chunk_owner(chunk_mass, c, C, C_PAD: tl.constexpr):
    """(W, mass of the chunks before c, mass of the chunks up to and including c) per row, from the float64
    per-chunk masses [R, C_PAD] (0 beyond C)."""
    cs = tl.arange(0, C_PAD)
    incl = tl.cumsum(chunk_mass, 1)
    total = tl.sum(tl.where(cs[None, :] == C - 1, incl, 0.0), 1)
    below = tl.sum(tl.where(cs[None, :] == c - 1, incl, 0.0), 1)
    upto = tl.sum(tl.where(cs[None, :] == c, incl, 0.0), 1)
    return total, below, upto


@helper
def walk_start(below, R: tl.constexpr):
    """The walk's state before a chunk's first block: (running mass = ``below``, token = -1, last = -1)."""
    return below, tl.full((R,), -1, tl.int64), tl.full((R,), -1, tl.int64)


@helper
def walk_block(w, offs, end, target, running, token, last):
    """One [R, BLOCK] step of the walk over a chunk ending at ``end``: ``running`` is the mass before the block,
    ``token`` the first id found so far (-1: none yet), ``last`` the last id with w > 0 (the answer when
    rounding leaves the chunk's sum just short of the target). Returns the updated (running, token, last)."""
    cum = running[:, None] + tl.cumsum(w, 1)
    first = tl.min(tl.where((cum > target[:, None]) & (w > 0), offs[None, :], end), 1).to(tl.int64)
    token = tl.where((token < 0) & (first < end), first, token)
    last = tl.maximum(last, tl.max(tl.where(w > 0, offs[None, :], -1), 1).to(tl.int64))
    return tl.max(cum, 1), token, last


@helper
def walk_token(token, last):
    """The walk's answer after the chunk's last block: the first id found, else the last id with w > 0."""
    return tl.where(token < 0, last, token)
