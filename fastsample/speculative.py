"""Speculative verification: chain_speculative_sampling (a chain of draft tokens, docs/design.md section 5) and
tree_speculative_sampling / tree_greedy_verify (a token tree per row, section 11)."""
from __future__ import annotations

import torch

from . import _ops, _rng, reference_tree
from .backends import backend_ops, ops_for, resolve_backend
from .sampling import greedy

Tensor = torch.Tensor


def chain_speculative_sampling(draft_probs: Tensor, draft_token_ids: Tensor, target_probs: Tensor, *,
                               generator=None, seed=None, offset=None, backend=None):
    """Accept or reject n draft tokens per row against the target model's probabilities.

    Parameters
    ----------
    draft_probs : float32, float16 or bfloat16 [B, n, V], the draft model's distribution at each draft position.
    draft_token_ids : int [B, n], the draft tokens.
    target_probs : float32, float16 or bfloat16 [B, n + 1, V], the target's distribution at each draft position and one beyond.

    Returns
    -------
    output_token_ids : int64 [B, n + 1], the accepted prefix, then the token sampled from the residual
        norm(max(0, p - q)) at the first rejection (or the bonus token from p_{n+1}), then -1 padding.
    accepted_num : int64 [B], how many positions passed the acceptance test ``u_i * q_i(x_i) < p_i(x_i)``
        independently (for acceptance-rate statistics).
    emitted_num : int64 [B], the length of the accepted prefix.

    Draw j = i of a row's Philox stream tests position i; draw j = n samples the final token. A draft id
    outside [0, V) is rejected at its position; a row whose probabilities at the sampled position are
    invalid (NaN, negative, all zero) gets -1 there.
    """
    _check_tensors([("draft_probs", draft_probs, 3), ("target_probs", target_probs, 3),
                    ("draft_token_ids", draft_token_ids, 2)])
    batch, n, vocab = draft_probs.shape
    if draft_token_ids.shape != (batch, n):
        raise ValueError(f"draft_token_ids must have shape [{batch}, {n}], got {list(draft_token_ids.shape)}")
    if target_probs.shape != (batch, n + 1, vocab):
        raise ValueError(f"target_probs must have shape [{batch}, {n + 1}, {vocab}], got {list(target_probs.shape)}")
    if draft_token_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"draft_token_ids must be int32 or int64, got {draft_token_ids.dtype}")
    if vocab < 1:
        raise ValueError(f"draft_probs must have a vocabulary of at least 1, got shape {list(draft_probs.shape)}")
    for name, t in (("draft_probs", draft_probs), ("target_probs", target_probs)):
        if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if not draft_probs.device == draft_token_ids.device == target_probs.device:
        raise ValueError("draft_probs, draft_token_ids and target_probs must be on one device")
    seed_t, offset_t = _rng.per_row_seed_offset(batch, draft_probs.device, generator, seed, offset)
    return ops_for(draft_probs, backend).chain_speculative_sampling(
        draft_probs.contiguous(), draft_token_ids.to(torch.int64).contiguous(), target_probs.contiguous(),
        seed_t, offset_t)


def _check_tensors(named) -> None:
    """Each (name, t, dim): a torch.Tensor with `dim` dimensions on a CPU or CUDA device, else an error naming it."""
    for name, t, dim in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != dim:
            raise ValueError(f"{name} must have {dim} dimensions, got shape {list(t.shape)}")
        if t.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{name} must be on a CPU or CUDA device, got a tensor on {t.device}")


