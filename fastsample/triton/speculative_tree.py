"""``tree_speculative_sampling`` (docs/ops.md): one program per row walks its token tree.

The walk meets the nodes once in index order; a node is tested iff its parent is the current node (every
parent precedes its children, so that order tries each node's children in index order). Control flow is
scalar per row: an accepted child reads two entries; only a rejection touches a whole row, to turn the
residual r = w / mass into its next value in a float64 scratch row (``w``), and the final token streams the
row the walk stopped at (the target row itself while nothing was rejected there) twice: validity and sum,
then the inverse-CDF walk of cdf.py. Draws: node i tests with draw i, the final token uses draw N.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .cdf import walk_block, walk_token
from .jit import helper, wrap_triton
from .philox import philox_uniform

BLOCK = 512  # float64 tiles: at 1024 the sampled kernel spills on sm_90 (tools/check_gpu.py)
INTERPRETER_BLOCK = 256


@helper
def _bad(x):
    """1 where x is NaN, negative or infinite."""
    return ((x != x) | (x < 0) | (x == float("inf"))).to(tl.int32)


@helper
def _source(p_row, w_row, fresh, offs, m):
    """The residual's weights at offs: the target row while ``fresh``, else the scratch row (float64)."""
    use_p = (tl.zeros_like(offs) + fresh) != 0  # a block mask: the interpreter rejects block & scalar masks
    p = tl.load(p_row + offs, mask=m & use_p, other=0.0).to(tl.float64)
    w = tl.load(w_row + offs, mask=m & ~use_p, other=0.0)
    return tl.where(use_p, p, w)


