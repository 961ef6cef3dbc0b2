"""The kept set of a row after temperature -> top-k -> top-p -> min-p (docs/ops.md, "Filters").

top-k and top-p each end in a threshold key from a radix chain (top-p's chain only sees the top-k
survivors, so its threshold is the higher one); min-p compares weights, w_i >= min_p * max_j w_j, in float64.
``kept_weights`` gives the float64 weight of each kept entry and 0 elsewhere; every consumer (mass sums,
inverse CDF, renormalisation) uses it, so they agree on the kept set entry for entry.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch
from .jit import helper, wrap_triton
from .launch import program_chunk, program_rows
from .radix import chain_theta, run_chain
from .rowstats import (INFO_K_ON, INFO_MAX, INFO_MINP, INFO_P_ON, INFO_T, INFO_WMAX, float_key, row_info, sampled_rows,
                       weights)


@helper
def resolve_theta(info, rows, live, B, C, k_hist, k_state, p_hist, p_state, K_CHAIN: tl.constexpr,
                  P_CHAIN: tl.constexpr, C_PAD: tl.constexpr):
    """Each row's threshold key [R]: top-p's if it filters the row, else top-k's, else 0 (keep all)."""
    theta = tl.zeros(rows.shape, tl.int64)
    if K_CHAIN:
        k_on = live & (tl.load(info + INFO_K_ON, mask=live, other=0.0) != 0)
        theta = tl.where(k_on, chain_theta(k_hist, k_state, rows, k_on, B, C, C_PAD), theta)
    if P_CHAIN:
        p_on = live & (tl.load(info + INFO_P_ON, mask=live, other=0.0) != 0)
        theta = tl.where(p_on, chain_theta(p_hist, p_state, rows, p_on, B, C, C_PAD), theta)
    return theta


@helper
def row_fields(info, live):
    """(row max, temperature, min-p * max weight) of R rows, shaped [R, 1] for a [R, BLOCK] tile."""
    row_max = tl.load(info + INFO_MAX, mask=live, other=0.0).to(tl.float32)[:, None]
    temperature = tl.load(info + INFO_T, mask=live, other=1.0).to(tl.float32)[:, None]
    floor = (tl.load(info + INFO_MINP, mask=live, other=0.0) * tl.load(info + INFO_WMAX, mask=live, other=0.0))[:, None]
    return row_max, temperature, floor


@helper
def kept_weights(x, m, row_max, temperature, floor, theta, IS_LOGITS: tl.constexpr):
    """float64 weights of the kept entries of a [R, BLOCK] tile (0 elsewhere and where ``m`` is false)."""
    w = weights(x, row_max, temperature, IS_LOGITS).to(tl.float64)
    kept = m & (float_key(x) >= theta[:, None]) & (w >= floor)
    return tl.where(kept, w, 0.0)


@triton.jit
def mass_kernel(x_ptr, info_ptr, mass_ptr, k_hist, k_state, p_hist, p_state, B, V, chunk_len, C,
                IS_LOGITS: tl.constexpr, K_CHAIN: tl.constexpr, P_CHAIN: tl.constexpr, R: tl.constexpr,
                C_PAD: tl.constexpr, BLOCK: tl.constexpr):
    """mass[b, c] = float64 sum of the kept weights in chunk c of row b (rows not sampled: skipped)."""
    rows, rmask = program_rows(B, R)
    c, start, end = program_chunk(chunk_len, V)
    info, live = sampled_rows(info_ptr, rows, rmask)
    theta = resolve_theta(info, rows, live, B, C, k_hist, k_state, p_hist, p_state, K_CHAIN, P_CHAIN, C_PAD)
    row_max, temperature, floor = row_fields(info, live)
    total = tl.zeros((R,), tl.float64)
    for base in range(start, end, BLOCK):
        offs = base + tl.arange(0, BLOCK)
        m = live[:, None] & (offs < end)[None, :]
        x = tl.load(x_ptr + rows[:, None] * V + offs[None, :], mask=m, other=0.0).to(tl.float32)
        total += tl.sum(kept_weights(x, m, row_max, temperature, floor, theta, IS_LOGITS), 1)
    tl.store(mass_ptr + rows * C + c, total, mask=live)


class KeptSet:
    """Everything later launches need to rebuild a row's kept set: grid, row record, chains, chunk masses."""

    def __init__(self, x, is_logits, t_arr, t_val, k_arr, k_val, p_arr, p_val, mp_arr, mp_val):
        batch, vocab = x.shape
        self.is_logits = is_logits
        self.grid = launch.split(batch, vocab, x.device)
        self.info = row_info(x, is_logits, self.grid, t_arr, t_val, k_arr, k_val, p_arr, p_val, mp_arr, mp_val)
        # A chain runs only when some row may use it; scalars decide that on the host, tensors per row.
        k_chain = k_arr is not None or 0 < k_val < vocab
        p_chain = p_arr is not None or p_val < 1
        self.k = run_chain(x, self.info, self.grid, mass=False, is_logits=is_logits) if k_chain else None
        self.p = run_chain(x, self.info, self.grid, mass=True, is_logits=is_logits, lo=self.k) if p_chain else None
        self.mass = torch.empty((batch, self.grid.chunks), dtype=torch.float64, device=x.device)
        wrap_triton(mass_kernel)[self.grid.grid](x, self.info, self.mass, *self.chain_args(), batch, vocab,
                                                 self.grid.chunk_len, self.grid.chunks, **self.constexprs())

    def chain_args(self):
        """(k_hist, k_state, p_hist, p_state); an absent chain is replaced by an unused tensor."""
        k = self.k if self.k is not None else (self.info, self.info)
        p = self.p if self.p is not None else (self.info, self.info)
        return (*k, *p)

    def constexprs(self):
        return dict(IS_LOGITS=self.is_logits, K_CHAIN=self.k is not None, P_CHAIN=self.p is not None,
                    R=self.grid.rows, C_PAD=self.grid.c_pad, BLOCK=self.grid.block, num_warps=launch.NUM_WARPS)
