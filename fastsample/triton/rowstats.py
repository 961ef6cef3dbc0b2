"""Per-row statistics and parameters: the first two launches of every filtered op.

``stats_kernel`` (grid row-tiles x C chunks) reduces each chunk of each row to (max, first index of the max,
count of the max, bad entries, NaN entries); ``info_kernel`` combines the chunks and resolves the per-row
parameters into one float64 record per row (fields INFO_* below), which every later launch reads. Also here:
the element-wise helpers all families share, the order-preserving key of a float and the sampling weight.
"""
from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl

from . import launch
from .jit import helper, wrap_triton
from .launch import program_chunk, program_rows

# Fields of the float64 row record [B, INFO_FIELDS] that every later launch reads. tl.constexpr, because a
# Triton kernel may only read module-level constants of that type (they still index and size torch tensors).
INFO_STATUS = tl.constexpr(0)  # 0: sample / filter the row, 1: greedy (T == 0), 2: invalid row
INFO_MAX = tl.constexpr(1)  # row max of x (NaN ignored)
INFO_T = tl.constexpr(2)  # temperature
INFO_K = tl.constexpr(3)  # top-k
INFO_K_ON = tl.constexpr(4)  # 1 when 0 < k < V
INFO_P = tl.constexpr(5)  # top-p (float64)
INFO_P_ON = tl.constexpr(6)  # 1 when p < 1
INFO_MINP = tl.constexpr(7)  # min-p (float64)
INFO_WMAX = tl.constexpr(8)  # the largest weight: 1 for logits, the row max for probs
INFO_ARGMAX = tl.constexpr(9)  # lowest index of the row max
INFO_NMAX = tl.constexpr(10)  # how many entries equal the row max
INFO_NAN = tl.constexpr(11)  # how many NaN entries
INFO_FIELDS = tl.constexpr(12)
# Fields of the float64 per-chunk statistics [B, C, STATS_FIELDS] of stats_kernel, combined by info_kernel.
STATS_MAX = tl.constexpr(0)  # chunk max (NaN ignored)
STATS_FIRST = tl.constexpr(1)  # first index of the chunk max
STATS_COUNT = tl.constexpr(2)  # how many entries equal the chunk max
STATS_BAD = tl.constexpr(3)  # entries that make the row invalid (NaN; for probs also < 0 or +inf)
STATS_NAN = tl.constexpr(4)  # NaN entries
STATS_FIELDS = tl.constexpr(5)


@helper
def float_key(x):
    """int64 key in [0, 2^32) with key(a) < key(b) iff a < b for float32 a, b; -0.0 maps like +0.0 (they
    compare equal) and every NaN maps to 2^32 - 1, above +inf (torch.topk's order)."""
    x = tl.where(x == 0.0, 0.0, x)
    bits = x.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
    key = tl.where(bits >= 0x80000000, 0xFFFFFFFF - bits, bits + 0x80000000)
    return tl.where(x != x, 0xFFFFFFFF, key)


@helper
def weights(x, row_max, temperature, IS_LOGITS: tl.constexpr):
    """float32 sampling weights of ops.md for a [R, BLOCK] tile (row_max, temperature: [R, 1]):
    exp((x - max) / T) for logits (1 on the +inf entries, 0 elsewhere, when the row has a +inf), x for probs."""
    if IS_LOGITS:
        t = tl.where(temperature > 0, temperature, 1.0)
        finite_max = (tl.zeros_like(x) + row_max) < float("inf")
        shifted = tl.where(finite_max & (x > float("-inf")), x - tl.where(finite_max, row_max, 0.0), float("-inf"))
        w = tl.where(finite_max, tl.exp(shifted / t), tl.where(x == float("inf"), 1.0, 0.0))
    else:
        w = x
    return w


@helper
def row_param(arr_ptr, val, rows, rmask, DTYPE: tl.constexpr, HAS_ARR: tl.constexpr):
    """A per-row parameter [R] in DTYPE: the tensor entries when the tensor is given, else the scalar."""
    if HAS_ARR:
        v = tl.load(arr_ptr + rows, mask=rmask, other=0).to(DTYPE)
    else:
        v = tl.zeros(rows.shape, DTYPE) + val
    return v


