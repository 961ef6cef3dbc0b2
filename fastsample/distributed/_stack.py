"""`fastsample.distributed.sample_stack`: the stack sampler (docs/ops.md "sample_stack") on logits split by
vocabulary, equal to `fastsample.sample_stack` on the full logits.

Steps 1-3 are per token, so each rank applies them to its slice: the mask bits, bias ids and history ids are
global; a rank keeps the ids inside its slice (shifted to local ids) and reads the mask bits of its global ids.
An id outside [-1, V) makes the row invalid on every rank alike (every rank sees the same lists). Steps 4-6
are `sample`'s exchange on the processed logits. Logprobs, ranks and top-N add: the drawn token's processed
and raw value (two more columns in the final all-reduce), with "raw" an all-gather of each slice's (max,
sum of exp) for the log-softmax, an all-reduce of B int64 counts (the ranks), and with top_logprobs = N an
all-gather of B * N int64 per rank (each slice's top N as value key and global id in one integer).
Not supported yet (ValueError): order="vllm", top_n_sigma > 0, num_samples > 1.
"""
from __future__ import annotations

import math

import torch

from .. import _ops
from ..stack import reference as _stack_reference
from ..stack.api import StackSample, _bias, _ids, _penalty
from ..stack.spec import LOGPROBS_MODES, penalties_ok
from . import _exact, _exchange
from ._exchange import ROUNDS, WIDTH

Tensor = torch.Tensor
_OP_STACK = 4
_INF = float("inf")
_LOW31 = (1 << 31) - 1


def _local_mask(mask: Tensor, start: int, n: int) -> Tensor:
    """int32 [B, ceil(n / 32)]: the mask words of the slice (bit i of the result = global id start + i),
    shifted out of the global words: O(B * n / 32)."""
    first, shift = start // 32, start % 32
    words = (n + 31) // 32
    w = mask.to(torch.int64) & 0xFFFFFFFF
    w = torch.cat([w, torch.zeros_like(w[:, :1])], dim=1)  # a zero word past the end
    lo = w[:, first:first + words]
    hi = w[:, first + 1:first + 1 + words]
    local = ((lo >> shift) | (hi << (32 - shift))) & 0xFFFFFFFF
    return torch.where(local >= 2**31, local - 2**32, local).to(torch.int32).contiguous()


def _local_ids(ids: Tensor | None, start: int, n: int, vocab: int) -> tuple[Tensor | None, Tensor | None]:
    """(ids of the slice as local ids, -1 elsewhere; rows with an id outside [-1, V))."""
    if ids is None:
        return None, None
    bad = ((ids < -1) | (ids >= vocab)).any(dim=1)
    inside = (ids >= start) & (ids < start + n)
    return torch.where(inside, ids - start, -1).contiguous(), bad


def _processed(x, mask, bias_ids, bias_values, prompt_ids, output_ids, penalties, start, vocab):
    """Steps 1-3 on the slice: float32 [B, n] with NaN on rows invalid whatever follows."""
    batch, n = x.shape
    bias_ids, bad_b = _local_ids(bias_ids, start, n, vocab)
    prompt_ids, bad_p = _local_ids(prompt_ids, start, n, vocab)
    output_ids, bad_o = _local_ids(output_ids, start, n, vocab)
    local_mask = _local_mask(mask, start, n) if mask is not None else None
    if _ops.AVAILABLE and x.device.type == "cpu":
        y, bad = torch.ops.fastsample.stack_processed_logits(x, local_mask, bias_ids, bias_values, prompt_ids,
                                                            output_ids, *penalties)
    else:
        rows = [arr if arr is not None else torch.full((batch,), val, device=x.device)
                for arr, val in zip(penalties[::2], penalties[1::2])]
        y, bad = _stack_reference.processed_logits(x.to(torch.float32), local_mask, bias_ids, bias_values,
                                                   prompt_ids, output_ids, *rows)
        bad = bad | ~penalties_ok(*rows) | x.isnan().any(dim=1)
    for extra in (bad_b, bad_p, bad_o):
        if extra is not None:
            bad = bad | extra
    return torch.where(bad.unsqueeze(1), math.nan, y)


