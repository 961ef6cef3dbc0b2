"""Public sampling API (docs/design.md, section 3): argument checks, per-row parameters, RNG.

Every function here checks its arguments on the host (shapes, dtypes, scalar ranges) without reading tensor
values, builds the per-row (seed, offset) tensors and calls one of the six op-level functions of the backend
that fastsample/backends.py picks: fastsample._ops (C++ CPU / CUDA), fastsample.triton.ops, or
fastsample.reference (pure torch).
"""
from __future__ import annotations

import math

import torch

from . import _rng
from .backends import ops_for

Tensor = torch.Tensor
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ------------------------------------------------------------------------------------------ validation
_FLOAT32_MAX = 3.4028234663852886e38
_DEVICE_TYPES = ("cpu", "cuda")


def _check_device(name: str, t: Tensor) -> None:
    if t.device.type not in _DEVICE_TYPES:
        raise ValueError(f"{name} must be on a CPU or CUDA device, got a tensor on {t.device}")


def _check_matrix(name: str, x, dtypes=_FLOAT_DTYPES) -> Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    _check_device(name, x)
    if x.dim() != 2 or x.shape[1] < 1:
        raise ValueError(f"{name} must have shape [batch, vocab] with vocab >= 1, got {list(x.shape)}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {x.dtype}")
    return x.contiguous()


def _check_param(name: str, value, batch: int, device: torch.device, lo: float, hi: float, integer: bool = False):
    """Scalar-or-tensor parameter -> (tensor [B] or None, scalar). Scalars are range-checked here; a tensor's
    out-of-range rows are left to the kernels, which return -1 for them (no host sync here)."""
    if isinstance(value, torch.Tensor):
        if value.shape != (batch,):
            raise ValueError(f"{name} must be a scalar or a tensor of shape [{batch}], got {list(value.shape)}")
        _check_device(name, value)
        if integer and (value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool):
            raise TypeError(f"{name} must be an integer tensor, got {value.dtype}")
        if not integer and not value.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
        dtype = torch.int64 if integer else torch.float32
        default = 0 if integer else float("nan")
        return value.to(device=device, dtype=dtype).contiguous(), default
    if isinstance(value, bool) or not isinstance(value, (int, float) if not integer else int):
        kind = "an int" if integer else "a float"
        raise TypeError(f"{name} must be {kind} or a tensor of shape [{batch}], got {type(value).__name__}")
    if integer:  # k <= 0 and k >= V both mean no filter: clamping into int64 changes nothing
        return None, max(-1, min(int(value), 2**62))
    value = float(value)
    # The kernels take float32: a value beyond its range would become inf there (an invalid row).
    if not (math.isfinite(value) and lo <= value <= hi and abs(value) <= _FLOAT32_MAX):
        bounds = f"[{lo}, inf)" if hi == math.inf else f"[{lo}, {hi}]"
        raise ValueError(f"{name} must be in {bounds}, got {value}")
    return None, value


def _filters(batch, device, top_k=0, top_p=1.0, min_p=0.0):
    k_arr, k_val = _check_param("top_k", top_k, batch, device, 0, 0, integer=True)
    p_arr, p_val = _check_param("top_p", top_p, batch, device, 0.0, 1.0)
    mp_arr, mp_val = _check_param("min_p", min_p, batch, device, 0.0, 1.0)
    return k_arr, k_val, p_arr, p_val, mp_arr, mp_val


def _sample(x: Tensor, is_logits: bool, temperature, top_k, top_p, min_p, return_logprobs: bool,
            generator, seed, offset, backend):
    batch, device = x.shape[0], x.device
    t_arr, t_val = _check_param("temperature", temperature, batch, device, 0.0, math.inf)
    filters = _filters(batch, device, top_k, top_p, min_p)
    seed_t, offset_t = _rng.per_row_seed_offset(batch, device, generator, seed, offset)
    ops = ops_for(x, backend)
    tokens, logprobs = ops.sample(x, is_logits, t_arr, t_val, *filters, seed_t, offset_t, return_logprobs)
    return (tokens, logprobs) if return_logprobs else tokens


