"""CUDA C++ route of the stack sampler (docs/ops.md "sample_stack"): steps 1-3 in the CUDA kernels of
csrc/include/fastsample/cuda/stack_sampler.cuh (op ``stack_processed_logits``), 4-7 on the device.
fastsample/_ops.py sends CUDA tensors here.

Exactness invariant: the processed logits are the float32 rounding of docs/ops.md's float64 formula (see the
kernel header; only the float64 order of repeated bias values may differ from the reference), and every later
step reads those logits exactly as the reference does, so tokens equal the reference's and the oracle's
modulo the documented boundary cases.

The op flags the rows invalid whatever follows (an id outside [-1, V), a NaN raw logit, a penalty out of
range) itself; steps 4-7 are compose.finish with the CUDA kernels of the ``sample`` op
(csrc/include/fastsample/cuda/sampling.cuh) for one draw in HF order without logprobs.
"""
from __future__ import annotations

import torch

from . import compose
from .spec import StackOpArgs

Tensor = torch.Tensor


def sample_stack(args: StackOpArgs) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The op-level stack sampler over `stack_processed_logits` (any device that op has a kernel for)."""
    rows = lambda t: t.contiguous() if isinstance(t, Tensor) else t  # noqa: E731
    args = args._replace(logits=args.logits.contiguous())
    y, bad = torch.ops.fastsample.stack_processed_logits(*map(rows, args.steps_1_3()))
    return compose.finish(torch.ops.fastsample.sample, args, y, bad)
