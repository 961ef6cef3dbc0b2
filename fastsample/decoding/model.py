"""The model protocol shared by every decoder: left-padded batches, attention masks, a KV cache to reuse, crop
and reorder, and the plain generation loop that greedy, sampling and contrastive decoding run on.

A model is a Hugging Face causal LM or any callable taking ``input_ids, cache, use_cache`` (and, when its
signature accepts them, ``attention_mask`` and ``position_ids``) and returning an object with ``.logits``
[B, T, V] and ``.cache``: the names transformers documents from 5.2x on. A model whose signature names
``past_key_values`` and no ``cache`` (older transformers releases, hand-written callables) gets and returns its
cache under that name instead. The cache may be a ``transformers`` ``Cache`` (``crop`` / ``reorder_cache``) or
the legacy tuple of per-layer ``(key, value)`` tensors [B, heads, T, head_dim].

A :class:`Session` is one model's view of a batch: the cache plus a 0/1 attention mask over every cache
column. Columns are never compacted: left padding, and in speculative decoding the draft tokens a row rejected,
stay in the cache as masked holes, and positions count only the unmasked columns, so every row sees exactly
its own sequence while the batch keeps one cache length.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Sequence

import torch

Tensor = torch.Tensor


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int, device=None) -> tuple[Tensor, Tensor]:
    """Token-id lists of unequal lengths -> ``(input_ids, attention_mask)``, both int64 [B, max_len], padded on
    the left so that every row's last column is its last prompt token."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token-id lists")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.int64, device=device)
    mask = torch.zeros((len(prompts), width), dtype=torch.int64, device=device)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.int64)
        mask[row, width - len(prompt):] = 1
    return ids, mask


@functools.lru_cache(maxsize=None)
def _accepts(forward: Callable, name: str) -> bool:
    params = inspect.signature(forward).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@functools.lru_cache(maxsize=None)
