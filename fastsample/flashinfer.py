"""FlashInfer's sampling API (``flashinfer.sampling``, 0.6/0.7 series, and ``flashinfer.top_k``) on fastsample's
backends, CPU included: code written against FlashInfer switches with one import,
``import fastsample.flashinfer as flashinfer_sampling`` (or ``from fastsample.flashinfer import top_k``).

Every function keeps FlashInfer's signature, defaults, return types and dtypes: sampled ids are int32 (or the
dtype of ``indices`` when given), ``return_valid=True`` adds a bool [B] tensor, ``top_k`` returns int64
indices, ``chain_speculative_sampling`` returns ``(output_token_ids int32 [B, n + 1], accepted int32 [B],
emitted int32 [B])``. The backend is fastsample's default for the tensors' device, or $FASTSAMPLE_BACKEND.

Semantics
---------
- Filters follow fastsample's rules (docs/ops.md): ties at a top-k / top-p / min-p boundary are all kept,
  ``top_k <= 0`` or ``>= V`` and ``top_p >= 1`` filter nothing.
- ``filter_apply_order="top_k_first"``: top-k, then top-p over the renormalised survivors (fastsample's fused
  op). ``"joint"``: a token is kept iff it is in both the top-k set and the top-p nucleus of the unfiltered
  distribution (both sets are prefixes of the sorted row, so this is their intersection). From logits:
  ``torch.softmax`` then the probs path, so both entry points give the same tokens.
- ``indices``: output i is drawn from row ``indices[i]`` of the input, with the i-th entry of tensor
  parameters (shape = len(indices), FlashInfer's documented rule) and of per-output seeds, and Philox draw 0
  of the (seed, offset) pair it would get as row i of a copied batch ``x[indices]``. With more outputs than
  rows the rows are never copied (fastsample/indexed.py). Indices outside the rows raise a ValueError.
- Invalid rows (a NaN, a negative or infinite probability, zero mass, every logit -inf): FlashInfer's
  convention, sample 0 and ``valid = False``; fastsample's own API returns -1 there instead.
- Random numbers: fastsample's Philox rule (docs/design.md section 4), not FlashInfer's curand streams: the same
  distribution, not the same tokens. ``seed`` and ``offset`` must both be ints or both int64/uint64 tensors of
  length 1 or B (FlashInfer's rule); given both, row b draws with (seed_b, offset_b): one seed for the batch
  (an int or a length-1 tensor) gives row b the offset o + b so that rows differ, per-row seeds keep the
  offset as given (fastsample's rule, batch invariance); if either is None, one seed is drawn from ``generator`` (or
  torch's default generator), as FlashInfer does.
- Integer parameter tensors are cast as FlashInfer's kernels read them: ``top_k`` to int64, ``top_p``,
  ``min_p`` and ``temperature`` to float32; float ``top_k`` scalars are truncated to int.
- float16 / bfloat16 probabilities are accepted everywhere and passed to fastsample's kernels as they are (the
  kernels widen them to float32, as they do logits); the renorm functions and ``top_k_mask_logits`` return
  the input's dtype, as FlashInfer's do.

Arguments accepted without effect
---------------------------------
- ``deterministic`` (every sampling function), ``is_deterministic`` (``top_p_renorm_probs``) and ``top_k``'s
  ``deterministic``: fastsample's kernels are always deterministic (fixed reduction order, no atomics), so the
  faster nondeterministic mode FlashInfer offers does not exist here.
- ``enable_pdl`` (``softmax``): Programmatic Dependent Launch is a launch attribute of FlashInfer's CUDA
  kernels on sm_90; fastsample's launches do not use it.
- ``dsa_graph_safe`` (``top_k``): selects a CUDA-graph-safe code path in FlashInfer; fastsample's top-k has
  one path per backend and every one is graph safe.
- ``top_k(sorted=False)``: the order within a row is then unspecified; fastsample returns it sorted anyway.
- ``generator`` when both ``seed`` and ``offset`` are given (as in FlashInfer).

``get_sampling_module`` (FlashInfer's JIT loader) has no counterpart: there is nothing to compile.
"""
from __future__ import annotations

