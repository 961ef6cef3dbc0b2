"""``chain_speculative_sampling`` (docs/ops.md): acceptance test per draft position, then the final token.

``accept_kernel`` (one program per row tile) walks the n draft positions: position i passes iff the draft
id x is in [0, V) and u_i * q_i(x) < p_i(x) in float64 (u_i = Philox draw i; the product of two float32 is
exact in float64, so this is the oracle's comparison bit for bit). It writes the accepted prefix e, the
pass count and the output row (draft ids before e, -1 from e on). The final token at position e uses draw n,
from r = max(0, p_e - q_e) (or p_e when r sums to 0, or when e == n): ``mass_kernel`` sums r and p per chunk
(float64) and flags bad entries, ``pick_kernel`` chooses the weights, finds the chunk holding u * W and walks
it in ascending id order with the helpers of cdf.py, as sampling.py does.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch
from .cdf import chunk_owner, walk_block, walk_start, walk_token
from .jit import helper, wrap_triton
from .launch import program_chunk, program_rows
from .philox import philox_uniform


@triton.jit
def accept_kernel(draft_ptr, ids_ptr, target_ptr, seed_ptr, offset_ptr, out_ptr, accepted_ptr, emitted_ptr, B, V,
                  N, R: tl.constexpr):
    rows, rmask = program_rows(B, R)
    seed = tl.load(seed_ptr + rows, mask=rmask, other=0)
    offset = tl.load(offset_ptr + rows, mask=rmask, other=0)
    emitted = tl.zeros((R,), tl.int64) + N
    accepted = tl.zeros((R,), tl.int64)
    for i in range(N):
        x = tl.load(ids_ptr + rows * N + i, mask=rmask, other=-1)
        ok = rmask & (x >= 0) & (x < V)
        xs = tl.where(ok, x, 0)
        q = tl.load(draft_ptr + (rows * N + i) * V + xs, mask=ok, other=0.0).to(tl.float64)
        p = tl.load(target_ptr + (rows * (N + 1) + i) * V + xs, mask=ok, other=0.0).to(tl.float64)
        u = philox_uniform(seed, offset, i).to(tl.float64)
        passed = ok & (u * q < p)
        accepted += passed.to(tl.int64)
        emitted = tl.where((emitted == N) & ~passed, i, emitted)
    for i in range(N + 1):
        x = tl.load(ids_ptr + rows * N + i, mask=rmask & (i < emitted), other=-1)
        tl.store(out_ptr + rows * (N + 1) + i, x, mask=rmask)
    tl.store(accepted_ptr + rows, accepted, mask=rmask)
    tl.store(emitted_ptr + rows, emitted, mask=rmask)


@helper
def final_weights(draft_ptr, target_ptr, rows, e, m, offs, V, N):
    """(r = max(0, p - q) or 0 without a draft distribution, p) at position e of each row, float64 [R, BLOCK]."""
    has_q = (e < N)[:, None]
    p = tl.load(target_ptr + (rows * (N + 1) + e)[:, None] * V + offs[None, :], mask=m, other=0.0).to(tl.float64)
    q_row = rows * N + tl.minimum(e, N - 1)
    q = tl.load(draft_ptr + q_row[:, None] * V + offs[None, :], mask=m & has_q, other=0.0).to(tl.float64)
    d = p - q
    # A negative or infinite entry of p or q makes the residual invalid (NaN), as a NaN already does.
    bad = (p < 0) | (q < 0) | (p == float("inf")) | (q == float("inf"))
    d = tl.where(bad, float("nan"), d)
    r = tl.where(has_q & m, tl.where(d != d, d, tl.maximum(d, 0.0)), 0.0)
    return r, p


@triton.jit
def mass_kernel(draft_ptr, target_ptr, emitted_ptr, mass_ptr, B, V, N, chunk_len, C, R: tl.constexpr,
                BLOCK: tl.constexpr):
    """mass[b, c] = (sum r, sum p, bad r entries, bad p entries) over chunk c of row b's final position."""
    rows, rmask = program_rows(B, R)
    c, start, end = program_chunk(chunk_len, V)
    e = tl.load(emitted_ptr + rows, mask=rmask, other=0)
    sum_r = tl.zeros((R,), tl.float64)
    sum_p = tl.zeros((R,), tl.float64)
    bad_r = tl.zeros((R,), tl.float64)
    bad_p = tl.zeros((R,), tl.float64)
    for base in range(start, end, BLOCK):
        offs = base + tl.arange(0, BLOCK)
        m = rmask[:, None] & (offs < end)[None, :]
        r, p = final_weights(draft_ptr, target_ptr, rows, e, m, offs, V, N)
        sum_r += tl.sum(r, 1)
        sum_p += tl.sum(p, 1)
        bad_r += tl.sum(((r != r) | (r == float("inf"))).to(tl.float64), 1)
        bad_p += tl.sum(((p != p) | (p < 0) | (p == float("inf"))).to(tl.float64), 1)
    out = mass_ptr + (rows * C + c) * 4
    tl.store(out, sum_r, mask=rmask)
    tl.store(out + 1, sum_p, mask=rmask)
    tl.store(out + 2, bad_r, mask=rmask)
    tl.store(out + 3, bad_p, mask=rmask)


