"""Vocab-parallel sampling over torch.distributed (docs/design.md section 9): the same token as one device, without
gathering the logits.

Each rank of a process group holds a contiguous slice ``local_logits`` [B, V_r] of the vocabulary; the
ranks in group order cover [0, V), and V_r may differ by rank. Every function here is collective: all ranks
of the group call it with the same arguments except the slice, and every rank gets the same result.

- `sample(local_logits, temperature, top_k, top_p, min_p, return_logprobs, *, group, generator, seed,
  offset)`: `fastsample.sample` on the full logits (same rules: temperature -> top-k -> top-p -> min-p, inverse
  CDF in ascending global id order with Philox draw 0, T = 0 rows greedy, -1 rows).
- `sampling_from_logits`, `greedy`, `top_k` (values and global indices).
- `sample_stack(local_logits, ...)`: `fastsample.sample_stack` with mask words and ids in global ids
  (fastsample/distributed/_stack.py; HF order, one draw).

Exchange (per call, a set of collectives fixed by the arguments, whatever the logits; sizes per rank, B rows,
k = the largest top_k of the call; docs/ops.md "Vocab-parallel sampling"): a header all-gather (8 int64); an
all-gather of per-row stats, parameters and the local top-(k + 1) keys and top-k global ids (B * (11 + 2k)
int64, plus B with top-k: the count of the slice's tokens tied with its k-th value). With top-k a positive
scalar below V that is all but the last step: every rank finishes each row from the gathered lists. Otherwise:
with top-p possible, five all-reduces of a [B, 256] int64 mass histogram (the top-p threshold); an all-gather
of each rank's kept mass (B int64). Last, an all-reduce of the drawn token and its logprob (B * 2 float64).
Nothing scales with V. The per-rank passes over the slice are fixed-size ops (`_local`: C++ on CPU, torch
twins elsewhere) and read nothing on the host; the only host reads are marked `_exchange.host_reads()`.

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
from . import _exact, _exchange, _local
from ._exchange import ROUNDS, WIDTH, Group

Tensor = torch.Tensor
__all__ = ["sample", "sampling_from_logits", "greedy", "top_k", "sample_stack"]

_OP_SAMPLE, _OP_GREEDY, _OP_TOP_K = 1, 2, 3
_FLAG_LOGPROBS, _FLAG_SEED, _FLAG_SORTED = 1, 2, 4
# Columns of the per-row all-gather, then the local top-k keys from column _TOPK on.
_MAXKEY, _ARGMAX, _NMAX, _HASNAN, _T, _K, _P, _MINP, _SEED, _OFFSET, _TOPK = range(11)
_PARAM_COLUMNS = {"temperature": _T, "top_k": _K, "top_p": _P, "min_p": _MINP, "offset": _OFFSET}
_RADIX_BITS = 8
_ROUND_TOP_P, _ROUND_FULL = 1, 2
_INF = float("inf")


# ------------------------------------------------------------------------------------------------- helpers
def _bits(t: Tensor) -> Tensor:
    """float32 [B] -> its bit pattern as int64 (travels exactly through an int64 collective)."""
    return t.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)


def _from_bits(b: Tensor) -> Tensor:
    return b.to(torch.int32).view(torch.float32)


def _per_row(arr: Tensor | None, val, batch: int, dtype: torch.dtype, device) -> Tensor:
    return arr.to(dtype) if arr is not None else torch.full((batch,), val, dtype=dtype, device=device)


def _slice_stats(x: Tensor, start: int, tie_value: Tensor | None = None) -> Tensor:
    """[B, 4] int64 (or [B, 5] with ``tie_value``): local max key, global id of its first occurrence, how many
    tokens equal it, has NaN (and how many tokens equal tie_value[b]); one pass (`_local.row_stats`)."""
    tie = tie_value if tie_value is not None else torch.full((x.shape[0],), math.nan, device=x.device)
    stats = _local.row_stats(x, tie)
    stats = torch.cat([stats[:, :1], stats[:, 1:2] + start, stats[:, 2:]], dim=1)
    return stats if tie_value is not None else stats[:, :4]


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
    # The widest top-k of the call: the scalar itself, or the max of a top_k tensor (a host read of that
    # argument, the only one outside the header and the parameter check).
    if k_arr is None:
        width = max(int(k_val), 0)
    else:
        with _exchange.host_reads():
            width = int(k_arr.clamp(min=0).max()) if batch > 0 else 0
    # Header field ROUNDS: bit 0 = top-p may be on (histogram rounds), bit 1 = top-k may be off on some row
    # (the pass over the slice). Both follow from the arguments alone.
    rounds = _ROUND_TOP_P * int(p_arr is not None or p_val < 1) + _ROUND_FULL * int(k_arr is not None or k_val <= 0)
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
    with _exchange.host_reads():  # headers is on the host already
        widest = int(headers[:, WIDTH].max())
        merged = 0
        for r in headers[:, ROUNDS].tolist():
            merged |= r
    width = min(widest, lay.vocab)
    rounds = bool(merged & _ROUND_TOP_P)
    full = bool(merged & _ROUND_FULL) or widest >= lay.vocab  # a row without top-k: the pass over the slice
    tokens, logprobs = _sample(grp, x, columns, lay, width, rounds, full, seed is not None, bool(return_logprobs))
    return (tokens, logprobs) if return_logprobs else tokens


def sampling_from_logits(local_logits: Tensor, *, group=None, generator=None, seed=None, offset=None) -> Tensor:
    """One token per row from softmax of the full logits (no filters), split by vocabulary (collective)."""
    return sample(local_logits, group=group, generator=generator, seed=seed, offset=offset)


def _sample(grp: Group, x: Tensor, columns: Tensor, lay, width: int, rounds: bool, full: bool, seed_given: bool,
            return_logprobs: bool, raw: Tensor | None = None):
    batch, device = x.shape[0], x.device
    if batch == 0:
        return torch.empty(0, dtype=torch.int64, device=device), torch.empty(0, device=device)
    start = lay.starts[grp.rank]
    # --- collective: stats, parameters and the local top-k keys of every row; with a top-k, also how many
    # tokens of the slice equal its last listed value (the ties a list may cut off).
    top = _local_top(x, width, start)
    if width > 0:
        last = top[:, width - 1]
        stats = _slice_stats(x, start, torch.where(last >= 0, _exact.values(last), math.nan))
        mine = torch.cat([stats[:, :4], columns, top, stats[:, 4:]], dim=1)
    else:
        mine = torch.cat([_slice_stats(x, start), columns, top], dim=1)
    gathered = _exchange.all_gather(grp, mine)
    params = dict(_PARAM_COLUMNS, **({"seed": _SEED} if seed_given else {}))
    _exchange.check_columns_agree("sample", gathered, params)
    return _decide(grp, x, gathered, lay, width, rounds, full, return_logprobs, raw)


def _decide(grp: Group, x: Tensor, gathered: Tensor, lay, width: int, rounds: bool, full: bool,
            return_logprobs: bool, raw: Tensor | None = None):
    """Everything after step 2, the same on every rank: fixed-size tensors and a fixed set of collectives
    given (width, rounds, full); no value is read on the host. With ``raw`` (the raw logits of the slice, for
    `sample_stack`), also returns a dict describing the kept set and the drawn token's values."""
    batch, device = x.shape[0], x.device
    m, first, count, has_nan = _global_stats(gathered)
    ref = gathered[0]  # rank 0's parameters (and its seeds when each rank drew its own)
    t, k = _from_bits(ref[:, _T]), ref[:, _K]
    p, mp = _from_bits(ref[:, _P]), _from_bits(ref[:, _MINP])
    params_ok = (t >= 0) & (t < _INF) & (p >= 0) & (p <= 1) & (mp >= 0) & (mp <= 1)  # NaN fails
    valid = params_ok & ~has_nan & (m > -_INF)
    greedy_rows = valid & (t == 0)
    sampled = valid & (t > 0)
    inf_rows = sampled & (m == _INF)
    mode = torch.where(inf_rows, 2, sampled.to(torch.int64))  # 0 off, 1 finite row, 2 +inf row
    min_p_on = (mode == 1) & (mp > 0)
    log_mp = torch.where(min_p_on, torch.log(torch.where(min_p_on, mp, 1.0).to(torch.float64)), -_INF)
    u = philox_uniform(ref[:, _SEED], ref[:, _OFFSET], 0)
    scale = _exact.scale_bits(lay.vocab)
    k_rows = sampled & (k > 0) & (k < lay.vocab)  # top-k on: the gathered lists decide the row
    cols = 2 if raw is None else 4  # (token, logprob[, processed value, raw value])
    drawn = torch.zeros(batch, cols, dtype=torch.float64, device=device)
    theta = torch.full((batch,), -_INF, device=device)
    total = torch.zeros(batch, dtype=torch.int64, device=device)
    if width > 0:
        part, theta_l, total_l = _draw_listed(grp, x, gathered, lay, width, k, k_rows, mode, m, t, p, log_mp, u,
                                              scale, raw)
        drawn, theta, total = drawn + part, torch.where(k_rows, theta_l, theta), torch.where(k_rows, total_l, total)
    if full:
        part, theta_f, total_f = _draw_full(grp, x, lay, torch.where(k_rows, 0, mode), m, t, p, log_mp, u, scale,
                                            rounds, raw)
        drawn, theta, total = drawn + part, torch.where(k_rows, theta, theta_f), torch.where(k_rows, total, total_f)
    if raw is not None:  # greedy rows: the rank holding the first max gives its raw value
        local_first = first - lay.starts[grp.rank]
        holds = greedy_rows & (local_first >= 0) & (local_first < x.shape[1])
        drawn[:, 3] += torch.where(holds, _raw_at(raw, local_first), 0.0)
    # --- collective: the owner of each row's draw contributes its token and logprob, the others zeros.
    drawn = _exchange.all_reduce_sum(grp, drawn)
    tokens, logprobs = _finish(drawn[:, 0].to(torch.int64), drawn[:, 1], valid, greedy_rows, first, count,
                               return_logprobs)
    if raw is None:
        return tokens, logprobs
    info = {"m": m, "t": t, "mode": mode, "log_mp": log_mp, "theta": theta, "total": total, "scale": scale,
            "valid": valid, "greedy": greedy_rows, "count": count,
            "value": torch.where(greedy_rows, m, drawn[:, 2].to(torch.float32)), "raw_value": drawn[:, 3]}
    return tokens, logprobs, info