def sample_stack(local_logits: Tensor, *, allowed_mask: Tensor | None = None, bias_ids: Tensor | None = None,
                 bias_values: Tensor | None = None, prompt_ids: Tensor | None = None,
                 output_ids: Tensor | None = None, repetition_penalty: float | Tensor = 1.0,
                 frequency_penalty: float | Tensor = 0.0, presence_penalty: float | Tensor = 0.0,
                 temperature: float | Tensor = 1.0, top_k: int | Tensor = 0, top_p: float | Tensor = 1.0,
                 min_p: float | Tensor = 0.0, top_n_sigma: float | Tensor = -1.0, order: str = "hf",
                 num_samples: int | None = None, logprobs: str | None = None, top_logprobs: int = 0, group=None,
                 generator=None, seed=None, offset=None) -> StackSample:
    """`fastsample.sample_stack` on logits split by vocabulary over the ranks of ``group`` (collective).

    ``local_logits`` [B, V_r] is this rank's contiguous slice (ranks in order cover [0, V)); every other
    argument is `fastsample.sample_stack`'s, equal on every rank, with ids and mask bits in *global* ids
    (allowed_mask [B, ceil(V / 32)] of the whole vocabulary). Returns the same `StackSample` on every rank.
    order="vllm", top_n_sigma > 0 and num_samples > 1 raise ValueError (not supported yet).
    """
    from . import _ROUND_FULL, _ROUND_TOP_P, _prepare_sample, _sample

    grp = _exchange.resolve_group(group, local_logits)
    try:
        if order != "hf":
            raise ValueError(f"fastsample.distributed.sample_stack supports order='hf' only, got {order!r}")
        if isinstance(top_n_sigma, torch.Tensor) or top_n_sigma > 0:
            raise ValueError("fastsample.distributed.sample_stack does not support top_n_sigma yet")
        if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                        or num_samples != 1):
            raise ValueError(f"fastsample.distributed.sample_stack supports num_samples None or 1, got {num_samples}")
        if logprobs not in LOGPROBS_MODES:
            raise ValueError(f"logprobs must be None, 'processed' or 'raw', got {logprobs!r}")
        if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int):
            raise TypeError(f"top_logprobs must be an int, got {type(top_logprobs).__name__}")
        if top_logprobs < 0 or (top_logprobs and logprobs is None):
            raise ValueError(f"top_logprobs must be >= 0 and needs logprobs='processed' or 'raw', got "
                             f"{top_logprobs} with logprobs={logprobs!r}")
        x, columns, width, rounds = _prepare_sample(local_logits, temperature, top_k, top_p, min_p, generator,
                                                    seed, offset)
        batch, device = x.shape[0], x.device
        if allowed_mask is not None:
            if not isinstance(allowed_mask, torch.Tensor) or allowed_mask.dtype != torch.int32:
                raise TypeError("allowed_mask must be an int32 tensor [B, ceil(V / 32)] or None")
            if allowed_mask.dim() != 2 or allowed_mask.shape[0] != batch or allowed_mask.device != device:
                raise ValueError(f"allowed_mask must have shape [{batch}, ceil(V / 32)] on {device}, got "
                                 f"{list(allowed_mask.shape)} on {allowed_mask.device}")
        bias_ids, bias_values = _bias(bias_ids, bias_values, batch, device)
        prompt_ids = _ids("prompt_ids", prompt_ids, batch, device)
        output_ids = _ids("output_ids", output_ids, batch, device)
        penalties = (*_penalty("repetition_penalty", repetition_penalty, batch, device, True),
                     *_penalty("frequency_penalty", frequency_penalty, batch, device, False),
                     *_penalty("presence_penalty", presence_penalty, batch, device, False))
        mode = LOGPROBS_MODES[logprobs]
        flags = mode + 4 * (seed is not None) + 16 * (num_samples is not None)
        fields = _exchange.header(_OP_STACK, None, batch, x.shape[1], top_logprobs, flags, width, rounds)
        error = None
    except (TypeError, ValueError) as exc:
        fields, error = _exchange.header(_OP_STACK, exc), exc
    headers, lay = _exchange.agree(grp, fields, error)
    vocab, start = lay.vocab, lay.starts[grp.rank]
    with _exchange.host_reads():  # headers is on the host already
        widest = int(headers[:, WIDTH].max())
        merged = 0
        for r in headers[:, ROUNDS].tolist():
            merged |= r
    if top_logprobs > vocab:
        raise ValueError(f"top_logprobs must be in [0, {vocab}] (the vocabulary size), got {top_logprobs}")
    if allowed_mask is not None and allowed_mask.shape[1] < (vocab + 31) // 32:
        raise ValueError(f"allowed_mask must have at least ceil(V / 32) = {(vocab + 31) // 32} words, got "
                         f"{allowed_mask.shape[1]}")  # the same on every rank: B and the shapes agree
    if batch == 0:
        empty = torch.empty((0, 1) if num_samples is not None else (0,), dtype=torch.int64, device=device)
        if mode == 0:
            return StackSample(empty, None, None, None, None)
        top = torch.empty(0, top_logprobs, device=device) if top_logprobs else None
        return StackSample(empty, empty.float(), empty, None if top is None else top.long(), top)
    y = _processed(x, allowed_mask, bias_ids, bias_values, prompt_ids, output_ids, penalties, start, vocab)
    full = bool(merged & _ROUND_FULL) or widest >= vocab
    tokens, lp, info = _sample(grp, y, columns, lay, min(widest, vocab), bool(merged & _ROUND_TOP_P), full,
                               seed is not None, True, raw=x)
    shape = (lambda t: t.unsqueeze(1)) if num_samples is not None else (lambda t: t)
    if mode == 0:
        return StackSample(shape(tokens), None, None, None, None)
    valid = info["valid"]
    if mode == 2:
        lse = _log_sum_exp(grp, x)
        lp = torch.where(valid, (info["raw_value"] - lse.to(torch.float64)).to(torch.float32), math.nan)
        values, pivot = x, info["raw_value"].to(torch.float32)
    else:
        # The kept set is an upper set of values (every filter keeps y >= a threshold), so the tokens at
        # least as probable as the drawn (kept) token are those with y >= its y.
        values, pivot = y, info["value"]
    # --- collective: ranks, the number of tokens scoring >= the drawn token's (its logprob ties included).
    counts = _exchange.all_reduce_sum(grp, (values >= pivot.unsqueeze(1)).sum(dim=1))
    ranks = torch.where(valid, counts, -1)
    if not top_logprobs:
        return StackSample(shape(tokens), shape(lp), shape(ranks), None, None)
    scores = values if mode == 2 else _kept_scores(y, info)
    top_ids, top_scores = _top_n(grp, scores, top_logprobs, start)
    if mode == 2:
        top_lp = top_scores.to(torch.float64) - lse.unsqueeze(1).to(torch.float64)
    else:
        top_lp = _processed_logprobs(top_scores, info)
    top_ids = torch.where(valid.unsqueeze(1), top_ids, -1)
    top_lp = torch.where(valid.unsqueeze(1), top_lp, math.nan).to(torch.float32)
    return StackSample(shape(tokens), shape(lp), shape(ranks), top_ids, top_lp)