from enum import IntEnum
from typing import Optional, Tuple, Union

import torch

from . import _rng as fs_rng
from . import sampling as fs
from .indexed import sample_indexed
from .sampling import _renorm as fs_renorm
from .speculative import chain_speculative_sampling as _fs_chain_speculative_sampling

Tensor = torch.Tensor
_PROB_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class TopKTieBreak(IntEnum):
    """``flashinfer.top_k``'s tie-break modes at the selection boundary."""

    NONE = 0  # FlashInfer: unspecified; here: smaller indices, as SMALL
    SMALL = 1
    LARGE = 2


# ------------------------------------------------------------------------------------------ arguments
def _checked_probs(name: str, x: Tensor) -> Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _PROB_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")
    return x


def _sampling_param(name: str, value, batch: int, integer: bool):
    """A scalar-or-per-request sampling parameter, checked and cast as FlashInfer's kernels read it: an int64
    (``top_k``) or float32 tensor of shape (batch,), or a Python int / float.

    Shape errors carry the phrases of FlashInfer's own check (csrc/sampling_utils.h), which its tests match,
    and name the argument.
    """
    if not isinstance(value, torch.Tensor):
        return int(value) if integer else float(value)
    if value.dim() == 0:
        raise ValueError(f"Expected a 1D tensor of shape (batch_size,) or scalar for the sampling parameter "
                         f"{name}, but got a 0-dimensional tensor.")
    if value.dim() > 1:
        raise ValueError(f"Expected a 1D tensor or scalar for the sampling parameter {name}, but got a "
                         f"{value.dim()}D tensor.")
    if value.shape[0] != batch:
        raise ValueError(f"Sampling parameter tensor batch size mismatch: expected {name} of length {batch} "
                         f"(the batch size), but got length {value.shape[0]}.")
    return value.to(torch.int64 if integer else torch.float32)


def _checked_indices(x: Tensor, indices: Optional[Tensor]) -> Optional[Tensor]:
    """``indices`` on x's device (int32 stays int32: no n-sized copy), every value checked to be a row of x:
    CPU tensors here, device tensors where the grouped path reads them (see _draw)."""
    if indices is None:
        return None
    if not isinstance(indices, torch.Tensor) or indices.dtype not in (torch.int32, torch.int64):
        raise TypeError("indices must be an int32 or int64 tensor of shape (batch_size,)")
    if indices.dim() != 1:
        raise ValueError(f"indices must be 1-D, got shape {list(indices.shape)}")
    indices = indices.to(device=x.device)
    if indices.device.type == "cpu":
        _check_bounds(indices, x.shape[0])
    return indices


def _check_bounds(indices: Tensor, rows: int) -> None:
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= rows):
        raise ValueError(f"indices must be in [0, {rows}) (the rows of the input), got values in "
                         f"[{int(indices.min())}, {int(indices.max())}]")


def _row_tensor(name: str, value: Tensor, batch: int, device) -> Tensor:
    if value.device != device:
        raise ValueError(f"{name} tensor must be on {device}")
    if value.dtype not in (torch.int64, torch.uint64):
        raise ValueError(f"{name} tensor must be int64/uint64")
    if value.dim() != 1 or value.shape[0] not in (1, batch):
        raise ValueError(f"{name} tensor length must be 1 or {batch}")
    return value.view(torch.int64)  # same bits: a Philox key takes the 64-bit pattern


