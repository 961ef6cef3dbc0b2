"""The fused ``sample`` op: temperature -> top-k -> top-p -> min-p -> one token per row (+ logprobs).

Launches: row stats and record (2), a top-k chain and a top-p chain when some row filters (8 each, see
radix.py), the kept mass per chunk (1), and ``pick_kernel`` (1). The draw: u = Philox uniform of
(seed_b, offset_b, draw 0); the token is the smallest kept i with cumsum_{kept k <= i} w_k > u * W
(ascending ids): the chunk that owns u * W and the walk over it come from cdf.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .cdf import chunk_owner, walk_block, walk_start, walk_token
from .filters import KeptSet, kept_weights, resolve_theta, row_fields
from .jit import helper, wrap_triton
from .launch import program_chunk, program_rows
from .philox import philox_uniform
from .rowstats import INFO_ARGMAX, INFO_FIELDS, INFO_NMAX, INFO_STATUS


@helper
def inverse_cdf(x_ptr, rows, live, V, start, end, below, target, row_max, temperature, floor, theta,
                IS_LOGITS: tl.constexpr, R: tl.constexpr, BLOCK: tl.constexpr):
    """Per row, the smallest kept id i in [start, end) with below + sum_{kept k in [start, i]} w_k > target
    (the last kept id with w > 0 when rounding leaves the chunk's sum just short)."""
    running, token, last = walk_start(below, R)
    for base in range(start, end, BLOCK):
        offs = base + tl.arange(0, BLOCK)
        m = live[:, None] & (offs < end)[None, :]
        x = tl.load(x_ptr + rows[:, None] * V + offs[None, :], mask=m, other=0.0).to(tl.float32)
        w = kept_weights(x, m, row_max, temperature, floor, theta, IS_LOGITS)
        running, token, last = walk_block(w, offs, end, target, running, token, last)
    return walk_token(token, last)


@triton.jit
def pick_kernel(x_ptr, info_ptr, mass_ptr, k_hist, k_state, p_hist, p_state, seed_ptr, offset_ptr, token_ptr,
                logprob_ptr, B, V, chunk_len, C, IS_LOGITS: tl.constexpr, K_CHAIN: tl.constexpr,
                P_CHAIN: tl.constexpr, LOGPROBS: tl.constexpr, R: tl.constexpr, C_PAD: tl.constexpr,
                BLOCK: tl.constexpr):
    rows, rmask = program_rows(B, R)
    c, start, end = program_chunk(chunk_len, V)
    info = info_ptr + rows * INFO_FIELDS
    status = tl.load(info + INFO_STATUS, mask=rmask, other=0.0)
    # Greedy rows take the lowest argmax (logprob: the T -> 0 limit, uniform over the maxima); invalid: -1.
    # The chunk-0 program writes them.
    done = rmask & (status != 0) & (rows * 0 + c == 0)
    greedy = status == 1
    argmax = tl.load(info + INFO_ARGMAX, mask=done, other=0.0).to(tl.int64)
    tl.store(token_ptr + rows, tl.where(greedy, argmax, -1), mask=done)
    if LOGPROBS:
        nmax = tl.load(info + INFO_NMAX, mask=done, other=1.0).to(tl.float32)
        tl.store(logprob_ptr + rows, tl.where(greedy, -tl.log(nmax), float("nan")), mask=done)

    live = rmask & (status == 0)
    cs = tl.arange(0, C_PAD)
    sums = tl.load(mass_ptr + rows[:, None] * C + cs[None, :], mask=live[:, None] & (cs < C)[None, :], other=0.0)
    total, below, upto = chunk_owner(sums, c, C, C_PAD)
    seed = tl.load(seed_ptr + rows, mask=live, other=0)
    offset = tl.load(offset_ptr + rows, mask=live, other=0)
    u = philox_uniform(seed, offset, 0)
    target = u.to(tl.float64) * total
    mine = live & (below <= target) & (target < upto)
    theta = resolve_theta(info, rows, mine, B, C, k_hist, k_state, p_hist, p_state, K_CHAIN, P_CHAIN, C_PAD)
    row_max, temperature, floor = row_fields(info, mine)
    token = inverse_cdf(x_ptr, rows, mine, V, start, end, below, target, row_max, temperature, floor, theta,
                        IS_LOGITS, R, BLOCK)
    tl.store(token_ptr + rows, token, mask=mine)
    if LOGPROBS:
        xt = tl.load(x_ptr + rows * V + token, mask=mine, other=0.0).to(tl.float32)[:, None]
        wt = tl.sum(kept_weights(xt, mine[:, None], row_max, temperature, floor, theta, IS_LOGITS), 1)
        ratio = tl.where(mine, wt / tl.where(total > 0, total, 1.0), 1.0)
        tl.store(logprob_ptr + rows, tl.log(ratio.to(tl.float32)), mask=mine)


def sample(x: torch.Tensor, is_logits: bool, temperature_arr, temperature_val: float, top_k_arr, top_k_val: int,
           top_p_arr, top_p_val: float, min_p_arr, min_p_val: float, seed: torch.Tensor, offset: torch.Tensor,
           return_logprobs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the sampling pipeline; see docs/ops.md "sample" for the exact contract."""
    batch, vocab = x.shape
    kept = KeptSet(x, is_logits, temperature_arr, temperature_val, top_k_arr, top_k_val, top_p_arr, top_p_val,
                   min_p_arr, min_p_val)
    # -1 up front: a row no program claims (impossible unless the masses are corrupt) never leaves garbage.
    tokens = torch.full((batch,), -1, dtype=torch.int64, device=x.device)
    logprobs = torch.empty(batch if return_logprobs else 0, dtype=torch.float32, device=x.device)
    wrap_triton(pick_kernel)[kept.grid.grid](
        x, kept.info, kept.mass, *kept.chain_args(), seed, offset, tokens, logprobs if return_logprobs else tokens,
        batch, vocab, kept.grid.chunk_len, kept.grid.chunks, LOGPROBS=return_logprobs, **kept.constexprs())
    return tokens, logprobs
