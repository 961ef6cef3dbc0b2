"""softmax with temperature: fastsample vs torch.softmax(x / T) (issue 6 target: within 1.1x of it)."""
from __future__ import annotations

import torch

import fastsample

from .common import BenchOp
from .providers import fastsample_impls, flashinfer_impl

T = 0.8


def _prepare(logits: torch.Tensor) -> dict:
    return {"logits": logits}


OPS = [
    BenchOp(f"softmax(T={T})", "softmax", _prepare, {
        **fastsample_impls(lambda d, backend: fastsample.softmax(d["logits"], T, backend=backend)),
        # float32 out, as fastsample's; for float32 logits the dtype argument changes nothing.
        "torch": lambda d: lambda: torch.softmax(d["logits"] / T, dim=-1, dtype=torch.float32),
        **flashinfer_impl("softmax", lambda fn, d: fn(d["logits"], temperature=T)),
    }),
]
