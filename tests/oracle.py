"""Float64 numpy oracle of every fastsample semantic: docs/design.md sections 4 and 5, docs/ops.md.

This module imports nothing from fastsample (and not torch), so a bug shared by the kernels and the
oracle can only come from a shared misreading of the spec, never from shared code.

Every function takes numpy arrays (logits/probs as float64 holding the exact float32/float16/bfloat16
values the kernels see) and per-row parameters that are either a scalar or an array of shape [B].

Float32 kernels and this float64 oracle can disagree where a decision compares two nearly equal numbers:
u * W against a CDF step, a top-p mass against p * S, a min-p weight against min_p * max w, a speculative
u * q against p. The functions below therefore also report which rows are *ambiguous* (the decision would
flip if those numbers moved by ``tol`` relative), and, where a test wants to keep checking such rows, the
set of results any rounding within ``tol`` could produce (``*_candidates``, `sample_with_candidates`).
"""
from __future__ import annotations

import numpy as np

#: Relative distance below which a comparison may flip under float32 rounding (see the module docstring).
REL_TOL = 1e-5

_MASK32 = np.uint64(0xFFFFFFFF)
_MUL0, _MUL1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_WEYL0, _WEYL1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)


# --------------------------------------------------------------------------------------------- Philox
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 (Random123), vectorised over broadcastable arrays.

    Parameters
    ----------
    c0, c1, c2, c3 : int or array of uint32 values, the counter words.
    k0, k1 : int or array of uint32 values, the key words.

    Returns
    -------
    tuple of four uint32 arrays, the output words.
    """
    # uint64 holds the 32x32 products exactly; masking after each add gives the uint32 wrap-around.
    c0, c1, c2, c3, k0, k1 = np.broadcast_arrays(*(np.asarray(v, dtype=np.uint64) & _MASK32
                                                   for v in (c0, c1, c2, c3, k0, k1)))
    for _ in range(10):
        p0 = _MUL0 * c0
        p1 = _MUL1 * c2
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & _MASK32,
                          (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & _MASK32)
        k0 = (k0 + _WEYL0) & _MASK32
        k1 = (k1 + _WEYL1) & _MASK32
    return tuple(w.astype(np.uint32) for w in (c0, c1, c2, c3))


def uniform(seed, offset, draw):
    """The uniform of docs/design.md section 4 for each row.

    Parameters
    ----------
    seed, offset : int or int64 array [B]; used as uint64 bit patterns (negative values wrap).
    draw : int or int array broadcastable with them, the draw index j.

    Returns
    -------
    float64 array: ``(word0 >> 8) * 2**-24`` of Philox with key (lo32(seed), hi32(seed)) and counter
    (lo32(offset), hi32(offset), draw, 0). Every value is an exact float32 in [0, 1).
    """
    s = np.asarray(seed, dtype=np.int64).astype(np.uint64)
    o = np.asarray(offset, dtype=np.int64).astype(np.uint64)
    w0, _, _, _ = philox4x32_10(o & _MASK32, o >> np.uint64(32), np.asarray(draw, dtype=np.uint64), 0,
                                s & _MASK32, s >> np.uint64(32))
    return (w0 >> np.uint32(8)).astype(np.float64) * 2.0**-24


# ------------------------------------------------------------------------------------------ row rules
def _rows(value, batch: int, dtype) -> np.ndarray:
    """A scalar or [B] parameter as an array of shape [B]."""
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim == 0:
        return np.full(batch, arr, dtype=dtype)
    if arr.shape != (batch,):
        raise ValueError(f"per-row parameter must have shape [{batch}], got {arr.shape}")
    return arr


def _matrix(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a [B, V] array, got shape {x.shape}")
    return x


def _weights(x: np.ndarray, is_logits: bool, temperature: float) -> np.ndarray | None:
    """The row weights w of docs/ops.md "Weights", or None for an invalid row.

    For logits with T == 0 the weights are 1 on the row maxima (the T -> 0 limit), which is what softmax
    returns; `sample` handles those rows as greedy instead.
    """
    if np.isnan(x).any():
        return None
    if not is_logits:
        if (x < 0).any() or np.isinf(x).any() or x.sum() == 0:
            return None
        return x.copy()
    if not 0 <= temperature < np.inf:  # also catches NaN
        return None
    m = x.max()
    if m == -np.inf:
        return None
    if m == np.inf or temperature == 0:
        return (x == m).astype(np.float64)
    # exp(-inf) = 0 covers the -inf logits; written out so that T = +inf cannot turn them into NaN.
    with np.errstate(invalid="ignore"):
        return np.where(x == -np.inf, 0.0, np.exp((x - m) / temperature))


def _params_valid(top_p: float, min_p: float) -> bool:
    return bool(0 <= top_p <= 1 and 0 <= min_p <= 1)  # NaN fails both comparisons


def _top_p_thresholds(x, w, theta_k, top_p, tol) -> list[float]:
    """Candidate top-p thresholds on x over the top-k survivors, the float64 decision first."""
    survivors = x >= theta_k
    values, inverse = np.unique(x[survivors], return_inverse=True)
    mass = np.bincount(inverse, weights=w[survivors], minlength=values.size)[::-1]
    values = values[::-1]  # distinct values, descending
    above = np.concatenate(([0.0], np.cumsum(mass)[:-1]))  # mass strictly more probable than each group
    total = mass.sum()

    def groups_kept(limit: float) -> int:
        # `above` is non-decreasing, so the kept groups are a prefix; the top group is always kept (p = 0).
        return max(1, int(np.count_nonzero(above < limit)))

    primary = groups_kept(top_p * total)
    lo, hi = groups_kept(top_p * total - tol * total), groups_kept(top_p * total + tol * total)
    return [values[primary - 1]] + [values[n - 1] for n in range(lo, hi + 1) if n != primary]


def _min_p_thresholds(x, w, min_p, tol) -> list[float]:
    """Candidate min-p thresholds on x, the float64 decision first."""
    wmax = w.max()
    limit = min_p * wmax
    near = w[(w >= limit * (1 - tol)) & (w <= limit * (1 + tol))]
    # Each weight in the window, and each end of the window, is a place where the kept set can change.
    limits = [limit, limit * (1 - tol), limit * (1 + tol), *near]
    thetas = [x[w >= min(t, wmax)].min() for t in limits]
    # Weights float64 rounds to one value (|x - max| / T below 2^-53 of it) are still ordered by x: a kernel
    # that compares x with its threshold may keep only the largest x of the window.
    if near.size:
        thetas.append(x[(w >= limit * (1 - tol)) & (w <= limit * (1 + tol))].max())
    return thetas


def _thresholds(x, w, top_k, top_p, min_p, tol) -> list[float]:
    """Candidate row thresholds theta (kept = x >= theta) after top-k -> top-p -> min-p, primary first."""
    vocab = x.size
    theta_k = np.partition(x, vocab - top_k)[vocab - top_k] if 0 < top_k < vocab else -np.inf
    thetas_p = _top_p_thresholds(x, w, theta_k, top_p, tol) if top_p < 1 else [-np.inf]
    thetas_m = _min_p_thresholds(x, w, min_p, tol) if min_p > 0 else [-np.inf]
    out = [max(theta_k, thetas_p[0], thetas_m[0])]
    for a in thetas_p:
        for b in thetas_m:
            theta = max(theta_k, a, b)
            if theta not in out:
                out.append(theta)
    return out


def _analyse(x, is_logits, temperature, top_k, top_p, min_p, tol):
    """(w, thetas) of one row, or None for an invalid row."""
    if not _params_valid(top_p, min_p):
        return None
    w = _weights(x, is_logits, temperature)
    if w is None:
        return None
    return w, _thresholds(x, w, top_k, top_p, min_p, tol)


def _inverse_cdf(w: np.ndarray, u: float, tol: float) -> tuple[int, float, set[int]]:
    """Inverse-CDF draw from weights w (zeros allowed, positive total): (token, logprob, candidates).

    The token is the smallest i with cumsum(w)[i] > u * W; the candidates are every token some u * W within
    tol * W of it selects (the CDF steps a float32 kernel could land on instead).
    """
    cum = np.cumsum(w)
    total = cum[-1]
    target = u * total
    token = int(np.searchsorted(cum, target, side="right"))
    lo = int(np.searchsorted(cum, target - tol * total, side="right"))
    hi = min(int(np.searchsorted(cum, target + tol * total, side="right")), w.size - 1)
    candidates = {lo + int(i) for i in np.flatnonzero(w[lo:hi + 1] > 0)}
    return token, float(np.log(w[token] / total)), candidates


# ---------------------------------------------------------------------------------------------- ops
def softmax(logits, temperature=1.0) -> np.ndarray:
    """``w / sum(w)`` per row (docs/ops.md "softmax"); invalid rows (NaN, all -inf, T < 0, +inf or NaN) are NaN."""
    logits = _matrix(logits)
    temps = _rows(temperature, logits.shape[0], np.float64)
    out = np.full(logits.shape, np.nan)
    for b, x in enumerate(logits):
        w = _weights(x, True, temps[b])
        if w is not None:
            out[b] = w / w.sum()
    return out


def top_k(x, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest entries of each row: values descending, ties to the lower index, NaN largest.

    Returns
    -------
    (values float64 [B, k], indices int64 [B, k])
    """
    x = _matrix(x)
    nan = np.isnan(x)
    index = np.broadcast_to(np.arange(x.shape[1]), x.shape)
    # lexsort: the last key is the primary one; False sorts first, so NaNs lead, then larger values.
    order = np.lexsort((index, -np.where(nan, 0.0, x), ~nan), axis=-1)[:, :k]
    return np.take_along_axis(x, order, axis=1), order.astype(np.int64)


