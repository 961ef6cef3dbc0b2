"""``renorm_probs``: probs renormalised over the kept set (top-k -> top-p -> min-p), 0 elsewhere.

Same launches as sampling up to the per-chunk kept masses (filters.KeptSet), then one write pass:
out_i = p_i / W on kept entries with W the float64 kept mass; an invalid row comes back all zeros.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .filters import KeptSet, kept_weights, resolve_theta, row_fields
from .jit import wrap_triton
from .launch import program_chunk, program_rows
from .rowstats import sampled_rows


@triton.jit
def write_kernel(x_ptr, info_ptr, mass_ptr, k_hist, k_state, p_hist, p_state, out_ptr, B, V, chunk_len, C,
                 IS_LOGITS: tl.constexpr, K_CHAIN: tl.constexpr, P_CHAIN: tl.constexpr, R: tl.constexpr,
                 C_PAD: tl.constexpr, BLOCK: tl.constexpr):
    rows, rmask = program_rows(B, R)
    c, start, end = program_chunk(chunk_len, V)
    info, live = sampled_rows(info_ptr, rows, rmask)
    cs = tl.arange(0, C_PAD)
    total = tl.sum(tl.load(mass_ptr + rows[:, None] * C + cs[None, :], mask=live[:, None] & (cs < C)[None, :],
                           other=0.0), 1)
    total = tl.where(total > 0, total, 1.0)
    theta = resolve_theta(info, rows, live, B, C, k_hist, k_state, p_hist, p_state, K_CHAIN, P_CHAIN, C_PAD)
    row_max, temperature, floor = row_fields(info, live)
    for base in range(start, end, BLOCK):
        offs = base + tl.arange(0, BLOCK)
        inside = rmask[:, None] & (offs < end)[None, :]
        m = live[:, None] & inside
        x = tl.load(x_ptr + rows[:, None] * V + offs[None, :], mask=m, other=0.0).to(tl.float32)
        w = kept_weights(x, m, row_max, temperature, floor, theta, IS_LOGITS)
        tl.store(out_ptr + rows[:, None] * V + offs[None, :], (w / total[:, None]).to(tl.float32), mask=inside)


def renorm_probs(probs: torch.Tensor, top_k_arr, top_k_val: int, top_p_arr, top_p_val: float, min_p_arr,
                 min_p_val: float) -> torch.Tensor:
    """float32 [B, V]: probs renormalised over each row's kept set (docs/ops.md "renorm_probs")."""
    batch, vocab = probs.shape
    kept = KeptSet(probs, False, None, 1.0, top_k_arr, top_k_val, top_p_arr, top_p_val, min_p_arr, min_p_val)
    out = torch.empty_like(probs, dtype=torch.float32)
    wrap_triton(write_kernel)[kept.grid.grid](probs, kept.info, kept.mass, *kept.chain_args(), out, batch, vocab,
                                              kept.grid.chunk_len, kept.grid.chunks, **kept.constexprs())
    return out
