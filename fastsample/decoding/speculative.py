"""Speculative decoding (Leviathan et al. 2023, Chen et al. 2023): a small draft model proposes ``gamma`` tokens,
one target forward scores them all, ``chain_speculative_sampling`` keeps the longest acceptable prefix plus one
token from the target, so the output has exactly the target's distribution (or its greedy tokens).

Rows accept different numbers of tokens, yet the batch keeps one cache length per model: the draft tokens a row
rejected stay in the caches as masked holes (see ``model.Session``), and only the columns no row needs are
cropped away. Each step starts from one pending token per row (the last token emitted, not yet in any cache).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..sampling import greedy, sampling_from_probs, softmax, top_k_renorm_probs, top_p_renorm_probs
from ..speculative import chain_speculative_sampling
from .model import Session, prepare, decode_seeds

Tensor = torch.Tensor


@dataclass
class SpeculativeOutput:
    """``sequences`` int64 [B, P + n] as in ``greedy_decode``, plus statistics over the rows still running:
    ``acceptance_rate`` = draft tokens passing the acceptance test / draft tokens proposed;
    ``tokens_per_target_forward`` = tokens emitted per verification forward of the target (mean accepted prefix
    + 1, counted before the cut at max_new_tokens; the prefill forward is not counted);
    ``target_forwards`` / ``draft_forwards`` = model calls after the prefill."""

    sequences: Tensor
    acceptance_rate: float
    tokens_per_target_forward: float
    target_forwards: int
    draft_forwards: int


def speculative_decode(target, draft, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                       max_new_tokens: int, gamma: int = 4, do_sample: bool = False, temperature: float = 1.0,
                       top_k: int = 0, top_p: float = 1.0, seed: int | Tensor | None = None,
                       generator: torch.Generator | None = None, eos_token_id: int | Sequence[int] | None = None,
                       pad_token_id: int | None = None) -> SpeculativeOutput:
    """Generate with ``target``'s distribution, ``gamma`` draft tokens per target forward.

    Parameters
    ----------
    target, draft : models of the protocol in ``fastsample.decoding.model`` sharing one vocabulary.
    gamma : draft tokens proposed per step (>= 1).
    do_sample : False: greedy (the output equals ``greedy_decode(target)``; the models' one-hot argmax
        distributions go through the same acceptance kernel). True: both models sample from softmax(logits /
        temperature) filtered by top-k then top-p, and the output follows the target's filtered distribution.
    seed, generator : per-row seeds as in ``sample_decode``; step t of row b uses Philox offsets
        t * (gamma + 1) + i for the draft's i-th token and t * (gamma + 1) + gamma for the acceptance test.
    Other arguments as in ``greedy_decode``.
    """
    attention_mask, eos, pad = prepare(input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id)
    if isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 1:
        raise ValueError(f"gamma must be a positive int, got {gamma!r}")
    batch, prompt_len = input_ids.shape
    dev = input_ids.device
    seeds = decode_seeds(batch, seed, generator, dev)

    def probs(logits: Tensor) -> Tensor:
        flat = logits.reshape(-1, logits.shape[-1])
        if not do_sample:
            p = torch.zeros_like(flat).scatter_(1, greedy(flat)[:, None], 1.0)
        else:
            p = softmax(flat, temperature)
            p = top_k_renorm_probs(p, top_k) if top_k > 0 else p
            p = top_p_renorm_probs(p, top_p) if top_p < 1 else p
        return p.view(logits.shape)

    tgt, drf = Session(target), Session(draft)
    if prompt_len > 1:  # the last prompt token is the first pending token
        tgt(input_ids[:, :-1], attention_mask[:, :-1])
        drf(input_ids[:, :-1], attention_mask[:, :-1])
    pending = input_ids[:, -1:]
    extra = None  # the last draft token of a step where some row accepted everything: the draft has not read it
    fill = -1 if pad is None else pad
    out = input_ids.new_full((batch, max_new_tokens + gamma + 1), fill)
    n_out = torch.zeros(batch, dtype=torch.int64, device=dev)
    running = torch.ones(batch, dtype=torch.bool, device=dev)
    accepted_sum = emitted_sum = row_steps = torch.zeros((), dtype=torch.int64, device=dev)
    cols = torch.arange(gamma + 1, device=dev)
    steps = draft_calls = 0
    while True:
        base = steps * (gamma + 1)
        # 1. the draft proposes gamma tokens
        if extra is None:
            q_logits = drf(pending)[:, -1]
        else:
            q_logits = drf(torch.cat([extra[0], pending], 1), torch.cat([extra[1], torch.ones_like(pending)], 1))[:, -1]
        drafted, q = [], []
        for i in range(gamma):
            q.append(probs(q_logits))
            drafted.append(sampling_from_probs(q[-1], seed=seeds, offset=base + i) if do_sample else greedy(q_logits))
            if i + 1 < gamma:
                q_logits = drf(drafted[-1][:, None])[:, -1]
        draft_calls += gamma
        d, q = torch.stack(drafted, 1), torch.stack(q, 1)

        # 2. one target forward scores the pending token and every draft token
        tgt_start = tgt.length
        p = probs(tgt(torch.cat([pending, d], 1)))
        tokens, accepted, emitted = chain_speculative_sampling(q, d, p, seed=seeds, offset=base + gamma)

        # 3. write each running row's new tokens: the accepted prefix and one target token, cut after an EOS
        count = emitted + 1
        if eos is not None:
            is_eos = torch.isin(tokens, eos) & (cols < count[:, None])
            count = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, count)
            running_after = running & ~is_eos.any(1)
        else:
            running_after = running.clone()
        # past a row's end the buffer holds padding; a stopped row writes padding beyond max_new_tokens
        write = running[:, None] & (cols < count[:, None])
        start = n_out.clamp(max=max_new_tokens)[:, None]
        out.scatter_(1, start + cols, torch.where(write, tokens, fill))
        accepted_sum = accepted_sum + (accepted * running).sum()
        emitted_sum = emitted_sum + ((emitted + 1) * running).sum()
        row_steps = row_steps + running.sum()
        n_out = n_out + count * running
        running = running_after & (n_out < max_new_tokens)
        steps += 1

        # 4. roll both caches back: rejected draft columns become holes, columns no row needs are cropped
        longest, stop = torch.stack([emitted.max(), (~running.any()).long()]).tolist()  # the one host sync per step
        if stop:
            break
        tgt.mask[:, tgt_start + 1:] *= cols[:gamma] < emitted[:, None]
        tgt.crop(tgt_start + 1 + longest)
        drf_start = drf.length - gamma  # the pending token's column
        drf.mask[:, drf_start + 1:] *= cols[:gamma - 1] < emitted[:, None]
        drf.crop(drf_start + 1 + min(longest, gamma - 1))
        extra = (d[:, -1:], (emitted == gamma)[:, None].to(torch.int64)) if longest == gamma else None
        pending = tokens.gather(1, emitted[:, None])

    n_gen = int(torch.clamp(n_out, max=max_new_tokens).max())
    rows = max(int(row_steps), 1)
    return SpeculativeOutput(torch.cat([input_ids, out[:, :n_gen]], 1), int(accepted_sum) / (gamma * rows),
                             int(emitted_sum) / rows, steps, draft_calls)
