"""Exact row thresholds by radix select over the bits of the values (shared by top-k and top-p).

Every filter keeps the entries whose value is >= a row threshold theta (docs/ops.md), so a threshold is found
as a 32-bit key (``rowstats.float_key``), 4 bits per level, most significant first, in 8 launches (a "chain").
Level L histograms, over the entries whose key matches the L digits chosen so far, a weight per next digit:
1 for top-k (counts), the sampling weight for top-p (mass). Walking the 16 buckets from the top, the chosen
digit is the first non-empty bucket whose cumulative weight (plus everything above the current range)
reaches the target: k for top-k, p * (mass of the candidates) for top-p. That bucket holds the k-th largest
value, respectively the smallest value whose strictly-larger mass is still < p * mass, and after 8 levels it
holds exactly one key: theta. Counts are exact; masses are float64 sums in a fixed order (deterministic).

Workspace per chain: hist [8, B, C, 16] (level, row, chunk, digit) and state [8, B, 3] (key prefix, weight
above the range, target), written by the program of each chunk; the state of level L (L >= 1) is the same
value in every chunk's program, computed from the level L - 1 histograms of all chunks.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from . import launch
from .rowstats import float_key, weights

LEVELS = 8
DIGITS = 16


@triton.jit
def select_digit(hist_row, C, above, target, C_PAD: tl.constexpr):
    """Combine one row's [C, 16] histograms and pick the bucket holding the threshold.

    Returns (digit, weight strictly above that bucket, including ``above``). Falls back to the lowest
    non-empty bucket when rounding leaves the target out of reach (keep everything then).
    """
    cs = tl.arange(0, C_PAD)[:, None]
    ds = tl.arange(0, 16)
    h = tl.sum(tl.load(hist_row + cs * 16 + ds[None, :], mask=cs < C, other=0.0), 0)
    reach = above + tl.cumsum(h, 0, reverse=True)
    best = tl.max(tl.where((h > 0) & (reach >= target), ds, -1), 0)
    lowest = tl.min(tl.where(h > 0, ds, 15), 0)
    digit = tl.where(best >= 0, best, lowest)
    return digit, above + tl.sum(tl.where(ds > digit, h, 0.0), 0)


@triton.jit
def chain_theta(hist_ptr, state_ptr, b, B, C, C_PAD: tl.constexpr):
    """The threshold key of row b from a finished chain (its last level's state and histograms)."""
    last_hist = hist_ptr + ((7 * B + b) * C) * 16
    st = state_ptr + (7 * B + b) * 3
    prefix = tl.load(st).to(tl.int64)
    digit, _ = select_digit(last_hist, C, tl.load(st + 1), tl.load(st + 2), C_PAD)
    return prefix | digit.to(tl.int64)


@triton.jit
def level_kernel(x_ptr, info_ptr, hist_ptr, state_ptr, lo_hist, lo_state, V, B, chunk_len, C, k_val,
                 LEVEL: tl.constexpr, MASS: tl.constexpr, IS_LOGITS: tl.constexpr, USE_INFO: tl.constexpr,
                 LO_CHAIN: tl.constexpr, C_PAD: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    info = info_ptr + b * 12
    if USE_INFO:
        on = tl.load(info + (6 if MASS else 4))
        enabled = (tl.load(info) == 0) & (on != 0)
    else:
        enabled = tl.full((), 1, tl.int1)
    if enabled:
        # Candidates are the keys >= lo: everything for top-k, the top-k survivors for top-p.
        lo = tl.full((), 0, tl.int64)
        if LO_CHAIN:
            if tl.load(info + 4) != 0:
                lo = chain_theta(lo_hist, lo_state, b, B, C, C_PAD)
        prefix = tl.full((), 0, tl.int64)
        if LEVEL > 0:
            prev_hist = hist_ptr + (((LEVEL - 1) * B + b) * C) * 16
            if LEVEL == 1:
                above = tl.full((), 0.0, tl.float64)
                if MASS:
                    cs = tl.arange(0, C_PAD)[:, None]
                    ds = tl.arange(0, 16)[None, :]
                    total = tl.sum(tl.sum(tl.load(prev_hist + cs * 16 + ds, mask=cs < C, other=0.0), 1), 0)
                    target = tl.load(info + 5) * total
                elif USE_INFO:
                    target = tl.load(info + 3)
                else:
                    target = tl.zeros((), tl.float64) + k_val
            else:
                st = state_ptr + ((LEVEL - 1) * B + b) * 3
                prefix = tl.load(st).to(tl.int64)
                above = tl.load(st + 1)
                target = tl.load(st + 2)
            digit, above = select_digit(prev_hist, C, above, target, C_PAD)
            prefix = prefix | (digit.to(tl.int64) << (32 - 4 * LEVEL))
            st_out = state_ptr + (LEVEL * B + b) * 3
            tl.store(st_out, prefix.to(tl.float64))
            tl.store(st_out + 1, above)
            tl.store(st_out + 2, target)

        if MASS:
            row_max = tl.load(info + 1).to(tl.float32)
            temperature = tl.load(info + 2).to(tl.float32)
        row = x_ptr + b * V
        start = c * chunk_len
        end = tl.minimum(start + chunk_len, V)
        ds = tl.arange(0, 16)
        h = tl.zeros((16,), tl.float64)
        for base in range(start, end, BLOCK):
            offs = base + tl.arange(0, BLOCK)
            m = offs < end
            x = tl.load(row + offs, mask=m, other=0.0).to(tl.float32)
            key = float_key(x)
            inside = m & (key >= lo)
            if LEVEL > 0:
                inside = inside & ((key >> (32 - 4 * LEVEL)) == (prefix >> (32 - 4 * LEVEL)))
            digit_of = (key >> (28 - 4 * LEVEL)) & 15
            if MASS:
                wt = tl.where(inside, weights(x, row_max, temperature, IS_LOGITS).to(tl.float64), 0.0)
            else:
                wt = inside.to(tl.float64)
            h += tl.sum(tl.where(digit_of[:, None] == ds[None, :], wt[:, None], 0.0), 0)
        tl.store(hist_ptr + ((LEVEL * B + b) * C + c) * 16 + ds, h)


def run_chain(x, info, chunks, chunk_len, *, mass: bool, is_logits: bool, k_val: int = 0, lo=None):
    """Launch the 8 levels of one chain; returns its (hist, state) workspace for ``chain_theta``.

    ``info`` is the row record of rowstats (None: no per-row record, target = ``k_val`` for every row);
    ``lo`` an earlier chain whose threshold bounds the candidates from below (top-p after top-k).
    """
    batch, vocab = x.shape
    hist = torch.empty((LEVELS, batch, chunks, DIGITS), dtype=torch.float64, device=x.device)
    state = torch.empty((LEVELS, batch, 3), dtype=torch.float64, device=x.device)
    lo_hist, lo_state = lo if lo is not None else (hist, state)
    for level in range(LEVELS):
        wrap_triton(level_kernel)[(batch, chunks)](
            x, info if info is not None else hist, hist, state, lo_hist, lo_state, vocab, batch, chunk_len, chunks,
            k_val, LEVEL=level, MASS=mass, IS_LOGITS=is_logits, USE_INFO=info is not None, LO_CHAIN=lo is not None,
            C_PAD=launch.pow2(chunks), BLOCK=launch.HIST_BLOCK, num_warps=launch.NUM_WARPS)
    return hist, state
