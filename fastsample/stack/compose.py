"""Steps 4-7 of the stack sampler (docs/ops.md "sample_stack") for the routes whose steps 1-3 are GPU kernels
(CUDA C++ in cuda.py, Triton in fastsample/triton/stack_sampler.py): both produce the processed float32 logits
y [B, V] and `bad` [B], the rows invalid whatever follows (an id outside [-1, V), a NaN raw logit, a penalty
out of range), then finish here the same way.

- One draw in HF order without logprobs or top-n-sigma (the common serving call) is exactly the `sample` op's
  contract on y: the backend's own fused `sample` kernels, then -1 on the `bad` rows (`sample` checks its own
  parameters).
- Otherwise (vLLM order, n draws, logprobs/ranks/top-N, top-n-sigma): temperature, filters and draws as torch ops
  on the device (reference.sample_processed, the same code as backend "torch"), not fused.

Either way nothing is read on the host: the op is graph-safe.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import reference
from .spec import StackOpArgs, penalties_ok

Tensor = torch.Tensor


def invalid_rows(args: StackOpArgs, id_bad: Tensor) -> Tensor:
    """`bad` from a kernel that flags out-of-range ids only: adds NaN raw logits and penalties out of range."""
    ok = penalties_ok(args.row("repetition"), args.row("frequency"), args.row("presence"))
    return id_bad | ~ok | args.logits.isnan().any(dim=1)


def finish(sample_op: Callable, args: StackOpArgs, y: Tensor,
           bad: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Steps 4-7 on y (module docstring); `sample_op` has the signature of torch.ops.fastsample.sample.
    Returns what the op `sample_stack` returns."""
    x = args.logits
    batch, device = x.shape[0], x.device
    rows = lambda t: t if t is None else t.contiguous()  # noqa: E731
    seed, offset = args.seed.contiguous(), args.offset.contiguous()
    if args.fused_filters_only() and not args.vllm_order and args.num_samples == 1 and args.logprobs_mode == 0:
        token, _ = sample_op(y, True, rows(args.temperature_arr), args.temperature_val, rows(args.top_k_arr),
                             args.top_k_val, rows(args.top_p_arr), args.top_p_val, rows(args.min_p_arr),
                             args.min_p_val, seed, offset, False)
        empty = torch.empty(0, 1, device=device)
        return (torch.where(bad, -1, token).unsqueeze(1), empty, empty.long(),
                torch.empty(batch, 0, dtype=torch.int64, device=device), torch.empty(batch, 0, device=device))
    return reference.sample_processed(
        x.to(torch.float32), y, bad, args.row("repetition"), args.row("frequency"), args.row("presence"),
        args.row("temperature"), args.row("top_k"), args.row("top_p"), args.row("min_p"), args.row("top_n_sigma"),
        args.vllm_order, args.num_samples, seed, offset, args.logprobs_mode, args.top_n)
