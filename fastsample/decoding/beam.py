"""Beam search with Hugging Face's scoring: the best ``2 * num_beams`` continuations over beams x vocabulary
(one ``fastsample.top_k`` per step), length-normalised finished hypotheses, HF's early-stopping rules."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..sampling import top_k
from .model import Session, prepare

Tensor = torch.Tensor

# HF's score for "impossible": finite, so that adding it to a log-probability keeps the order of what is left
_NEG = -1.0e9


@dataclass
class BeamOutput:
    """``sequences`` int64 [B * num_return_sequences, P + n] (best first within each prompt, padded after
    their end) and ``sequences_scores`` float32 [B * num_return_sequences]: sum of log-probabilities divided
    by generated_length ** length_penalty."""

    sequences: Tensor
    sequences_scores: Tensor


def _pick(x: Tensor, index: Tensor) -> Tensor:
    """x [B, N, ...] -> x[b, index[b, j], ...] for index [B, M]."""
    return x.take_along_dim(index.reshape(index.shape + (1,) * (x.dim() - 2)), dim=1)


def beam_search(model, input_ids: Tensor, attention_mask: Tensor | None = None, *, num_beams: int,
                max_new_tokens: int, length_penalty: float = 1.0, early_stopping: bool | str = False,
                num_return_sequences: int = 1, eos_token_id: int | Sequence[int] | None = None,
                pad_token_id: int | None = None, processors: Sequence = ()) -> BeamOutput:
    """Beam search, equal to HF ``generate(num_beams=..., do_sample=False)`` in sequences and sequence scores.

    Parameters
    ----------
    model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id : as in ``greedy_decode``;
        generated positions after a hypothesis ends hold ``pad_token_id`` (else the first EOS id, else -1).
    num_beams : hypotheses kept per prompt.
    length_penalty : finished scores are divided by generated_length ** length_penalty (> 0 favours length).
    early_stopping : True: stop a prompt once num_beams hypotheses have finished; False: stop once the best
        running beam, scored at its current length, cannot beat the worst finished one; "never": the same
        test, scored at the longest possible length when length_penalty > 0 (the exact criterion).
    num_return_sequences : how many of the best finished hypotheses to return per prompt (<= num_beams).
    processors : callables ``(input_ids, log_probs) -> log_probs`` applied after the log-softmax, as HF does.
    """
    def step_scores(seqs: Tensor, logits: list[Tensor]) -> Tensor:
        scores = torch.log_softmax(logits[0], dim=-1)
        for proc in processors:
            scores = proc(seqs, scores)
        return scores

    return beam_loop([model], step_scores, input_ids, attention_mask, num_beams=num_beams,
                     max_new_tokens=max_new_tokens, length_penalty=length_penalty, early_stopping=early_stopping,
                     num_return_sequences=num_return_sequences, eos_token_id=eos_token_id,
                     pad_token_id=pad_token_id)


def beam_loop(models: Sequence, step_scores: Callable[[Tensor, list[Tensor]], Tensor], input_ids: Tensor,
              attention_mask: Tensor | None, *, num_beams: int, max_new_tokens: int, length_penalty: float,
              early_stopping: bool | str, num_return_sequences: int, eos_token_id, pad_token_id) -> BeamOutput:
    """The beam search of ``beam_search`` over any per-token score: ``step_scores(sequences [B * n, L],
    [last-position float32 logits [B * n, V] of each model]) -> [B * n, V]`` scores added to the beam's."""
    attention_mask, eos, pad = prepare(input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id)
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if not 1 <= num_return_sequences <= num_beams:
        raise ValueError(f"num_return_sequences must be in [1, num_beams={num_beams}], got {num_return_sequences}")
    batch, prompt_len = input_ids.shape
    n, total_len, dev = num_beams, prompt_len + max_new_tokens, input_ids.device
    # keep enough candidates that n of them go on even if the best ones all end with an EOS id
    n_cand = max(2, 1 + (0 if eos is None else eos.numel())) * n
    first_n = torch.arange(n_cand, device=dev) < n
    row_base = (torch.arange(batch, device=dev) * n)[:, None]

    sessions = [Session(m) for m in models]
    logits = [s(input_ids.repeat_interleave(n, 0), attention_mask.repeat_interleave(n, 0))[:, -1] for s in sessions]
    alive = input_ids.new_full((batch, n, total_len), -1 if pad is None else pad)
    alive[:, :, :prompt_len] = input_ids[:, None]
    # the n beams start as copies of the prompt: only beam 0 may expand at the first step
    alive_score = torch.zeros((batch, n), device=dev)
    alive_score[:, 1:] = _NEG
    done, done_score = alive.clone(), torch.full((batch, n), _NEG, device=dev)
    done_real = torch.zeros((batch, n), dtype=torch.bool, device=dev)  # False: an empty slot
    done_len = torch.zeros((batch, n), dtype=torch.int64, device=dev)
    improvable = torch.ones((batch, 1), dtype=torch.bool, device=dev)

    for cur in range(prompt_len, total_len):
        scores = step_scores(alive.view(batch * n, total_len)[:, :cur], logits)
        vocab = scores.shape[-1]
        cand_score, flat = top_k((scores.view(batch, n, vocab) + alive_score[..., None]).view(batch, n * vocab),
                                 n_cand)
        parent, token = flat // vocab, flat % vocab
        cand = _pick(alive, parent)
        cand[:, :, cur] = token
        ends = torch.isin(token, eos) if eos is not None else torch.zeros_like(token, dtype=torch.bool)
        ends |= cur + 1 == total_len

        # the n best candidates that did not end go on
        go_score = cand_score + ends * _NEG
        keep = top_k(go_score, n)[1]
        alive, alive_score, parent = _pick(cand, keep), _pick(go_score, keep), _pick(parent, keep)

        # ended candidates among the n best join the finished pool if they beat its worst member
        new_len = cur + 1 - prompt_len
        normed = cand_score / new_len ** length_penalty
        normed = normed + (done_real.all(-1, keepdim=True) & (early_stopping is True)) * _NEG
        normed = normed + ~improvable * _NEG
        normed = normed + ~(ends & first_n) * _NEG
        best = top_k(torch.cat([done_score, normed], dim=1), n)[1]
        done = _pick(torch.cat([done, cand], dim=1), best)
        done_score = _pick(torch.cat([done_score, normed], dim=1), best)
        done_real = _pick(torch.cat([done_real, ends & first_n], dim=1), best)
        done_len = _pick(torch.cat([done_len, torch.full_like(token, new_len)], dim=1), best)

        for s in sessions:
            s.reorder((parent + row_base).view(-1))
        # HF's heuristic: can the best running beam still beat the worst finished hypothesis?
        horizon = max_new_tokens if early_stopping == "never" and length_penalty > 0 else new_len
        best_possible = alive_score[:, :1] / horizon ** length_penalty
        worst = torch.where(done_real, done_score.min(dim=1, keepdim=True).values, _NEG)
        improvable &= (best_possible > worst).any(dim=-1, keepdim=True)
        if not improvable.any() or (early_stopping is True and done_real.all()) or ends.all():
            break  # the one host sync per step: HF stops on the same conditions
        logits = [s(alive.view(batch * n, total_len)[:, cur:cur + 1])[:, -1] for s in sessions]

    r = num_return_sequences
    out_len = prompt_len + int(done_len[:, :r].max())
    return BeamOutput(done[:, :r, :out_len].reshape(batch * r, out_len), done_score[:, :r].reshape(batch * r))