def top_k_mask_logits(logits, k) -> np.ndarray:
    """Logits with every value below the row's k-th largest set to -inf; NaN rows and k <= 0 or >= V unchanged."""
    out = _matrix(logits).copy()
    ks = _rows(k, out.shape[0], np.int64)
    vocab = out.shape[1]
    for b, x in enumerate(out):
        if np.isnan(x).any() or not 0 < ks[b] < vocab:
            continue
        theta = np.partition(x, vocab - ks[b])[vocab - ks[b]]
        x[x < theta] = -np.inf
    return out


def kept_candidates(x, is_logits: bool, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                    tol: float = REL_TOL) -> list[list[np.ndarray]]:
    """Per row, every kept mask [V] that rounding within ``tol`` can produce, the float64 one first.

    Invalid rows give ``[]``. Logits rows with T == 0 keep the row maxima.
    """
    x = _matrix(x)
    batch = x.shape[0]
    temps, ks = _rows(temperature, batch, np.float64), _rows(top_k, batch, np.int64)
    ps, mps = _rows(top_p, batch, np.float64), _rows(min_p, batch, np.float64)
    out = []
    for b, row in enumerate(x):
        res = _analyse(row, is_logits, temps[b], ks[b], ps[b], mps[b], tol)
        if res is None:
            out.append([])
        elif is_logits and temps[b] == 0:
            out.append([row == row.max()])
        else:
            out.append([row >= theta for theta in res[1]])
    return out


def kept_mask(x, is_logits: bool, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
              tol: float = REL_TOL) -> tuple[np.ndarray, np.ndarray]:
    """The kept set after temperature -> top-k -> top-p -> min-p.

    Returns
    -------
    (mask bool [B, V], all False on invalid rows; ambiguous bool [B], rows whose kept set may differ in float32)
    """
    cands = kept_candidates(x, is_logits, temperature, top_k, top_p, min_p, tol)
    mask = np.zeros(np.shape(x), dtype=bool)
    for b, c in enumerate(cands):
        if c:
            mask[b] = c[0]
    return mask, np.array([len(c) > 1 for c in cands], dtype=bool)


