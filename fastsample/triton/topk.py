"""``top_k`` (values and indices, like torch.topk) and ``top_k_mask_logits``.

Both start from the top-k radix chain (radix.py, counts): theta = the k-th largest key of the row.
``top_k_mask_logits`` then writes x where key >= theta and -inf elsewhere (rows with a NaN, or k <= 0 or
k >= V, unchanged). ``top_k`` selects exactly k entries: every key > theta, then the first k - #(> theta)
entries equal to theta in index order. ``count_kernel`` counts both per chunk, ``compact_kernel`` writes the
selected entries as int64 sort keys key * 2^31 + (2^31 - 1 - index) (descending key = values descending,
ties to the lower index, NaN first), and ``sort_kernel`` sorts each row's k keys with ``tl.sort`` and
gathers the values (k > SORT_MAX falls back to torch.sort on the same keys).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch
from .jit import wrap_triton
from .launch import program_chunk, program_rows
from .radix import chain_theta, run_chain
from .rowstats import INFO_K_ON, float_key, row_info, sampled_rows

SORT_MAX = 4096
_LOW = (1 << 31) - 1


@triton.jit
def mask_kernel(x_ptr, info_ptr, k_hist, k_state, out_ptr, B, V, chunk_len, C, R: tl.constexpr,
                C_PAD: tl.constexpr, BLOCK: tl.constexpr):
    rows, rmask = program_rows(B, R)
    c, start, end = program_chunk(chunk_len, V)
    # Rows with a NaN or with the filter off stay unchanged; so do all -inf rows (theta is -inf's key then).
    info, sampled = sampled_rows(info_ptr, rows, rmask)
    live = sampled & (tl.load(info + INFO_K_ON, mask=rmask, other=0.0) != 0)
    theta = tl.where(live, chain_theta(k_hist, k_state, rows, live, B, C, C_PAD), 0)
    for base in range(start, end, BLOCK):
        offs = base + tl.arange(0, BLOCK)
        m = rmask[:, None] & (offs < end)[None, :]
        ptrs = rows[:, None] * V + offs[None, :]
        x = tl.load(x_ptr + ptrs, mask=m, other=0.0)
        keep = float_key(x.to(tl.float32)) >= theta[:, None]
        tl.store(out_ptr + ptrs, tl.where(keep, x, float("-inf")).to(x.dtype), mask=m)


def top_k_mask_logits(logits: torch.Tensor, top_k_arr, top_k_val: int) -> torch.Tensor:
    """logits with every entry below the row's k-th largest set to -inf (docs/ops.md "top_k_mask_logits")."""
    batch, vocab = logits.shape
    if top_k_arr is None and not 0 < top_k_val < vocab:
        return logits.clone()
    grid = launch.split(batch, vocab, logits.device)
    info = row_info(logits, True, grid, None, 1.0, top_k_arr, top_k_val, None, 1.0, None, 0.0)
    k_hist, k_state = run_chain(logits, info, grid, mass=False, is_logits=True)
    out = torch.empty_like(logits)
    wrap_triton(mask_kernel)[grid.grid](logits, info, k_hist, k_state, out, batch, vocab, grid.chunk_len, grid.chunks,
                                        R=grid.rows, C_PAD=grid.c_pad, BLOCK=grid.block, num_warps=launch.NUM_WARPS)
    return out


@triton.jit
def count_kernel(x_ptr, k_hist, k_state, count_ptr, B, V, chunk_len, C, R: tl.constexpr, C_PAD: tl.constexpr,
                 BLOCK: tl.constexpr):
    """count[b, c] = (entries with key > theta, entries with key == theta) in chunk c of row b."""
    rows, rmask = program_rows(B, R)
    c, start, end = program_chunk(chunk_len, V)
    theta = chain_theta(k_hist, k_state, rows, rmask, B, C, C_PAD)[:, None]
    greater = tl.zeros((R,), tl.int64)
    equal = tl.zeros((R,), tl.int64)
    for base in range(start, end, BLOCK):
        offs = base + tl.arange(0, BLOCK)
        m = rmask[:, None] & (offs < end)[None, :]
        key = float_key(tl.load(x_ptr + rows[:, None] * V + offs[None, :], mask=m, other=0.0).to(tl.float32))
        greater += tl.sum((m & (key > theta)).to(tl.int64), 1)
        equal += tl.sum((m & (key == theta)).to(tl.int64), 1)
    tl.store(count_ptr + (rows * C + c) * 2, greater, mask=rmask)
    tl.store(count_ptr + (rows * C + c) * 2 + 1, equal, mask=rmask)


