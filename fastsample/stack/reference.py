"""Backend "torch" of the stack sampler (docs/ops.md "sample_stack"): the slow, obviously correct version.

Written the way vLLM v1's sampler works on the full [B, V] logits: unpack the grammar bitmask and
masked_fill, scatter_add the logit bias, scatter_add token counts for the penalties, divide by T, then
sort-based filters, a CDF per row and log_softmax + sort for the logprobs. Every step is a separate pass
over [B, V]; nothing reads a tensor value on the host. The random numbers are those of reference.py
(Philox draw j for sample j), so tokens match the compiled kernels and the float64 oracle.
`sample_processed` (steps 4-7) is also the device composition's slow route (compose.py).
"""
from __future__ import annotations

import torch

from ..reference import _INF, _kth_largest, _weights, philox_uniform
from .spec import StackOpArgs, penalties_ok

Tensor = torch.Tensor
OptTensor = torch.Tensor | None


def _allowed(mask: Tensor, vocab: int) -> Tensor:
    """bool [B, V]: bit i % 32 of word i // 32 of each row's int32 mask."""
    ids = torch.arange(vocab, device=mask.device)
    return ((mask[:, ids // 32] >> (ids % 32)) & 1).bool()


def _scatter(ids: Tensor, values: Tensor, vocab: int) -> tuple[Tensor, Tensor]:
    """Dense per-token sums [B, V] of `values` at `ids` (-1 slots dropped), and rows with an id outside [-1, V)."""
    bad = ((ids < -1) | (ids >= vocab)).any(dim=1)
    slot = torch.where((ids >= 0) & (ids < vocab), ids, vocab)  # unused and bad ids land in a spare column
    dense = torch.zeros(ids.shape[0], vocab + 1, dtype=values.dtype, device=ids.device)
    return dense.scatter_add_(1, slot, values)[:, :vocab], bad


def processed_logits(x: Tensor, allowed_mask: OptTensor, bias_ids: OptTensor, bias_values: OptTensor,
                     prompt_ids: OptTensor, output_ids: OptTensor, repetition: Tensor, frequency: Tensor,
                     presence: Tensor) -> tuple[Tensor, Tensor]:
    """Steps 1-3 (mask -> bias -> penalties) in float64, rounded to float32 once.

    Returns
    -------
    (y float32 [B, V], bad bool [B]: rows with an out-of-range id)
    """
    batch, vocab = x.shape
    z = x.to(torch.float64)
    bad = torch.zeros(batch, dtype=torch.bool, device=x.device)
    if bias_ids is not None:
        bias, bad_b = _scatter(bias_ids, bias_values.to(torch.float64), vocab)
        z, bad = z + bias, bad | bad_b
    seen = torch.zeros_like(z, dtype=torch.bool)
    counts = torch.zeros_like(z)
    if prompt_ids is not None:
        prompt_counts, bad_p = _scatter(prompt_ids, torch.ones_like(prompt_ids, dtype=torch.float64), vocab)
        seen, bad = seen | (prompt_counts > 0), bad | bad_p
    if output_ids is not None:
        counts, bad_o = _scatter(output_ids, torch.ones_like(output_ids, dtype=torch.float64), vocab)
        seen, bad = seen | (counts > 0), bad | bad_o
    r = repetition.to(torch.float64).unsqueeze(1)
    z = torch.where(seen, torch.where(z > 0, z / r, z * r), z)
    penalty = frequency.to(torch.float64).unsqueeze(1) * counts + presence.to(torch.float64).unsqueeze(1)
    z = torch.where(counts > 0, z - penalty, z)
    y = z.to(torch.float32)
    if allowed_mask is not None:
        y = y.masked_fill(~_allowed(allowed_mask, vocab), -_INF)
    return y, bad


def _top_n_sigma(y: Tensor, n: Tensor) -> Tensor:
    """bool [B, V]: kept by top-n-sigma (llama.cpp's rule): y >= max - n * sigma, sigma the population standard
    deviation of the row's finite y, in float64; n <= 0 (and rows whose max is +inf, which share the mass
    equally) keep everything."""
    z = y.to(torch.float64)
    finite = z > -_INF
    count = finite.sum(dim=1, keepdim=True)
    mean = torch.where(finite, z, 0.0).sum(dim=1, keepdim=True) / count
    sigma = (torch.where(finite, (z - mean) ** 2, 0.0).sum(dim=1, keepdim=True) / count).sqrt()
    top = z.amax(dim=1, keepdim=True)
    cut = torch.where(sigma > 0, top - n.to(torch.float64).unsqueeze(1) * sigma, top)
    return (z >= cut) | ~((n > 0).unsqueeze(1) & (top < _INF))


def _kept(y: Tensor, w: Tensor, top_k: Tensor, top_p: Tensor, min_p: Tensor, top_n_sigma: Tensor,
          vllm_order: bool) -> Tensor:
    """The kept mask of the filters: top-n-sigma first, then HF order (top-k -> top-p -> min-p) or vLLM v1's
    (min-p -> top-k -> top-p); top-p counts the mass of the tokens every earlier filter kept."""
    kept_m = (w >= min_p.unsqueeze(1) * w.amax(dim=1, keepdim=True)) | (min_p <= 0).unsqueeze(1)
    kept_s = _top_n_sigma(y, top_n_sigma)
    sorted_y, order = torch.sort(y, dim=1, descending=True)
    threshold, k_on = _kth_largest(sorted_y, top_k)
    in_k = ((sorted_y >= threshold) | ~k_on.unsqueeze(1)) & kept_s.gather(1, order)
    survivors = in_k & kept_m.gather(1, order) if vllm_order else in_k
    # Top-p over the survivors: the kept positions are a prefix of the sorted row; its last value is the
    # threshold, so ties with it are kept and so is the most probable token (clamp(min=1)).
    sorted_w = torch.where(survivors, w.gather(1, order), 0.0).to(torch.float64)
    mass = sorted_w.cumsum(dim=1)
    below = survivors & (mass - sorted_w < top_p.to(torch.float64).unsqueeze(1) * mass[:, -1:])
    last = below.sum(dim=1, keepdim=True).clamp(min=1) - 1
    kept_p = (y >= sorted_y.gather(1, last)) | (top_p >= 1).unsqueeze(1)
    return ((y >= threshold) | ~k_on.unsqueeze(1)) & kept_p & kept_m & kept_s


def sample_stack(args: StackOpArgs) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The op-level stack sampler (backend "torch"; fastsample.backends.Ops.sample_stack).

    Returns (tokens int64 [B, n], logprobs float32 [B, n], ranks int64 [B, n] (both [0, n] when
    logprobs_mode == 0), top_ids int64 [B, N], top_values float32 [B, N]).
    """
    x = args.logits.to(torch.float32)
    rep, freq, pres = args.row("repetition"), args.row("frequency"), args.row("presence")
    y, bad = processed_logits(x, args.allowed_mask, args.bias_ids, args.bias_values, args.prompt_ids,
                              args.output_ids, rep, freq, pres)
    return sample_processed(x, y, bad, rep, freq, pres, args.row("temperature"), args.row("top_k"),
                            args.row("top_p"), args.row("min_p"), args.row("top_n_sigma"), args.vllm_order,
                            args.num_samples, args.seed, args.offset, args.logprobs_mode, args.top_n)


def sample_processed(x: Tensor, y: Tensor, bad: Tensor, rep: Tensor, freq: Tensor, pres: Tensor,
                     temperature: Tensor, top_k: Tensor, top_p: Tensor, min_p: Tensor, top_n_sigma: Tensor,
                     vllm_order: bool, num_samples: int, seed: Tensor, offset: Tensor, logprobs_mode: int,
                     top_n: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Steps 4-7 from the processed logits y (float32 [B, V]) and the rows `bad` with an out-of-range id; the
    per-row parameters as [B] tensors. Shared with the device routes (compose.py), which compute y and bad
    in kernels. Returns what `sample_stack` returns."""
    batch, vocab = x.shape
    device = x.device
    w, valid, greedy = _weights(y, True, temperature)
    params_ok = (penalties_ok(rep, freq, pres) & (top_p >= 0) & (top_p <= 1) & (min_p >= 0) & (min_p <= 1)
                 & top_n_sigma.isfinite())
    valid = valid & params_ok & ~bad & ~x.isnan().any(dim=1)
    kept_w = torch.where(_kept(y, w, top_k, top_p, min_p, top_n_sigma, vllm_order) | greedy.unsqueeze(1), w, 0.0)

    draws = torch.arange(num_samples, device=device)
    u = philox_uniform(seed.unsqueeze(1), offset.unsqueeze(1), draws.unsqueeze(0))  # [B, n]
    cdf = kept_w.to(torch.float64).cumsum(dim=1)
    total = cdf[:, -1:]
    token = torch.searchsorted(cdf, u.to(torch.float64) * total, right=True).clamp(max=vocab - 1)
    token = torch.where(greedy.unsqueeze(1), y.argmax(dim=1, keepdim=True), token)
    tokens = torch.where(valid.unsqueeze(1), token, -1)
    if logprobs_mode == 0:
        empty = torch.empty(0, num_samples, device=device)
        return tokens, empty, empty.long(), torch.empty(batch, 0, dtype=torch.int64, device=device), \
            torch.empty(batch, 0, device=device)
    if logprobs_mode == 1:
        lp = torch.log(kept_w.to(torch.float64) / total)
    else:
        w_raw, _, _ = _weights(x, True, torch.ones(batch, device=device))
        lp = torch.log(w_raw.to(torch.float64) / w_raw.to(torch.float64).sum(dim=1, keepdim=True))
    token_lp = lp.gather(1, token)
    ranks = (lp.unsqueeze(1) >= token_lp.unsqueeze(2)).sum(dim=2)
    top_values, top_ids = torch.sort(lp, dim=1, descending=True, stable=True)
    top_values, top_ids = top_values[:, :top_n], top_ids[:, :top_n]
    row = valid.unsqueeze(1)
    nan = float("nan")
    return (tokens, torch.where(row, token_lp, nan).float(), torch.where(row, ranks, -1),
            torch.where(row, top_ids, -1), torch.where(row, top_values, nan).float())

