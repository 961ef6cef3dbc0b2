"""Contrastive decoding: an expert and an amateur model read the same prefix; the next token maximises how
much more the expert likes it than the amateur, among the tokens the expert finds plausible."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..sampling import greedy
from .beam import beam_loop
from .model import decode_loop

Tensor = torch.Tensor


def contrastive_scores(expert_logits: Tensor, amateur_logits: Tensor, alpha: float = 0.1, beta: float | None = None,
                       amateur_temperature: float = 1.0) -> Tensor:
    """The contrastive score [B, V] of every token, -inf outside the expert's plausible head.

    The head is ``p_e >= alpha * max p_e``, tested on the logits (``x_e >= max x_e + log alpha``: the same set,
    without a softmax). Inside it:

    - ``beta is None`` (Li et al. 2022): ``log p_e - log p_a``, with p_a = softmax(amateur / amateur_temperature).
    - ``beta`` given (O'Brien & Lewis 2023): ``(1 + beta) * x_e - beta * x_a / amateur_temperature`` on the
      logits, as in their algorithm.
    """
    amateur = amateur_logits / amateur_temperature
    if beta is None:
        score = torch.log_softmax(expert_logits, dim=-1) - torch.log_softmax(amateur, dim=-1)
    else:
        score = (1 + beta) * expert_logits - beta * amateur
    cutoff = expert_logits.max(dim=-1, keepdim=True).values + (math.log(alpha) if alpha > 0 else -math.inf)
    return score.masked_fill(expert_logits < cutoff, -math.inf)


def contrastive_decode(expert, amateur, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                       max_new_tokens: int, alpha: float = 0.1, beta: float | None = None,
                       amateur_temperature: float = 1.0, num_beams: int = 1, length_penalty: float = 1.0,
                       early_stopping: bool | str = False, num_return_sequences: int = 1,
                       eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None):
    """Contrastive decoding, greedy (``num_beams=1``) or with beam search over the contrastive scores.

    Parameters
    ----------
    expert, amateur : two models of the protocol in ``fastsample.decoding.model`` sharing one vocabulary.
    alpha : plausibility threshold in [0, 1]; 1 keeps only the expert's best tokens (expert greedy, except that
        among tokens tied at the expert's maximum the contrast picks, not the lowest id), 0 keeps all.
    beta : None for Li et al.'s log-probability difference, else O'Brien & Lewis's weight (0: expert greedy).
    amateur_temperature : divides the amateur's logits (> 0).
    num_beams, length_penalty, early_stopping, num_return_sequences : as in ``beam_search``; the beam score is
        the sum of the contrastive scores.
    Other arguments as in ``greedy_decode``.

    Returns
    -------
    int64 [B, P + n] sequences with ``num_beams=1``, else a ``BeamOutput``.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not amateur_temperature > 0:
        raise ValueError(f"amateur_temperature must be > 0, got {amateur_temperature}")

    def scores(seqs: Tensor, logits: list[Tensor]) -> Tensor:
        return contrastive_scores(logits[0], logits[1], alpha, beta, amateur_temperature)

    if num_beams == 1:
        return decode_loop([expert, amateur], input_ids, attention_mask, max_new_tokens,
                           lambda step, seqs, logits: greedy(scores(seqs, logits)), eos_token_id, pad_token_id)
    return beam_loop([expert, amateur], scores, input_ids, attention_mask, num_beams=num_beams,
                     max_new_tokens=max_new_tokens, length_penalty=length_penalty, early_stopping=early_stopping,
                     num_return_sequences=num_return_sequences, eos_token_id=eos_token_id,
                     pad_token_id=pad_token_id)
