"""CUDA C++ backend of the stack sampler (docs/ops.md "sample_stack"): steps 1-3 in the CUDA kernels of
csrc/include/fastsample/cuda/stack_sampler.cuh (op ``stack_processed_logits``), 4-7 on the device.

Exactness invariant: the processed logits are the float32 rounding of docs/ops.md's float64 formula (see the
kernel header; only the float64 order of repeated bias values may differ from the reference), and every later
step reads those logits exactly as the reference does, so tokens equal the reference's and the oracle's
modulo the documented boundary cases.

The op flags the rows invalid whatever follows (an id outside [-1, V), a NaN raw logit, a penalty out of
range) itself; steps 4-7 are stack_compose.finish with the CUDA kernels of the ``sample`` op
(csrc/include/fastsample/cuda/sampling.cuh) for one draw in HF order without logprobs.
"""
from __future__ import annotations

import torch

from . import stack_compose

Tensor = torch.Tensor
OptTensor = torch.Tensor | None


def available() -> bool:
    """True when the extension was compiled with this backend's CUDA kernels."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("fastsample::stack_processed_logits", "CUDA")
    except RuntimeError:  # an extension built before the op existed
        return False


def _processed_logits(*args) -> tuple[Tensor, Tensor]:
    """Steps 1-3 in the CUDA kernels: (processed float32 logits [B, V], bool [B] rows invalid whatever follows)."""
    return torch.ops.fastsample.stack_processed_logits(*args)


def sample_stack(logits: Tensor, allowed_mask: OptTensor, bias_ids: OptTensor, bias_values: OptTensor,
                 prompt_ids: OptTensor, output_ids: OptTensor, repetition_arr: OptTensor, repetition_val: float,
                 frequency_arr: OptTensor, frequency_val: float, presence_arr: OptTensor, presence_val: float,
                 *filters_and_draws) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The op-level stack sampler (same signature as fastsample._ops.sample_stack)."""
    x = logits.contiguous()
    rows = lambda t: t if t is None else t.contiguous()  # noqa: E731
    y, bad = _processed_logits(
        x, rows(allowed_mask), rows(bias_ids), rows(bias_values), rows(prompt_ids), rows(output_ids),
        rows(repetition_arr), repetition_val, rows(frequency_arr), frequency_val, rows(presence_arr), presence_val)
    penalties = lambda: stack_compose.penalty_rows(repetition_arr, repetition_val, frequency_arr,  # noqa: E731
                                                   frequency_val, presence_arr, presence_val, x.shape[0], x.device)
    return stack_compose.finish(torch.ops.fastsample.sample, x, y, bad, penalties, *filters_and_draws)
