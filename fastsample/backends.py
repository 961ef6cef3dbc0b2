"""The op interface every backend implements, and the dispatch that picks a backend (docs/design.md, section 2).

A backend is a module with the op-level functions of `Ops`: fastsample._ops (the C++ kernels, CPU and
CUDA), fastsample.triton.ops (Triton) and fastsample.reference (pure torch). The public API (sampling.py,
speculative.py) checks arguments, turns scalar-or-tensor parameters into (tensor or None, scalar) pairs and
per-row (seed, offset) tensors, and calls one of them through `ops_for`. Op functions trust their arguments:
shapes, dtypes and scalar ranges are checked before; per-row tensors are int64 or float32 of shape [B] on the
input's device, and a per-row value out of range gives that row -1 (or a NaN / zero row), never an error.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol

import torch

from . import _ops

if TYPE_CHECKING:  # a runtime import would be circular (the stack package dispatches through this module)
    from .stack.spec import StackOpArgs

Tensor = torch.Tensor
OptTensor = torch.Tensor | None
BACKENDS = ("cpu", "cuda", "triton", "torch")


class Ops(Protocol):
    """The op-level functions of a backend. ``<name>_arr`` is a per-row tensor [B] or None, in which case
    the scalar ``<name>_val`` holds for every row; ``seed`` and ``offset`` are int64 [B] (fastsample/_rng.py)."""

    def softmax(self, logits: Tensor, temperature_arr: OptTensor, temperature_val: float) -> Tensor:
        """float32 softmax(logits / T) per row; T == 0: uniform over the row's maxima; invalid row: NaN."""

    def top_k(self, x: Tensor, k: int, sorted: bool) -> tuple[Tensor, Tensor]:
        """(values, int64 indices) of the k largest entries per row, ties to the lower index, NaN largest."""

    def top_k_mask_logits(self, logits: Tensor, top_k_arr: OptTensor, top_k_val: int) -> Tensor:
        """logits with every entry below the row's k-th largest set to -inf (k <= 0 or k >= V: unchanged)."""

    def renorm_probs(self, probs: Tensor, top_k_arr: OptTensor, top_k_val: int, top_p_arr: OptTensor,
                     top_p_val: float, min_p_arr: OptTensor, min_p_val: float) -> Tensor:
        """probs renormalised over the kept set of top-k -> top-p -> min-p, 0 elsewhere; invalid row: zeros."""

    def sample(self, x: Tensor, is_logits: bool, temperature_arr: OptTensor, temperature_val: float,
               top_k_arr: OptTensor, top_k_val: int, top_p_arr: OptTensor, top_p_val: float,
               min_p_arr: OptTensor, min_p_val: float, seed: Tensor, offset: Tensor,
               return_logprobs: bool) -> tuple[Tensor, Tensor]:
        """(int64 tokens [B], float32 logprobs [B] or [0]): one draw (j = 0) per row from the kept set."""

    def chain_speculative_sampling(self, draft_probs: Tensor, draft_token_ids: Tensor, target_probs: Tensor,
                                   seed: Tensor, offset: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(output_token_ids [B, n+1], accepted_num [B], emitted_num [B]) of speculative acceptance."""

    def sample_stack(self, args: StackOpArgs) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(tokens [B, n], logprobs, ranks, top_ids, top_logprobs) of the stack sampler (fastsample/stack/)."""


OP_NAMES = tuple(name for name in Ops.__dict__ if not name.startswith("_"))


def backend_ops(name: str) -> Ops:
    """The op module of backend ``name``; a RuntimeError says why when it cannot run here."""
    if name == "torch":
        from . import reference

        return reference
    if name == "triton":
        from .triton import ops

        return ops
    if not _ops.AVAILABLE:
        raise RuntimeError(f"backend {name!r} needs the compiled extension fastsample._C, which failed to "
                           f"import ({_ops.IMPORT_ERROR}); reinstall with `pip install --no-build-isolation .`")
    if name == "cuda" and not _ops.cuda_built():
        raise RuntimeError("backend 'cuda' was requested but fastsample._C was built without CUDA kernels; pass "
                           "backend='triton' (or 'torch') to run on CUDA tensors")
    return _ops


def resolve_backend(x: Tensor, backend: str | None = None) -> str:
    """The backend name for tensor ``x``: the ``backend`` argument, else $FASTSAMPLE_BACKEND, else by device."""
    name = backend or os.environ.get("FASTSAMPLE_BACKEND") or None
    if name is None:
        if x.device.type == "cpu":
            return "cpu" if _ops.AVAILABLE else "torch"
        return "cuda" if _ops.cuda_built() else "triton"
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "cpu" and x.device.type != "cpu":
        raise ValueError(f"backend 'cpu' needs CPU tensors, got a tensor on {x.device}")
    if name == "cuda" and x.device.type != "cuda":
        raise ValueError(f"backend 'cuda' needs CUDA tensors, got a tensor on {x.device}")
    if name == "triton" and x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("backend 'triton' runs on CPU tensors only under TRITON_INTERPRET=1")
    return name


def ops_for(x: Tensor, backend: str | None = None) -> Ops:
    """The op module that runs on ``x``'s device for ``backend`` (see `resolve_backend`)."""
    return backend_ops(resolve_backend(x, backend))
