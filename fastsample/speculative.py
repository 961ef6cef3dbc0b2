"""chain_speculative_sampling: rejection-sampling acceptance of a chain of draft tokens (docs/design.md, section 5)."""
from __future__ import annotations

import torch

from . import _rng
from .backends import ops_for

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
    for name, t, dim in (("draft_probs", draft_probs, 3), ("target_probs", target_probs, 3),
                         ("draft_token_ids", draft_token_ids, 2)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != dim:
            raise ValueError(f"{name} must have {dim} dimensions, got shape {list(t.shape)}")
        if t.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{name} must be on a CPU or CUDA device, got a tensor on {t.device}")
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
