"""Launch heuristics shared by every Triton family.

Programs are laid out on a grid (row tiles, chunks): a program handles R rows (a [R, BLOCK] tile per loop
step) and one contiguous chunk of each of them. Each pass over the data is one launch; what a later pass
needs from all chunks of a row (maxima, histograms, masses) goes through a small float64 workspace of
O(B * C * 16) entries, which every program of the next launch combines itself in a fixed order, so no
extra "reduce" launch is needed and results do not depend on the split beyond float64 rounding.

GPU: R = 1. The chunk count C aims at about ``PROGRAMS_PER_SM`` programs per streaming multiprocessor, so
that B = 1, V = 256K spreads over the GPU instead of running on one SM, but never gives a program less than
``MIN_CHUNK`` entries (below that the extra launches' partials cost more than they save); large batches
therefore get C = 1, one program per row, looping over the row in BLOCK steps (HIST_BLOCK for the
histogram passes, whose one-hot tile is HIST_BLOCK x 16 float64).

Interpreter (CPU tensors under TRITON_INTERPRET=1): it pays per operation, not per element, and has no
registers to spill, so a program takes up to MAX_INTERPRETER_ROWS rows and big tiles; the "device" counts
as ``INTERPRETER_SMS`` SMs, so rows longer than ``MIN_CHUNK`` still take the multi-chunk path.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .jit import helper

BLOCK = 1024
HIST_BLOCK = 512
MIN_CHUNK = 4096
PROGRAMS_PER_SM = 4
NUM_WARPS = 4
INTERPRETER_SMS = 8
MAX_INTERPRETER_ROWS = 64
INTERPRETER_TILE = 1 << 18  # elements of a [R, BLOCK] tile under the interpreter
INTERPRETER_HIST_TILE = 1 << 20  # elements of a [R, HIST_BLOCK, 16] one-hot tile under the interpreter


def pow2(n: int) -> int:
    """The smallest power of two >= max(n, 2) (Triton block shapes are powers of two)."""
    return max(2, triton.next_power_of_2(n))


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return INTERPRETER_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


@dataclass(frozen=True)
class Grid:
    """How a [batch, vocab] row-wise op is cut into programs (see the module docstring)."""

    rows: int  # R, rows per program (a power of two)
    chunks: int  # C, chunks per row
    chunk_len: int  # entries per chunk, a multiple of block
    block: int  # entries per loop step of a streaming pass
    hist_block: int  # entries per loop step of a histogram pass
    grid: tuple[int, int]  # (row tiles, chunks)

    @property
    def c_pad(self) -> int:
        return pow2(self.chunks)


def split(batch: int, vocab: int, device: torch.device) -> Grid:
    """The launch grid of a [batch, vocab] row-wise op on ``device``."""
    if device.type == "cuda":
        rows, block, hist_block = 1, BLOCK, HIST_BLOCK
    else:
        rows = min(pow2(batch), MAX_INTERPRETER_ROWS)
        # Tiles no longer than MIN_CHUNK, so that the chunk rounding below still splits long rows.
        block = min(MIN_CHUNK, max(256, INTERPRETER_TILE // rows))
        hist_block = min(block, max(64, INTERPRETER_HIST_TILE // (16 * rows)))
    tiles = triton.cdiv(batch, rows)
    wanted = triton.cdiv(PROGRAMS_PER_SM * _sm_count(device), max(tiles, 1))
    chunks = max(1, min(wanted, triton.cdiv(vocab, MIN_CHUNK)))
    chunk_len = triton.cdiv(triton.cdiv(vocab, chunks), block) * block
    chunks = triton.cdiv(vocab, chunk_len)
    return Grid(rows, chunks, chunk_len, block, hist_block, (max(tiles, 1), chunks))


@helper
def program_rows(B, R: tl.constexpr):
    """Inside a kernel: the R rows of this program's row tile (int64, so row * V never overflows int32) and
    which of them exist (< B)."""
    rows = tl.program_id(0) * R + tl.arange(0, R).to(tl.int64)
    return rows, rows < B


@helper
def program_chunk(chunk_len, V):
    """Inside a kernel: this program's chunk of each of its rows, as (chunk index c, start, end): the entries
    [start, end) of the row."""
    c = tl.program_id(1)
    start = c * chunk_len
    return c, start, tl.minimum(start + chunk_len, V)