def renorm_candidates(probs, top_k=0, top_p=1.0, min_p=0.0, tol: float = REL_TOL) -> list[list[np.ndarray]]:
    """Per row, every renormalised distribution [V] rounding within ``tol`` can produce, float64 one first.

    Invalid rows give ``[zeros]`` (docs/ops.md "renorm_probs").
    """
    probs = _matrix(probs)
    out = []
    for row, masks in zip(probs, kept_candidates(probs, False, 1.0, top_k, top_p, min_p, tol)):
        if not masks:
            out.append([np.zeros_like(row)])
            continue
        out.append([np.where(m, row, 0.0) / row[m].sum() for m in masks])
    return out


def renorm_probs(probs, top_k=0, top_p=1.0, min_p=0.0, tol: float = REL_TOL) -> tuple[np.ndarray, np.ndarray]:
    """``p_i / sum_kept p`` on kept tokens, 0 elsewhere; invalid rows all zeros.

    Returns
    -------
    (out float64 [B, V], ambiguous bool [B])
    """
    cands = renorm_candidates(probs, top_k, top_p, min_p, tol)
    return np.stack([c[0] for c in cands]), np.array([len(c) > 1 for c in cands], dtype=bool)


def distribution(x, is_logits: bool, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> np.ndarray:
    """The distribution `sample` draws from: kept weights renormalised (one-hot argmax for T == 0 rows),
    NaN rows where the result is -1. This is what chi-square tests compare empirical frequencies with."""
    x = _matrix(x)
    batch = x.shape[0]
    temps = _rows(temperature, batch, np.float64)
    out = np.full(x.shape, np.nan)
    for b, masks in enumerate(kept_candidates(x, is_logits, temperature, top_k, top_p, min_p)):
        if not masks:
            continue
        if is_logits and temps[b] == 0:
            out[b] = 0.0
            out[b, np.argmax(x[b])] = 1.0
        else:
            w = np.where(masks[0], _weights(x[b], is_logits, temps[b]), 0.0)
            out[b] = w / w.sum()
    return out


def _sample_rows(x, is_logits, temperature, top_k, top_p, min_p, seed, offset, tol):
    x = _matrix(x)
    batch = x.shape[0]
    temps, ks = _rows(temperature, batch, np.float64), _rows(top_k, batch, np.int64)
    ps, mps = _rows(top_p, batch, np.float64), _rows(min_p, batch, np.float64)
    us = uniform(_rows(seed, batch, np.int64), _rows(offset, batch, np.int64), 0)
    for b, row in enumerate(x):
        res = _analyse(row, is_logits, temps[b], ks[b], ps[b], mps[b], tol)
        if res is None:
            yield -1, np.nan, {-1}
            continue
        w, thetas = res
        if is_logits and temps[b] == 0:
            # Greedy row: lowest index of the maximum; logprob is the T -> 0 limit.
            yield int(np.argmax(row)), -float(np.log(np.count_nonzero(row == row.max()))), {int(np.argmax(row))}
            continue
        token, logprob, candidates = _inverse_cdf(np.where(row >= thetas[0], w, 0.0), us[b], tol)
        for theta in thetas[1:]:
            candidates |= _inverse_cdf(np.where(row >= theta, w, 0.0), us[b], tol)[2]
        yield token, logprob, candidates


def sample(x, is_logits: bool, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0, offset=0,
           tol: float = REL_TOL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `sample` op (docs/ops.md "sample"): one token per row with Philox draw 0.

    Parameters
    ----------
    x : [B, V] logits (``is_logits``) or unnormalised probabilities.
    temperature, top_k, top_p, min_p : scalar or [B]. Temperature is ignored for probs.
    seed, offset : scalar or int64 [B], the per-row values (already expanded by the _rng rules).
    tol : relative distance under which a comparison counts as ambiguous.

    Returns
    -------
    (tokens int64 [B] with -1 for invalid rows, logprobs float64 [B] with NaN there,
     ambiguous bool [B]: rows where float32 rounding could select another token)
    """
    tokens, logprobs, candidates = sample_with_candidates(x, is_logits, temperature, top_k, top_p, min_p, seed,
                                                          offset, tol)
    return tokens, logprobs, np.array([len(c) > 1 for c in candidates], dtype=bool)


def sample_with_candidates(x, is_logits: bool, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0, offset=0,
                           tol: float = REL_TOL) -> tuple[np.ndarray, np.ndarray, list[set[int]]]:
    """`sample` with, instead of the ambiguous flags, each row's set of tokens rounding within ``tol`` can give.

    A row is ambiguous in `sample` exactly when its set has more than one token ({-1} for invalid rows); tests
    check that a kernel's token lies in this set even on ambiguous rows.

    Returns
    -------
    (tokens int64 [B], logprobs float64 [B], candidates: list of B sets of token ids)
    """
    rows = list(_sample_rows(x, is_logits, temperature, top_k, top_p, min_p, seed, offset, tol))
    return (np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=np.float64),
            [r[2] for r in rows])


def greedy(logits) -> np.ndarray:
    """argmax per row, lowest index on ties; -1 for a row with a NaN or with every logit -inf."""
    logits = _matrix(logits)
    out = np.full(logits.shape[0], -1, dtype=np.int64)
    for b, x in enumerate(logits):
        if not np.isnan(x).any() and x.max() > -np.inf:
            out[b] = np.argmax(x)
    return out


def _probs_weights(w: np.ndarray) -> np.ndarray | None:
    """Weights sampled from in the speculative final step, or None when invalid (NaN, negative, inf, zero sum)."""
    if np.isnan(w).any() or (w < 0).any() or np.isinf(w).any() or w.sum() == 0:
        return None
    return w


def chain_speculative_sampling(draft_probs, draft_ids, target_probs, seed, offset, tol: float = REL_TOL):
    """Chain speculative sampling (docs/ops.md "chain_speculative_sampling").

    Parameters
    ----------
    draft_probs : [B, n, V] q.   draft_ids : int [B, n].   target_probs : [B, n + 1, V] p.
    seed, offset : scalar or int64 [B], the per-row values.

    Returns
    -------
    (output_ids int64 [B, n + 1] padded with -1, accepted_num int64 [B], emitted_num int64 [B],
     ambiguous bool [B]: rows where an acceptance test has u * q within tol of p, or the final draw lies
     within tol of a CDF step)
    """
    q = np.asarray(draft_probs, dtype=np.float64)
    p = np.asarray(target_probs, dtype=np.float64)
    ids = np.asarray(draft_ids, dtype=np.int64)
    batch, n, vocab = q.shape
    seeds, offsets = _rows(seed, batch, np.int64), _rows(offset, batch, np.int64)
    output = np.full((batch, n + 1), -1, dtype=np.int64)
    accepted = np.zeros(batch, dtype=np.int64)
    emitted = np.zeros(batch, dtype=np.int64)
    ambiguous = np.zeros(batch, dtype=bool)
    for b in range(batch):
        us = uniform(seeds[b], offsets[b], np.arange(n + 1))
        passed = np.zeros(n, dtype=bool)
        for i in range(n):
            x = ids[b, i]
            if not 0 <= x < vocab:
                continue
            uq, pv = us[i] * q[b, i, x], p[b, i, x]
            passed[i] = uq < pv  # NaN compares false: the position fails
            scale = max(abs(uq), abs(pv))
            if np.isfinite(scale) and scale > 0 and abs(uq - pv) <= tol * scale:
                ambiguous[b] = True
        e = int(np.argmin(passed)) if not passed.all() else n
        accepted[b], emitted[b] = passed.sum(), e
        output[b, :e] = ids[b, :e]
        if e < n:
            residual = np.maximum(p[b, e] - q[b, e], 0.0)  # np.maximum propagates NaN: an invalid row
            if ((p[b, e] < 0) | (q[b, e] < 0) | np.isinf(p[b, e]) | np.isinf(q[b, e])).any():
                residual[:] = np.nan  # a negative or infinite entry of p or q: invalid too (docs/ops.md)
            weights = p[b, e] if residual.sum() == 0 else residual
        else:
            weights = p[b, n]
        weights = _probs_weights(weights)
        if weights is not None:
            token, _, candidates = _inverse_cdf(weights, us[n], tol)
            output[b, e] = token
            ambiguous[b] |= len(candidates) > 1
    return output, accepted, emitted, ambiguous


def tree_valid(draft_ids, parents) -> np.ndarray:
    """bool [B]: rows whose used nodes (token != -1) all have a parent in [-1, own index)."""
    ids, par = np.asarray(draft_ids, dtype=np.int64), np.asarray(parents, dtype=np.int64)
    index = np.arange(ids.shape[1])
    return (((par >= -1) & (par < index)) | (ids == -1)).all(axis=1)


def _near(a: float, b: float, tol: float) -> bool:
    scale = max(abs(a), abs(b))
    return bool(np.isfinite(scale) and scale > 0 and abs(a - b) <= tol * scale)


def _bad(w: np.ndarray) -> bool:
    return bool(np.isnan(w).any() or (w < 0).any() or np.isinf(w).any())


def tree_speculative_sampling(draft_ids, parents, target_probs, draft_probs=None, seed=0, offset=0,
                              tol: float = REL_TOL):
    """Tree speculative sampling (docs/ops.md "tree_speculative_sampling"), written as the tree walk it defines.

    Parameters
    ----------
    draft_ids : int [B, N], node tokens (-1 = unused).   parents : int [B, N] (-1 = child of the root).
    target_probs : [B, N + 1, V] p.   draft_probs : [B, N, V] q (sampled children) or None (deterministic).

    Returns
    -------
    (output_ids int64 [B, N + 1], accepted_nodes int64 [B, N], emitted_num int64 [B], ambiguous bool [B]).
    """
    ids, par = np.asarray(draft_ids, dtype=np.int64), np.asarray(parents, dtype=np.int64)
    p = np.asarray(target_probs, dtype=np.float64)
    q = None if draft_probs is None else np.asarray(draft_probs, dtype=np.float64)
    batch, n = ids.shape
    vocab = p.shape[2]
    seeds, offsets = _rows(seed, batch, np.int64), _rows(offset, batch, np.int64)
    output = np.full((batch, n + 1), -1, dtype=np.int64)
    nodes = np.full((batch, n), -1, dtype=np.int64)
    emitted = np.zeros(batch, dtype=np.int64)
    ambiguous = np.zeros(batch, dtype=bool)
    valid = tree_valid(ids, par)
    for b in range(batch):
        if not valid[b]:
            continue
        us = uniform(seeds[b], offsets[b], np.arange(n + 1))
        children = {}
        for i in range(n):
            if ids[b, i] != -1:
                children.setdefault(par[b, i], []).append(i)
        path, cur = [], -1
        while True:
            w, mass = p[b, cur + 1].copy(), 1.0  # the residual r = w / mass; the root row is taken as normalised
            accepted = None
            for c in children.get(cur, []):  # in index order
                t = ids[b, c]
                if 0 <= t < vocab:
                    lhs = us[c] * q[b, c, t] * mass if q is not None else us[c] * mass
                    ambiguous[b] |= _near(lhs, w[t], tol)
                    if lhs < w[t]:  # a NaN compares false: rejected
                        accepted = c
                        break
                if q is None:  # r <- norm(r without t)
                    if 0 <= t < vocab:
                        mass -= w[t]
                        w[t] = 0.0
                elif _bad(w) or _bad(q[b, c]):
                    w[:] = np.nan
                else:  # r <- norm(max(r - q, 0)); a residual of zero mass leaves r as it was
                    residual = np.maximum(w / mass - q[b, c], 0.0)
                    if residual.sum() > 0:
                        w, mass = residual, residual.sum()
            if accepted is None:
                break
            path.append(accepted)
            cur = accepted
        emitted[b] = len(path)
        nodes[b, :len(path)] = path
        output[b, :len(path)] = ids[b, path]
        if not _bad(w) and w.sum() > 0:
            token, _, candidates = _inverse_cdf(w, us[n], tol)
            output[b, len(path)] = token
            ambiguous[b] |= len(candidates) > 1
    return output, nodes, emitted, ambiguous


def tree_greedy_verify(draft_ids, parents, target_logits):
    """(output_ids [B, N + 1], accepted_nodes [B, N], emitted_num [B]): the longest root path whose tokens are
    the target's argmax at their parents (first matching child on duplicates), then the argmax after it."""
    ids, par = np.asarray(draft_ids, dtype=np.int64), np.asarray(parents, dtype=np.int64)
    x = np.asarray(target_logits, dtype=np.float64)
    batch, n = ids.shape
    output = np.full((batch, n + 1), -1, dtype=np.int64)
    nodes = np.full((batch, n), -1, dtype=np.int64)
    emitted = np.zeros(batch, dtype=np.int64)
    valid = tree_valid(ids, par)
    for b in range(batch):
        if not valid[b]:
            continue
        best = greedy(x[b])
        path, cur = [], -1
        while True:
            match = [i for i in range(n) if ids[b, i] != -1 and par[b, i] == cur and ids[b, i] == best[cur + 1]]
            if not match:
                break
            cur = match[0]
            path.append(cur)
        emitted[b] = len(path)
        nodes[b, :len(path)] = path
        output[b, :len(path)] = ids[b, path]
        output[b, len(path)] = best[cur + 1]
    return output, nodes, emitted


# -------------------------------------------------------------------------------- the stack sampler
def allowed_from_bitmask(mask, vocab: int) -> np.ndarray:
    """bool [B, V] from an int32 bitmask [B, ceil(V/32)]: token i is allowed iff bit i % 32 of word i // 32 is set."""
    words = np.asarray(mask).astype(np.int64) & 0xFFFFFFFF
    ids = np.arange(vocab)
    return ((words[:, ids // 32] >> (ids % 32)) & 1).astype(bool)


def stack_processed_logits(x, allowed=None, bias_ids=None, bias_values=None, prompt_ids=None, output_ids=None,
                           repetition=1.0, frequency=0.0, presence=0.0) -> tuple[np.ndarray, np.ndarray]:
    """The logits after mask -> bias -> penalties (docs/ops.md "sample_stack"), in float64.

    Parameters
    ----------
    x : [B, V] raw logits.   allowed : bool [B, V] or None (all allowed).
    bias_ids, bias_values : [B, L] ids (-1 = unused slot) and values added to those logits; an id may repeat.
    prompt_ids, output_ids : [B, L] token histories, -1 padding.
    repetition, frequency, presence : scalar or [B] penalties r, f, q.

    Returns
    -------
    (y float64 [B, V], bad_ids bool [B]: rows with an id outside [-1, V) in any id list)
    """
    y = _matrix(x).copy()
    batch, vocab = y.shape
    reps, freqs, pres = (_rows(v, batch, np.float64) for v in (repetition, frequency, presence))
    bad = np.zeros(batch, dtype=bool)
    lists = [np.asarray(a, dtype=np.int64) if a is not None else np.full((batch, 0), -1)
             for a in (bias_ids, prompt_ids, output_ids)]
    for b in range(batch):
        rows = [ids[b] for ids in lists]
        if any(((r < -1) | (r >= vocab)).any() for r in rows):
            bad[b] = True
            continue
        bias_row, prompt_row, output_row = rows
        if bias_values is not None:
            for i, v in zip(bias_row, np.asarray(bias_values, dtype=np.float64)[b]):
                if i >= 0:
                    y[b, i] += v
        counts = np.bincount(output_row[output_row >= 0], minlength=vocab)
        seen = counts > 0
        seen[prompt_row[prompt_row >= 0]] = True
        with np.errstate(invalid="ignore"):
            y[b] = np.where(seen, np.where(y[b] > 0, y[b] / reps[b], y[b] * reps[b]), y[b])
            y[b] = np.where(counts > 0, y[b] - (freqs[b] * counts + pres[b]), y[b])
    if allowed is not None:
        y = np.where(np.asarray(allowed, dtype=bool), y, -np.inf)
    return y, bad


def top_n_sigma_threshold(y, n: float) -> float:
    """Top-n-sigma (llama.cpp's rule): tokens with y >= the result are kept; max - n * sigma, sigma the population
    standard deviation of the finite y (the max itself when sigma is 0); -inf when n <= 0 or the max is +inf."""
    finite = y[y > -np.inf]
    if not n > 0 or finite.size == 0 or finite.max() == np.inf:
        return -np.inf
    sigma = finite.std()
    return finite.max() - n * sigma if sigma > 0 else finite.max()


def _stack_thresholds(y, w, top_k, top_p, min_p, vllm_order, tol, top_n_sigma=-1.0) -> list[float]:
    """Candidate thresholds theta (kept = y >= theta), primary first: top-n-sigma, then HF or vLLM v1 order."""
    theta_s = top_n_sigma_threshold(y, top_n_sigma)
    if not vllm_order and theta_s == -np.inf:
        return _thresholds(y, w, top_k, top_p, min_p, tol)
    vocab = y.size
    theta_k = np.partition(y, vocab - top_k)[vocab - top_k] if 0 < top_k < vocab else -np.inf
    thetas_m = _min_p_thresholds(y, w, min_p, tol) if min_p > 0 else [-np.inf]
    out = []
    for theta_m in thetas_m:  # top-p over the survivors of top-n-sigma, top-k and (vLLM order) min-p
        survivors = max(theta_k, theta_s, theta_m if vllm_order else -np.inf)
        for theta in (_top_p_thresholds(y, w, survivors, top_p, tol) if top_p < 1 else [-np.inf]):
            theta = max(survivors, theta, theta_m)
            if theta not in out:
                out.append(theta)
    return out


def _top_n(lp: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((np.arange(lp.size), -lp))[:n]
    return order.astype(np.int64), lp[order]


def sample_stack(x, allowed=None, bias_ids=None, bias_values=None, prompt_ids=None, output_ids=None,
                 repetition=1.0, frequency=0.0, presence=0.0, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                 vllm_order=False, num_samples=1, seed=0, offset=0, logprobs="processed", top_n=0,
                 tol: float = REL_TOL, top_n_sigma=-1.0) -> dict:
    """The stack sampler (docs/ops.md "sample_stack"): mask -> bias -> penalties -> temperature -> filters ->
    num_samples draws (Philox draws j = 0..n-1) -> logprobs, ranks and top-N.

    Returns
    -------
    dict of tokens int64 [B, n] (-1 rows invalid), candidates (list of B lists of n sets: the tokens rounding
    within tol could give), logprobs float64 [B, n] (NaN on invalid rows), ranks int64 [B, n] (-1 there),
    top_ids int64 [B, N] (-1 there), top_values float64 [B, N] (NaN there), processed float64 [B, V]
    (the final log-distribution, -inf for dropped tokens; NaN rows invalid).
    """
    raw = _matrix(x)
    batch, vocab = raw.shape
    y, bad = stack_processed_logits(raw, allowed, bias_ids, bias_values, prompt_ids, output_ids, repetition,
                                    frequency, presence)
    temps, ks = _rows(temperature, batch, np.float64), _rows(top_k, batch, np.int64)
    ps, mps = _rows(top_p, batch, np.float64), _rows(min_p, batch, np.float64)
    reps, freqs, pres = (_rows(v, batch, np.float64) for v in (repetition, frequency, presence))
    sigmas = _rows(top_n_sigma, batch, np.float64)
    seeds, offsets = _rows(seed, batch, np.int64), _rows(offset, batch, np.int64)
    out = {"tokens": np.full((batch, num_samples), -1, dtype=np.int64), "candidates": [],
           "logprobs": np.full((batch, num_samples), np.nan), "ranks": np.full((batch, num_samples), -1, np.int64),
           "top_ids": np.full((batch, top_n), -1, np.int64), "top_values": np.full((batch, top_n), np.nan),
           "processed": np.full((batch, vocab), np.nan)}
    for b in range(batch):
        params_ok = (reps[b] > 0 and np.isfinite(reps[b]) and np.isfinite(freqs[b]) and np.isfinite(pres[b])
                     and np.isfinite(sigmas[b]))
        w = _weights(y[b], True, temps[b]) if params_ok and _params_valid(ps[b], mps[b]) else None
        if bad[b] or w is None or np.isnan(raw[b]).any():
            out["candidates"].append([{-1}] * num_samples)
            continue
        if temps[b] == 0:  # greedy row: every draw is the lowest index of the max
            maxima = y[b] == y[b].max()
            lp = np.where(maxima, -np.log(np.count_nonzero(maxima)), -np.inf)
            tokens = [int(np.argmax(y[b]))] * num_samples
            cands = [{t} for t in tokens]
        else:
            thetas = _stack_thresholds(y[b], w, ks[b], ps[b], mps[b], vllm_order, tol, sigmas[b])
            kept_w = np.where(y[b] >= thetas[0], w, 0.0)
            with np.errstate(divide="ignore"):
                lp = np.log(kept_w / kept_w.sum())
            us = uniform(seeds[b], offsets[b], np.arange(num_samples))
            tokens, cands = [], []
            for u in us:
                token, _, c = _inverse_cdf(kept_w, u, tol)
                for theta in thetas[1:]:
                    c |= _inverse_cdf(np.where(y[b] >= theta, w, 0.0), u, tol)[2]
                tokens.append(token)
                cands.append(c)
        out["processed"][b] = lp
        if logprobs == "raw":
            w_raw = _weights(raw[b], True, 1.0)
            with np.errstate(divide="ignore"):
                lp = np.log(w_raw / w_raw.sum())
        out["tokens"][b] = tokens
        out["candidates"].append(cands)
        out["logprobs"][b] = lp[tokens]
        out["ranks"][b] = [np.count_nonzero(lp >= lp[t]) for t in tokens]
        out["top_ids"][b], out["top_values"][b] = _top_n(lp, top_n)
    return out


# ------------------------------------------------------------------- the stack sampler's long-tail steps
DRY_FLOAT_MAX_LOG = np.float32(88.7228391)  # llama.cpp's log(FLT_MAX)
XTC_DRAW = 0xFFFFFFFF  # the Philox draw index of XTC's coin


def dry_penalties(history, vocab: int, multiplier, base, allowed_length: int, last_n: int, breakers) -> dict:
    """DRY (llama.cpp's rule) on one row: {token: float32 penalty}. history: the token ids, oldest first;
    breakers: a collection of token ids. Naive O(n^2) matching, written from the rule, not from llama.cpp."""
    multiplier, base = np.float32(multiplier), np.float32(base)
    hist = [int(t) for t in history]
    if not (multiplier > 0 and base >= 1 and last_n != 0):
        return {}
    m = len(hist) if last_n < 0 else min(len(hist), last_n)
    win = hist[len(hist) - m:]
    if m <= allowed_length:
        return {}
    rep_limit = m
    for i in range(m):  # distance from the end of the last breaker
        if win[m - 1 - i] in breakers:
            rep_limit = i
            break
    if rep_limit < allowed_length:
        return {}
    longest: dict[int, int] = {}
    for end in range(m - 1):  # an earlier occurrence ending at `end`, followed by win[end + 1]
        n = 0
        while n <= end and win[end - n] == win[m - 1 - n]:
            n += 1
        n = min(n, rep_limit)
        if n >= allowed_length:
            token = win[end + 1]
            longest[token] = max(longest.get(token, -1), n)
    max_exp = int(DRY_FLOAT_MAX_LOG / np.log(base)) if base > np.float32(1.000001) else 0
    out = {}
    for token, n in longest.items():
        if token in breakers or not 0 <= token < vocab:
            continue
        e = n - allowed_length
        if max_exp > 0 and e > max_exp:
            e = max_exp
        out[token] = np.float32(np.float64(multiplier) * np.float64(base) ** e)
    return out


def _softmax_parts(z):
    zmax = z.max()
    w = np.exp(z - zmax)
    return w, w.sum(), zmax


def _entropy(z) -> float:
    w, s, zmax = _softmax_parts(z)
    p = w / s
    logp = z - zmax - np.log(s)
    return float(-sum(p[i] * logp[i] for i in range(z.size) if w[i] > 0))


def _keep_prefix(key, w, limit, s, descending) -> float:
    """Take tokens in key order (ties by id) while the mass before them is < limit * s; the key of the last."""
    ids = [i for i in range(key.size) if w[i] > 0]
    ids.sort(key=lambda i: (-key[i] if descending else key[i], i))
    before, last = 0.0, ids[0]
    for i in ids:
        if before < limit * s:
            last = i
        before += w[i]
    return key[last]


def tail_step(z, step: str, p: dict, u_xtc: float):
    """One filter of the long-tail chain on float64 logits z (-inf = dropped). Returns z (and greedy for
    "temperature")."""
    neg = -np.inf
    w, s, zmax = _softmax_parts(z)
    alive = z > neg
    if step == "top_n_sigma":
        theta = top_n_sigma_threshold(z, p["top_n_sigma"])
        return np.where(z >= theta, z, neg)
    if step == "top_k":
        k = p["top_k"]
        if 0 < k < z.size:
            return np.where(z >= np.sort(z)[::-1][k - 1], z, neg)
        return z
    if step == "top_p":
        if p["top_p"] >= 1:
            return z
        return np.where(z >= _keep_prefix(z, w, p["top_p"], s, True), z, neg)
    if step == "min_p":
        return np.where(w >= p["min_p"], z, neg) if p["min_p"] > 0 else z
    if step == "typical_p":
        if p["typical_p"] >= 1:
            return z
        h = _entropy(z)
        with np.errstate(invalid="ignore"):
            shifted = np.where(alive, np.abs(-(z - zmax - np.log(s)) - h), np.inf)
        cut = _keep_prefix(shifted, w, p["typical_p"], s, False)
        return np.where(alive & (shifted <= cut), z, neg)
    if step in ("epsilon", "eta"):
        e = p[step]
        if not e > 0:
            return z
        cut = e if step == "epsilon" else min(e, np.sqrt(e) * np.exp(-_entropy(z)))
        return np.where((w / s >= cut) | (z == zmax), z, neg)
    if step == "xtc":
        prob, thr = p["xtc_probability"], p["xtc_threshold"]
        above = alive & (w / s >= thr)
        if prob > 0 and thr <= 0.5 and u_xtc <= prob and alive.sum() >= 2 and above.sum() >= 2:
            lowest = z[above].min()
            return np.where(~above | (z <= lowest), z, neg)
        return z
    raise ValueError(step)


def tail_temperature(z, temp, dyn_range, dyn_exp):
    """(z / T, greedy): static T, or llama.cpp's temp_ext with dyn_range > 0; T == 0 leaves the maxima at 0."""
    n = int((z > -np.inf).sum())
    t = temp
    if dyn_range > 0:
        if n <= 1:
            return z, temp == 0
        lo, hi = max(0.0, temp - dyn_range), temp + dyn_range
        t = lo + (hi - lo) * max(_entropy(z) / np.log(n), 0.0) ** dyn_exp
    if temp == 0 or t <= 0:
        return np.where(z == z.max(), 0.0, -np.inf), True
    return z / t, False


TAIL_ORDERS = {
    "hf": ("temperature", "top_n_sigma", "top_k", "top_p", "min_p", "typical_p", "epsilon", "eta", "xtc"),
    "vllm": ("temperature", "top_n_sigma", "min_p", "top_k", "top_p", "typical_p", "epsilon", "eta", "xtc"),
    "llama.cpp": ("top_n_sigma", "top_k", "typical_p", "top_p", "min_p", "epsilon", "eta", "xtc", "temperature"),
}
TAIL_RANGES = {"typical_p": (0, 1), "epsilon": (0, 1), "eta": (0, 1), "xtc_probability": (0, 1),
               "xtc_threshold": (0, 1), "dynatemp_range": (0, np.inf), "dynatemp_exponent": (0, np.inf),
               "dry_multiplier": (0, np.inf), "dry_base": (0, np.inf), "dry_allowed_length": (0, 2**31 - 1),
               "dry_penalty_last_n": (-1, 2**31 - 1), "mirostat_tau": (0, np.inf), "mirostat_eta": (0, np.inf)}
TAIL_DEFAULTS = {"typical_p": 1.0, "epsilon": 0.0, "eta": 0.0, "xtc_probability": 0.0, "xtc_threshold": 0.1,
                 "dynatemp_range": 0.0, "dynatemp_exponent": 1.0, "dry_multiplier": 0.0, "dry_base": 1.75,
                 "dry_allowed_length": 2, "dry_penalty_last_n": -1, "mirostat_tau": 5.0, "mirostat_eta": 0.1}


def sample_stack_tail(x, allowed=None, bias_ids=None, bias_values=None, prompt_ids=None, output_ids=None,
                      repetition=1.0, frequency=0.0, presence=0.0, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                      top_n_sigma=-1.0, order="hf", num_samples=1, seed=0, offset=0, logprobs="processed",
                      top_n=0, dry_sequence_breakers=None, mirostat_mu=None, tol: float = REL_TOL, **tail) -> dict:
    """The stack sampler with the long-tail steps (docs/ops.md "Long-tail steps"): steps 1-3 (rounded to
    float32, as every backend's processed logits are), DRY, the filters of `order` one after the other, each on
    the softmax of the survivors of the ones before, mirostat v2's truncation, draws 0..n-1. `tail` holds the
    long-tail parameters by their public names (scalars or [B]); dry_sequence_breakers: [B, L] (-1 padding),
    one list, or None; mirostat_mu: [B] or None (off).

    Returns the dict of `sample_stack`, plus mirostat_mu (float32 [B] or None).
    """
    raw = _matrix(x)
    batch, vocab = raw.shape
    y, bad = stack_processed_logits(raw, allowed, bias_ids, bias_values, prompt_ids, output_ids, repetition,
                                    frequency, presence)
    y = y.astype(np.float32).astype(np.float64)
    rows = {name: _rows(tail.get(name, TAIL_DEFAULTS[name]), batch, np.float64) for name in TAIL_DEFAULTS}
    base = {"temperature": _rows(temperature, batch, np.float64), "top_k": _rows(top_k, batch, np.int64),
            "top_p": _rows(top_p, batch, np.float64), "min_p": _rows(min_p, batch, np.float64),
            "top_n_sigma": _rows(top_n_sigma, batch, np.float64)}
    reps, freqs, pres = (_rows(v, batch, np.float64) for v in (repetition, frequency, presence))
    seeds, offsets = _rows(seed, batch, np.int64), _rows(offset, batch, np.int64)
    mus = None if mirostat_mu is None else np.asarray(mirostat_mu, dtype=np.float64).copy()
    brk = None if dry_sequence_breakers is None else np.asarray(dry_sequence_breakers, dtype=np.int64).reshape(
        -1 if np.ndim(dry_sequence_breakers) == 2 else 1, np.shape(dry_sequence_breakers)[-1])
    out = {"tokens": np.full((batch, num_samples), -1, dtype=np.int64), "candidates": [],
           "logprobs": np.full((batch, num_samples), np.nan), "ranks": np.full((batch, num_samples), -1, np.int64),
           "top_ids": np.full((batch, top_n), -1, np.int64), "top_values": np.full((batch, top_n), np.nan),
           "processed": np.full((batch, vocab), np.nan),
           "mirostat_mu": None if mus is None else mus.astype(np.float32)}
    for b in range(batch):
        p = {name: v[b] for name, v in rows.items()} | {name: v[b] for name, v in base.items()}
        breakers = set() if brk is None else {int(t) for t in brk[b if brk.shape[0] > 1 else 0] if t != -1}
        ok = (reps[b] > 0 and np.isfinite(reps[b]) and np.isfinite(freqs[b]) and np.isfinite(pres[b])
              and np.isfinite(p["top_n_sigma"]) and 0 <= p["top_p"] <= 1 and 0 <= p["min_p"] <= 1
              and 0 <= p["temperature"] < np.inf and all(lo <= p[n] <= hi for n, (lo, hi) in TAIL_RANGES.items())
              and all(-1 <= t < vocab for t in breakers) and (mus is None or not np.isnan(mus[b])))
        if bad[b] or not ok or np.isnan(raw[b]).any() or not (y[b] > -np.inf).any():
            out["candidates"].append([{-1}] * num_samples)
            continue
        row = y[b].copy()
        hist = [int(t) for ids in (prompt_ids, output_ids) if ids is not None for t in np.asarray(ids)[b] if t != -1]
        for token, pen in dry_penalties(hist, vocab, p["dry_multiplier"], p["dry_base"],
                                        int(p["dry_allowed_length"]), int(p["dry_penalty_last_n"]), breakers).items():
            row[token] = np.float64(np.float32(np.float32(row[token]) - pen))
        z = row
        if z.max() == np.inf:
            z = np.where(z == np.inf, 0.0, -np.inf)
        greedy = False
        u_xtc = float(uniform(seeds[b], offsets[b], XTC_DRAW))
        for step in TAIL_ORDERS[order]:
            if step == "temperature":
                z, greedy = tail_temperature(z, p["temperature"], p["dynatemp_range"], p["dynatemp_exponent"])
            else:
                z = tail_step(z, step, p, u_xtc)
        if mus is not None:
            w, s, zmax = _softmax_parts(z)
            surprise = -(z - zmax - np.log(s)) / np.log(2.0)
            z = np.where((surprise <= mus[b]) | (z == zmax), z, -np.inf)
        kept_w = np.where(z > -np.inf, np.exp(z - z.max()), 0.0)
        with np.errstate(divide="ignore"):
            lp = np.log(kept_w / kept_w.sum())
        if greedy:
            tokens = [int(np.argmax(z))] * num_samples
            cands = [{t} for t in tokens]
        else:
            tokens, cands = [], []
            for u in uniform(seeds[b], offsets[b], np.arange(num_samples)):
                token, _, c = _inverse_cdf(kept_w, u, tol)
                tokens.append(token)
                cands.append(c)
        if mus is not None:
            surprise = -lp[tokens[0]] / np.log(2.0)
            out["mirostat_mu"][b] = np.float32(mus[b] - p["mirostat_eta"] * (surprise - p["mirostat_tau"]))
        out["processed"][b] = lp
        if logprobs == "raw":
            w_raw = _weights(raw[b], True, 1.0)
            with np.errstate(divide="ignore"):
                lp = np.log(w_raw / w_raw.sum())
        out["tokens"][b] = tokens
        out["candidates"].append(cands)
        out["logprobs"][b] = lp[tokens]
        out["ranks"][b] = [np.count_nonzero(lp >= lp[t]) for t in tokens]
        out["top_ids"][b], out["top_values"][b] = _top_n(lp, top_n)
    return out
