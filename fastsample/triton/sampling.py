"""The fused ``sample`` op: temperature -> top-k -> top-p -> min-p -> one token per row (+ logprobs).

Launches: row stats and record (2), a top-k chain and a top-p chain when some row filters (8 each, see
radix.py), the kept mass per chunk (1), and ``pick_kernel`` (1). The draw: u = Philox uniform of
(seed_b, offset_b, draw 0); the token is the smallest kept i with cumsum_{kept k <= i} w_k > u * W
(ascending ids). Every program of ``pick_kernel`` rebuilds the same inclusive float64 prefix of the chunk
masses, so exactly one chunk's program owns u * W and scans its chunk with block prefix sums.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .filters import KeptSet, kept_weights, resolve_theta
from .philox import philox_uniform


@triton.jit
def pick_kernel(x_ptr, info_ptr, mass_ptr, k_hist, k_state, p_hist, p_state, seed_ptr, offset_ptr, token_ptr,
                logprob_ptr, V, B, chunk_len, C, IS_LOGITS: tl.constexpr, K_CHAIN: tl.constexpr,
                P_CHAIN: tl.constexpr, LOGPROBS: tl.constexpr, C_PAD: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    info = info_ptr + b * 12
    status = tl.load(info)
    if status != 0:
        # Greedy rows take the lowest argmax (logprob: the T -> 0 limit, uniform over the maxima); invalid: -1.
        if c == 0:
            greedy = status == 1
            tl.store(token_ptr + b, tl.where(greedy, tl.load(info + 9).to(tl.int64), -1))
            if LOGPROBS:
                tl.store(logprob_ptr + b, tl.where(greedy, -tl.log(tl.load(info + 10).to(tl.float32)), float("nan")))
    else:
        cs = tl.arange(0, C_PAD)
        incl = tl.cumsum(tl.load(mass_ptr + b * C + cs, mask=cs < C, other=0.0), 0)
        total = tl.sum(tl.where(cs == C - 1, incl, 0.0), 0)
        below = tl.sum(tl.where(cs == c - 1, incl, 0.0), 0)
        upto = tl.sum(tl.where(cs == c, incl, 0.0), 0)
        u = philox_uniform(tl.load(seed_ptr + b), tl.load(offset_ptr + b), 0)
        target = u.to(tl.float64) * total
        if (below <= target) & (target < upto):
            theta = resolve_theta(info, b, B, C, k_hist, k_state, p_hist, p_state, K_CHAIN, P_CHAIN, C_PAD)
            row = x_ptr + b * V
            start = c * chunk_len
            end = tl.minimum(start + chunk_len, V)
            running = below
            token = tl.full((), -1, tl.int64)
            last = tl.full((), -1, tl.int64)
            for base in range(start, end, BLOCK):
                offs = base + tl.arange(0, BLOCK)
                m = offs < end
                x = tl.load(row + offs, mask=m, other=0.0).to(tl.float32)
                w = kept_weights(x, m, info, theta, IS_LOGITS)
                cum = running + tl.cumsum(w, 0)
                first = tl.min(tl.where((cum > target) & (w > 0), offs, end), 0).to(tl.int64)
                token = tl.where((token < 0) & (first < end), first, token)
                last = tl.maximum(last, tl.max(tl.where(w > 0, offs, -1), 0).to(tl.int64))
                running = tl.max(cum, 0)
            # Rounding may leave the chunk's own prefix sum just short of the target: take its last kept id.
            token = tl.where(token < 0, last, token)
            tl.store(token_ptr + b, token)
            if LOGPROBS:
                xt = tl.load(row + token).to(tl.float32)
                wt = kept_weights(xt, token >= 0, info, theta, IS_LOGITS)
                tl.store(logprob_ptr + b, tl.log((wt / total).to(tl.float32)))


def sample(x: torch.Tensor, is_logits: bool, temperature_arr, temperature_val: float, top_k_arr, top_k_val: int,
           top_p_arr, top_p_val: float, min_p_arr, min_p_val: float, seed: torch.Tensor, offset: torch.Tensor,
           return_logprobs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the sampling pipeline; see docs/ops.md "sample" for the exact contract."""
    batch, vocab = x.shape
    kept = KeptSet(x, is_logits, temperature_arr, temperature_val, top_k_arr, top_k_val, top_p_arr, top_p_val,
                   min_p_arr, min_p_val)
    tokens = torch.empty(batch, dtype=torch.int64, device=x.device)
    logprobs = torch.empty(batch if return_logprobs else 0, dtype=torch.float32, device=x.device)
    wrap_triton(pick_kernel)[(batch, kept.chunks)](
        x, kept.info, kept.mass, *kept.chain_args(), seed, offset, tokens, logprobs if return_logprobs else tokens,
        vocab, batch, kept.chunk_len, kept.chunks, LOGPROBS=return_logprobs, **kept.constexprs())
    return tokens, logprobs
