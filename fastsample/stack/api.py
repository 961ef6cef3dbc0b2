"""The stack sampler: an inference stack's whole sampling step in one call (docs/ops.md "sample_stack").

grammar bitmask -> logit bias -> repetition/frequency/presence penalties -> temperature (T = 0 greedy) ->
top-n-sigma -> min-p/top-k/top-p (HF or vLLM v1 order) -> n draws -> logprobs, ranks and top-N. Arguments are
checked here on the host without reading tensor values, packed into one `StackOpArgs` (spec.py), and passed to the
`sample_stack` of the backend that fastsample.backends picks, as for every op (fastsample/_ops.py: C++ on CPU,
the CUDA route of cuda.py on CUDA; fastsample/triton/ops.py: Triton; fastsample/reference.py: this package's
reference.py). CUDA tensors take the CUDA C++ kernels when the extension has them, else Triton.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .. import _rng
from ..backends import ops_for
from ..sampling import _check_matrix, _check_param, _filters
from .spec import LOGPROBS_MODES, StackOpArgs

Tensor = torch.Tensor
_ORDERS = ("hf", "vllm")


class StackSample(NamedTuple):
    """What `sample_stack` returns; fields not asked for are None."""

    tokens: Tensor  # int64 [B] (or [B, n] when num_samples is given); -1 on invalid rows
    logprobs: Tensor | None  # float32, shape of tokens; NaN on invalid rows
    ranks: Tensor | None  # int64, shape of tokens: tokens with a logprob >= the sampled token's; -1 on invalid rows
    top_ids: Tensor | None  # int64 [B, N], descending logprob, ties to the lower id
    top_logprobs: Tensor | None  # float32 [B, N]


def _ids(name: str, ids, batch: int, device: torch.device) -> Tensor | None:
    """An id list [B, L] (-1 padding) as contiguous int64, or None."""
    if ids is None:
        return None
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be an int64 tensor [B, L] or None, got {type(ids).__name__}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an int64 (or int32) tensor, got {ids.dtype}")
    if ids.dim() != 2 or ids.shape[0] != batch:
        raise ValueError(f"{name} must have shape [{batch}, L], got {list(ids.shape)}")
    if ids.device != device:
        raise ValueError(f"{name} must be on {device} (the logits' device), got {ids.device}")
    return ids.to(torch.int64).contiguous()


def _mask(mask, batch: int, vocab: int, device: torch.device) -> Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"allowed_mask must be an int32 tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.int32:
        raise TypeError(f"allowed_mask must be int32 (bit i % 32 of word i // 32), got {mask.dtype}")
    words = (vocab + 31) // 32
    if mask.dim() != 2 or mask.shape[0] != batch or mask.shape[1] < words:
        raise ValueError(f"allowed_mask must have shape [{batch}, {words}] (ceil(V / 32) words for V = {vocab}), "
                         f"got {list(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"allowed_mask must be on {device} (the logits' device), got {mask.device}")
    return mask[:, :words].contiguous()


def _penalty(name: str, value, batch: int, device: torch.device, positive: bool):
    arr, val = _check_param(name, value, batch, device, -math.inf, math.inf)
    if positive and arr is None and not val > 0:
        raise ValueError(f"{name} must be > 0, got {val}")
    return arr, val


def sample_stack(logits: Tensor, *, allowed_mask: Tensor | None = None, bias_ids: Tensor | None = None,
                 bias_values: Tensor | None = None, prompt_ids: Tensor | None = None,
                 output_ids: Tensor | None = None, repetition_penalty: float | Tensor = 1.0,
                 frequency_penalty: float | Tensor = 0.0, presence_penalty: float | Tensor = 0.0,
                 temperature: float | Tensor = 1.0, top_k: int | Tensor = 0, top_p: float | Tensor = 1.0,
                 min_p: float | Tensor = 0.0, top_n_sigma: float | Tensor = -1.0, order: str = "hf",
                 num_samples: int | None = None, logprobs: str | None = None, top_logprobs: int = 0,
                 generator=None, seed=None, offset=None, backend: str | None = None) -> StackSample:
    """An inference stack's whole sampling step in one call.

    Parameters
    ----------
    logits : Tensor [B, V], float32/float16/bfloat16, the raw model output.
    allowed_mask : int32 Tensor [B, ceil(V / 32)], optional. Bit i % 32 of word i // 32 set = token i allowed
        (the packed layout of xgrammar and llguidance); other tokens get -inf. Extra words are ignored.
    bias_ids, bias_values : Tensors [B, L] (int64 ids, -1 = unused slot; float values), optional. The values are
        added to those logits; an id may repeat (the values add up).
    prompt_ids, output_ids : int64 Tensors [B, L], -1 padding, optional. Token histories for the penalties.
    repetition_penalty : float > 0 or Tensor [B]. A token seen in prompt or output: logit / r if positive, else
        logit * r. 1 disables it.
    frequency_penalty, presence_penalty : float or Tensor [B] (any sign). On output tokens with count c:
        logit -= f * c + q * (c > 0).
    temperature, top_k, top_p, min_p : as in `fastsample.sample`; T == 0 means greedy for that row.
    top_n_sigma : float or Tensor [B]. Top-n-sigma (llama.cpp's rule): keep the tokens whose processed logit is
        >= max - n * sigma, sigma the standard deviation of the row's finite processed logits; before the other
        filters. n <= 0 (the default, -1) disables it; NaN or inf is a ValueError (a -1 row for a tensor).
    order : "hf" (top-k -> top-p -> min-p, the default) or "vllm" (min-p -> top-k -> top-p, vLLM v1's).
    num_samples : int >= 1, optional. Draws per row (with replacement, Philox draws 0..n-1); when given,
        tokens are [B, n], else [B].
    logprobs : None, "processed" (the final distribution the tokens are drawn from) or "raw" (log-softmax of
        the raw logits). Also returns each sampled token's rank under the same mode.
    top_logprobs : int N >= 0, the N most probable tokens per row under `logprobs` (needs `logprobs`).
    generator, seed, offset : random-number control (docs/design.md section 4).
    backend : "cpu", "cuda", "triton" or "torch". CUDA tensors run the CUDA C++ kernels when the extension was
        built with them, else the Triton kernels; "cuda" without them is a RuntimeError.

    Returns
    -------
    StackSample(tokens, logprobs, ranks, top_ids, top_logprobs); a row with a NaN logit, nothing allowed, an
    id outside [-1, V) or a per-row parameter out of range has tokens -1, logprobs NaN, ranks -1, top ids -1.

    Examples
    --------
    >>> out = sample_stack(logits, allowed_mask=bitmask, prompt_ids=prompt, output_ids=generated,
    ...                    repetition_penalty=1.1, temperature=0.8, top_k=50, top_p=0.9, logprobs="processed",
    ...                    top_logprobs=5)
    """
    logits = _check_matrix("logits", logits)
    batch, vocab = logits.shape
    device = logits.device
    mask = _mask(allowed_mask, batch, vocab, device)
    bias_ids = _ids("bias_ids", bias_ids, batch, device)
    if (bias_ids is None) != (bias_values is None):
        raise ValueError("bias_ids and bias_values must be given together")
    if bias_values is not None:
        if not isinstance(bias_values, torch.Tensor) or not bias_values.dtype.is_floating_point:
            raise TypeError("bias_values must be a floating-point tensor [B, L]")
        if bias_values.shape != bias_ids.shape or bias_values.device != device:
            raise ValueError(f"bias_values must have bias_ids' shape {list(bias_ids.shape)} and device {device}, "
                             f"got {list(bias_values.shape)} on {bias_values.device}")
        bias_values = bias_values.to(torch.float32).contiguous()
    prompt_ids = _ids("prompt_ids", prompt_ids, batch, device)
    output_ids = _ids("output_ids", output_ids, batch, device)
    penalties = (*_penalty("repetition_penalty", repetition_penalty, batch, device, True),
                 *_penalty("frequency_penalty", frequency_penalty, batch, device, False),
                 *_penalty("presence_penalty", presence_penalty, batch, device, False))
    t_arr, t_val = _check_param("temperature", temperature, batch, device, 0.0, math.inf)
    filters = _filters(batch, device, top_k, top_p, min_p)
    top_n_sigma = _check_param("top_n_sigma", top_n_sigma, batch, device, -math.inf, math.inf)
    if order not in _ORDERS:
        raise ValueError(f"order must be one of {_ORDERS}, got {order!r}")
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)):
        raise TypeError(f"num_samples must be an int or None, got {type(num_samples).__name__}")
    if num_samples is not None and num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if logprobs not in LOGPROBS_MODES:
        raise ValueError(f"logprobs must be None, 'processed' or 'raw', got {logprobs!r}")
    if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int):
        raise TypeError(f"top_logprobs must be an int, got {type(top_logprobs).__name__}")
    if not 0 <= top_logprobs <= vocab or (top_logprobs and logprobs is None):
        raise ValueError(f"top_logprobs must be in [0, {vocab}] and needs logprobs='processed' or 'raw', got "
                         f"{top_logprobs} with logprobs={logprobs!r}")
    seed_t, offset_t = _rng.per_row_seed_offset(batch, device, generator, seed, offset)
    args = StackOpArgs(logits, mask, bias_ids, bias_values, prompt_ids, output_ids, *penalties, t_arr, t_val,
                       *filters, order == "vllm", num_samples or 1, seed_t, offset_t, LOGPROBS_MODES[logprobs],
                       top_logprobs, *top_n_sigma)
    tokens, lp, ranks, top_ids, top_lp = ops_for(logits, backend).sample_stack(args)
    if num_samples is None:
        tokens, lp, ranks = tokens[:, 0], lp[:, 0] if logprobs else lp, ranks[:, 0] if logprobs else ranks
    if logprobs is None:
        return StackSample(tokens, None, None, None, None)
    return StackSample(tokens, lp, ranks, top_ids if top_logprobs else None, top_lp if top_logprobs else None)