def _check_tree(draft_token_ids, parents, target, target_name: str, draft_probs):
    """(batch, nodes, vocab) after the checks of docs/ops.md's bad-input table for the tree ops."""
    named = [("draft_token_ids", draft_token_ids, 2), ("parents", parents, 2), (target_name, target, 3)]
    if draft_probs is not None:
        named.append(("draft_probs", draft_probs, 3))
    _check_tensors(named)
    for name, t, _ in named:
        if t.device != target.device:
            raise ValueError(f"{name} must be on {target.device} like {target_name}, got {t.device}")
    batch, nodes = draft_token_ids.shape
    vocab = target.shape[2]
    for name, t in (("draft_token_ids", draft_token_ids), ("parents", parents)):
        if t.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name} must be int32 or int64, got {t.dtype}")
    if parents.shape != (batch, nodes):
        raise ValueError(f"parents must have shape [{batch}, {nodes}] like draft_token_ids, got {list(parents.shape)}")
    if target.shape[:2] != (batch, nodes + 1) or vocab < 1:
        raise ValueError(f"{target_name} must have shape [{batch}, {nodes + 1}, V >= 1], got {list(target.shape)}")
    floats = (torch.float32, torch.float16, torch.bfloat16)
    if target.dtype not in floats:
        raise TypeError(f"{target_name} must be float32, float16 or bfloat16, got {target.dtype}")
    if draft_probs is not None:
        if draft_probs.shape != (batch, nodes, vocab):
            raise ValueError(f"draft_probs must have shape [{batch}, {nodes}, {vocab}], got {list(draft_probs.shape)}")
        if draft_probs.dtype not in floats:
            raise TypeError(f"draft_probs must be float32, float16 or bfloat16, got {draft_probs.dtype}")
    return batch, nodes, vocab


def _tree_backend(x: Tensor, backend):
    """The module with the tree op for ``x``: C++ on CPU and on CUDA tensors (the CUDA kernel when fastsample._C
    was built with CUDA, else Triton, as for the other ops), Triton, or the torch reference."""
    name = resolve_backend(x, backend)
    if name in ("cpu", "cuda"):
        return backend_ops(name)  # a RuntimeError says why when the extension lacks the backend
    if name == "triton":
        from .triton import ops as triton_ops

        return triton_ops
    return reference_tree


def tree_speculative_sampling(draft_token_ids: Tensor, parents: Tensor, target_probs: Tensor,
                              draft_probs: Tensor | None = None, *, generator=None, seed=None, offset=None,
                              backend=None):
    """Verify a token tree per row losslessly (docs/ops.md "tree_speculative_sampling").

    Parameters
    ----------
    draft_token_ids : int [B, N], node i's token; -1 marks an unused node (rows may use fewer nodes).
    parents : int [B, N], node i's parent, -1 for a child of the root; every used node's parent < i.
    target_probs : float32, float16 or bfloat16 [B, N + 1, V]: row 0 the target's distribution at the root,
        row i + 1 after node i.
    draft_probs : [B, N, V] or None. Given: node i's token was drawn from draft_probs[:, i] (siblings i.i.d.
        from their parent's draft distribution); SpecInfer's multi-round rejection verifies them. None:
        deterministic children (e.g. a top-k expansion), accepted with the residual's probability.

    Returns
    -------
    output_token_ids : int64 [B, N + 1], the accepted path's tokens, then the token drawn from the residual
        where the walk stopped, then -1 padding.
    accepted_nodes : int64 [B, N], the node indices of the accepted path (whose KV entries to keep), -1 padding.
    emitted_num : int64 [B], the accepted path's length.

    Node i's acceptance test uses draw j = i of the row's Philox stream, the final token draw j = N, so a
    path tree gives chain_speculative_sampling's tokens. A row with a used node whose parent is outside
    [-1, i) is invalid: all -1, emitted_num 0.
    """
    batch, _, _ = _check_tree(draft_token_ids, parents, target_probs, "target_probs", draft_probs)
    seed_t, offset_t = _rng.per_row_seed_offset(batch, target_probs.device, generator, seed, offset)
    ops = _tree_backend(target_probs, backend)
    return ops.tree_speculative_sampling(
        draft_token_ids.to(torch.int64).contiguous(), parents.to(torch.int64).contiguous(),
        target_probs.contiguous(), None if draft_probs is None else draft_probs.contiguous(), seed_t, offset_t)


def tree_greedy_verify(draft_token_ids: Tensor, parents: Tensor, target_logits: Tensor, *, backend=None):
    """Greedy tree verification: the longest root path whose tokens are the target's argmax (lowest index on
    ties) at their parent, then the target's argmax after it; the same triple as `tree_speculative_sampling`.
    target_logits is [B, N + 1, V] (logits or probs: only the argmax counts); a NaN row has no argmax (-1)."""
    batch, nodes, vocab = _check_tree(draft_token_ids, parents, target_logits, "target_logits", None)
    best = greedy(target_logits.reshape(batch * (nodes + 1), vocab), backend=backend).view(batch, nodes + 1)
    return reference_tree.tree_greedy_walk(draft_token_ids.to(torch.int64), parents.to(torch.int64), best)