def _kept_scores(y: Tensor, info: dict) -> Tensor:
    """The processed logits of the kept tokens, -inf for the dropped ones (so logprob order = score order)."""
    m, t, mode = info["m"].unsqueeze(1), info["t"].unsqueeze(1), info["mode"].unsqueeze(1)
    d = (y.to(torch.float64) - m.to(torch.float64)) / torch.where(mode == 1, t, 1.0).to(torch.float64)
    kept = (mode == 1) & (y >= info["theta"].unsqueeze(1)) & (d >= info["log_mp"].unsqueeze(1))
    kept |= (mode == 2) & (y == _INF)
    kept |= info["greedy"].unsqueeze(1) & (y == m)
    return torch.where(kept, y, -_INF)


def _processed_logprobs(scores: Tensor, info: dict) -> Tensor:
    """float64 logprobs of kept scores (-inf stays -inf): log(w / W) with the fixed-point total W."""
    m, t = info["m"].unsqueeze(1).to(torch.float64), info["t"].unsqueeze(1).to(torch.float64)
    mode, greedy = info["mode"].unsqueeze(1), info["greedy"].unsqueeze(1)
    log_total = torch.log(info["total"].to(torch.float64)) - info["scale"] * math.log(2.0)
    lp = (scores.to(torch.float64) - m) / torch.where(mode == 1, t, 1.0) - log_total.unsqueeze(1)
    lp = torch.where(mode == 2, torch.where(scores == _INF, -log_total.unsqueeze(1), -_INF), lp)
    at_max = -torch.log(info["count"].clamp(min=1).to(torch.float64)).unsqueeze(1)
    lp = torch.where(greedy, torch.where(scores == m.to(torch.float32), at_max, -_INF), lp)
    return torch.where(scores == -_INF, -_INF, lp)


def _log_sum_exp(grp, x: Tensor) -> Tensor:
    """float64 [B]: log(sum(exp(x))) over the whole vocabulary (collective: an all-gather of B * 2 float64)."""
    x = x.to(torch.float32)
    local_max = x.amax(dim=1)
    safe = torch.where(local_max.isfinite(), local_max, 0.0).to(torch.float64)
    sums = torch.exp(x.to(torch.float64) - safe.unsqueeze(1)).sum(dim=1)
    parts = _exchange.all_gather(grp, torch.stack([safe, sums], dim=1))  # [world, B, 2]
    top = parts[:, :, 0].max(dim=0).values
    return top + torch.log((parts[:, :, 1] * torch.exp(parts[:, :, 0] - top.unsqueeze(0))).sum(dim=0))


def _top_n(grp, scores: Tensor, n: int, start: int) -> tuple[Tensor, Tensor]:
    """The n largest scores of the whole vocabulary, ties to the lower id: (global ids, scores). Collective:
    an all-gather of B * n int64 per rank (value key above the bit-complemented id, as `top_k`)."""
    from . import _local_top_k

    batch, local = scores.shape
    width = min(n, local)
    values, ids = _local_top_k(scores, width)
    mine = torch.full((batch, n), -1, dtype=torch.int64, device=scores.device)
    mine[:, :width] = (_exact.keys(values.to(torch.float32)) << 31) | (_LOW31 - (ids + start))
    merged = _exchange.all_gather(grp, mine).permute(1, 0, 2).reshape(batch, -1)
    best = merged.topk(n, dim=1).values
    return _LOW31 - (best & _LOW31), _exact.values(best >> 31)
