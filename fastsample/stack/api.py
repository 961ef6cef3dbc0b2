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
from ..backends import ops_for, resolve_backend
from ..sampling import _check_matrix, _check_param, _filters
from . import tail
from .spec import LOGPROBS_MODES, ORDERS, TAIL_DEFAULTS, TAIL_PARAMS, StackOpArgs, TailArgs

Tensor = torch.Tensor
_ORDERS = ORDERS
# The scalars that turn a long-tail step on when they differ from their default (spec.TAIL_PARAMS).
_SWITCHES = ("typical_p", "epsilon", "eta", "xtc_probability", "dynatemp_range", "dry_multiplier")


class StackSample(NamedTuple):
    """What `sample_stack` returns; fields not asked for are None."""

    tokens: Tensor  # int64 [B] (or [B, n] when num_samples is given); -1 on invalid rows
    logprobs: Tensor | None  # float32, shape of tokens; NaN on invalid rows
    ranks: Tensor | None  # int64, shape of tokens: tokens with a logprob >= the sampled token's; -1 on invalid rows
    top_ids: Tensor | None  # int64 [B, N], descending logprob, ties to the lower id
    top_logprobs: Tensor | None  # float32 [B, N]
    mirostat_mu: Tensor | None = None  # float32 [B]: the updated mirostat state when mirostat_mu was given


