"""The per-rank passes of vocab-parallel sampling over a rank's slice x [B, n]: fixed-size results, no host
reads, rows with ``mode`` 0 skipped. CPU tensors run the C++ ops of csrc/cpu/distributed.cpp (one pass each);
other devices, a build without the extension, or ``FASTSAMPLE_BACKEND=torch`` run the torch twins below, which
follow the same rules (csrc/cpu/distributed.cpp's header) token for token.

Row parameters ([B] tensors): m float32 (the global max), t float32 (temperature), mode int64 (0 off, 1 finite
row, 2 +inf row), theta float32 (tokens below weigh 0), log_min_p float64 (min-p drops d < it; -inf off),
per_nat float32 (8 / T where top-p bins the row, else 0).
"""
from __future__ import annotations

import os

import torch

from .. import _ops
from . import _exact

Tensor = torch.Tensor
BINS = 256
_INF = float("inf")


def _native(x: Tensor) -> bool:
    return _ops.DIST_OPS and x.device.type == "cpu" and os.environ.get("FASTSAMPLE_BACKEND") != "torch"


# ------------------------------------------------------------------------------------------ torch twins
def _weights(x: Tensor, m, t, mode, theta, log_min_p, scale: int) -> Tensor:
    """int64 [B, n]: the fixed-point weight of every token, negated where min-p drops it."""
    x = x.to(torch.float32)
    finite, inf_rows = mode == 1, mode == 2
    d = x.to(torch.float64).sub_(torch.where(finite, m, 0.0).to(torch.float64).unsqueeze(1))
    d.div_(torch.where(finite, t, 1.0).to(torch.float64).unsqueeze(1))
    q = d.exp().mul_(float(2**scale)).round_().to(torch.int64)
    q = torch.where((d >= log_min_p.unsqueeze(1)) | ~finite.unsqueeze(1), q, -q)
    q = torch.where(inf_rows.unsqueeze(1), (x == _INF).to(torch.int64) << scale, q)
    keep = (x >= theta.unsqueeze(1)) & (mode != 0).unsqueeze(1)
    return torch.where(keep, q, 0)


def _bins(x: Tensor, m: Tensor, per_nat: Tensor) -> Tensor:
    v = (m.unsqueeze(1) - x.to(torch.float32)) * per_nat.unsqueeze(1)
    v = torch.where(v >= 0, v, 0.0).clamp_(max=BINS - 1)  # NaN fails v >= 0: bin 0
    return v.to(torch.int64)


def _row_stats_torch(x: Tensor, tie_value: Tensor) -> Tensor:
    x = x.to(torch.float32)
    local_max = x.amax(dim=1)
    first = x.argmax(dim=1)
    has_nan = local_max.isnan()
    count = torch.where(has_nan, 0, (x == local_max.unsqueeze(1)).sum(dim=1))
    ties = (x == tie_value.unsqueeze(1)).sum(dim=1)
    return torch.stack([_exact.keys(local_max), first, count, has_nan.to(torch.int64), ties], dim=1)


def _weigh_torch(x, m, t, mode, theta, log_min_p, per_nat, scale, store_q):
    q = _weights(x, m, t, mode, theta, log_min_p, scale)
    binned = ((per_nat > 0) & (mode == 1)).unsqueeze(1)
    hist = torch.zeros(x.shape[0], BINS, dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, _bins(x, m, per_nat), torch.where(binned, q.abs(), 0))
    kept = q.clamp(min=0).sum(dim=1)
    return (q if store_q else q[:, :0]), hist, kept


def _digit_hist_torch(x, q, m, per_nat, chosen, prefix, shift):
    key = _exact.keys(x.to(torch.float32))
    inside = (q != 0) & (_bins(x, m, per_nat) == chosen.unsqueeze(1)) & ((key >> (shift + 8)) == prefix.unsqueeze(1))
    inside &= ((per_nat > 0) & (chosen >= 0)).unsqueeze(1)
    hist = torch.zeros(x.shape[0], BINS, dtype=torch.int64, device=x.device)
    return hist.scatter_add_(1, (key >> shift) & (BINS - 1), torch.where(inside, q.abs(), 0))


def _kept_torch(x, q, theta):
    return torch.where((q > 0) & (x.to(torch.float32) >= theta.unsqueeze(1)), q, 0).sum(dim=1)


def _walk_torch(x, q, m, t, mode, theta, log_min_p, target, scale):
    if q is None:
        q = _weights(x, m, t, mode, theta, log_min_p, scale)
    kept = torch.where((q > 0) & (x.to(torch.float32) >= theta.unsqueeze(1)), q, 0)
    n = x.shape[1]
    index = torch.searchsorted(kept.cumsum(dim=1), target.clamp(min=0).unsqueeze(1), right=True).squeeze(1)
    return torch.where((mode != 0) & (target >= 0), index.clamp(max=n - 1), 0)


# ------------------------------------------------------------------------------------------------- ops
def row_stats(x: Tensor, tie_value: Tensor) -> Tensor:
    """[B, 5] int64: key of the row max, index of its first occurrence, count of maxima (0 on NaN rows),
    has-NaN, count of tokens equal to tie_value."""
    if _native(x):
        return torch.ops.fastsample.dist_row_stats(x, tie_value)
    return _row_stats_torch(x, tie_value)


def weigh(x, m, t, mode, theta, log_min_p, per_nat, scale: int, store_q: bool):
    """(q [B, n] or [B, 0], top-p bin histogram [B, 256], the mass min-p keeps [B])."""
    if _native(x):
        return torch.ops.fastsample.dist_weigh(x, m, t, mode, theta, log_min_p, per_nat, scale, store_q)
    return _weigh_torch(x, m, t, mode, theta, log_min_p, per_nat, scale, store_q)


def digit_hist(x, q, m, per_nat, chosen, prefix, shift: int) -> Tensor:
    """[B, 256]: mass of bin `chosen`'s tokens whose key matches `prefix` above bit shift + 8, by their next
    8 key bits."""
    if _native(x):
        return torch.ops.fastsample.dist_digit_hist(x, q, m, per_nat, chosen, prefix, shift)
    return _digit_hist_torch(x, q, m, per_nat, chosen, prefix, shift)


def kept(x, q, theta) -> Tensor:
    """[B]: sum of q > 0 over x >= theta."""
    if _native(x):
        return torch.ops.fastsample.dist_kept(x, q, theta)
    return _kept_torch(x, q, theta)


def walk(x, q, m, t, mode, theta, log_min_p, target, scale: int) -> Tensor:
    """[B]: the first index whose cumulative kept weight exceeds target (0 where mode is 0 or target < 0)."""
    if _native(x):
        return torch.ops.fastsample.dist_walk(x, q, m, t, mode, theta, log_min_p, target, scale)
    return _walk_torch(x, q, m, t, mode, theta, log_min_p, target, scale)
