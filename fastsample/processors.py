"""Logits processors for the decoders, with Hugging Face's semantics where HF has the same processor.

Each processor is a callable ``(input_ids [B, L], scores [B, V] float32) -> scores`` like HF's
``LogitsProcessor``, works on the whole batch at once and never reads a tensor value on the host. The decoders
apply them in HF's order: repetition penalty, presence / frequency penalty, no-repeat-n-gram blocking (on the
raw logits), then temperature, top-k, top-p, min-p (fused in ``fastsample.sample``), then typical and epsilon
filtering (see ``filter_logits`` for how the fused filters are applied first when those two are present).

``entropy_varentropy`` is the per-row statistic and ``EntropyAdaptiveSampler`` the entropix-style policy
built on it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import sampling as fs
from .stack import tail

Tensor = torch.Tensor


def _token_mask(input_ids: Tensor, vocab: int) -> Tensor:
    """[B, V] bool: which tokens occur in each row of ``input_ids``."""
    mask = torch.zeros((input_ids.shape[0], vocab), dtype=torch.bool, device=input_ids.device)
    return mask.scatter_(1, input_ids, True)


class RepetitionPenalty:
    """CTRL's repetition penalty (HF ``RepetitionPenaltyLogitsProcessor``): every token already in the row
    (prompt included) has its score divided by ``penalty`` when positive and multiplied when negative."""

    def __init__(self, penalty: float):
        if not penalty > 0:
            raise ValueError(f"penalty must be > 0, got {penalty}")
        self.penalty = float(penalty)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        seen = _token_mask(input_ids, scores.shape[1])
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen, penalised, scores)


class PresenceFrequencyPenalty:
    """OpenAI / vLLM presence and frequency penalties: ``score -= presence * [count > 0] + frequency * count``,
    where count is how often the token occurs in the row at positions >= ``prompt_length``.

    HF has no equivalent. ``prompt_length=0`` counts the whole row (padding ids included), the decoder's
    prompt width counts only the generated tokens, as vLLM does.
    """

    def __init__(self, presence: float = 0.0, frequency: float = 0.0, prompt_length: int = 0):
        self.presence, self.frequency, self.prompt_length = float(presence), float(frequency), int(prompt_length)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        counted = input_ids[:, self.prompt_length:]
        counts = torch.zeros_like(scores).scatter_add_(1, counted, torch.ones_like(counted, dtype=scores.dtype))
        return scores - self.presence * (counts > 0).to(scores.dtype) - self.frequency * counts


class NoRepeatNGram:
    """Bans every token that would complete an n-gram already present in the row (HF
    ``NoRepeatNGramLogitsProcessor``): all windows of n tokens are compared with the row's last n - 1 tokens
    at once, instead of HF's per-row dictionaries."""

    def __init__(self, ngram_size: int):
        if isinstance(ngram_size, bool) or not isinstance(ngram_size, int) or ngram_size < 1:
            raise ValueError(f"ngram_size must be a positive int, got {ngram_size!r}")
        self.n = ngram_size

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        n, length = self.n, input_ids.shape[1]
        if length < n:
            return scores
        windows = input_ids.unfold(1, n, 1)  # [B, L - n + 1, n]
        prefix = input_ids[:, length - n + 1:]  # [B, n - 1]
        hit = (windows[:, :, :-1] == prefix[:, None, :]).all(-1)
        # a window that does not match bans nothing: send it to a spare column past the vocabulary
        banned_ids = torch.where(hit, windows[:, :, -1], scores.shape[1])
        banned = torch.zeros((scores.shape[0], scores.shape[1] + 1), dtype=torch.bool, device=scores.device)
        banned.scatter_(1, banned_ids, True)
        return scores.masked_fill(banned[:, :-1], -math.inf)


class TypicalFilter:
    """Locally typical sampling (Meister et al. 2022; HF ``TypicalLogitsWarper``): keep the tokens whose
    surprisal is closest to the row's entropy, fewest first, until their probability reaches ``mass``."""

    def __init__(self, mass: float = 0.9, min_tokens_to_keep: int = 1):
        if not 0 < mass < 1:
            raise ValueError(f"mass must be in (0, 1), got {mass}")
        self.mass, self.min_keep = float(mass), int(min_tokens_to_keep)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.min_keep <= 1:  # the stack sampler's typical-p step (fastsample/stack/tail.py), in float64
            return _shared_filter(tail.typical, scores, self.mass)
        logp = torch.log_softmax(scores, dim=-1)
        entropy = -torch.nansum(logp.exp() * logp, dim=-1, keepdim=True)  # nansum: -inf logits give 0 * -inf
        distance = (-logp - entropy).abs()
        order_dist, order = distance.sort(dim=-1)
        cum = torch.softmax(scores.gather(1, order), dim=-1).cumsum(-1)
        # the cut is at the first token where the mass, counted in distance order, reaches `mass`
        last = (cum < self.mass).sum(-1, keepdim=True).clamp(max=scores.shape[1] - 1)
        drop_sorted = order_dist > order_dist.gather(1, last)
        drop_sorted[:, :self.min_keep] = False
        drop = drop_sorted.scatter(1, order, drop_sorted)
        return scores.masked_fill(drop, -math.inf)


