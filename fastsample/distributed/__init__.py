"""Vocab-parallel sampling over torch.distributed (docs/design.md section 9): the same token as one device, without
gathering the logits.

Each rank of a process group holds a contiguous slice ``local_logits`` [B, V_r] of the vocabulary; the
ranks in group order cover [0, V), and V_r may differ by rank. Every function here is collective: all ranks
of the group call it with the same arguments except the slice, and every rank gets the same result.

- `sample(local_logits, temperature, top_k, top_p, min_p, return_logprobs, *, group, generator, seed,
  offset)`: `fastsample.sample` on the full logits (same rules: temperature -> top-k -> top-p -> min-p, inverse
  CDF in ascending global id order with Philox draw 0, T = 0 rows greedy, -1 rows).
- `sampling_from_logits`, `greedy`, `top_k` (values and global indices).

Exchange (per call, a fixed number of collectives given the arguments, whatever the logits; sizes per rank,
B rows, k = the largest top_k of the call; docs/ops.md "Vocab-parallel sampling"): a header all-gather
(8 int64); an all-gather of per-row stats, parameters and the local top-(k + 1) keys and top-k global ids
(B * (11 + 2k) int64). With top-k on every row that is all: every rank finishes each row from the gathered
lists. Otherwise: with top-p on, five all-reduces of a [B, 256] int64 mass histogram (the top-p threshold);
an all-gather of each rank's kept mass (B int64); an all-reduce of the drawn token and its logprob
(B * 2 float64). Nothing scales with V.

Exactness guarantee. Weights are ``w_i = exp((x_i - m) / T)`` in float64 from the float32 logits (m = the
global max), rounded to fixed point ``q_i = round(w_i * 2^S)`` (nearest) with ``S = 61 - bit_length(V)`` (S = 44 for
V = 128256). Every mass (top-p's mass above a value, the kept total W, each rank's kept mass and the CDF
in the draw) is an exact int64 sum of q's, and the comparisons ``mass < p * W`` and ``cdf > u * W`` are done
in exact integer arithmetic (fastsample/distributed/_exact.py). Hence:

1. every rank takes every decision on the same integers: all ranks return the same tokens;
2. no decision depends on the split or on the number of ranks (the weights are elementwise, the sums exact);
3. versus exact real arithmetic on the same logits, each q_i * 2^-S is off by at most 2^-(S+1) plus one float64
   rounding of w_i, so a decision can differ only where p * W or u * W lies within about V * 2^-S of a
   step (2^-27, i.e. ~7e-9 of the row's largest weight, at V = 128256, and far less in practice as the
   errors do not add up coherently), or where a token's weight is below 2^-(S+1) (it rounds to 0 and is
   never drawn: probability < 2^-45 of the largest token's).

The single-device kernels round weights in float32 (about 1e-7 relative), so on the rare rows where the
two results differ, the step lies within float32 rounding of u * W or p * W, a boundary case the tests count
(tests/test_distributed.py), like the single-device tests do against the float64 oracle. min-p decides
``(x_i - m) / T >= log(min_p)`` per token in float64, as the CPU kernel does.
"""
from __future__ import annotations

import math

import torch

from .. import _rng
from ..reference import philox_uniform
from ..sampling import _check_matrix, _check_param, _filters
from ..sampling import top_k as _local_top_k
from . import _exact, _exchange
from ._exchange import ROUNDS, WIDTH, Group

Tensor = torch.Tensor
__all__ = ["sample", "sampling_from_logits", "greedy", "top_k"]

_OP_SAMPLE, _OP_GREEDY, _OP_TOP_K = 1, 2, 3
_FLAG_LOGPROBS, _FLAG_SEED, _FLAG_SORTED = 1, 2, 4
# Columns of the per-row all-gather, then the local top-k keys from column _TOPK on.
_MAXKEY, _ARGMAX, _NMAX, _HASNAN, _T, _K, _P, _MINP, _SEED, _OFFSET, _TOPK = range(11)
_PARAM_COLUMNS = {"temperature": _T, "top_k": _K, "top_p": _P, "min_p": _MINP, "offset": _OFFSET}
_RADIX_BITS = 8
_INF = float("inf")