@triton.jit
def pick_kernel(draft_ptr, target_ptr, emitted_ptr, mass_ptr, seed_ptr, offset_ptr, out_ptr, B, V, N, chunk_len, C,
                R: tl.constexpr, C_PAD: tl.constexpr, BLOCK: tl.constexpr):
    rows, rmask = program_rows(B, R)
    c, start, end = program_chunk(chunk_len, V)
    e = tl.load(emitted_ptr + rows, mask=rmask, other=0)
    cs = tl.arange(0, C_PAD)
    cm = rmask[:, None] & (cs < C)[None, :]
    part = mass_ptr + (rows[:, None] * C + cs[None, :]) * 4
    chunk_r = tl.load(part, mask=cm, other=0.0)
    chunk_p = tl.load(part + 1, mask=cm, other=0.0)
    total_r = tl.sum(chunk_r, 1)
    total_p = tl.sum(chunk_p, 1)
    use_r = (e < N) & (total_r != 0)  # a NaN sum is not 0: r is used, and is invalid
    bad = tl.where(use_r, tl.sum(tl.load(part + 2, mask=cm, other=0.0), 1),
                   tl.sum(tl.load(part + 3, mask=cm, other=0.0), 1))
    valid = rmask & (bad == 0) & (tl.where(use_r, total_r, total_p) > 0)
    total, below, upto = chunk_owner(tl.where(use_r[:, None], chunk_r, chunk_p), c, C, C_PAD)
    seed = tl.load(seed_ptr + rows, mask=valid, other=0)
    offset = tl.load(offset_ptr + rows, mask=valid, other=0)
    target = philox_uniform(seed, offset, N).to(tl.float64) * total
    mine = valid & (below <= target) & (target < upto)
    running, token, last = walk_start(below, R)
    for base in range(start, end, BLOCK):
        offs = base + tl.arange(0, BLOCK)
        m = mine[:, None] & (offs < end)[None, :]
        r, p = final_weights(draft_ptr, target_ptr, rows, e, m, offs, V, N)
        running, token, last = walk_block(tl.where(use_r[:, None], r, p), offs, end, target, running, token, last)
    token = walk_token(token, last)
    tl.store(out_ptr + rows * (N + 1) + e, token, mask=mine)


def chain_speculative_sampling(draft_probs: torch.Tensor, draft_token_ids: torch.Tensor, target_probs: torch.Tensor,
                               seed: torch.Tensor, offset: torch.Tensor):
    """(output_token_ids [B, n+1], accepted_num [B], emitted_num [B]) per docs/ops.md."""
    batch, n = draft_token_ids.shape
    vocab = target_probs.shape[2]
    device = target_probs.device
    out = torch.empty((batch, n + 1), dtype=torch.int64, device=device)
    accepted = torch.empty(batch, dtype=torch.int64, device=device)
    emitted = torch.empty(batch, dtype=torch.int64, device=device)
    if batch == 0:
        return out, accepted, emitted
    grid = launch.split(batch, vocab, device)
    wrap_triton(accept_kernel)[(grid.grid[0],)](draft_probs, draft_token_ids, target_probs, seed, offset, out,
                                                accepted, emitted, batch, vocab, n, R=grid.rows)
    mass = torch.empty((batch, grid.chunks, 4), dtype=torch.float64, device=device)
    flags = dict(R=grid.rows, BLOCK=grid.block, num_warps=launch.NUM_WARPS)
    wrap_triton(mass_kernel)[grid.grid](draft_probs, target_probs, emitted, mass, batch, vocab, n, grid.chunk_len,
                                        grid.chunks, **flags)
    wrap_triton(pick_kernel)[grid.grid](draft_probs, target_probs, emitted, mass, seed, offset, out, batch, vocab, n,
                                        grid.chunk_len, grid.chunks, C_PAD=grid.c_pad, **flags)
    return out, accepted, emitted