def _cache_keyword(forward: Callable) -> str:
    """``cache`` where the signature names it (transformers' current API, no deprecation warning), else the
    older ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def _returned_cache(out, keyword: str):
    # read the field the model filled: on current transformers outputs `.past_key_values` is a deprecated alias
    return out.cache if keyword == "cache" else out.past_key_values


def forward(model, input_ids: Tensor, attention_mask: Tensor, cache=None,
            position_ids: Tensor | None = None) -> tuple[Tensor, Any]:
    """One model call on new tokens ``input_ids`` [B, T].

    ``attention_mask`` [B, cache + T] covers every cache column and the new tokens (0 = padding or hole).
    Positions count the unmasked columns before each token, as HF ``generate`` does for left padding.
    Tree steps pass a 4-D additive mask [B, 1, T, cache + T] and their own ``position_ids`` [B, T] instead.
    Returns float32 logits [B, T, V] and the updated cache.
    """
    call = getattr(model, "forward", model)
    call = getattr(call, "__func__", call)  # cache the signature check per class, not per bound method
    keyword = _cache_keyword(call)
    kwargs = {"input_ids": input_ids, keyword: cache, "use_cache": True}
    if _accepts(call, "attention_mask"):
        kwargs["attention_mask"] = attention_mask
    if _accepts(call, "position_ids"):
        if position_ids is None:
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        kwargs["position_ids"] = position_ids
    out = model(**kwargs)
    return out.logits.float(), _returned_cache(out, keyword)


def crop(past, length: int):
    """Keep the first ``length`` columns of a cache (rollback after rejected speculative tokens)."""
    if isinstance(past, (tuple, list)):
        return type(past)((k[..., :length, :], v[..., :length, :]) for k, v in past)
    excess = past.get_seq_length() - length
    if excess > 0:
        past.crop(-excess)  # a negative count removes that many columns, in every transformers version
    return past


def reorder(past, index: Tensor):
    """Select (and duplicate) batch rows of a cache, e.g. the parent beams of the surviving beams."""
    if isinstance(past, (tuple, list)):
        return type(past)((k[index], v[index]) for k, v in past)
    past.reorder_cache(index)
    return past


class Session:
    """One model, its KV cache and the attention mask over the cache's columns, for one batch."""

    def __init__(self, model):
        self.model = model
        self.past = None
        self.mask: Tensor | None = None

    def __call__(self, input_ids: Tensor, valid: Tensor | None = None) -> Tensor:
        """Append tokens ``input_ids`` [B, T] (``valid`` [B, T]: 0 marks padding or a hole) and return their
        float32 logits [B, T, V]."""
        new = torch.ones_like(input_ids) if valid is None else valid.to(torch.int64)
        mask = new if self.mask is None else torch.cat([self.mask, new], dim=1)
        logits, self.past = forward(self.model, input_ids, mask, self.past)
        self.mask = mask
        return logits

    @property
    def length(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    def crop(self, length: int) -> None:
        self.past = crop(self.past, length)
        self.mask = self.mask[:, :length]

    def reorder(self, index: Tensor) -> None:
        self.past = reorder(self.past, index)
        self.mask = self.mask[index]


def eos_tensor(eos_token_id, device) -> Tensor | None:
    """``None``, an int or a list of ints -> an int64 tensor of end-of-sequence ids (or None)."""
    if eos_token_id is None:
        return None
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return torch.tensor(ids, dtype=torch.int64, device=device)


def prepare(input_ids: Tensor, attention_mask: Tensor | None, max_new_tokens: int, eos_token_id, pad_token_id):
    """Check the common decoder arguments; return ``(attention_mask, eos ids or None, pad id)``."""
    if input_ids.dim() != 2 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must have shape [batch, prompt_len >= 1], got {list(input_ids.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must have shape {list(input_ids.shape)}, got {list(attention_mask.shape)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    eos = eos_tensor(eos_token_id, input_ids.device)
    if eos is not None and pad_token_id is None:
        pad_token_id = int(eos[0])  # rows that finished early are filled with EOS, as HF does without a pad id
    return attention_mask, eos, pad_token_id


# how many steps run between checks that every row has finished: each check is a host sync
SYNC_EVERY = 8


def decode_loop(models: Sequence, input_ids: Tensor, attention_mask: Tensor | None, max_new_tokens: int,
                next_token: Callable[[int, Tensor, list[Tensor]], Tensor], eos_token_id=None,
                pad_token_id: int | None = None) -> Tensor:
    """Autoregressive loop: prefill every model on the prompt, then one token per row per step.

    ``next_token(step, sequences, logits)`` gets the sequences so far [B, L] (prompt padding included, as
    HF processors see them) and each model's float32 last-position logits [B, V]; it returns int64 [B].
    A row stops after emitting an EOS id and is padded with ``pad_token_id`` from then on. Returns the
    sequences [B, prompt_len + n]: n = max_new_tokens, or fewer when every row has finished by then (the
    output is then cut after the last row's EOS, like HF generate).
    """
    attention_mask, eos, pad = prepare(input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id)
    sessions = [Session(m) for m in models]
    batch, prompt_len = input_ids.shape
    seqs = torch.cat([input_ids, input_ids.new_full((batch, max_new_tokens), -1 if pad is None else pad)], dim=1)
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    n_gen = torch.zeros(batch, dtype=torch.int64, device=input_ids.device)  # tokens up to and including EOS
    logits = [s(input_ids, attention_mask)[:, -1] for s in sessions]
    for step in range(max_new_tokens):
        cur = prompt_len + step
        token = next_token(step, seqs[:, :cur], logits)
        if eos is not None:
            token = torch.where(finished, pad, token)
            n_gen += ~finished
            finished |= torch.isin(token, eos)
        seqs[:, cur] = token
        if step + 1 == max_new_tokens:
            break
        if eos is not None and (step + 1) % SYNC_EVERY == 0 and bool(finished.all()):
            break
        logits = [s(token[:, None])[:, -1] for s in sessions]
    n_out = int(n_gen.max()) if eos is not None else max_new_tokens
    return seqs[:, :prompt_len + n_out]


def decode_seeds(batch: int, seed: int | Tensor | None, generator: torch.Generator | None, device) -> Tensor:
    """Per-row Philox seeds [B] for a whole decode: a tensor is used as is; an int s gives s + row; None draws
    s from ``generator`` (or torch's default one). Each step then passes its step index as the offset, so a
    row's random stream depends only on its own seed: rows are reproducible whatever the batch around them."""
    if isinstance(seed, Tensor):
        if seed.shape != (batch,):
            raise ValueError(f"seed must be an int or a tensor of shape [{batch}], got {list(seed.shape)}")
        return seed.to(device=device, dtype=torch.int64)
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return seed + torch.arange(batch, dtype=torch.int64, device=device)