@triton.jit
def compact_kernel(x_ptr, k_hist, k_state, count_ptr, sel_ptr, B, V, K, chunk_len, C, R: tl.constexpr,
                   C_PAD: tl.constexpr, BLOCK: tl.constexpr):
    rows, rmask = program_rows(B, R)
    c, start, end = program_chunk(chunk_len, V)
    theta = chain_theta(k_hist, k_state, rows, rmask, B, C, C_PAD)[:, None]
    cs = tl.arange(0, C_PAD)
    cm = rmask[:, None] & (cs < C)[None, :]
    counts = count_ptr + (rows[:, None] * C + cs[None, :]) * 2
    greater = tl.load(counts, mask=cm, other=0)
    equal = tl.load(counts + 1, mask=cm, other=0)
    n_greater = tl.sum(greater, 1)
    need = K - n_greater  # how many entries equal to theta are selected, lowest indices first
    g_rank = tl.sum(tl.where(cs[None, :] < c, greater, 0), 1)
    e_rank = tl.sum(tl.where(cs[None, :] < c, equal, 0), 1)
    for base in range(start, end, BLOCK):
        offs = base + tl.arange(0, BLOCK)
        m = rmask[:, None] & (offs < end)[None, :]
        key = float_key(tl.load(x_ptr + rows[:, None] * V + offs[None, :], mask=m, other=0.0).to(tl.float32))
        gt = (m & (key > theta)).to(tl.int64)
        eq = (m & (key == theta)).to(tl.int64)
        g_pos = g_rank[:, None] + tl.cumsum(gt, 1) - gt
        e_pos = e_rank[:, None] + tl.cumsum(eq, 1) - eq
        pos = tl.where(gt != 0, g_pos, n_greater[:, None] + e_pos)
        chosen = (gt != 0) | ((eq != 0) & (e_pos < need[:, None]))
        sort_key = key * (1 << 31) + (2147483647 - offs[None, :])
        tl.store(sel_ptr + rows[:, None] * K + pos, sort_key, mask=chosen)
        g_rank += tl.sum(gt, 1)
        e_rank += tl.sum(eq, 1)


@triton.jit
def sort_kernel(x_ptr, sel_ptr, val_ptr, idx_ptr, B, V, K, R: tl.constexpr, K_PAD: tl.constexpr):
    rows, rmask = program_rows(B, R)
    ks = tl.arange(0, K_PAD)
    m = rmask[:, None] & (ks < K)[None, :]
    keys = tl.sort(tl.load(sel_ptr + rows[:, None] * K + ks[None, :], mask=m, other=-1), dim=1, descending=True)
    idx = 2147483647 - (keys & 2147483647)
    idx = tl.where(m, idx, 0)
    tl.store(idx_ptr + rows[:, None] * K + ks[None, :], idx, mask=m)
    tl.store(val_ptr + rows[:, None] * K + ks[None, :], tl.load(x_ptr + rows[:, None] * V + idx, mask=m), mask=m)


def top_k(x: torch.Tensor, k: int, sorted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [B, k] in x's dtype, int64 indices [B, k]) like torch.topk(largest=True), ties to the lower
    index, NaN largest; always sorted (``sorted=False`` allows any order)."""
    batch, vocab = x.shape
    values = torch.empty((batch, k), dtype=x.dtype, device=x.device)
    indices = torch.empty((batch, k), dtype=torch.int64, device=x.device)
    if k == 0 or batch == 0:
        return values, indices
    grid = launch.split(batch, vocab, x.device)
    k_hist, k_state = run_chain(x, None, grid, mass=False, is_logits=True, k_val=k)
    counts = torch.empty((batch, grid.chunks, 2), dtype=torch.int64, device=x.device)
    selected = torch.empty((batch, k), dtype=torch.int64, device=x.device)
    args = dict(R=grid.rows, C_PAD=grid.c_pad, BLOCK=grid.block, num_warps=launch.NUM_WARPS)
    wrap_triton(count_kernel)[grid.grid](x, k_hist, k_state, counts, batch, vocab, grid.chunk_len, grid.chunks,
                                         **args)
    wrap_triton(compact_kernel)[grid.grid](x, k_hist, k_state, counts, selected, batch, vocab, k, grid.chunk_len,
                                           grid.chunks, **args)
    if k <= SORT_MAX:
        wrap_triton(sort_kernel)[(grid.grid[0],)](x, selected, values, indices, batch, vocab, k, R=grid.rows,
                                                  K_PAD=launch.pow2(k), num_warps=launch.NUM_WARPS)
        return values, indices
    keys = torch.sort(selected, dim=1, descending=True).values
    indices = _LOW - (keys & _LOW)
    return torch.gather(x, 1, indices), indices
