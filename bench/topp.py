"""top_p_renorm_probs: probabilities renormalised over the top-p nucleus (p = 0.9)."""
from __future__ import annotations

import torch

import fastsample

from .common import BenchOp
from .providers import fastsample_impls, flashinfer_impl, hf_apply, hf_impl

P = 0.9


def _prepare(logits: torch.Tensor) -> dict:
    return {"probs": torch.softmax(logits.float(), dim=-1)}


def _torch_renorm(probs: torch.Tensor) -> torch.Tensor:
    """Sort, cumsum, cut, scatter back, renormalise: the usual torch recipe."""
    sorted_p, ids = torch.sort(probs, dim=-1, descending=True)
    sorted_p = sorted_p.masked_fill(torch.cumsum(sorted_p, dim=-1) - sorted_p >= P, 0.0)
    out = torch.zeros_like(probs).scatter_(1, ids, sorted_p)
    return out / out.sum(dim=-1, keepdim=True)


OPS = [
    BenchOp(f"top_p_renorm_probs(p={P})", "topp", _prepare, {
        **fastsample_impls(lambda d, backend: fastsample.top_p_renorm_probs(d["probs"], P, backend=backend)),
        "torch": lambda d: lambda: _torch_renorm(d["probs"]),
        # HF warpers work on scores: log-probabilities in, renormalised probabilities out.
        **hf_impl(lambda d, warpers: torch.softmax(hf_apply(d["probs"].log(), warpers), dim=-1), top_p=P),
        **flashinfer_impl("top_p_renorm_probs", lambda fn, d: fn(d["probs"], P)),
    }, probs_only=True),
]