# ------------------------------------------------------------------------------------------------- helpers
def _bits(t: Tensor) -> Tensor:
    """float32 [B] -> its bit pattern as int64 (travels exactly through an int64 collective)."""
    return t.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)


def _from_bits(b: Tensor) -> Tensor:
    return b.to(torch.int32).view(torch.float32)


def _per_row(arr: Tensor | None, val, batch: int, dtype: torch.dtype, device) -> Tensor:
    return arr.to(dtype) if arr is not None else torch.full((batch,), val, dtype=dtype, device=device)


def _slice_stats(x: Tensor, start: int, count_maxima: bool) -> Tensor:
    """[B, 4] int64: local max key, global id of its first occurrence, how many tokens equal it, has NaN."""
    local_max = x.amax(dim=1)  # NaN propagates: a NaN row has a NaN max
    first = x.argmax(dim=1) + start
    if count_maxima:
        count = (x == local_max.unsqueeze(1)).sum(dim=1)
    else:
        count = torch.zeros_like(first)
    return torch.stack([_exact.keys(local_max), first, count, local_max.isnan().to(torch.int64)], dim=1)


def _global_stats(gathered: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """From the gathered [world, B, F] stats: (max value float32 [B], lowest id of the max, number of maxima,
    has-NaN) over the whole vocabulary (ranks in order = ascending ids, so the first rank wins ties)."""
    max_keys = gathered[:, :, _MAXKEY]
    top = max_keys.max(dim=0).values
    at_top = max_keys == top.unsqueeze(0)
    first_rank = at_top.to(torch.int64).argmax(dim=0)
    first = gathered[:, :, _ARGMAX].gather(0, first_rank.unsqueeze(0)).squeeze(0)
    count = (gathered[:, :, _NMAX] * at_top).sum(dim=0)
    has_nan = gathered[:, :, _HASNAN].any(dim=0)
    return _exact.values(top), first, count, has_nan


def _local_top(x: Tensor, width: int, start: int) -> Tensor:
    """[B, 2 * width + 1] int64: the keys of this slice's top-(width + 1) values (one more than the list, to
    see ties past its end), then the global ids of the top width; -1 pads past V_r (below every key)."""
    batch, n = x.shape[0], min(width + 1, x.shape[1]) if width > 0 else 0
    out = torch.full((batch, 2 * width + 1), -1, dtype=torch.int64, device=x.device)
    if n > 0:
        top_values, top_ids = _local_top_k(x, n)
        out[:, :n] = _exact.keys(top_values)
        listed = min(width, n)
        out[:, width + 1:width + 1 + listed] = top_ids[:, :listed] + start
    return out


def _walk(q: Tensor, target: Tensor, block: int = 1024) -> Tensor:
    """The smallest i with ``cumsum(q)[i] > target`` per row (0 <= target < sum(q) on rows that matter):
    block sums first, then a cumsum over the one block that holds the step."""
    batch, n = q.shape
    block = min(block, n)
    full = n // block
    sums = q[:, : full * block].unfold(1, block, block).sum(dim=2)
    if full * block < n:
        sums = torch.cat([sums, q[:, full * block:].sum(dim=1, keepdim=True)], dim=1)
    ends = sums.cumsum(dim=1)
    b = torch.searchsorted(ends, target.unsqueeze(1), right=True).clamp(max=sums.shape[1] - 1)
    within = target.unsqueeze(1) - (ends.gather(1, b) - sums.gather(1, b))
    idx = b * block + torch.arange(block, device=q.device)
    part = q.gather(1, idx.clamp(max=n - 1)) * (idx < n)
    i = torch.searchsorted(part.cumsum(dim=1), within, right=True).clamp(max=block - 1)
    return (b * block + i).squeeze(1).clamp(max=n - 1)


# --------------------------------------------------------------------------------------------- sample
def _prepare_sample(local_logits, temperature, top_k, top_p, min_p, generator, seed, offset):
    """Local argument checks and the per-row parameter columns; raises TypeError/ValueError on bad input."""
    x = _check_matrix("local_logits", local_logits).to(torch.float32)
    batch, device = x.shape[0], x.device
    t_arr, t_val = _check_param("temperature", temperature, batch, device, 0.0, math.inf)
    k_arr, k_val, p_arr, p_val, mp_arr, mp_val = _filters(batch, device, top_k, top_p, min_p)
    seeds, offsets = _rng.per_row_seed_offset(batch, device, generator, seed, offset)
    k = _per_row(k_arr, k_val, batch, torch.int64, device)
    columns = torch.stack([_bits(_per_row(t_arr, t_val, batch, torch.float32, device)), k,
                           _bits(_per_row(p_arr, p_val, batch, torch.float32, device)),
                           _bits(_per_row(mp_arr, mp_val, batch, torch.float32, device)), seeds, offsets], dim=1)
    width = int(k.clamp(min=0).max()) if batch > 0 else 0  # the widest top-k of the call (one host read)
    rounds = int(p_arr is not None or p_val < 1)
    return x, columns, width, rounds


def sample(local_logits: Tensor, temperature: float | Tensor = 1.0, top_k: int | Tensor = 0,
           top_p: float | Tensor = 1.0, min_p: float | Tensor = 0.0, return_logprobs: bool = False, *, group=None,
           generator=None, seed=None, offset=None):
    """`fastsample.sample` on logits split by vocabulary over the ranks of ``group`` (collective).

    Parameters
    ----------
    local_logits : Tensor [B, V_r], float32/float16/bfloat16: this rank's contiguous slice; the ranks of the
        group, in order, cover the vocabulary [0, V). V_r may differ by rank.
    temperature, top_k, top_p, min_p, return_logprobs : as in `fastsample.sample`; must be equal on every rank.
    group : the process group (default: the world).
    generator, seed, offset : as in `fastsample.sample`. With no ``seed``, each rank draws one from its
        generator and all use rank 0's draw.

    Returns
    -------
    int64 Tensor [B] of global token ids (-1 for a row with no valid token), the same on every rank; with
    ``return_logprobs`` also float32 logprobs [B] (NaN on -1 rows).

    Raises
    ------
    TypeError, ValueError on every rank when any rank's arguments are invalid or ranks disagree on B or on a
    parameter (the rank with the bad argument raises its own error).
    """
    grp = _exchange.resolve_group(group, local_logits)
    try:
        x, columns, width, rounds = _prepare_sample(local_logits, temperature, top_k, top_p, min_p, generator,
                                                    seed, offset)
        flags = _FLAG_LOGPROBS * bool(return_logprobs) + _FLAG_SEED * (seed is not None)
        fields, error = _exchange.header(_OP_SAMPLE, None, x.shape[0], x.shape[1], 0, flags, width, rounds), None
    except (TypeError, ValueError) as exc:
        fields, error = _exchange.header(_OP_SAMPLE, exc), exc
    headers, lay = _exchange.agree(grp, fields, error)
    width = min(int(headers[:, WIDTH].max()), lay.vocab)
    rounds = bool(headers[:, ROUNDS].max())
    tokens, logprobs = _sample(grp, x, columns, lay, width, rounds, seed is not None, bool(return_logprobs))
    return (tokens, logprobs) if return_logprobs else tokens


def sampling_from_logits(local_logits: Tensor, *, group=None, generator=None, seed=None, offset=None) -> Tensor:
    """One token per row from softmax of the full logits (no filters), split by vocabulary (collective)."""
    return sample(local_logits, group=group, generator=generator, seed=seed, offset=offset)


def _sample(grp: Group, x: Tensor, columns: Tensor, lay, width: int, rounds: bool, seed_given: bool,
            return_logprobs: bool) -> tuple[Tensor, Tensor]:
    batch, device = x.shape[0], x.device
    if batch == 0:
        return torch.empty(0, dtype=torch.int64, device=device), torch.empty(0, device=device)
    start = lay.starts[grp.rank]
    # --- collective: stats, parameters and the local top-k keys of every row.
    mine = torch.cat([_slice_stats(x, start, return_logprobs), columns, _local_top(x, width, start)], dim=1)
    gathered = _exchange.all_gather(grp, mine)
    params = dict(_PARAM_COLUMNS, **({"seed": _SEED} if seed_given else {}))
    _exchange.check_columns_agree("sample", gathered, params)
    m, first, count, has_nan = _global_stats(gathered)
    ref = gathered[0]  # rank 0's parameters (and its seeds when each rank drew its own)
    t, k = _from_bits(ref[:, _T]), ref[:, _K]
    p, mp = _from_bits(ref[:, _P]), _from_bits(ref[:, _MINP])
    params_ok = (t >= 0) & (t < _INF) & (p >= 0) & (p <= 1) & (mp >= 0) & (mp <= 1)  # NaN fails
    valid = params_ok & ~has_nan & (m > -_INF)
    greedy_rows = valid & (t == 0)
    sampled = valid & (t > 0)
    inf_rows = sampled & (m == _INF)
    finite = sampled & ~inf_rows

    # Top-k threshold: the k-th largest of the merged per-rank top-k keys (duplicates counted, ties kept).
    k_on = (k > 0) & (k < lay.vocab)
    theta = torch.full((batch,), -_INF, device=device)
    if width > 0:
        merged = gathered[:, :, _TOPK:_TOPK + width].permute(1, 0, 2).reshape(batch, -1)
        kth = merged.sort(dim=1, descending=True).values.gather(1, (k - 1).clamp(0, merged.shape[1] - 1)[:, None])
        theta_key = torch.where(k_on, kth.squeeze(1), -1)
        theta = torch.where(k_on, _exact.values(kth.squeeze(1)), theta)
        # With top-k on every sampled row, the gathered lists hold every survivor (unless ties at the
        # threshold run past some rank's list: its extra key shows that), so every rank finishes the row
        # from them alone, with no further collective.
        past_list = gathered[:, :, _TOPK + width] >= theta_key.unsqueeze(0)
        if bool((k_on | ~sampled).all()) and not bool((past_list & sampled.unsqueeze(0)).any()):
            ids = gathered[:, :, _TOPK + width + 1:].permute(1, 0, 2).reshape(batch, -1)
            token, logprob = _draw_listed(merged, ids, theta, m, t, p, mp, finite, inf_rows, ref, lay.vocab)
            return _finish(token, logprob, valid, greedy_rows, first, count, return_logprobs)
    xs = x

    # Fixed-point weights (0 on rows that are not sampled, and below the top-k threshold).
    scale = _exact.scale_bits(lay.vocab)
    q, keep_min_p = _weigh(xs, m, t, mp, finite, inf_rows, sampled, scale)
    if width > 0:
        q.masked_fill_(xs < theta.unsqueeze(1), 0)

    # Top-p threshold over the top-k survivors (collectives: a fixed number of histogram all-reduces).
    if rounds:
        p_on = finite & (p < 1)
        theta_p = _top_p_threshold(grp, xs, q if bool(p_on.all()) else q * p_on.unsqueeze(1), m, t, p, p_on)
        theta = torch.maximum(theta, torch.where(p_on, torch.where(p == 0, m, theta_p), -_INF))
        q.masked_fill_(xs < theta.unsqueeze(1), 0)
    if keep_min_p is not None:
        q.masked_fill_(~keep_min_p, 0)

    # --- collective: each rank's kept mass; then the draw, exact in integers.
    masses = _exchange.all_gather(grp, q.sum(dim=1))  # [world, B]
    total = masses.sum(dim=0)
    before = masses[: grp.rank].sum(dim=0)
    u = philox_uniform(ref[:, _SEED], ref[:, _OFFSET], 0)
    target, _ = _exact.floor_scaled(u, total)  # the token is the first i with cdf_i > u * W, i.e. > target
    local_target = target - before
    owner = sampled & (local_target >= 0) & (local_target < masses[grp.rank])
    index = _walk(q, local_target.clamp(min=0)).unsqueeze(1)
    w = _token_weight(xs.gather(1, index).squeeze(1), m, t, inf_rows)
    logprob = torch.log(w) - (torch.log(total.to(torch.float64)) - scale * math.log(2.0))
    token = index.squeeze(1) + start
    # --- collective: the owner of each row's draw contributes its token and logprob, the others zeros.
    drawn = torch.stack([token.to(torch.float64), logprob], dim=1)
    drawn = _exchange.all_reduce_sum(grp, torch.where(owner.unsqueeze(1), drawn, 0.0))

    return _finish(drawn[:, 0].to(torch.int64), drawn[:, 1], valid, greedy_rows, first, count, return_logprobs)


def _finish(token, logprob, valid, greedy_rows, first, count, return_logprobs):
    """Greedy rows take the lowest id of the max, invalid rows -1 (logprob NaN)."""
    tokens = torch.where(valid, torch.where(greedy_rows, first, token), -1)
    if not return_logprobs:
        return tokens, torch.empty(0, dtype=torch.float32, device=tokens.device)
    logprobs = torch.where(greedy_rows, -torch.log(count.clamp(min=1).to(torch.float64)), logprob)
    return tokens, torch.where(valid, logprobs, float("nan")).to(torch.float32)


def _weigh(x: Tensor, m: Tensor, t: Tensor, mp: Tensor, finite: Tensor, inf_rows: Tensor, sampled: Tensor,
           scale: int) -> tuple[Tensor, Tensor | None]:
    """Fixed-point weights of tokens x [B, n] (0 on rows that are not sampled) and the min-p mask (None when
    min-p is off on every row). Elementwise: the same token gets the same weight on every rank and path."""
    d = x.to(torch.float64).sub_(torch.where(finite, m, 0.0).to(torch.float64).unsqueeze(1))
    d.div_(torch.where(finite, t, 1.0).to(torch.float64).unsqueeze(1))
    if not bool(finite.all()):
        d[~finite] = -_INF
    min_p_on = sampled & (mp > 0)
    keep_min_p = None
    if bool(min_p_on.any()):
        log_mp = torch.log(torch.where(min_p_on, mp, 1.0).to(torch.float64))
        keep_min_p = d >= torch.where(min_p_on, log_mp, -_INF).unsqueeze(1)
    q = _exact.fixed_point_weights(d, scale)
    if bool(inf_rows.any()):  # +inf tokens weigh 1 each, the rest 0; min-p keeps exactly them
        at_inf = x[inf_rows] == _INF
        q[inf_rows] = at_inf.to(torch.int64) << scale
        if keep_min_p is not None:
            keep_min_p[inf_rows] = at_inf | ~min_p_on[inf_rows].unsqueeze(1)
    return q, keep_min_p


def _draw_listed(keys: Tensor, ids: Tensor, theta: Tensor, m, t, p, mp, finite, inf_rows, ref, vocab: int):
    """Top-k -> top-p -> min-p and the draw over the gathered top-k lists ([B, L] keys, global ids; -1 pads),
    on every rank alike. Returns (token, logprob) of the sampled rows."""
    sampled = finite | inf_rows
    scale = _exact.scale_bits(vocab)
    x = _exact.values(keys)
    entry = (keys >= 0) & (x >= theta.unsqueeze(1))  # a real token among the top-k survivors
    q, keep_min_p = _weigh(x, m, t, mp, finite, inf_rows, sampled, scale)
    q.masked_fill_(~entry, 0)
    # top-p: mass strictly above each token's value (equal keys are one group) against p * W.
    order = keys.argsort(dim=1, descending=True)
    sorted_keys, sorted_q = keys.gather(1, order), q.gather(1, order)
    ends = sorted_q.cumsum(dim=1)
    group_start = torch.searchsorted(-sorted_keys, -sorted_keys, right=False)  # first of each equal-key run
    above = (ends.gather(1, group_start) - sorted_q.gather(1, group_start)).gather(1, order.argsort(dim=1))
    floor, inexact = _exact.floor_scaled(p, q.sum(dim=1))
    keep_p = (above < (floor + inexact.to(torch.int64)).unsqueeze(1)) | (above == 0) | (p >= 1).unsqueeze(1)
    keep_p |= inf_rows.unsqueeze(1)  # +inf tokens tie: all kept
    q.masked_fill_(~keep_p, 0)
    if keep_min_p is not None:
        q.masked_fill_(~keep_min_p, 0)
    # The draw in ascending global id order (pads last).
    by_id = torch.where(entry, ids, torch.iinfo(torch.int64).max).argsort(dim=1)
    q_by_id = q.gather(1, by_id)
    total = q.sum(dim=1)
    target, _ = _exact.floor_scaled(philox_uniform(ref[:, _SEED], ref[:, _OFFSET], 0), total)
    pick = torch.searchsorted(q_by_id.cumsum(dim=1), target.unsqueeze(1), right=True).clamp(max=keys.shape[1] - 1)
    slot = by_id.gather(1, pick)
    w = _token_weight(x.gather(1, slot).squeeze(1), m, t, inf_rows)
    logprob = torch.log(w) - (torch.log(total.to(torch.float64)) - scale * math.log(2.0))
    return ids.gather(1, slot).squeeze(1), logprob


def _token_weight(x: Tensor, m: Tensor, t: Tensor, inf_rows: Tensor) -> Tensor:
    """float64 w = exp((x - m) / T) of one token per row (1 on +inf rows), as the fixed-point weights use."""
    safe_t = torch.where(t > 0, t, 1.0).to(torch.float64)
    w = torch.exp((x.to(torch.float64) - torch.where(inf_rows, 0.0, m).to(torch.float64)) / safe_t)
    return torch.where(inf_rows, 1.0, w)


def _top_p_threshold(grp: Group, x: Tensor, q: Tensor, m: Tensor, t: Tensor, p: Tensor, p_on: Tensor) -> Tensor:
    """The top-p threshold value per row: keep x >= it (rows with p_on and p > 0; others get unused values).

    The threshold is the smallest float32 key t with ``mass(keys > t) < p * W`` (W = the top-k survivors'
    mass, q = their fixed-point weights, 0 elsewhere): a token is kept iff the mass strictly more probable
    than it is < p * W. Five all-reduced mass histograms find it. The first bins tokens by
    ``(m - x) * 8 / T`` in float32 (1/8 of a nat of weight per bin, monotone in x, the same on every rank);
    only the tokens of the bin that holds the threshold take part in the next four, which find its float32
    key 8 bits at a time.
    """
    batch, bins = x.shape[0], 1 << _RADIX_BITS
    per_nat = torch.where(p_on, 8.0 / torch.where(p_on, t, 1.0), 0.0).unsqueeze(1)
    # NaN / inf bins only occur on tokens without weight (they add nothing), so they may land anywhere.
    bin_of = (torch.where(p_on, m, 0.0).unsqueeze(1) - x).mul_(per_nat).clamp_(0, bins - 1)
    bin_of = bin_of.to(torch.int64).clamp_(0, bins - 1)
    hist = torch.zeros(batch, bins, dtype=torch.int64, device=x.device).scatter_add_(1, bin_of, q)
    hist = _exchange.all_reduce_sum(grp, hist)
    floor, inexact = _exact.floor_scaled(p, hist.sum(dim=1))
    limit = torch.where(p_on, floor + inexact.to(torch.int64), 1)  # mass < p * W iff mass < limit
    zero = torch.zeros_like(limit)
    # Bin 0 is the heaviest: flipped, higher digits are heavier, as with keys.
    lightest, above = _exact.radix_digit(zero, zero, hist.flip(1), limit)
    chosen = bins - 1 - lightest
    rows, cols = (bin_of == chosen.unsqueeze(1)).nonzero(as_tuple=True)
    key, q = _exact.keys(x[rows, cols]), q[rows, cols]
    rows, key, q = rows[q > 0], key[q > 0], q[q > 0]
    prefix, shift, in_bin = zero, 32, None
    while shift > 0:
        shift -= _RADIX_BITS
        inside = (key >> (shift + _RADIX_BITS)) == prefix[rows]
        rows, key, q = rows[inside], key[inside], q[inside]
        digit = (key >> shift) & (bins - 1)
        hist = torch.zeros(batch * bins, dtype=torch.int64, device=x.device).index_add_(0, rows * bins + digit, q)
        hist = _exchange.all_reduce_sum(grp, hist.view(batch, bins))
        in_bin = hist.sum(dim=1) if in_bin is None else in_bin
        prefix, above = _exact.radix_digit(prefix, above, hist, limit)
    # A chosen bin without weight would need mass(all) < p * W, impossible for p < 1: a guard only.
    return torch.where(in_bin > 0, _exact.values(prefix), -_INF)


# --------------------------------------------------------------------------------------------- greedy
def greedy(local_logits: Tensor, *, group=None) -> Tensor:
    """argmax over the full vocabulary, lowest global id on ties; -1 for a row with a NaN or all -inf
    (collective: one header all-gather and one all-gather of B * 4 int64 per rank)."""
    grp = _exchange.resolve_group(group, local_logits)
    try:
        x = _check_matrix("local_logits", local_logits).to(torch.float32)
        fields, error = _exchange.header(_OP_GREEDY, None, x.shape[0], x.shape[1]), None
    except (TypeError, ValueError) as exc:
        fields, error = _exchange.header(_OP_GREEDY, exc), exc
    _, lay = _exchange.agree(grp, fields, error)
    if x.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=x.device)
    gathered = _exchange.all_gather(grp, _slice_stats(x, lay.starts[grp.rank], False))
    m, first, _, has_nan = _global_stats(gathered)
    return torch.where(~has_nan & (m > -_INF), first, -1)


