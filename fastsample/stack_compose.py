"""Steps 4-7 of the stack sampler (docs/ops.md "sample_stack") for the backends whose steps 1-3 are GPU kernels
(CUDA C++ in stack_cuda.py, Triton in triton/stack_sampler.py): both produce the processed float32 logits y
[B, V] and `bad` [B], the rows invalid whatever follows (an id outside [-1, V), a NaN raw logit, a penalty out
of range), then finish here the same way.

- One draw in HF order without logprobs (the common serving call) is exactly the `sample` op's contract on y:
  the backend's own fused `sample` kernels, then -1 on the `bad` rows (`sample` checks its own parameters).
- Otherwise (vLLM order, n draws, logprobs/ranks/top-N): temperature, filters and draws as torch ops on the
  device (reference_stack.sample_processed, the same code as backend "torch"), not fused.

Either way nothing is read on the host: the op is graph-safe.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import reference_stack
from .reference import _per_row_tensor

Tensor = torch.Tensor
OptTensor = torch.Tensor | None


def penalty_rows(repetition_arr: OptTensor, repetition_val: float, frequency_arr: OptTensor, frequency_val: float,
                 presence_arr: OptTensor, presence_val: float, batch: int,
                 device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The three penalties as float32 [B] tensors (a scalar rounded to float32, as the CPU kernel does)."""
    return tuple(_per_row_tensor(arr, val, batch, torch.float32, device).contiguous()
                 for arr, val in ((repetition_arr, repetition_val), (frequency_arr, frequency_val),
                                  (presence_arr, presence_val)))


def invalid_rows(x: Tensor, id_bad: Tensor, rep: Tensor, freq: Tensor, pres: Tensor) -> Tensor:
    """`bad` from a kernel that flags out-of-range ids only: adds NaN raw logits and penalties out of range."""
    return id_bad | ~((rep > 0) & rep.isfinite() & freq.isfinite() & pres.isfinite()) | x.isnan().any(dim=1)


def finish(sample_op: Callable, x: Tensor, y: Tensor, bad: Tensor,
           penalties: Callable[[], tuple[Tensor, Tensor, Tensor]], temperature_arr: OptTensor,
           temperature_val: float, top_k_arr: OptTensor, top_k_val: int, top_p_arr: OptTensor, top_p_val: float,
           min_p_arr: OptTensor, min_p_val: float, vllm_order: bool, num_samples: int, seed: Tensor, offset: Tensor,
           logprobs_mode: int, top_n: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Steps 4-7 on y (module docstring); `sample_op` has the signature of torch.ops.fastsample.sample and
    `penalties()` gives the float32 [B] penalties (only the torch steps need them). Returns what the op
    `sample_stack` returns."""
    batch, device = x.shape[0], x.device
    rows = lambda t: t if t is None else t.contiguous()  # noqa: E731
    if not vllm_order and num_samples == 1 and logprobs_mode == 0:
        token, _ = sample_op(y, True, rows(temperature_arr), temperature_val, rows(top_k_arr), top_k_val,
                             rows(top_p_arr), top_p_val, rows(min_p_arr), min_p_val, seed.contiguous(),
                             offset.contiguous(), False)
        empty = torch.empty(0, 1, device=device)
        return (torch.where(bad, -1, token).unsqueeze(1), empty, empty.long(),
                torch.empty(batch, 0, dtype=torch.int64, device=device), torch.empty(batch, 0, device=device))
    param = lambda arr, val, dtype=torch.float32: _per_row_tensor(arr, val, batch, dtype, device)  # noqa: E731
    return reference_stack.sample_processed(
        x.to(torch.float32), y, bad, *penalties(), param(temperature_arr, temperature_val),
        param(top_k_arr, top_k_val, torch.int64), param(top_p_arr, top_p_val), param(min_p_arr, min_p_val),
        vllm_order, num_samples, seed.contiguous(), offset.contiguous(), logprobs_mode, top_n)