def _rng(seed, offset, batch: int, device, generator) -> Tuple[Tensor, Tensor, int]:
    """FlashInfer's seed/offset forms -> ``(seed [1] or [B], offset [1] or [B], step)``: output b draws with
    seed[b] (or seed[0]) and offset[b], or offset[0] + step * b when offset is [1]. One seed for the batch (an
    int, a length-1 tensor, or drawn from ``generator`` when seed or offset is None) gives step 1, so that
    outputs differ; a per-output seed keeps the offset as given (fastsample's rule, batch invariance). Nothing
    here reads a tensor's value on the host."""
    if seed is None or offset is None:
        seed_t, offset_t = fs_rng.per_row_seed_offset(1, device, generator)
        return seed_t, offset_t, 1
    if isinstance(seed, torch.Tensor) != isinstance(offset, torch.Tensor):
        raise ValueError("seed and offset must both be tensors or both be scalars")
    if not isinstance(seed, torch.Tensor):
        seed_t, offset_t = fs_rng.per_row_seed_offset(1, device, None, int(seed), int(offset))
        return seed_t, offset_t, 1
    seed, offset = _row_tensor("seed", seed, batch, device), _row_tensor("offset", offset, batch, device)
    return seed, offset, int(seed.shape[0] == 1 and offset.shape[0] == 1)


def _rng_kwargs(rng: Tuple[Tensor, Tensor, int], batch: int) -> dict:
    """The per-row ``seed`` and ``offset`` tensors [B] of fastsample's API for ``_rng``'s triple."""
    seed, offset, step = rng
    rows = torch.arange(batch, dtype=torch.int64, device=seed.device)
    return {"seed": seed.expand(batch).contiguous(), "offset": (offset + step * rows).contiguous()}


def _check_nan(check_nan: bool, x: Tensor, name: str = "probs") -> None:
    if check_nan and bool(torch.isnan(x).any()):
        raise ValueError(f"Input {name} contains NaN.")


def _finish(tokens: Tensor, indices: Optional[Tensor], return_valid: bool):
    """fastsample's -1 rows -> FlashInfer's (0, valid=False); ids in int32 or the dtype of ``indices``."""
    valid = tokens >= 0
    # In place: 5,000,000 draws then hold one n-sized int64 copy fewer.
    samples = tokens.clamp_(min=0).to(indices.dtype if indices is not None else torch.int32)
    return (samples, valid) if return_valid else samples


def _kept_weights(rows: Tensor, is_logits: bool, joint: bool, top_k=0, top_p=1.0, min_p=0.0) -> Tensor:
    """float32 weights of the tokens the filters keep, 0 elsewhere (all 0 on an invalid row): the
    distribution the fused samplers draw from, as one row block of the grouped path."""
    probs = fs.softmax(rows) if is_logits else rows
    if joint:  # the nucleus of the unfiltered distribution, then its top k (see _draw)
        return fs.top_k_renorm_probs(fs.top_p_renorm_probs(probs, top_p), top_k)
    return fs_renorm(probs, None, top_k=top_k, top_p=top_p, min_p=min_p)


def _draw(x: Tensor, indices: Optional[Tensor], generator, seed, offset, is_logits: bool, top_k=0, top_p=1.0,
          min_p=None, joint: bool = False) -> Tensor:
    """One token per output (int64, -1 on an invalid row), filters in HF order, or joint.

    ``joint``: the top-k set and the top-p nucleus of the same distribution are both prefixes of the sorted
    row, so their intersection is top-k over the top-p-renormalised probabilities.

    With ``indices`` and more outputs than rows, fastsample/indexed.py groups the outputs by row and draws
    from each row's CDF (never a copy of x[indices]); with at most as many outputs as rows the copy is no
    larger than x and the fused kernels sample it (no host sync). Both give output b the token of row
    x[indices[b]] with its own seed and offset (docs/ops.md "FlashInfer drop-in").
    """
    indices = _checked_indices(x, indices)
    batch = x.shape[0] if indices is None else indices.shape[0]
    params = {"top_k": _sampling_param("top_k", top_k, batch, True),
              "top_p": _sampling_param("top_p", top_p, batch, False),
              "min_p": _sampling_param("min_p", 0.0 if min_p is None else min_p, batch, False)}
    rng = _rng(seed, offset, batch, x.device, generator)
    if indices is not None and batch > x.shape[0]:
        if indices.device.type != "cpu":
            _check_bounds(indices, x.shape[0])  # the grouped path syncs anyway
        weights = lambda rows, p: _kept_weights(rows, is_logits, joint, **p)  # noqa: E731
        return sample_indexed(x, indices, params, weights, *rng)
    rows = x if indices is None else x.index_select(0, indices)
    kwargs = _rng_kwargs(rng, batch)
    if joint:
        nucleus = fs.top_p_renorm_probs(fs.softmax(rows) if is_logits else rows, params["top_p"])
        return fs.top_k_sampling_from_probs(nucleus, params["top_k"], **kwargs)
    if is_logits:
        return fs.sample(rows, 1.0, params["top_k"], params["top_p"], params["min_p"], **kwargs)
    if min_p is not None:
        return fs.min_p_sampling_from_probs(rows, params["min_p"], **kwargs)
    return fs.top_k_top_p_sampling_from_probs(rows, params["top_k"], params["top_p"], **kwargs)