def _finish(token, logprob, valid, greedy_rows, first, count, return_logprobs):
    """Greedy rows take the lowest id of the max, invalid rows -1 (logprob NaN)."""
    tokens = torch.where(valid, torch.where(greedy_rows, first, token), -1)
    if not return_logprobs:
        return tokens, torch.empty(0, dtype=torch.float32, device=tokens.device)
    logprobs = torch.where(greedy_rows, -torch.log(count.clamp(min=1).to(torch.float64)), logprob)
    return tokens, torch.where(valid, logprobs, float("nan")).to(torch.float32)


def _logprob(value: Tensor, m: Tensor, t: Tensor, mode: Tensor, total: Tensor, scale: int) -> Tensor:
    w = _token_weight(value, m, t, mode == 2)
    return torch.log(w) - (torch.log(total.to(torch.float64)) - scale * math.log(2.0))


def _draw_full(grp: Group, x: Tensor, lay, mode: Tensor, m, t, p, log_mp, u, scale: int, rounds: bool,
               raw: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Rows without top-k (mode != 0): weights over the whole slice, the top-p threshold from all-reduced
    histograms, each rank's kept mass, and the walk on the rank that holds the step. Returns this rank's
    [B, 2] float64 contribution (token, logprob) to the final all-reduce."""
    batch = x.shape[0]
    no_theta = torch.full((batch,), -_INF, device=x.device)
    p_on = (mode == 1) & (p < 1) if rounds else torch.zeros_like(mode, dtype=torch.bool)
    per_nat = torch.where(p_on, 8.0 / torch.where(p_on, t, 1.0), 0.0)
    q, hist, kept = _local.weigh(x, m, t, mode, no_theta, log_mp, per_nat, scale, rounds)
    theta, q_walk = no_theta, None
    if rounds:  # collectives: a fixed number of histogram all-reduces
        theta_p = _top_p_threshold(grp, x, q, hist, m, per_nat, p, p_on)
        theta = torch.where(p_on, torch.where(p == 0, m, theta_p), -_INF)
        kept, q_walk = _local.kept(x, q, theta), q
    # --- collective: each rank's kept mass; then the draw, exact in integers.
    masses = _exchange.all_gather(grp, kept)  # [world, B]
    total = masses.sum(dim=0)
    before = masses[: grp.rank].sum(dim=0)
    target, _ = _exact.floor_scaled(u, total)  # the token is the first i with cdf_i > u * W, i.e. > target
    local_target = target - before
    owner = (mode != 0) & (local_target >= 0) & (local_target < masses[grp.rank])
    index = _local.walk(x, q_walk, m, t, torch.where(owner, mode, 0), theta, log_mp, local_target, scale)
    value = x.gather(1, index.unsqueeze(1)).squeeze(1)
    logprob = _logprob(value, m, t, mode, total, scale)
    token = (index + lay.starts[grp.rank]).to(torch.float64)
    cols = [token, logprob] + ([] if raw is None else [value.to(torch.float64), _raw_at(raw, index)])
    return torch.where(owner.unsqueeze(1), torch.stack(cols, dim=1), 0.0), theta, total


def _raw_at(raw: Tensor, index: Tensor) -> Tensor:
    return raw.gather(1, index.clamp(0, raw.shape[1] - 1).unsqueeze(1)).squeeze(1).to(torch.float64)


def _draw_listed(grp: Group, x: Tensor, gathered: Tensor, lay, width: int, k, k_rows, mode, m, t, p, log_mp, u,
                 scale: int, raw: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Rows with top-k (k_rows): top-k -> top-p -> min-p and the draw over the gathered lists, on every rank
    alike. A rank whose list ends inside the ties at the k-th value adds one entry for its unlisted tied
    tokens (the same value, so the same weight, times their count): masses stay exact. When the draw lands in
    such a rank's slice, that rank walks its slice for the token. Returns this rank's [B, 2] contribution."""
    world, batch = gathered.shape[0], x.shape[0]
    keys = gathered[:, :, _TOPK:_TOPK + width]  # [world, B, width]
    extra = gathered[:, :, _TOPK + width]  # the (width + 1)-th key of each rank
    ids = gathered[:, :, _TOPK + width + 1:_TOPK + 2 * width + 1].permute(1, 0, 2)  # [B, world, width]
    ties = gathered[:, :, _TOPK + 2 * width + 1]  # tokens equal to each rank's last listed value
    merged = keys.permute(1, 0, 2).reshape(batch, -1)
    kth = merged.sort(dim=1, descending=True).values.gather(1, (k - 1).clamp(0, merged.shape[1] - 1)[:, None])
    theta_key = torch.where(k_rows, kth.squeeze(1), -1)
    theta = torch.where(k_rows, _exact.values(theta_key), -_INF)
    # Ranks with more tokens >= theta than their list holds: all the others equal theta (at most k - 1 tokens
    # are above it), and there are (ties - listed ties) of them.
    over = (extra >= theta_key.unsqueeze(0)) & k_rows.unsqueeze(0)
    unlisted = torch.where(over, ties - (keys == theta_key[None, :, None]).sum(dim=2), 0)
    ekeys = torch.cat([keys, torch.where(over, theta_key.unsqueeze(0), -1).unsqueeze(2)], dim=2).permute(1, 0, 2)
    mult = torch.cat([torch.ones_like(keys), unlisted.unsqueeze(2)], dim=2).permute(1, 0, 2)
    flat = ekeys.reshape(batch, -1)  # [B, world * (width + 1)]
    entry = (flat >= theta_key.unsqueeze(1)) & (flat >= 0) & k_rows.unsqueeze(1)
    xv = torch.where(flat >= 0, _exact.values(flat), -_INF).contiguous()
    row_mode = torch.where(k_rows, mode, 0)
    q, _, _ = _local.weigh(xv, m, t, row_mode, theta, log_mp, torch.zeros_like(theta), scale, True)
    q = torch.where(entry, q, 0) * mult.reshape(batch, -1)  # negative: dropped by min-p
    # top-p: the mass strictly above each entry's value (equal keys are one group) against p * W.
    mass = q.abs()
    order = flat.argsort(dim=1, descending=True)
    sorted_keys, sorted_q = flat.gather(1, order), mass.gather(1, order)
    ends = sorted_q.cumsum(dim=1)
    group_start = torch.searchsorted(-sorted_keys, -sorted_keys, right=False)  # first of each equal-key run
    above = (ends.gather(1, group_start) - sorted_q.gather(1, group_start)).gather(1, order.argsort(dim=1))
    floor, inexact = _exact.floor_scaled(p, mass.sum(dim=1))
    keep_p = (above < (floor + inexact.to(torch.int64)).unsqueeze(1)) | (above == 0) | (p >= 1).unsqueeze(1)
    keep_p |= (row_mode == 2).unsqueeze(1)  # +inf tokens tie: all kept
    kq = torch.where(keep_p & (q > 0), q, 0).view(batch, world, width + 1)
    # The draw: the rank whose kept mass holds the step, then its entries in ascending id order.
    per_rank = kq.sum(dim=2)  # [B, world]
    total = per_rank.sum(dim=1)
    target, _ = _exact.floor_scaled(u, total)
    rank_ends = per_rank.cumsum(dim=1)
    owner = torch.searchsorted(rank_ends, target.unsqueeze(1), right=True).clamp(max=world - 1)
    local_target = target - (rank_ends.gather(1, owner) - per_rank.gather(1, owner)).squeeze(1)
    own_q = kq.gather(1, owner.unsqueeze(2).expand(batch, 1, width + 1)).squeeze(1)
    own_ids = ids.gather(1, owner.unsqueeze(2).expand(batch, 1, width)).squeeze(1)
    own_x = xv.view(batch, world, width + 1).gather(1, owner.unsqueeze(2).expand(batch, 1, width + 1)).squeeze(1)
    by_id = torch.where(own_q[:, :width] > 0, own_ids, torch.iinfo(torch.int64).max).argsort(dim=1)
    cdf = own_q[:, :width].gather(1, by_id).cumsum(dim=1)
    pick = by_id.gather(1, torch.searchsorted(cdf, local_target.unsqueeze(1), right=True).clamp(max=width - 1))
    token, value = own_ids.gather(1, pick).squeeze(1), own_x.gather(1, pick).squeeze(1)
    # Unlisted ties kept on the owner: it walks its slice (x >= theta, min-p; top-p keeps every group then).
    mine = k_rows & (owner.squeeze(1) == grp.rank)
    walk = mine & (own_q[:, width] > 0)
    index = _local.walk(x, None, m, t, torch.where(walk, mode, 0), theta, log_mp, local_target, scale)
    local = torch.where(walk, index, token - lay.starts[grp.rank])  # the token in this slice (where mine)
    token = torch.where(walk, index + lay.starts[grp.rank], token)
    value = torch.where(walk, x.gather(1, index.unsqueeze(1)).squeeze(1), value)
    logprob = _logprob(value, m, t, mode, total, scale)
    cols = [token.to(torch.float64), logprob] + ([] if raw is None else [value.to(torch.float64), _raw_at(raw, local)])
    # The lowest kept value (top-k and top-p are thresholds on the value; min-p is the d >= log(min_p) test).
    lowest = torch.where(keep_p & entry, flat, _exact.KEY_NAN).min(dim=1).values
    theta_kept = torch.where(lowest < _exact.KEY_NAN, _exact.values(lowest), _INF)
    return torch.where(mine.unsqueeze(1), torch.stack(cols, dim=1), 0.0), theta_kept, total


def _token_weight(x: Tensor, m: Tensor, t: Tensor, inf_rows: Tensor) -> Tensor:
    """float64 w = exp((x - m) / T) of one token per row (1 on +inf rows), as the fixed-point weights use."""
    safe_t = torch.where(t > 0, t, 1.0).to(torch.float64)
    w = torch.exp((x.to(torch.float64) - torch.where(inf_rows, 0.0, m).to(torch.float64)) / safe_t)
    return torch.where(inf_rows, 1.0, w)


def _top_p_threshold(grp: Group, x: Tensor, q: Tensor, hist: Tensor, m: Tensor, per_nat: Tensor, p: Tensor,
                     p_on: Tensor) -> Tensor:
    """The top-p threshold value per row: keep x >= it (rows with p_on and p > 0; others get unused values).

    The threshold is the smallest float32 key t with ``mass(keys > t) < p * W`` (W = the top-k survivors'
    mass, q = their fixed-point weights): a token is kept iff the mass strictly more probable than it is
    < p * W. Five all-reduced mass histograms find it. The first (``hist``, from `_local.weigh`) bins tokens
    by ``(m - x) * 8 / T`` in float32 (1/8 of a nat of weight per bin, monotone in x, the same on every rank);
    the next four, over the tokens of the bin that holds the threshold, find its float32 key 8 bits at a time
    (`_local.digit_hist`: a pass over the slice, no compaction).
    """
    bins = 1 << _RADIX_BITS
    hist = _exchange.all_reduce_sum(grp, hist)
    floor, inexact = _exact.floor_scaled(p, hist.sum(dim=1))
    limit = torch.where(p_on, floor + inexact.to(torch.int64), 1)  # mass < p * W iff mass < limit
    zero = torch.zeros_like(limit)
    # Bin 0 is the heaviest: flipped, higher digits are heavier, as with keys.
    lightest, above = _exact.radix_digit(zero, zero, hist.flip(1), limit)
    chosen = torch.where(p_on, bins - 1 - lightest, -1)
    prefix, in_bin = zero, None
    for shift in (24, 16, 8, 0):
        digits = _exchange.all_reduce_sum(grp, _local.digit_hist(x, q, m, per_nat, chosen, prefix, shift))
        in_bin = digits.sum(dim=1) if in_bin is None else in_bin
        prefix, above = _exact.radix_digit(prefix, above, digits, limit)
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
    gathered = _exchange.all_gather(grp, _slice_stats(x, lay.starts[grp.rank]))
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


from ._stack import sample_stack  # noqa: E402  (it uses the helpers above)
