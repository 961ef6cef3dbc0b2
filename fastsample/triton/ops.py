"""The six op-level functions of the Triton backend, with the signatures of fastsample/_ops.py.

Each op is registered as ``torch.ops.fastsample_triton.<name>`` with ``torch.library.triton_op`` and launches
its kernels through ``wrap_triton``, so ``torch.compile(fullgraph=True)`` traces into the kernels and CUDA-graph
capture works: seeds, offsets and per-row parameters stay device tensors and no op reads a value on the host.
On CPU tensors the kernels run only under TRITON_INTERPRET=1 (fastsample/sampling.py checks that).
"""
from __future__ import annotations

import torch
from torch.library import triton_op

from ..stack.spec import StackOpArgs

from . import renorm as _renorm
from . import sampling as _sampling
from . import softmax as _softmax
from . import speculative as _speculative
from . import speculative_tree as _speculative_tree
from . import stack_sampler as _stack_sampler
from . import topk as _topk

Tensor = torch.Tensor
OptTensor = torch.Tensor | None


def _rows(t: OptTensor) -> OptTensor:
    """A per-row tensor the kernels can index by row: seeds drawn once per call arrive as expanded views."""
    return t if t is None else t.contiguous()


@triton_op("fastsample_triton::softmax", mutates_args=())
def _softmax_op(logits: Tensor, temperature_arr: OptTensor, temperature_val: float) -> Tensor:
    return _softmax.softmax(logits.contiguous(), _rows(temperature_arr), temperature_val)


@triton_op("fastsample_triton::top_k", mutates_args=())
def _top_k_op(x: Tensor, k: int, sorted: bool) -> tuple[Tensor, Tensor]:
    return _topk.top_k(x.contiguous(), k, sorted)


@triton_op("fastsample_triton::top_k_mask_logits", mutates_args=())
def _top_k_mask_logits_op(logits: Tensor, top_k_arr: OptTensor, top_k_val: int) -> Tensor:
    return _topk.top_k_mask_logits(logits.contiguous(), _rows(top_k_arr), top_k_val)


@triton_op("fastsample_triton::renorm_probs", mutates_args=())
def _renorm_probs_op(probs: Tensor, top_k_arr: OptTensor, top_k_val: int, top_p_arr: OptTensor, top_p_val: float,
                     min_p_arr: OptTensor, min_p_val: float) -> Tensor:
    return _renorm.renorm_probs(probs.contiguous(), _rows(top_k_arr), top_k_val, _rows(top_p_arr), top_p_val,
                                _rows(min_p_arr), min_p_val)


@triton_op("fastsample_triton::sample", mutates_args=())
def _sample_op(x: Tensor, is_logits: bool, temperature_arr: OptTensor, temperature_val: float, top_k_arr: OptTensor,
               top_k_val: int, top_p_arr: OptTensor, top_p_val: float, min_p_arr: OptTensor, min_p_val: float,
               seed: Tensor, offset: Tensor, return_logprobs: bool) -> tuple[Tensor, Tensor]:
    return _sampling.sample(x.contiguous(), is_logits, _rows(temperature_arr), temperature_val, _rows(top_k_arr),
                            top_k_val, _rows(top_p_arr), top_p_val, _rows(min_p_arr), min_p_val, _rows(seed),
                            _rows(offset), return_logprobs)


@triton_op("fastsample_triton::chain_speculative_sampling", mutates_args=())
def _chain_speculative_sampling_op(draft_probs: Tensor, draft_token_ids: Tensor, target_probs: Tensor, seed: Tensor,
                                   offset: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return _speculative.chain_speculative_sampling(draft_probs.contiguous(), draft_token_ids.contiguous(),
                                                   target_probs.contiguous(), _rows(seed), _rows(offset))


@triton_op("fastsample_triton::tree_speculative_sampling", mutates_args=())
def _tree_speculative_sampling_op(draft_token_ids: Tensor, parents: Tensor, target_probs: Tensor,
                                  draft_probs: OptTensor, seed: Tensor,
                                  offset: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return _speculative_tree.tree_speculative_sampling(
        draft_token_ids.contiguous(), parents.contiguous(), target_probs.contiguous(),
        None if draft_probs is None else draft_probs.contiguous(), _rows(seed), _rows(offset))


def softmax(logits: Tensor, temperature_arr: OptTensor, temperature_val: float) -> Tensor:
    return torch.ops.fastsample_triton.softmax(logits, temperature_arr, temperature_val)


def top_k(x: Tensor, k: int, sorted: bool) -> tuple[Tensor, Tensor]:
    return torch.ops.fastsample_triton.top_k(x, k, sorted)


def top_k_mask_logits(logits: Tensor, top_k_arr: OptTensor, top_k_val: int) -> Tensor:
    return torch.ops.fastsample_triton.top_k_mask_logits(logits, top_k_arr, top_k_val)


def renorm_probs(probs: Tensor, top_k_arr: OptTensor, top_k_val: int, top_p_arr: OptTensor, top_p_val: float,
                 min_p_arr: OptTensor, min_p_val: float) -> Tensor:
    return torch.ops.fastsample_triton.renorm_probs(probs, top_k_arr, top_k_val, top_p_arr, top_p_val, min_p_arr,
                                                    min_p_val)


def sample(x: Tensor, is_logits: bool, temperature_arr: OptTensor, temperature_val: float, top_k_arr: OptTensor,
           top_k_val: int, top_p_arr: OptTensor, top_p_val: float, min_p_arr: OptTensor, min_p_val: float,
           seed: Tensor, offset: Tensor, return_logprobs: bool) -> tuple[Tensor, Tensor]:
    return torch.ops.fastsample_triton.sample(x, is_logits, temperature_arr, temperature_val, top_k_arr, top_k_val,
                                              top_p_arr, top_p_val, min_p_arr, min_p_val, seed, offset,
                                              return_logprobs)


def chain_speculative_sampling(draft_probs: Tensor, draft_token_ids: Tensor, target_probs: Tensor, seed: Tensor,
                               offset: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return torch.ops.fastsample_triton.chain_speculative_sampling(draft_probs, draft_token_ids, target_probs, seed,
                                                                  offset)


def tree_speculative_sampling(draft_token_ids: Tensor, parents: Tensor, target_probs: Tensor, draft_probs: OptTensor,
                              seed: Tensor, offset: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return torch.ops.fastsample_triton.tree_speculative_sampling(draft_token_ids, parents, target_probs, draft_probs,
                                                                 seed, offset)


def sample_stack(args: StackOpArgs) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _stack_sampler.sample_stack(args)