@helper
def sampled_rows(info_ptr, rows, rmask):
    """(pointers to the row records of R rows, which of them are sampled or filtered: status 0)."""
    info = info_ptr + rows * INFO_FIELDS
    return info, rmask & (tl.load(info + INFO_STATUS, mask=rmask, other=1.0) == 0)


@triton.jit
def stats_kernel(x_ptr, stats_ptr, B, V, chunk_len, C, IS_LOGITS: tl.constexpr, R: tl.constexpr,
                 BLOCK: tl.constexpr):
    rows, rmask = program_rows(B, R)
    c, start, end = program_chunk(chunk_len, V)
    run_max = tl.full((R,), float("-inf"), tl.float32)
    run_first = tl.zeros((R,), tl.int64) + end
    run_count = tl.zeros((R,), tl.int64)
    bad = tl.zeros((R,), tl.int64)
    nans = tl.zeros((R,), tl.int64)
    for base in range(start, end, BLOCK):
        offs = base + tl.arange(0, BLOCK)
        m = rmask[:, None] & (offs < end)[None, :]
        x = tl.load(x_ptr + rows[:, None] * V + offs[None, :], mask=m, other=float("-inf")).to(tl.float32)
        is_nan = x != x
        nans += tl.sum((m & is_nan).to(tl.int64), 1)
        if IS_LOGITS:
            bad += tl.sum((m & is_nan).to(tl.int64), 1)
        else:
            bad += tl.sum((m & (is_nan | (x < 0) | (x == float("inf")))).to(tl.int64), 1)
        xm = tl.where(m & ~is_nan, x, float("-inf"))
        blk_max = tl.max(xm, 1)
        at_max = m & ~is_nan & (xm == blk_max[:, None])
        blk_first = tl.min(tl.where(at_max, offs[None, :], end), 1).to(tl.int64)
        blk_count = tl.sum(at_max.to(tl.int64), 1)
        run_first = tl.where(blk_max > run_max, blk_first, run_first)
        run_count = tl.where(blk_max > run_max, blk_count,
                             tl.where(blk_max == run_max, run_count + blk_count, run_count))
        run_max = tl.maximum(run_max, blk_max)
    out = stats_ptr + (rows * C + c) * STATS_FIELDS
    tl.store(out + STATS_MAX, run_max.to(tl.float64), mask=rmask)
    tl.store(out + STATS_FIRST, run_first.to(tl.float64), mask=rmask)
    tl.store(out + STATS_COUNT, run_count.to(tl.float64), mask=rmask)
    tl.store(out + STATS_BAD, bad.to(tl.float64), mask=rmask)
    tl.store(out + STATS_NAN, nans.to(tl.float64), mask=rmask)


