"""Ancestral sampling with temperature, top-k, top-p, min-p (one fused ``fastsample.sample`` call per step),
logits processors, typical / epsilon filtering and the entropy-adaptive policy."""
from __future__ import annotations

from typing import Sequence

import torch

from ..processors import filter_logits
from ..sampling import sample
from ..stack import sample_stack
from .model import decode_loop, decode_seeds

Tensor = torch.Tensor


def sample_decode(model, input_ids: Tensor, attention_mask: Tensor | None = None, *, max_new_tokens: int,
                  temperature: float | Tensor = 1.0, top_k: int | Tensor = 0, top_p: float | Tensor = 1.0,
                  min_p: float | Tensor = 0.0, processors: Sequence = (), warpers: Sequence = (), adaptive=None,
                  seed: int | Tensor | None = None, generator: torch.Generator | None = None,
                  eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
                  stack: dict | None = None) -> Tensor:
    """Sample continuations of left-padded prompts.

    Per step and row: ``processors`` (penalties, n-gram blocking) on the float32 logits, then temperature ->
    top-k -> top-p -> min-p, then ``warpers`` (``TypicalFilter``, ``EpsilonFilter``), then one token: HF's
    order. Without warpers the four filters and the draw are one fused ``fastsample.sample`` call; with
    warpers the filters are first applied as masks (``fastsample.processors.filter_logits``).

    Parameters
    ----------
    model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id : as in ``greedy_decode``.
    temperature, top_k, top_p, min_p : scalars or per-row tensors [B], as in ``fastsample.sample``;
        temperature 0 makes that row greedy.
    processors : callables ``(input_ids, scores) -> scores`` applied before the filters.
    warpers : callables of the same form applied after the filters.
    adaptive : an ``EntropyAdaptiveSampler`` (or any callable ``logits -> dict`` of per-row temperature,
        top_k, top_p, min_p); when given it replaces the four parameters at every step, from the processed
        logits of that step.
    seed : int or int64 tensor [B] of per-row seeds (see ``model.decode_seeds``); step t of row b draws with
        Philox (seed_b, offset t), so a row's tokens depend only on its seed, prompt and parameters.
    generator : draws the seed when ``seed`` is None.
    stack : keywords of ``fastsample.sample_stack`` for its long-tail steps (``order``, ``top_n_sigma``,
        ``typical_p``, ``epsilon``, ``eta``, ``xtc_*``, ``dynatemp_*``, ``dry_*``, ``mirostat_tau``,
        ``mirostat_eta``; ``mirostat=True`` starts mirostat v2 at mu = 2 * tau and carries mu from step to step).
        Each step is then one ``sample_stack`` call, with the sequence so far (prompt padding left out) as the
        DRY history. Not combined with ``warpers`` or ``adaptive``.

    Returns
    -------
    int64 [B, P + n] sequences, as in ``greedy_decode``.
    """
    seeds = decode_seeds(input_ids.shape[0], seed, generator, input_ids.device)
    params = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p}
    if stack is not None:
        if warpers or adaptive is not None:
            raise ValueError("stack cannot be combined with warpers or adaptive (put typical_p / epsilon in stack)")
        stack = dict(stack)
        batch, prompt_len = input_ids.shape
        state = {"mu": torch.full((batch,), 2.0 * float(stack.get("mirostat_tau", 5.0)), device=input_ids.device)
                 if stack.pop("mirostat", False) else None}
        prompt_valid = (attention_mask.bool() if attention_mask is not None
                        else torch.ones_like(input_ids, dtype=torch.bool))

    def next_token(step, seqs, logits):
        scores = logits[0]
        for proc in processors:
            scores = proc(seqs, scores)
        if stack is not None:
            generated = torch.ones(batch, seqs.shape[1] - prompt_len, dtype=torch.bool, device=seqs.device)
            history = torch.where(torch.cat([prompt_valid, generated], dim=1), seqs, -1)
            out = sample_stack(scores, output_ids=history, **params, **stack, mirostat_mu=state["mu"], seed=seeds,
                               offset=step)
            state["mu"] = out.mirostat_mu
            return out.tokens
        row_params = adaptive(scores) if adaptive is not None else params
        if warpers:
            scores = filter_logits(scores, **row_params)
            for warp in warpers:
                scores = warp(seqs, scores)
            # the temperature is already applied; 0 still marks a greedy row
            t = torch.as_tensor(row_params["temperature"], dtype=torch.float32, device=scores.device)
            row_params = {"temperature": torch.where(t > 0, 1.0, 0.0).expand(scores.shape[0])}
        return sample(scores, **row_params, seed=seeds, offset=step)

    return decode_loop([model], input_ids, attention_mask, max_new_tokens, next_token, eos_token_id, pad_token_id)