# ------------------------------------------------------------------------------------------ public API
def softmax(logits: Tensor, temperature: float | Tensor | None = None, *, backend: str | None = None) -> Tensor:
    """Fused temperature + safe softmax.

    Parameters
    ----------
    logits : Tensor [B, V], float32/float16/bfloat16.
    temperature : float or Tensor [B], optional. Divides the logits; 0 gives the uniform distribution over
        the row's maxima (the limit T -> 0). A negative, infinite or NaN tensor entry gives a NaN row.

    Returns
    -------
    Tensor [B, V] float32 probabilities; a row with a NaN or with every logit -inf is NaN.
    """
    logits = _check_matrix("logits", logits)
    t_arr, t_val = _check_param("temperature", 1.0 if temperature is None else temperature, logits.shape[0],
                              logits.device, 0.0, math.inf)
    return ops_for(logits, backend).softmax(logits, t_arr, t_val)


def top_k(x: Tensor, k: int, sorted: bool = True, *, backend: str | None = None) -> tuple[Tensor, Tensor]:
    """The k largest entries of each row, like ``torch.topk(x, k, largest=True)``.

    Ties go to the lower index first and NaN counts as the largest value. Returns ``(values, indices)`` of
    shape [B, k]: values in x's dtype, int64 indices. With ``sorted=False`` the order within a row is
    unspecified (this implementation returns them sorted anyway).
    """
    x = _check_matrix("x", x)
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 0 <= k <= x.shape[1]:
        raise ValueError(f"k must be in [0, {x.shape[1]}] (the vocabulary size), got {k}")
    return ops_for(x, backend).top_k(x, k, bool(sorted))


def top_k_mask_logits(logits: Tensor, top_k: int | Tensor, *, backend: str | None = None) -> Tensor:
    """Logits with every token below the row's k-th largest logit set to -inf (ties at the boundary kept).

    k <= 0 or k >= V leaves the row unchanged.
    """
    logits = _check_matrix("logits", logits)
    k_arr, k_val = _check_param("top_k", top_k, logits.shape[0], logits.device, 0, 0, integer=True)
    return ops_for(logits, backend).top_k_mask_logits(logits, k_arr, k_val)


def _renorm(probs, backend, **filters):
    probs = _check_matrix("probs", probs)
    return ops_for(probs, backend).renorm_probs(probs, *_filters(probs.shape[0], probs.device, **filters))


def top_k_renorm_probs(probs: Tensor, top_k: int | Tensor, *, backend: str | None = None) -> Tensor:
    """Probabilities renormalised over each row's top-k tokens (ties kept), 0 elsewhere.

    A row with a NaN, a negative or infinite entry, or zero total mass comes back all zeros.
    """
    return _renorm(probs, backend, top_k=top_k)


def top_p_renorm_probs(probs: Tensor, top_p: float | Tensor, *, backend: str | None = None) -> Tensor:
    """Probabilities renormalised over each row's top-p nucleus (docs/ops.md "Filters"), 0 elsewhere."""
    return _renorm(probs, backend, top_p=top_p)


def min_p_renorm_probs(probs: Tensor, min_p: float | Tensor, *, backend: str | None = None) -> Tensor:
    """Probabilities renormalised over tokens with p >= min_p * max(p), 0 elsewhere."""
    return _renorm(probs, backend, min_p=min_p)


def sampling_from_probs(probs: Tensor, *, generator=None, seed=None, offset=None, backend=None) -> Tensor:
    """One token per row from unnormalised probabilities ([B, V] >= 0, float32, float16 or bfloat16); -1 for an invalid row."""
    probs = _check_matrix("probs", probs)
    return _sample(probs, False, 1.0, 0, 1.0, 0.0, False, generator, seed, offset, backend)


def sampling_from_logits(logits: Tensor, *, generator=None, seed=None, offset=None, backend=None) -> Tensor:
    """One token per row from softmax(logits), without materialising the probabilities; -1 for an invalid row."""
    logits = _check_matrix("logits", logits)
    return _sample(logits, True, 1.0, 0, 1.0, 0.0, False, generator, seed, offset, backend)


