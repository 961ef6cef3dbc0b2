"""Launch heuristics shared by every Triton family.

A row of V entries is cut into C contiguous chunks, one program per (row, chunk). Each pass over the data is
one launch over the grid (B, C); what a later pass needs from all chunks of a row (maxima, histograms,
masses) goes through a small float64 workspace of O(B * C * 16) entries, and every program of the next
launch combines those partials itself in a fixed order, so no extra "reduce" launch is needed and the
result does not depend on the number of chunks beyond float64 rounding.

Heuristic: aim for about ``PROGRAMS_PER_SM`` programs per streaming multiprocessor (so B = 1, V = 256K spreads
over the GPU instead of one SM), but never give a program less than ``MIN_CHUNK`` entries (below that the
per-launch partials cost more than they save). Large batches therefore get C = 1: one program per row.
Under the interpreter (CPU tensors) the "device" is taken to have ``INTERPRETER_SMS`` SMs, so the
multi-chunk path is exercised by rows longer than ``MIN_CHUNK``.
"""
from __future__ import annotations

import functools

import torch
import triton

BLOCK = 1024  # entries per loop step of a streaming pass
HIST_BLOCK = 512  # entries per loop step of a histogram pass (the one-hot tile is HIST_BLOCK x 16)
MIN_CHUNK = 4096  # fewest entries one program handles when a row is split
PROGRAMS_PER_SM = 4
INTERPRETER_SMS = 8
NUM_WARPS = 4


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return INTERPRETER_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def split(batch: int, vocab: int, device: torch.device) -> tuple[int, int]:
    """``(chunks, chunk_len)`` for a [batch, vocab] row-wise op; chunk_len is a multiple of BLOCK."""
    wanted = triton.cdiv(PROGRAMS_PER_SM * _sm_count(device), max(batch, 1))
    chunks = max(1, min(wanted, triton.cdiv(vocab, MIN_CHUNK)))
    chunk_len = triton.cdiv(triton.cdiv(vocab, chunks), BLOCK) * BLOCK
    return triton.cdiv(vocab, chunk_len), chunk_len


def pow2(n: int) -> int:
    """The smallest power of two >= max(n, 2) (Triton block shapes are powers of two)."""
    return max(2, triton.next_power_of_2(n))
