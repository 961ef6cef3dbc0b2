"""Scoring a token tree in one forward, and keeping only the accepted path in the KV cache.

A tree step appends T new columns to a :class:`~fastsample.decoding.model.Session`: column 0 is the root (the
pending token), column i + 1 is node i. Each new token attends to the session's valid cache columns and to its
own ancestors among the new columns (itself included): a 4-D additive mask [B, 1, T, cache + T] (0 = attend, the
dtype's minimum = masked), which Hugging Face models take as is (transformers' ``masking_utils`` returns a 4-D
mask unchanged), with explicit position ids = the row's valid cache columns + the node's depth. After the
verification, :func:`keep_path` moves the accepted nodes' cache columns next to the root's and crops the rest.
"""
from __future__ import annotations

import torch

from .model import _accepts, forward

Tensor = torch.Tensor


def ancestors(parents: Tensor) -> Tensor:
    """bool [B, N + 1, N + 1]: entry (i, j) is True when column j is column i or one of its ancestors.
    ``parents`` [B, N] are node parents (-1 = the root); column 0 is the root, column i + 1 node i."""
    batch, nodes = parents.shape
    anc = torch.eye(nodes + 1, dtype=torch.bool, device=parents.device).repeat(batch, 1, 1)
    rows = torch.arange(batch, device=parents.device)
    parent_col = parents.clamp(min=-1) + 1  # parent < child, so each parent's row is complete before its children
    for i in range(nodes):
        anc[:, i + 1] |= anc[rows, parent_col[:, i]]
    return anc


def additive_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """bool [B, T, L] (True = attend) -> the 4-D additive mask [B, 1, T, L] HF attention layers add to scores."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def _model_dtype(model) -> torch.dtype:
    params = getattr(model, "parameters", None)
    if callable(params):
        first = next(iter(params()), None)
        if first is not None and first.is_floating_point():
            return first.dtype
    return torch.float32


def tree_call(session, tokens: Tensor, allowed_new: Tensor, positions: Tensor, valid: Tensor,
              cache_allowed: Tensor | None = None) -> Tensor:
    """Append ``tokens`` [B, T] to ``session`` as tree columns and return their float32 logits [B, T, V].

    ``allowed_new`` bool [B, T, T]: which new columns each new token sees (its ancestors and itself);
    ``positions`` [B, T]: position ids (the root's position + the node's depth); ``valid`` [B, T]: 0 marks a padding node (its column becomes a hole); ``cache_allowed`` bool
    [B, T, L] overrides which cache columns each token sees (default: the session's valid columns).
    """
    call = getattr(session.model, "forward", session.model)
    if not _accepts(getattr(call, "__func__", call), "attention_mask"):
        raise TypeError("tree speculative decoding needs a model that takes attention_mask (a 4-D tree mask)")
    batch, width = tokens.shape
    if session.mask is None:  # nothing read yet (a one-token prompt): an empty cache
        session.mask = torch.zeros((batch, 0), dtype=torch.int64, device=tokens.device)
    if cache_allowed is None:
        cache_allowed = session.mask.bool()[:, None, :].expand(batch, width, -1)
    allowed = torch.cat([cache_allowed, allowed_new], dim=2)
    mask4 = additive_mask(allowed, _model_dtype(session.model))
    logits, session.past = forward(session.model, tokens, mask4, session.past, position_ids=positions)
    session.mask = torch.cat([session.mask, valid.to(torch.int64)], dim=1)
    return logits


def keep_columns(past, start: int, index: Tensor):
    """Cache columns ``start + index[b, k]`` -> columns ``start + k`` (k < K) of row b; then K columns after
    ``start`` remain. ``index`` int64 [B, K], entries >= 0 (holes are marked in the session's mask instead)."""
    def pick(x: Tensor) -> Tensor:
        idx = (start + index)[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[3])
        return torch.cat([x[..., :start, :], x.gather(2, idx)], dim=2)

    if isinstance(past, (tuple, list)):
        return type(past)((pick(k), pick(v)) for k, v in past)
    for layer in past.layers:
        if getattr(layer, "is_sliding", False) or not hasattr(layer, "keys"):
            raise TypeError(f"tree speculative decoding cannot rearrange a {type(layer).__name__} cache layer")
        layer.keys, layer.values = pick(layer.keys), pick(layer.values)
    return past


def keep_path(session, start: int, accepted_nodes: Tensor, emitted: Tensor, longest: int) -> None:
    """Keep the root column ``start`` and the accepted path (node i sits at column start + 1 + i) as columns
    start + 1 ..; rows with a shorter path get holes; everything after start + 1 + longest is dropped."""
    path = accepted_nodes[:, :longest]
    root = torch.zeros((path.shape[0], 1), dtype=path.dtype, device=path.device)
    index = torch.cat([root, path.clamp(min=0) + 1], dim=1)
    session.past = keep_columns(session.past, start, index)
    keep = torch.arange(longest + 1, device=path.device)[None] <= emitted[:, None]
    session.mask = torch.cat([session.mask[:, :start], keep.to(torch.int64)], dim=1)
