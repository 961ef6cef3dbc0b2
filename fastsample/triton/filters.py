"""The kept set of a row after temperature -> top-k -> top-p -> min-p (docs/ops.md, "Filters").

top-k and top-p each end in a threshold key from a radix chain (top-p's chain only sees the top-k
survivors, so its threshold is the higher one); min-p compares weights: w_i >= min_p * max_j w_j, in float64.
``kept_weights`` gives the float64 weight of each kept entry and 0 elsewhere; every consumer (mass sums,
inverse CDF, renormalisation) uses it, so they agree on the kept set entry for entry.
"""
import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from . import launch
from .radix import chain_theta, run_chain
from .rowstats import float_key, row_info, weights


@triton.jit
def resolve_theta(info, b, B, C, k_hist, k_state, p_hist, p_state, K_CHAIN: tl.constexpr, P_CHAIN: tl.constexpr,
                  C_PAD: tl.constexpr):
    """Row b's threshold key: from the top-p chain if it filters the row, else top-k's, else 0 (keep all)."""
    theta = tl.full((), 0, tl.int64)
    if K_CHAIN:
        if tl.load(info + 4) != 0:
            theta = chain_theta(k_hist, k_state, b, B, C, C_PAD)
    if P_CHAIN:
        if tl.load(info + 6) != 0:
            theta = chain_theta(p_hist, p_state, b, B, C, C_PAD)
    return theta


@triton.jit
def kept_weights(x, m, info, theta, IS_LOGITS: tl.constexpr):
    """float64 weights of the kept entries of a block (0 elsewhere and where ``m`` is false)."""
    w = weights(x, tl.load(info + 1).to(tl.float32), tl.load(info + 2).to(tl.float32), IS_LOGITS).to(tl.float64)
    kept = m & (float_key(x) >= theta) & (w >= tl.load(info + 7) * tl.load(info + 8))
    return tl.where(kept, w, 0.0)


@triton.jit
def mass_kernel(x_ptr, info_ptr, mass_ptr, k_hist, k_state, p_hist, p_state, V, B, chunk_len, C,
                IS_LOGITS: tl.constexpr, K_CHAIN: tl.constexpr, P_CHAIN: tl.constexpr, C_PAD: tl.constexpr,
                BLOCK: tl.constexpr):
    """mass[b, c] = float64 sum of the kept weights in chunk c of row b (rows that are not sampled: skipped)."""
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    info = info_ptr + b * 12
    if tl.load(info) == 0:
        theta = resolve_theta(info, b, B, C, k_hist, k_state, p_hist, p_state, K_CHAIN, P_CHAIN, C_PAD)
        row = x_ptr + b * V
        start = c * chunk_len
        end = tl.minimum(start + chunk_len, V)
        total = tl.zeros((), tl.float64)
        for base in range(start, end, BLOCK):
            offs = base + tl.arange(0, BLOCK)
            m = offs < end
            x = tl.load(row + offs, mask=m, other=0.0).to(tl.float32)
            total += tl.sum(kept_weights(x, m, info, theta, IS_LOGITS), 0)
        tl.store(mass_ptr + b * C + c, total)


class KeptSet:
    """Everything later launches need to rebuild a row's kept set: row record, chains, per-chunk masses."""

    def __init__(self, x, is_logits, t_arr, t_val, k_arr, k_val, p_arr, p_val, mp_arr, mp_val):
        batch, vocab = x.shape
        self.is_logits = is_logits
        self.chunks, self.chunk_len = launch.split(batch, vocab, x.device)
        self.info = row_info(x, is_logits, self.chunks, self.chunk_len, t_arr, t_val, k_arr, k_val, p_arr, p_val,
                             mp_arr, mp_val)
        # A chain runs only when some row may use it; scalars decide that on the host, tensors per row.
        k_chain = k_arr is not None or 0 < k_val < vocab
        p_chain = p_arr is not None or p_val < 1
        self.k = run_chain(x, self.info, self.chunks, self.chunk_len, mass=False, is_logits=is_logits) \
            if k_chain else None
        self.p = run_chain(x, self.info, self.chunks, self.chunk_len, mass=True, is_logits=is_logits, lo=self.k) \
            if p_chain else None
        self.mass = torch.empty((batch, self.chunks), dtype=torch.float64, device=x.device)
        wrap_triton(mass_kernel)[(batch, self.chunks)](x, self.info, self.mass, *self.chain_args(), vocab, batch,
                                                        self.chunk_len, self.chunks, **self.constexprs())

    def chain_args(self):
        """(k_hist, k_state, p_hist, p_state) pointers; an absent chain is replaced by an unused tensor."""
        k = self.k if self.k is not None else (self.info, self.info)
        p = self.p if self.p is not None else (self.info, self.info)
        return (*k, *p)

    def constexprs(self):
        return dict(IS_LOGITS=self.is_logits, K_CHAIN=self.k is not None, P_CHAIN=self.p is not None,
                    C_PAD=launch.pow2(self.chunks), BLOCK=launch.BLOCK, num_warps=launch.NUM_WARPS)
