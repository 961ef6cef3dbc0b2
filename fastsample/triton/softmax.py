"""``softmax``: fused temperature + safe softmax, float32 out (docs/ops.md "softmax").

Two launches over the grid of launch.py. ``partial_kernel`` reads each chunk once with an online softmax:
the running max m and sum s = sum exp((x - m) / T), rescaled whenever m grows, plus the count of entries
equal to m and of NaNs. ``write_kernel`` merges the chunks (M = max m_c, S = sum s_c exp((m_c - M) / T)) and
writes exp((x - M) / T) / S; with T == 0 or a +inf max, 1 / count on the maxima; an invalid row is all NaN.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch
from .jit import wrap_triton
from .launch import program_chunk, program_rows
from .rowstats import opt, row_param


@triton.jit
def partial_kernel(x_ptr, part_ptr, t_arr, t_val, B, V, chunk_len, C, HAS_T: tl.constexpr, R: tl.constexpr,
                   BLOCK: tl.constexpr):
    rows, rmask = program_rows(B, R)
    c, start, end = program_chunk(chunk_len, V)
    t = row_param(t_arr, t_val, rows, rmask, tl.float32, HAS_T)
    t = tl.where(t > 0, t, 1.0)  # T == 0 and invalid rows only use the max and its count
    run_max = tl.full((R,), float("-inf"), tl.float32)
    run_sum = tl.zeros((R,), tl.float32)
    run_count = tl.zeros((R,), tl.float32)
    nans = tl.zeros((R,), tl.float32)
    for base in range(start, end, BLOCK):
        offs = base + tl.arange(0, BLOCK)
        m = rmask[:, None] & (offs < end)[None, :]
        x = tl.load(x_ptr + rows[:, None] * V + offs[None, :], mask=m, other=float("-inf")).to(tl.float32)
        nans += tl.sum((x != x).to(tl.float32), 1)
        x = tl.where(x != x, float("-inf"), x)
        new_max = tl.maximum(run_max, tl.max(x, 1))
        finite = (new_max > float("-inf")) & (new_max < float("inf"))
        ref = tl.where(finite, new_max, 0.0)
        scale = tl.where(run_max > float("-inf"), tl.exp((run_max - ref) / t), 0.0)
        terms = tl.where(x > float("-inf"), tl.exp((x - ref[:, None]) / t[:, None]), 0.0)
        run_sum = tl.where(finite, run_sum * scale + tl.sum(terms, 1), 0.0)
        count = tl.sum((x == new_max[:, None]).to(tl.float32), 1)
        run_count = tl.where(new_max > run_max, count, run_count + count)
        run_max = new_max
    out = part_ptr + (rows * C + c) * 4
    tl.store(out + 0, run_max, mask=rmask)
    tl.store(out + 1, run_sum, mask=rmask)
    tl.store(out + 2, run_count, mask=rmask)
    tl.store(out + 3, nans, mask=rmask)


@triton.jit
def write_kernel(x_ptr, part_ptr, out_ptr, t_arr, t_val, B, V, chunk_len, C, HAS_T: tl.constexpr, R: tl.constexpr,
                 C_PAD: tl.constexpr, BLOCK: tl.constexpr):
    rows, rmask = program_rows(B, R)
    c, start, end = program_chunk(chunk_len, V)
    t = row_param(t_arr, t_val, rows, rmask, tl.float32, HAS_T)
    cs = tl.arange(0, C_PAD)
    cm = rmask[:, None] & (cs < C)[None, :]
    part = part_ptr + (rows[:, None] * C + cs[None, :]) * 4
    cmax = tl.load(part + 0, mask=cm, other=float("-inf"))
    row_max = tl.max(cmax, 1)
    ref = tl.where(row_max < float("inf"), row_max, 0.0)
    ts = tl.where(t > 0, t, 1.0)
    scaled = tl.where(cmax > float("-inf"), tl.load(part + 1, mask=cm, other=0.0) *
                      tl.exp((cmax - ref[:, None]) / ts[:, None]), 0.0)
    total = tl.sum(scaled, 1)
    count = tl.sum(tl.where(cmax == row_max[:, None], tl.load(part + 2, mask=cm, other=0.0), 0.0), 1)
    nans = tl.sum(tl.load(part + 3, mask=cm, other=0.0), 1)
    invalid = (nans > 0) | (row_max == float("-inf")) | ~(t >= 0) | (t == float("inf"))
    at_max_only = (t == 0) | (row_max == float("inf"))
    for base in range(start, end, BLOCK):
        offs = base + tl.arange(0, BLOCK)
        m = rmask[:, None] & (offs < end)[None, :]
        x = tl.load(x_ptr + rows[:, None] * V + offs[None, :], mask=m, other=0.0).to(tl.float32)
        p = tl.exp((x - ref[:, None]) / ts[:, None]) / total[:, None]
        p = tl.where(at_max_only[:, None], tl.where(x == row_max[:, None], 1.0 / count[:, None], 0.0), p)
        p = tl.where(invalid[:, None], float("nan"), p)
        tl.store(out_ptr + rows[:, None] * V + offs[None, :], p, mask=m)


def softmax(logits: torch.Tensor, temperature_arr, temperature_val: float) -> torch.Tensor:
    """float32 softmax(logits / T) per row (docs/ops.md "softmax")."""
    batch, vocab = logits.shape
    grid = launch.split(batch, vocab, logits.device)
    part = torch.empty((batch, grid.chunks, 4), dtype=torch.float32, device=logits.device)
    out = torch.empty((batch, vocab), dtype=torch.float32, device=logits.device)
    t_arr = opt(temperature_arr, logits)
    flags = dict(HAS_T=temperature_arr is not None, R=grid.rows, BLOCK=grid.block, num_warps=launch.NUM_WARPS)
    wrap_triton(partial_kernel)[grid.grid](logits, part, t_arr, float(temperature_val), batch, vocab, grid.chunk_len,
                                           grid.chunks, **flags)
    wrap_triton(write_kernel)[grid.grid](logits, part, out, t_arr, float(temperature_val), batch, vocab,
                                         grid.chunk_len, grid.chunks, C_PAD=grid.c_pad, **flags)
    return out