@triton.jit
def tree_kernel(ids_ptr, parents_ptr, target_ptr, draft_ptr, seed_ptr, offset_ptr, w_ptr, out_ptr, nodes_ptr,
                emitted_ptr, V, N, HAS_DRAFT: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    seed = tl.load(seed_ptr + b)
    offset = tl.load(offset_ptr + b)
    w_row = w_ptr + b * V
    malformed = tl.zeros((), tl.int32)
    for i in range(N):
        t = tl.load(ids_ptr + b * N + i)
        parent = tl.load(parents_ptr + b * N + i)
        malformed += ((t != -1) & ((parent < -1) | (parent >= i))).to(tl.int32)
    valid = malformed == 0
    cur = tl.full((), -1, tl.int64)
    depth = tl.zeros((), tl.int64)
    fresh = tl.full((), 1, tl.int32)  # the residual is the current node's target row, mass 1
    mass = tl.full((), 1.0, tl.float64)
    for i in range(N):
        t = tl.load(ids_ptr + b * N + i)
        parent = tl.load(parents_ptr + b * N + i)
        if valid & (t != -1) & (parent == cur):
            p_row = target_ptr + (b * (N + 1) + cur + 1) * V
            in_range = (t >= 0) & (t < V)
            ts = tl.where(in_range, t, 0)
            r_t = tl.where(fresh != 0, tl.load(p_row + ts).to(tl.float64), tl.load(w_row + ts))
            u = philox_uniform(seed, offset, i).to(tl.float64)
            if HAS_DRAFT:
                lhs = u * tl.load(draft_ptr + (b * N + i) * V + ts).to(tl.float64) * mass
            else:
                lhs = u * mass
            if in_range & (lhs < r_t):  # a NaN compares false: rejected
                tl.store(out_ptr + b * (N + 1) + depth, t)
                tl.store(nodes_ptr + b * N + depth, i)
                depth += 1
                cur = i + tl.zeros((), tl.int64)
                fresh = tl.full((), 1, tl.int32)
                mass = tl.full((), 1.0, tl.float64)
            elif HAS_DRAFT:  # r <- norm(max(r - q, 0)); zero mass keeps r; a bad entry makes r all NaN
                q_row = draft_ptr + (b * N + i) * V
                bad = tl.zeros((), tl.int32)
                total = tl.zeros((), tl.float64)
                for base in range(0, V, BLOCK):
                    offs = base + tl.arange(0, BLOCK)
                    m = offs < V
                    src = _source(p_row, w_row, fresh, offs, m)
                    q = tl.load(q_row + offs, mask=m, other=0.0).to(tl.float64)
                    bad += tl.sum(_bad(src) | _bad(q), 0)
                    total += tl.sum(tl.where(m, tl.maximum(src / mass - q, 0.0), 0.0), 0)
                if (bad != 0) | (total > 0):
                    for base in range(0, V, BLOCK):
                        offs = base + tl.arange(0, BLOCK)
                        m = offs < V
                        src = _source(p_row, w_row, fresh, offs, m)
                        q = tl.load(q_row + offs, mask=m, other=0.0).to(tl.float64)
                        r = tl.where(bad != 0, float("nan"), tl.maximum(src / mass - q, 0.0))
                        tl.store(w_row + offs, r, mask=m)
                    mass = tl.where(bad != 0, mass, total)
                    fresh = tl.zeros((), tl.int32)
            elif in_range:  # r <- norm(r without t)
                if fresh != 0:
                    for base in range(0, V, BLOCK):
                        offs = base + tl.arange(0, BLOCK)
                        m = offs < V
                        tl.store(w_row + offs, tl.load(p_row + offs, mask=m, other=0.0).to(tl.float64), mask=m)
                    fresh = tl.zeros((), tl.int32)
                mass -= r_t
                tl.store(w_row + ts, 0.0)
    # The final token from the residual where the walk stopped: -1 if it holds a bad entry or sums to 0.
    p_row = target_ptr + (b * (N + 1) + cur + 1) * V
    bad = tl.zeros((), tl.int32)
    total = tl.zeros((), tl.float64)
    for base in range(0, V, BLOCK):
        offs = base + tl.arange(0, BLOCK)
        m = offs < V
        src = _source(p_row, w_row, fresh, offs, m)
        bad += tl.sum(_bad(src), 0)
        total += tl.sum(src, 0)
    token = tl.full((1,), -1, tl.int64)
    if valid & (bad == 0) & (total > 0):
        target = (philox_uniform(seed, offset, N).to(tl.float64) * total) + tl.zeros((1,), tl.float64)
        running = tl.zeros((1,), tl.float64)
        last = tl.full((1,), -1, tl.int64)
        for base in range(0, V, BLOCK):
            offs = base + tl.arange(0, BLOCK)
            m = offs < V
            src = _source(p_row, w_row, fresh, offs, m)
            running, token, last = walk_block(src[None, :], offs, V, target, running, token, last)
        token = walk_token(token, last)
    tl.store(out_ptr + b * (N + 1) + depth + tl.arange(0, 1), token)
    tl.store(emitted_ptr + b, depth)


def tree_speculative_sampling(draft_token_ids: torch.Tensor, parents: torch.Tensor, target_probs: torch.Tensor,
                              draft_probs: torch.Tensor | None, seed: torch.Tensor, offset: torch.Tensor):
    """(output_token_ids [B, N + 1], accepted_nodes [B, N], emitted_num [B]) per docs/ops.md."""
    batch, n = draft_token_ids.shape
    vocab = target_probs.shape[2]
    device = target_probs.device
    out = torch.full((batch, n + 1), -1, dtype=torch.int64, device=device)
    nodes = torch.full((batch, n), -1, dtype=torch.int64, device=device)
    emitted = torch.zeros(batch, dtype=torch.int64, device=device)
    if batch == 0:
        return out, nodes, emitted
    scratch = torch.empty((batch, vocab), dtype=torch.float64, device=device)
    block = INTERPRETER_BLOCK if device.type == "cpu" else BLOCK
    has_draft = draft_probs is not None
    wrap_triton(tree_kernel)[(batch,)](draft_token_ids, parents, target_probs,
                                       draft_probs if has_draft else target_probs, seed, offset, scratch, out, nodes,
                                       emitted, vocab, n, HAS_DRAFT=has_draft, BLOCK=block, num_warps=4)
    return out, nodes, emitted
