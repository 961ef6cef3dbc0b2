"""Exact row thresholds by radix select over the bits of the values (shared by top-k and top-p).

Every filter keeps the entries whose value is >= a row threshold theta (docs/ops.md), so a threshold is found
as a 32-bit key (``rowstats.float_key``), 4 bits per level, most significant first, in 8 launches (a "chain").
Level L histograms, over the candidates whose key matches the L digits chosen so far, a weight per next
digit: 1 for top-k (counts), the sampling weight for top-p (mass). Walking the 16 buckets from the top, the
chosen digit is the first non-empty bucket whose cumulative weight (plus everything above the current
range) reaches the target: k for top-k, p * (mass of the candidates) for top-p. That bucket holds the k-th
largest value, respectively the smallest value whose strictly-larger mass is still < p * mass (the
boundary bucket is refined at the next level), and after 8 levels it holds exactly one key: theta. Counts
are exact; masses are float64 sums in a fixed order (deterministic).

Workspace per chain: hist [8, B, C, 16] (level, row, chunk, digit) and state [8, B, 3] (key prefix, weight
above the range, target). The state of level L >= 1 is computed from the level L - 1 histograms of all
chunks by every chunk's program (the same value, so they may all store it).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch
from .jit import helper, wrap_triton
from .launch import program_chunk, program_rows
from .rowstats import (INFO_FIELDS, INFO_K, INFO_K_ON, INFO_MAX, INFO_P, INFO_P_ON, INFO_STATUS, INFO_T, float_key,
                       weights)

LEVELS = 8
DIGITS = 16


@helper
def select_digit(hist_rows, rmask, C, above, target, C_PAD: tl.constexpr):
    """Combine the [C, 16] histograms of R rows (``hist_rows``: [R] pointers) and pick each row's bucket
    holding the threshold. Returns (digit [R], weight strictly above that bucket incl. ``above`` [R]).
    When rounding leaves the target out of reach, the lowest non-empty bucket (keep everything)."""
    cs = tl.arange(0, C_PAD)
    ds = tl.arange(0, 16)
    ptrs = hist_rows[:, None, None] + cs[None, :, None] * 16 + ds[None, None, :]
    mask = rmask[:, None, None] & (cs < C)[None, :, None] & (ds < 16)[None, None, :]
    h = tl.sum(tl.load(ptrs, mask=mask, other=0.0), 1)
    reach = above[:, None] + tl.cumsum(h, 1, reverse=True)
    # One max picks both: reachable buckets score 32 + d (highest wins), else non-empty ones 16 - d (lowest).
    score = tl.where((h > 0) & (reach >= target[:, None]), 32 + ds[None, :], tl.where(h > 0, 16 - ds[None, :], 0))
    best = tl.max(score, 1)
    digit = tl.where(best >= 32, best - 32, 16 - best)
    return digit, above + tl.sum(tl.where(ds[None, :] > digit[:, None], h, 0.0), 1)


@helper
def chain_theta(hist_ptr, state_ptr, rows, rmask, B, C, C_PAD: tl.constexpr):
    """The threshold key [R] of each row from a finished chain (its last level's state and histograms)."""
    st = state_ptr + (7 * B + rows) * 3
    prefix = tl.load(st, mask=rmask, other=0.0).to(tl.int64)
    digit, _ = select_digit(hist_ptr + ((7 * B + rows) * C) * 16, rmask, C, tl.load(st + 1, mask=rmask, other=0.0),
                            tl.load(st + 2, mask=rmask, other=0.0), C_PAD)
    return prefix | digit.to(tl.int64)


@triton.jit
def level_kernel(x_ptr, info_ptr, hist_ptr, state_ptr, lo_hist, lo_state, B, V, chunk_len, C, k_val,
                 LEVEL: tl.constexpr, MASS: tl.constexpr, IS_LOGITS: tl.constexpr, USE_INFO: tl.constexpr,
                 LO_CHAIN: tl.constexpr, R: tl.constexpr, C_PAD: tl.constexpr, BLOCK: tl.constexpr):
    rows, rmask = program_rows(B, R)
    c, start, end = program_chunk(chunk_len, V)
    info = info_ptr + rows * INFO_FIELDS
    live = rmask
    if USE_INFO:
        # Only rows that are sampled and filtered by this chain take part.
        on = tl.load(info + (INFO_P_ON if MASS else INFO_K_ON), mask=rmask, other=0.0)
        live = rmask & (tl.load(info + INFO_STATUS, mask=rmask, other=1.0) == 0) & (on != 0)
    # Candidates are the keys >= lo: everything for top-k, the top-k survivors for top-p.
    lo = tl.zeros((R,), tl.int64)
    if LO_CHAIN:
        k_on = tl.load(info + INFO_K_ON, mask=live, other=0.0) != 0
        lo = tl.where(k_on, chain_theta(lo_hist, lo_state, rows, live & k_on, B, C, C_PAD), 0)
    prefix = tl.zeros((R,), tl.int64)
    if LEVEL > 0:
        prev_hist = hist_ptr + (((LEVEL - 1) * B + rows) * C) * 16
        if LEVEL == 1:
            above = tl.zeros((R,), tl.float64)
            if MASS:
                cs = tl.arange(0, C_PAD)
                ds = tl.arange(0, 16)
                ptrs = prev_hist[:, None, None] + cs[None, :, None] * 16 + ds[None, None, :]
                mask = live[:, None, None] & (cs < C)[None, :, None] & (ds < 16)[None, None, :]
                total = tl.sum(tl.sum(tl.load(ptrs, mask=mask, other=0.0), 2), 1)
                target = tl.load(info + INFO_P, mask=live, other=0.0) * total
            elif USE_INFO:
                target = tl.load(info + INFO_K, mask=live, other=0.0)
            else:
                target = tl.zeros((R,), tl.float64) + k_val
        else:
            st = state_ptr + ((LEVEL - 1) * B + rows) * 3
            prefix = tl.load(st, mask=live, other=0.0).to(tl.int64)
            above = tl.load(st + 1, mask=live, other=0.0)
            target = tl.load(st + 2, mask=live, other=0.0)
        digit, above = select_digit(prev_hist, live, C, above, target, C_PAD)
        prefix = prefix | (digit.to(tl.int64) << (32 - 4 * LEVEL))
        st_out = state_ptr + (LEVEL * B + rows) * 3
        tl.store(st_out, prefix.to(tl.float64), mask=live)
        tl.store(st_out + 1, above, mask=live)
        tl.store(st_out + 2, target, mask=live)

    if MASS:
        row_max = tl.load(info + INFO_MAX, mask=live, other=0.0).to(tl.float32)[:, None]
        temperature = tl.load(info + INFO_T, mask=live, other=1.0).to(tl.float32)[:, None]
    ds = tl.arange(0, 16)
    h = tl.zeros((R, 16), tl.float64)
    for base in range(start, end, BLOCK):
        offs = base + tl.arange(0, BLOCK)
        m = live[:, None] & (offs < end)[None, :]
        x = tl.load(x_ptr + rows[:, None] * V + offs[None, :], mask=m, other=0.0).to(tl.float32)
        key = float_key(x)
        inside = m & (key >= lo[:, None])
        if LEVEL > 0:
            inside = inside & ((key >> (32 - 4 * LEVEL)) == (prefix[:, None] >> (32 - 4 * LEVEL)))
        digit_of = (key >> (28 - 4 * LEVEL)) & 15
        if MASS:
            wt = tl.where(inside, weights(x, row_max, temperature, IS_LOGITS).to(tl.float64), 0.0)
        else:
            wt = inside.to(tl.float64)
        h += tl.sum(tl.where(digit_of[:, :, None] == ds[None, None, :], wt[:, :, None], 0.0), 1)
    out = hist_ptr + ((LEVEL * B + rows) * C + c) * 16
    tl.store(out[:, None] + ds[None, :], h, mask=live[:, None] & (ds < 16)[None, :])


def run_chain(x, info, grid, *, mass: bool, is_logits: bool, k_val: int = 0, lo=None):
    """Launch the 8 levels of one chain; returns its (hist, state) workspace for ``chain_theta``.

    ``info`` is the row record of rowstats (None: no per-row record, target = ``k_val`` for every row);
    ``lo`` an earlier chain whose threshold bounds the candidates from below (top-p after top-k).
    """
    batch, vocab = x.shape
    hist = torch.empty((LEVELS, batch, grid.chunks, DIGITS), dtype=torch.float64, device=x.device)
    state = torch.empty((LEVELS, batch, 3), dtype=torch.float64, device=x.device)
    lo_hist, lo_state = lo if lo is not None else (hist, state)
    for level in range(LEVELS):
        wrap_triton(level_kernel)[grid.grid](
            x, info if info is not None else hist, hist, state, lo_hist, lo_state, batch, vocab, grid.chunk_len,
            grid.chunks, k_val, LEVEL=level, MASS=mass, IS_LOGITS=is_logits, USE_INFO=info is not None,
            LO_CHAIN=lo is not None, R=grid.rows, C_PAD=grid.c_pad, BLOCK=grid.hist_block,
            num_warps=launch.NUM_WARPS)
    return hist, state