class EpsilonFilter:
    """Epsilon sampling (Hewitt et al. 2022; HF ``EpsilonLogitsWarper``): drop tokens with probability
    < ``epsilon``, but always keep the ``min_tokens_to_keep`` best."""

    def __init__(self, epsilon: float, min_tokens_to_keep: int = 1):
        if not 0 < epsilon < 1:
            raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
        self.epsilon, self.min_keep = float(epsilon), int(min_tokens_to_keep)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.min_keep <= 1:  # the stack sampler's epsilon step (fastsample/stack/tail.py), in float64
            return _shared_filter(tail.epsilon, scores, self.epsilon)
        probs = torch.softmax(scores, dim=-1)
        kth_best = fs.top_k(scores, min(self.min_keep, scores.shape[1]))[0][:, -1:]
        return scores.masked_fill((probs < self.epsilon) & (scores < kth_best), -math.inf)


class EtaFilter:
    """Eta sampling (Hewitt et al. 2022; HF ``EtaLogitsWarper``): drop tokens with probability
    < min(epsilon, sqrt(epsilon) * exp(-entropy)), keeping the most probable token(s). The stack sampler's eta
    step (fastsample/stack/tail.py, ``sample_stack(eta=...)``), in float64."""

    def __init__(self, epsilon: float):
        if not 0 < epsilon < 1:
            raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
        self.epsilon = float(epsilon)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        return _shared_filter(tail.eta, scores, self.epsilon)


def _shared_filter(step, scores: Tensor, value: float) -> Tensor:
    """scores with the tokens that a long-tail step of the stack sampler drops set to -inf (the step decides in
    float64 on the float32 scores, as sample_stack does)."""
    param = torch.full((scores.shape[0],), value, dtype=torch.float32, device=scores.device)
    kept = step(scores.to(torch.float32).double(), param) > -math.inf
    return scores.masked_fill(~kept, -math.inf)


def filter_logits(scores: Tensor, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> Tensor:
    """Temperature, top-k, top-p and min-p applied as masks (dropped tokens -> -inf), the same filters that
    ``fastsample.sample`` fuses. Used only when typical or epsilon filtering must run after them (HF's order).
    Rows with temperature 0 are left unscaled: the caller samples them greedily, which no filter changes.
    """
    t = torch.as_tensor(temperature, dtype=torch.float32, device=scores.device)
    scores = scores / torch.where(t > 0, t, 1.0).reshape(-1, 1)
    scores = fs.top_k_mask_logits(scores, top_k)
    kept = fs.min_p_renorm_probs(fs.top_p_renorm_probs(fs.softmax(scores), top_p), min_p)
    return scores.masked_fill(kept == 0, -math.inf)


def entropy_varentropy(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row entropy H = -sum p log p and varentropy sum p (log p + H)^2 of softmax(logits), in nats,
    both from one log-softmax of the row. Returns two float32 [B] tensors."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    plogp = torch.where(p > 0, p * logp, 0.0)  # -inf logits contribute nothing (0 * -inf would be NaN)
    entropy = -plogp.sum(-1)
    varentropy = torch.where(p > 0, p * (logp + entropy[:, None]) ** 2, 0.0).sum(-1)
    return entropy, varentropy


@dataclass
class EntropyAdaptiveSampler:
    """Entropix-style per-row choice of sampling parameters from the entropy H and varentropy VH (nats) of
    the processed logits. The policy, row by row:

    ========== ========================================== ======================================================
    regime     condition                                  parameters
    ========== ========================================== ======================================================
    confident  H < low_entropy and VH < low_varentropy    greedy (temperature 0): the model is sure, do not gamble
    uncertain  H > high_entropy or VH > high_varentropy   temperature * hot, top_k * widen (0 stays off), same
                                                          top_p / min_p: explore the flat or forked distribution
    default    otherwise                                  temperature, top_k, top_p, min_p as given
    ========== ========================================== ======================================================

    The defaults follow entropix's thresholds (0.1 nats for "sure"; 3 nats, about 20 equally likely tokens,
    for "unsure"). Calling it returns a dict of per-row tensors for ``fastsample.sample``.
    """

    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.0
    low_entropy: float = 0.1
    low_varentropy: float = 0.1
    high_entropy: float = 3.0
    high_varentropy: float = 3.0
    hot: float = 1.5
    widen: int = 2

    def __call__(self, logits: Tensor) -> dict[str, Tensor]:
        h, vh = entropy_varentropy(logits)
        confident = (h < self.low_entropy) & (vh < self.low_varentropy)
        uncertain = ~confident & ((h > self.high_entropy) | (vh > self.high_varentropy))
        temperature = torch.full_like(h, self.temperature)
        temperature = torch.where(uncertain, self.temperature * self.hot, temperature)
        temperature = torch.where(confident, 0.0, temperature)
        top_k_rows = torch.where(uncertain, self.top_k * self.widen, self.top_k).to(torch.int64)
        return {"temperature": temperature, "top_k": top_k_rows, "top_p": torch.full_like(h, self.top_p),
                "min_p": torch.full_like(h, self.min_p)}