# ------------------------------------------------------------------------------------ flashinfer.sampling
def softmax(logits: Tensor, temperature: Optional[Union[Tensor, float]] = None,
            enable_pdl: Optional[bool] = None) -> Tensor:
    """Temperature-scaled safe softmax; float32 [B, V]. ``enable_pdl`` has no effect (see the module doc)."""
    if temperature is not None:
        temperature = _sampling_param("temperature", temperature, logits.shape[0], False)
    return fs.softmax(logits, temperature)


def sampling_from_logits(logits: Tensor, indices: Optional[Tensor] = None, deterministic: bool = True,
                         generator: Optional[torch.Generator] = None, check_nan: bool = False,
                         seed: Optional[Union[int, Tensor]] = None,
                         offset: Optional[Union[int, Tensor]] = None) -> Tensor:
    """One id per output row from softmax(logits); int32 (or ``indices``' dtype) [B]."""
    _check_nan(check_nan, logits, "logits")
    return _finish(_draw(logits, indices, generator, seed, offset, True), indices, False)


def sampling_from_probs(probs: Tensor, indices: Optional[Tensor] = None, deterministic: bool = True,
                        generator: Optional[torch.Generator] = None, check_nan: bool = False,
                        seed: Optional[Union[int, Tensor]] = None, offset: Optional[Union[int, Tensor]] = None,
                        return_valid: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """One id per output row from (unnormalised) ``probs``; with ``return_valid``, also the bool validity."""
    probs = _checked_probs("probs", probs)
    _check_nan(check_nan, probs)
    return _finish(_draw(probs, indices, generator, seed, offset, False), indices, return_valid)


def top_p_sampling_from_probs(probs: Tensor, top_p: Union[Tensor, float], indices: Optional[Tensor] = None,
                              deterministic: bool = True, generator: Optional[torch.Generator] = None,
                              check_nan: bool = False, seed: Optional[Union[int, Tensor]] = None,
                              offset: Optional[Union[int, Tensor]] = None,
                              return_valid: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """One id per output row from the top-p nucleus of ``probs``."""
    probs = _checked_probs("probs", probs)
    _check_nan(check_nan, probs)
    tokens = _draw(probs, indices, generator, seed, offset, False, top_p=top_p)
    return _finish(tokens, indices, return_valid)


def top_k_sampling_from_probs(probs: Tensor, top_k: Union[Tensor, int], indices: Optional[Tensor] = None,
                              deterministic: bool = True, generator: Optional[torch.Generator] = None,
                              check_nan: bool = False, seed: Optional[Union[int, Tensor]] = None,
                              offset: Optional[Union[int, Tensor]] = None,
                              return_valid: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """One id per output row from the top-k tokens of ``probs`` (ties at the k-th value kept)."""
    probs = _checked_probs("probs", probs)
    _check_nan(check_nan, probs)
    tokens = _draw(probs, indices, generator, seed, offset, False, top_k=top_k)
    return _finish(tokens, indices, return_valid)


def min_p_sampling_from_probs(probs: Tensor, min_p: Union[Tensor, float], indices: Optional[Tensor] = None,
                              deterministic: bool = True, generator: Optional[torch.Generator] = None,
                              check_nan: bool = False, seed: Optional[Union[int, Tensor]] = None,
                              offset: Optional[Union[int, Tensor]] = None,
                              return_valid: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """One id per output row from the tokens with p >= min_p * max(p)."""
    probs = _checked_probs("probs", probs)
    _check_nan(check_nan, probs)
    tokens = _draw(probs, indices, generator, seed, offset, False, min_p=min_p)
    return _finish(tokens, indices, return_valid)


def _check_order(filter_apply_order: str) -> None:
    if filter_apply_order not in ("top_k_first", "joint"):
        raise ValueError(f"Invalid filter_apply_order: {filter_apply_order}")


def top_k_top_p_sampling_from_logits(logits: Tensor, top_k: Union[Tensor, int], top_p: Union[Tensor, float],
                                     indices: Optional[Tensor] = None, filter_apply_order: str = "top_k_first",
                                     deterministic: bool = True, generator: Optional[torch.Generator] = None,
                                     check_nan: bool = False, seed: Optional[Union[int, Tensor]] = None,
                                     offset: Optional[Union[int, Tensor]] = None) -> Tensor:
    """softmax(logits), then top-k and top-p (``filter_apply_order``), then one id per output row."""
    _check_order(filter_apply_order)
    _check_nan(check_nan, logits, "logits")
    if filter_apply_order == "joint":
        # FlashInfer's joint logits path is softmax followed by its probs path, and its users (and tests) expect
        # the tokens of top_k_top_p_sampling_from_probs(torch.softmax(logits, -1), ...): torch's softmax gives
        # the very same probabilities, so the two entry points agree draw for draw.
        probs = torch.softmax(logits.to(torch.float32), dim=-1)
        tokens = _draw(probs, indices, generator, seed, offset, False, top_k, top_p, joint=True)
    else:
        tokens = _draw(logits, indices, generator, seed, offset, True, top_k=top_k, top_p=top_p)
    return _finish(tokens, indices, False)


def top_k_top_p_sampling_from_probs(probs: Tensor, top_k: Union[Tensor, int], top_p: Union[Tensor, float],
                                    indices: Optional[Tensor] = None, filter_apply_order: str = "top_k_first",
                                    deterministic: bool = True, generator: Optional[torch.Generator] = None,
                                    check_nan: bool = False, seed: Optional[Union[int, Tensor]] = None,
                                    offset: Optional[Union[int, Tensor]] = None,
                                    return_valid: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Top-k and top-p (``filter_apply_order``) over ``probs``, then one id per output row."""
    _check_order(filter_apply_order)
    probs = _checked_probs("probs", probs)
    _check_nan(check_nan, probs)
    joint = filter_apply_order == "joint"
    tokens = _draw(probs, indices, generator, seed, offset, False, top_k, top_p, joint=joint)
    return _finish(tokens, indices, return_valid)


def top_p_renorm_probs(probs: Tensor, top_p: Union[Tensor, float], is_deterministic: bool = False) -> Tensor:
    """``probs`` renormalised over each row's top-p nucleus, 0 elsewhere; the input's dtype."""
    top_p = _sampling_param("top_p", top_p, len(probs), False)
    return fs.top_p_renorm_probs(_checked_probs("probs", probs), top_p).to(probs.dtype)


def top_k_renorm_probs(probs: Tensor, top_k: Union[Tensor, int]) -> Tensor:
    """``probs`` renormalised over each row's top-k tokens, 0 elsewhere; the input's dtype."""
    top_k = _sampling_param("top_k", top_k, len(probs), True)
    return fs.top_k_renorm_probs(_checked_probs("probs", probs), top_k).to(probs.dtype)


def top_k_mask_logits(logits: Tensor, top_k: Union[Tensor, int]) -> Tensor:
    """``logits`` with every token outside the row's top-k set to -inf; the input's dtype."""
    return fs.top_k_mask_logits(logits, _sampling_param("top_k", top_k, len(logits), True)).to(logits.dtype)


top_p_renorm_prob = top_p_renorm_probs
top_k_renorm_prob = top_k_renorm_probs


def chain_speculative_sampling(draft_probs, draft_token_ids, target_probs,
                               maybe_output_accepted_token_num: Optional[Tensor] = None,
                               maybe_output_emitted_draft_token_num: Optional[Tensor] = None,
                               deterministic: bool = True, generator: Optional[torch.Generator] = None,
                               seed: Optional[Union[int, Tensor]] = None,
                               offset: Optional[Union[int, Tensor]] = None):
    """Speculative acceptance of a chain of draft tokens (Leviathan et al. / Chen et al.).

    Returns ``(output_token_ids int32 [B, n + 1] padded with -1, accepted_num, emitted_num)``. The counts are
    int32 [B] tensors; when ``maybe_output_*`` tensors are given, the counts are added to them in place and
    those tensors are returned, as FlashInfer does.
    """
    draft_probs, target_probs = _checked_probs("draft_probs", draft_probs), _checked_probs("target_probs", target_probs)
    batch, device = draft_probs.shape[0], draft_probs.device
    tokens, accepted, emitted = _fs_chain_speculative_sampling(
        draft_probs, draft_token_ids, target_probs, **_rng_kwargs(_rng(seed, offset, batch, device, generator), batch))
    outputs = []
    for given, count in ((maybe_output_accepted_token_num, accepted),
                         (maybe_output_emitted_draft_token_num, emitted)):
        if given is None:
            outputs.append(count.to(torch.int32))
        else:
            given += count.to(given.dtype)
            outputs.append(given)
    return (tokens.to(torch.int32), *outputs)


def get_seed_and_offset(increment: int, generator: Optional[torch.Generator] = None,
                        device: Optional[torch.device] = None) -> Tuple[int, int]:
    """FlashInfer's helper: ``(seed, offset)`` read from a Philox generator's state, advancing its offset by
    ``increment`` rounded up to a multiple of 4 (CUDA generators; on CPU, whose generator is a Mersenne
    Twister, a seed is drawn from it and the offset is 0)."""
    if generator is None:
        device = torch.device(device) if device is not None else torch.device("cpu")
        generator = torch.cuda.default_generators[device.index or 0] if device.type == "cuda" else \
            torch.default_generator
    if generator.device.type != "cuda":
        return int(torch.randint(0, 2**63 - 1, (1,), generator=generator)), 0
    seed, offset = generator.get_state().view(torch.int64).tolist()
    generator.set_state(torch.tensor([seed, offset + (increment + 3) // 4 * 4], dtype=torch.int64).view(torch.uint8))
    return int(seed), int(offset)


# ----------------------------------------------------------------------------------------- flashinfer.top_k
def top_k(input: Tensor, k: int, sorted: bool = False, deterministic: bool = False,
          tie_break: int = TopKTieBreak.NONE, dsa_graph_safe: bool = False) -> Tuple[Tensor, Tensor]:
    """The k largest entries of each row: ``(values [B, k] in input's dtype, indices [B, k] int64)``, sorted
    by value descending. Ties at the boundary: smaller indices first (``NONE``, ``SMALL``) or larger indices
    first (``LARGE``)."""
    if int(tie_break) not in (0, 1, 2):
        raise ValueError(f"tie_break must be 0 (NONE), 1 (SMALL) or 2 (LARGE), got {tie_break!r}")
    if int(tie_break) == TopKTieBreak.LARGE:
        values, idx = fs.top_k(input.flip(-1), k, True)  # larger ids become smaller ones: lower-id-first ties
        return values, input.shape[-1] - 1 - idx
    return fs.top_k(input, k, True)


topk = top_k
