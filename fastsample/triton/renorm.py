"""``renorm_probs``: probs renormalised over the kept set (top-k -> top-p -> min-p), 0 elsewhere.

Same launches as sampling up to the per-chunk kept masses (filters.KeptSet), then one write pass:
out_i = p_i / W on kept entries with W the float64 kept mass; an invalid row comes back all zeros.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .filters import KeptSet, kept_weights, resolve_theta


@triton.jit
def write_kernel(x_ptr, info_ptr, mass_ptr, k_hist, k_state, p_hist, p_state, out_ptr, V, B, chunk_len, C,
                 IS_LOGITS: tl.constexpr, K_CHAIN: tl.constexpr, P_CHAIN: tl.constexpr, C_PAD: tl.constexpr,
                 BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    info = info_ptr + b * 12
    status = tl.load(info)
    sampled = status == 0
    cs = tl.arange(0, C_PAD)
    total = tl.sum(tl.load(mass_ptr + b * C + cs, mask=(cs < C) & (cs * 0 + status == 0), other=0.0), 0)
    theta = tl.full((), 0, tl.int64)
    if sampled:
        theta = resolve_theta(info, b, B, C, k_hist, k_state, p_hist, p_state, K_CHAIN, P_CHAIN, C_PAD)
    row = x_ptr + b * V
    start = c * chunk_len
    end = tl.minimum(start + chunk_len, V)
    for base in range(start, end, BLOCK):
        offs = base + tl.arange(0, BLOCK)
        m = offs < end
        live = m & (offs * 0 + status == 0)
        x = tl.load(row + offs, mask=live, other=0.0).to(tl.float32)
        w = kept_weights(x, live, info, theta, IS_LOGITS)
        out = tl.where(w > 0, w / tl.where(total > 0, total, 1.0), 0.0)
        tl.store(out_ptr + b * V + offs, out.to(tl.float32), mask=m)


def renorm_probs(probs: torch.Tensor, top_k_arr, top_k_val: int, top_p_arr, top_p_val: float, min_p_arr,
                 min_p_val: float) -> torch.Tensor:
    """float32 [B, V]: probs renormalised over each row's kept set (docs/ops.md "renorm_probs")."""
    batch, vocab = probs.shape
    kept = KeptSet(probs, False, None, 1.0, top_k_arr, top_k_val, top_p_arr, top_p_val, min_p_arr, min_p_val)
    out = torch.empty_like(probs)
    wrap_triton(write_kernel)[(batch, kept.chunks)](probs, kept.info, kept.mass, *kept.chain_args(), out, vocab,
                                                     batch, kept.chunk_len, kept.chunks, **kept.constexprs())
    return out
