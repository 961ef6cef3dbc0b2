"""Greedy decoding: the most probable token at every step (lowest id on ties), after optional processors."""
from __future__ import annotations

from typing import Sequence

import torch

from ..sampling import greedy
from .model import decode_loop

Tensor = torch.Tensor


def greedy_decode(model, input_ids: Tensor, attention_mask: Tensor | None = None, *, max_new_tokens: int,
                  eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
                  processors: Sequence = ()) -> Tensor:
    """Greedy decoding, token for token what HF ``generate(do_sample=False)`` returns.

    Parameters
    ----------
    model : a HF causal LM or a callable following the protocol of ``fastsample.decoding.model``.
    input_ids : int64 [B, P], prompts left-padded to a common length P.
    attention_mask : int [B, P], 0 on the padding; None means no padding.
    max_new_tokens : how many tokens to generate at most.
    eos_token_id : an id or a list of ids that end a row; later positions of that row get ``pad_token_id``
        (the first EOS id when no pad id is given).
    processors : callables ``(input_ids [B, L], scores [B, V]) -> scores`` applied in order to the float32
        logits, e.g. ``fastsample.processors.RepetitionPenalty``.

    Returns
    -------
    int64 [B, P + n]: the prompts, then n <= max_new_tokens generated tokens (fewer when every row ended).
    """
    def next_token(step, seqs, logits):
        scores = logits[0]
        for proc in processors:
            scores = proc(seqs, scores)
        return greedy(scores)

    return decode_loop([model], input_ids, attention_mask, max_new_tokens, next_token, eos_token_id, pad_token_id)