# ---------------------------------------------------------------------------------------------- top_k
def top_k(local_x: Tensor, k: int, sorted: bool = True, *, group=None) -> tuple[Tensor, Tensor]:
    """The k largest entries of each row of the full vocabulary: ``(values [B, k], global indices [B, k])``
    like `fastsample.top_k` (ties to the lower index, NaN largest; values in the input dtype). Collective:
    one header all-gather and one all-gather of B * k int64 per rank. ``sorted=False`` is accepted and
    returns them sorted anyway."""
    grp = _exchange.resolve_group(group, local_x)
    try:
        x = _check_matrix("local_x", local_x)
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        flags = _FLAG_SORTED * bool(sorted)
        fields, error = _exchange.header(_OP_TOP_K, None, x.shape[0], x.shape[1], k, flags), None
    except (TypeError, ValueError) as exc:
        fields, error = _exchange.header(_OP_TOP_K, exc), exc
    headers, lay = _exchange.agree(grp, fields, error)
    if k > lay.vocab:
        raise ValueError(f"fastsample.distributed.top_k: k must be in [0, {lay.vocab}] (the vocabulary size), "
                         f"got {k}")
    batch = x.shape[0]
    if batch == 0 or k == 0:
        empty = torch.empty(batch, 0, device=x.device)
        return empty.to(x.dtype), empty.to(torch.int64)
    # A composite int64 per candidate: the value's key above the bit-complemented global id, so one
    # integer order is "larger value first, then lower id"; -1 pads past V_r.
    n = min(k, x.shape[1])
    local_values, local_ids = _local_top_k(x, n)
    ids = local_ids + lay.starts[grp.rank]
    mine = torch.full((batch, k), -1, dtype=torch.int64, device=x.device)
    mine[:, :n] = (_exact.keys(local_values.to(torch.float32)) << 31) | ((1 << 31) - 1 - ids)
    merged = _exchange.all_gather(grp, mine).permute(1, 0, 2).reshape(batch, -1)
    best = merged.topk(k, dim=1).values
    values = _exact.values(best >> 31).to(x.dtype)
    return values, (1 << 31) - 1 - (best & ((1 << 31) - 1))
