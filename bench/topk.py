"""top_k (k largest values + ids, issue 6 target: 2x faster than torch.topk) and top_k_mask_logits."""
from __future__ import annotations

import torch

import fastsample

from .common import BenchOp
from .providers import fastsample_impls, flashinfer_impl, hf_apply, hf_impl

K = 50


def _prepare(logits: torch.Tensor) -> dict:
    return {"logits": logits}


def _torch_mask(logits: torch.Tensor) -> torch.Tensor:
    kth = torch.topk(logits, K, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


OPS = [
    BenchOp(f"top_k(k={K})", "topk", _prepare, {
        **fastsample_impls(lambda d, backend: fastsample.top_k(d["logits"], K, backend=backend)),
        "torch": lambda d: lambda: torch.topk(d["logits"], K, dim=-1),
        **flashinfer_impl("top_k", lambda fn, d: fn(d["logits"], K)),
    }),
    BenchOp(f"top_k_mask_logits(k={K})", "topk", _prepare, {
        **fastsample_impls(lambda d, backend: fastsample.top_k_mask_logits(d["logits"], K, backend=backend)),
        "torch": lambda d: lambda: _torch_mask(d["logits"]),
        **hf_impl(lambda d, warpers: hf_apply(d["logits"], warpers), top_k=K),
        **flashinfer_impl("top_k_mask_logits", lambda fn, d: fn(d["logits"], K)),
    }),
]