def top_k_sampling_from_probs(probs: Tensor, top_k: int | Tensor, *, generator=None, seed=None, offset=None,
                              backend=None) -> Tensor:
    """One token per row from the top-k tokens of ``probs``."""
    probs = _check_matrix("probs", probs)
    return _sample(probs, False, 1.0, top_k, 1.0, 0.0, False, generator, seed, offset, backend)


def top_p_sampling_from_probs(probs: Tensor, top_p: float | Tensor, *, generator=None, seed=None, offset=None,
                              backend=None) -> Tensor:
    """One token per row from the top-p nucleus of ``probs``."""
    probs = _check_matrix("probs", probs)
    return _sample(probs, False, 1.0, 0, top_p, 0.0, False, generator, seed, offset, backend)


def min_p_sampling_from_probs(probs: Tensor, min_p: float | Tensor, *, generator=None, seed=None, offset=None,
                              backend=None) -> Tensor:
    """One token per row from the tokens with p >= min_p * max(p)."""
    probs = _check_matrix("probs", probs)
    return _sample(probs, False, 1.0, 0, 1.0, min_p, False, generator, seed, offset, backend)


def top_k_top_p_sampling_from_probs(probs: Tensor, top_k: int | Tensor, top_p: float | Tensor, *, generator=None,
                                    seed=None, offset=None, backend=None) -> Tensor:
    """Top-k first, then top-p over the renormalised top-k survivors, then one token per row."""
    probs = _check_matrix("probs", probs)
    return _sample(probs, False, 1.0, top_k, top_p, 0.0, False, generator, seed, offset, backend)


def top_k_top_p_sampling_from_logits(logits: Tensor, top_k: int | Tensor, top_p: float | Tensor, *,
                                     generator=None, seed=None, offset=None, backend=None) -> Tensor:
    """softmax(logits), then top-k, then top-p over the renormalised survivors, then one token per row."""
    logits = _check_matrix("logits", logits)
    return _sample(logits, True, 1.0, top_k, top_p, 0.0, False, generator, seed, offset, backend)


def sample(logits: Tensor, temperature: float | Tensor = 1.0, top_k: int | Tensor = 0, top_p: float | Tensor = 1.0,
           min_p: float | Tensor = 0.0, return_logprobs: bool = False, *, generator=None, seed=None, offset=None,
           backend=None):
    """The fused entry point: temperature -> top-k -> top-p -> min-p -> one token per row.

    Parameters
    ----------
    logits : Tensor [B, V], float32/float16/bfloat16.
    temperature : float or Tensor [B]; 0 means greedy for that row. A negative, infinite or NaN tensor entry -> -1 row.
    top_k : int or Tensor [B]; <= 0 or >= V disables it.
    top_p : float or Tensor [B] in [0, 1]; 1 disables it, 0 keeps the most probable token(s).
    min_p : float or Tensor [B] in [0, 1]; 0 disables it.
    return_logprobs : also return the log-probability of each sampled token in the final distribution.
    generator, seed, offset : random-number control, see fastsample/_rng.py and docs/design.md, section 4.

    Returns
    -------
    int64 Tensor [B] of token ids (-1 for a row with no valid token), and with ``return_logprobs`` a float32
    Tensor [B] of log-probabilities (NaN on -1 rows).
    """
    logits = _check_matrix("logits", logits)
    return _sample(logits, True, temperature, top_k, top_p, min_p, bool(return_logprobs), generator, seed, offset,
                   backend)


def greedy(logits: Tensor, *, backend: str | None = None) -> Tensor:
    """argmax of each row, lowest index on ties; -1 for a row with a NaN or with every logit -inf."""
    logits = _check_matrix("logits", logits)
    zeros = torch.zeros(logits.shape[0], dtype=torch.int64, device=logits.device)
    tokens, _ = ops_for(logits, backend).sample(logits, True, None, 0.0, None, 0, None, 1.0, None, 0.0, zeros,
                                                 zeros, False)
    return tokens
