"""CUDA C++ backend of the stack sampler (docs/ops.md "sample_stack"): steps 1-3 in the CUDA kernels of
csrc/include/fastsample/cuda/stack_sampler.cuh (op ``stack_processed_logits``), 4-7 on the device.

Exactness invariant: the processed logits are the float32 rounding of docs/ops.md's float64 formula (see the
kernel header; only the float64 order of repeated bias values may differ from the reference), and every later
step reads those logits exactly as the reference does, so tokens equal the reference's and the oracle's
modulo the documented boundary cases.

- One draw in HF order without logprobs (the common serving call): the CUDA kernels of the ``sample`` op on
  the processed logits (csrc/include/fastsample/cuda/sampling.cuh), then -1 where the overrides kernel
  flagged the row (an id outside [-1, V), a NaN raw logit, a penalty out of range).
- Otherwise (vLLM order, n draws, logprobs/ranks/top-N): temperature, filters and draws as torch ops on the
  device (fastsample/reference_stack.py ``sample_processed``, the same code as the Triton backend's), not fused.
Either way nothing is read on the host: the op is graph-safe.
"""
from __future__ import annotations

import torch

from . import reference_stack
from .reference import _per_row_tensor

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
                 temperature_arr: OptTensor, temperature_val: float, top_k_arr: OptTensor, top_k_val: int,
                 top_p_arr: OptTensor, top_p_val: float, min_p_arr: OptTensor, min_p_val: float, vllm_order: bool,
                 num_samples: int, seed: Tensor, offset: Tensor, logprobs_mode: int,
                 top_n: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The op-level stack sampler (same signature as fastsample._ops.sample_stack)."""
    batch = logits.shape[0]
    device = logits.device
    x = logits.contiguous()
    rows = lambda t: t if t is None else t.contiguous()  # noqa: E731
    y, bad = _processed_logits(
        x, rows(allowed_mask), rows(bias_ids), rows(bias_values), rows(prompt_ids), rows(output_ids),
        rows(repetition_arr), repetition_val, rows(frequency_arr), frequency_val, rows(presence_arr), presence_val)
    if not vllm_order and num_samples == 1 and logprobs_mode == 0:
        # One draw in HF order without logprobs is exactly the `sample` op's contract on y: its CUDA kernels.
        token, _ = torch.ops.fastsample.sample(y, True, rows(temperature_arr), temperature_val, rows(top_k_arr),
                                               top_k_val, rows(top_p_arr), top_p_val, rows(min_p_arr), min_p_val,
                                               seed.contiguous(), offset.contiguous(), False)
        empty = torch.empty(0, 1, device=device)
        return (torch.where(bad, -1, token).unsqueeze(1), empty, empty.long(),
                torch.empty(batch, 0, dtype=torch.int64, device=device), torch.empty(batch, 0, device=device))
    param = lambda arr, val, dtype=torch.float32: _per_row_tensor(arr, val, batch, dtype, device)  # noqa: E731
    return reference_stack.sample_processed(
        x.to(torch.float32), y, bad, param(repetition_arr, repetition_val), param(frequency_arr, frequency_val),
        param(presence_arr, presence_val), param(temperature_arr, temperature_val),
        param(top_k_arr, top_k_val, torch.int64), param(top_p_arr, top_p_val), param(min_p_arr, min_p_val),
        vllm_order, num_samples, seed.contiguous(), offset.contiguous(), logprobs_mode, top_n)