@triton.jit
def info_kernel(stats_ptr, info_ptr, B, V, C, t_arr, t_val, k_arr, k_val, p_arr, p_hi, p_lo, mp_arr, mp_hi, mp_lo,
                IS_LOGITS: tl.constexpr, HAS_T: tl.constexpr, HAS_K: tl.constexpr, HAS_P: tl.constexpr,
                HAS_MP: tl.constexpr, R: tl.constexpr, C_PAD: tl.constexpr):
    rows, rmask = program_rows(B, R)
    cs = tl.arange(0, C_PAD)
    cm = rmask[:, None] & (cs < C)[None, :]
    st = stats_ptr + (rows[:, None] * C + cs[None, :]) * STATS_FIELDS
    cmax = tl.load(st + STATS_MAX, mask=cm, other=float("-inf"))
    row_max = tl.max(cmax, 1)
    top = cm & (cmax == row_max[:, None])
    argmax = tl.min(tl.where(top, tl.load(st + STATS_FIRST, mask=cm, other=0.0), V * 1.0), 1)
    nmax = tl.sum(tl.where(top, tl.load(st + STATS_COUNT, mask=cm, other=0.0), 0.0), 1)
    bad = tl.sum(tl.load(st + STATS_BAD, mask=cm, other=0.0), 1)
    nans = tl.sum(tl.load(st + STATS_NAN, mask=cm, other=0.0), 1)

    t = row_param(t_arr, t_val, rows, rmask, tl.float32, HAS_T)
    if not IS_LOGITS:
        t = tl.zeros((R,), tl.float32) + 1.0  # temperature does not apply to probs (docs/ops.md "Weights")
    k = row_param(k_arr, k_val, rows, rmask, tl.int64, HAS_K)
    # Scalars p, min-p arrive as float32 (hi, lo) pairs so that float64 hi + lo keeps the caller's double.
    p = row_param(p_arr, p_hi, rows, rmask, tl.float64, HAS_P)
    mp = row_param(mp_arr, mp_hi, rows, rmask, tl.float64, HAS_MP)
    if not HAS_P:
        p += p_lo
    if not HAS_MP:
        mp += mp_lo

    if IS_LOGITS:
        has_mass = row_max > float("-inf")
        wmax = tl.zeros_like(row_max) + 1.0
    else:
        has_mass = row_max > 0
        wmax = row_max
    valid = (bad == 0) & has_mass & (t >= 0) & (t < float("inf")) & (p >= 0) & (p <= 1) & (mp >= 0) & (mp <= 1)
    status = tl.where(valid, tl.where(t == 0, 1, 0), 2)

    out = info_ptr + rows * INFO_FIELDS
    tl.store(out + INFO_STATUS, status.to(tl.float64), mask=rmask)
    tl.store(out + INFO_MAX, row_max, mask=rmask)
    tl.store(out + INFO_T, t.to(tl.float64), mask=rmask)
    tl.store(out + INFO_K, k.to(tl.float64), mask=rmask)
    tl.store(out + INFO_K_ON, ((k > 0) & (k < V)).to(tl.float64), mask=rmask)
    tl.store(out + INFO_P, p, mask=rmask)
    tl.store(out + INFO_P_ON, (p < 1).to(tl.float64), mask=rmask)
    tl.store(out + INFO_MINP, mp, mask=rmask)
    tl.store(out + INFO_WMAX, wmax, mask=rmask)
    tl.store(out + INFO_ARGMAX, argmax, mask=rmask)
    tl.store(out + INFO_NMAX, nmax, mask=rmask)
    tl.store(out + INFO_NAN, nans, mask=rmask)


def _f32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def _hi_lo(value: float) -> tuple[float, float]:
    """Split a Python float into two float32 values whose float64 sum is the value to ~48 bits."""
    hi = _f32(value)
    return hi, _f32(value - hi)


def opt(arr, dummy):
    """Kernels take a pointer for every optional tensor; an absent one is replaced by any tensor (unused)."""
    return arr if arr is not None else dummy


def row_info(x, is_logits, grid, t_arr, t_val, k_arr, k_val, p_arr, p_val, mp_arr, mp_val):
    """Launch the stats and info kernels; returns the float64 row record [B, INFO_FIELDS]."""
    batch, vocab = x.shape
    stats = torch.empty((batch, grid.chunks, STATS_FIELDS), dtype=torch.float64, device=x.device)
    info = torch.empty((batch, INFO_FIELDS), dtype=torch.float64, device=x.device)
    wrap_triton(stats_kernel)[grid.grid](x, stats, batch, vocab, grid.chunk_len, grid.chunks, IS_LOGITS=is_logits,
                                         R=grid.rows, BLOCK=grid.block, num_warps=launch.NUM_WARPS)
    p_hi, p_lo = _hi_lo(float(p_val))
    mp_hi, mp_lo = _hi_lo(float(mp_val))
    wrap_triton(info_kernel)[(grid.grid[0],)](
        stats, info, batch, vocab, grid.chunks, opt(t_arr, x), float(t_val), opt(k_arr, x), int(k_val),
        opt(p_arr, x), p_hi, p_lo, opt(mp_arr, x), mp_hi, mp_lo, IS_LOGITS=is_logits, HAS_T=t_arr is not None,
        HAS_K=k_arr is not None, HAS_P=p_arr is not None, HAS_MP=mp_arr is not None, R=grid.rows,
        C_PAD=grid.c_pad)
    return info