def _bias(bias_ids, bias_values, batch: int, device) -> tuple[Tensor | None, Tensor | None]:
    """Checked (bias_ids int64 [B, L], bias_values float32 [B, L]), or (None, None)."""
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
    return bias_ids, bias_values


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
                 generator=None, seed=None, offset=None, backend: str | None = None,
                 typical_p: float | Tensor = 1.0, epsilon: float | Tensor = 0.0, eta: float | Tensor = 0.0,
                 xtc_probability: float | Tensor = 0.0, xtc_threshold: float | Tensor = 0.1,
                 dynatemp_range: float | Tensor = 0.0, dynatemp_exponent: float | Tensor = 1.0,
                 dry_multiplier: float | Tensor = 0.0, dry_base: float | Tensor = 1.75,
                 dry_allowed_length: int | Tensor = 2, dry_penalty_last_n: int | Tensor = -1,
                 dry_sequence_breakers=None, mirostat_tau: float | Tensor = 5.0,
                 mirostat_eta: float | Tensor = 0.1, mirostat_mu: Tensor | None = None) -> StackSample:
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
    order : "hf" (top-k -> top-p -> min-p, the default), "vllm" (min-p -> top-k -> top-p, vLLM v1's) or
        "llama.cpp" (llama.cpp's default chain: top-n-sigma -> top-k -> typical -> top-p -> min-p -> XTC ->
        temperature; the filters see the probabilities at temperature 1). docs/ops.md lists every step's place.
    num_samples : int >= 1, optional. Draws per row (with replacement, Philox draws 0..n-1); when given,
        tokens are [B, n], else [B].
    logprobs : None, "processed" (the final distribution the tokens are drawn from) or "raw" (log-softmax of
        the raw logits). Also returns each sampled token's rank under the same mode.
    top_logprobs : int N >= 0, the N most probable tokens per row under `logprobs` (needs `logprobs`).
    generator, seed, offset : random-number control (docs/design.md section 4).
    backend : "cpu", "cuda", "triton" or "torch". CUDA tensors run the CUDA C++ kernels when the extension was
        built with them, else the Triton kernels; "cuda" without them is a RuntimeError.

    typical_p : float in [0, 1] or Tensor [B]. Locally typical sampling (HF's TypicalLogitsWarper): keep the
        tokens closest to the entropy, |-log p - H|, while the mass before them is < typical_p. 1 (default): off.
    epsilon : float in [0, 1] or Tensor [B]. HF's epsilon sampling: keep p >= epsilon (and the maxima). 0: off.
    eta : float in [0, 1] or Tensor [B]. HF's eta sampling: keep p >= min(eta, sqrt(eta) * exp(-H)) (and the
        maxima). 0: off.
    xtc_probability, xtc_threshold : XTC (llama.cpp): with probability xtc_probability (Philox draw
        j = 0xFFFFFFFF of the row) and xtc_threshold <= 0.5, drop every token with p >= threshold except the
        least probable of them, when there are at least two. Off by default (probability 0, threshold 0.1).
    dynatemp_range, dynatemp_exponent : dynamic temperature (llama.cpp temp_ext): with range r > 0 the row's
        temperature is max(0, T - r) + (T + r - max(0, T - r)) * (H / log N) ** exponent, H the entropy and N
        the number of surviving tokens at that step. Range 0 (default): off.
    dry_multiplier, dry_base, dry_allowed_length, dry_penalty_last_n, dry_sequence_breakers : DRY (llama.cpp):
        over the history (prompt_ids then output_ids, -1 slots removed; the last dry_penalty_last_n tokens, -1 =
        all), a token that would extend a repeat of the history's end of length n >= dry_allowed_length loses
        multiplier * base ** (n - dry_allowed_length) from its logit; a repeat cannot span a sequence breaker
        (token ids: int64 [B, L] with -1 padding, or one list for every row) and breakers are never penalised.
        Multiplier 0 (default): off; base < 1: off, as in llama.cpp.
    mirostat_tau, mirostat_eta, mirostat_mu : mirostat v2 (llama.cpp): given the state mu (float32 Tensor [B],
        start at 2 * tau), keep the tokens with surprise -log2 p <= mu (at least the most probable), draw, and
        return mu - eta * (surprise of the drawn token - tau) as StackSample.mirostat_mu. Needs one draw.

    Returns
    -------
    StackSample(tokens, logprobs, ranks, top_ids, top_logprobs, mirostat_mu); a row with a NaN logit, nothing allowed, an
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
    bias_ids, bias_values = _bias(bias_ids, bias_values, batch, device)
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
    tail_args = _tail_args(batch, vocab, device, order, dry_sequence_breakers, mirostat_mu, num_samples,
                           dict(typical_p=typical_p, epsilon=epsilon, eta=eta, xtc_probability=xtc_probability,
                                xtc_threshold=xtc_threshold, dynatemp_range=dynatemp_range,
                                dynatemp_exponent=dynatemp_exponent, dry_multiplier=dry_multiplier,
                                dry_base=dry_base, dry_allowed_length=dry_allowed_length,
                                dry_penalty_last_n=dry_penalty_last_n, mirostat_tau=mirostat_tau,
                                mirostat_eta=mirostat_eta),
                           _base_active(filters, top_n_sigma))
    seed_t, offset_t = _rng.per_row_seed_offset(batch, device, generator, seed, offset)
    args = StackOpArgs(logits, mask, bias_ids, bias_values, prompt_ids, output_ids, *penalties, t_arr, t_val,
                       *filters, order == "vllm", num_samples or 1, seed_t, offset_t, LOGPROBS_MODES[logprobs],
                       top_logprobs, *top_n_sigma)
    mu = None
    if tail_args is None:
        tokens, lp, ranks, top_ids, top_lp = ops_for(logits, backend).sample_stack(args)
    else:
        ops_for(logits, backend)  # the same errors as the op route for a backend that cannot run here
        tokens, lp, ranks, top_ids, top_lp, mu = tail.sample_stack(args, tail_args, resolve_backend(logits, backend))
    if num_samples is None:
        tokens, lp, ranks = tokens[:, 0], lp[:, 0] if logprobs else lp, ranks[:, 0] if logprobs else ranks
    if logprobs is None:
        return StackSample(tokens, None, None, None, None, mu)
    return StackSample(tokens, lp, ranks, top_ids if top_logprobs else None, top_lp if top_logprobs else None, mu)


def _base_active(filters, top_n_sigma) -> set:
    """The fused filters that can be on in some row (a tensor, or a scalar away from its off value)."""
    k_arr, k_val, p_arr, p_val, m_arr, m_val = filters
    s_arr, s_val = top_n_sigma
    return {step for step, on in (("top_k", k_arr is not None or k_val > 0), ("top_p", p_arr is not None or p_val < 1),
                                  ("min_p", m_arr is not None or m_val > 0),
                                  ("top_n_sigma", s_arr is not None or s_val > 0)) if on}


def _tail_args(batch: int, vocab: int, device: torch.device, order: str, breakers, mu, num_samples,
               values: dict, base_active: set) -> TailArgs | None:
    """The long-tail steps' arguments checked and as [B] tensors (spec.TAIL_PARAMS), or None when every one
    of them is off and the order is not "llama.cpp" (then the compiled op runs alone)."""
    rows, on, tensors = {}, order == "llama.cpp" or mu is not None, set()
    for name, kind, default, lo, hi in TAIL_PARAMS:
        integer = kind == "int"
        value = values[name]
        arr, val = _check_param(name, value, batch, device, lo, hi, integer=integer)
        if integer and arr is None and not lo <= value <= hi:
            raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
        dtype = torch.int64 if integer else torch.float32
        rows[name] = arr if arr is not None else torch.full((batch,), val, dtype=dtype, device=device)
        if arr is not None:
            tensors.add(name)
        # A per-row tensor takes the long-tail route (its rows are checked there); a scalar only when it is a
        # step's switch and not off.
        on = on or arr is not None or (name in _SWITCHES and val != default)
    if breakers is not None:
        if isinstance(breakers, (list, tuple)):
            if not all(isinstance(b, int) and not isinstance(b, bool) for b in breakers):
                raise TypeError("dry_sequence_breakers must be a list of int token ids or an int64 tensor [B, L]")
            if not all(0 <= b < vocab for b in breakers):
                raise ValueError(f"dry_sequence_breakers must be token ids in [0, {vocab}), got {list(breakers)}")
            breakers = torch.tensor(list(breakers), dtype=torch.int64, device=device).view(1, -1)
        elif isinstance(breakers, torch.Tensor):
            breakers = _ids("dry_sequence_breakers", breakers, batch, device)
        else:
            raise TypeError(f"dry_sequence_breakers must be a list of token ids or an int64 tensor [B, L], got "
                            f"{type(breakers).__name__}")
    if mu is not None:
        if not isinstance(mu, torch.Tensor):
            raise TypeError(f"mirostat_mu must be a float32 tensor [B] or None, got {type(mu).__name__}")
        if mu.dtype != torch.float32:
            raise TypeError(f"mirostat_mu must be float32, got {mu.dtype}")
        if mu.shape != (batch,):
            raise ValueError(f"mirostat_mu must have shape [{batch}], got {list(mu.shape)}")
        if mu.device != device:
            raise ValueError(f"mirostat_mu must be on {device} (the logits' device), got {mu.device}")
        if num_samples not in (None, 1):
            raise ValueError(f"mirostat_mu (mirostat v2) needs one draw per row, got num_samples={num_samples}")
    if not on:
        return None
    active = {step for step, name in (("typical_p", "typical_p"), ("epsilon", "epsilon"), ("eta", "eta"),
                                      ("xtc", "xtc_probability"), ("dynatemp", "dynatemp_range"),
                                      ("dry", "dry_multiplier"))
              if name in tensors or values[name] != TAIL_DEFAULTS[name]}
    return TailArgs(**rows, dry_sequence_breakers=breakers, mirostat_mu=mu, order=order,
                    active=frozenset(active | base_active))
