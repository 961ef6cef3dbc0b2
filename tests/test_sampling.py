"""sampling_from_probs/logits, top_k_top_p_sampling_*, sample (with logprobs) and greedy vs the oracle."""
import math

import numpy as np
import pytest
import torch
from conftest import (assert_rare, check_tokens, chi_square_pvalue, f32, make_logits, make_probs, np64, oracle_seed_offset,
                      sizes)

import fastsample
import oracle

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (atol, rtol) of float32 logprobs: log(w / W) with w = exp((x - m) / T) rounded in float32, where
# |x - m| / T reaches ~100 for peaked rows.
LOGPROB_TOL = (2e-5, 1e-5)


def _param(value):
    """A scalar or per-row tensor parameter as the oracle takes it (scalars rounded to float32 like the kernels)."""
    if isinstance(value, torch.Tensor):
        return np64(value)
    return f32(value) if isinstance(value, float) else value


def _check_sample(backend, x, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0, offset=0, what=""):
    """Run `fastsample.sample` on logits ``x`` and compare tokens and logprobs with the oracle; return the number
    of rows on the other side of a near-tie (for `assert_rare`)."""
    rows = x.shape[0]
    seeds, offsets = oracle_seed_offset(rows, seed, offset)
    want, want_lp, cands = oracle.sample_with_candidates(np64(x), True, _param(temperature), _param(top_k),
                                                         _param(top_p), _param(min_p), seeds, offsets)
    got, lp = fastsample.sample(x, temperature, top_k, top_p, min_p, return_logprobs=True, seed=seed, offset=offset,
                                backend=backend)
    assert got.dtype == torch.int64 and lp.dtype == torch.float32 and lp.shape == (rows,), what
    flips = check_tokens(got, want, cands, what=what)
    same = np64(got) == want  # a row on the other side of a near-tie has another token's logprob
    atol, rtol = LOGPROB_TOL
    np.testing.assert_allclose(np64(lp)[same], want_lp[same], rtol=rtol, atol=atol, equal_nan=True,
                               err_msg=f"{what}: logprobs")
    return flips


# ------------------------------------------------------------------------------ exact tokens, random rows
@pytest.mark.parametrize("kind", ["flat", "peaked"])
def test_sampling_from_probs_exact(backend, kind):
    flips = rows_total = 0
    for vocab in sizes(backend).vocabs:
        rows = sizes(backend).rows(vocab)
        probs = make_probs(rows, vocab, kind, seed=vocab + 30)
        for seed in (0, 2**40 + 7):
            got = fastsample.sampling_from_probs(probs, seed=seed, offset=vocab, backend=backend)
            seeds, offsets = oracle_seed_offset(rows, seed, vocab)
            want, _, cands = oracle.sample_with_candidates(np64(probs), False, seed=seeds, offset=offsets)
            flips += check_tokens(got, want, cands, what=f"{backend} {kind} V={vocab} seed={seed}")
            rows_total += rows
    assert_rare(flips, rows_total, f"{backend} sampling_from_probs {kind}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["flat", "peaked"])
def test_sampling_from_logits_exact(backend, dtype, kind):
    flips = rows_total = 0
    for vocab in sizes(backend).vocabs:
        rows = sizes(backend).rows(vocab)
        logits = make_logits(rows, vocab, kind, seed=vocab + 31).to(dtype)
        got = fastsample.sampling_from_logits(logits, seed=vocab, offset=5, backend=backend)
        seeds, offsets = oracle_seed_offset(rows, vocab, 5)
        want, _, cands = oracle.sample_with_candidates(np64(logits), True, seed=seeds, offset=offsets)
        flips += check_tokens(got, want, cands, what=f"{backend} {kind} {dtype} V={vocab}")
        rows_total += rows
    assert_rare(flips, rows_total, f"{backend} sampling_from_logits {kind} {dtype}")


@pytest.mark.parametrize("is_logits", [False, True])
def test_top_k_top_p_sampling_exact(backend, is_logits):
    flips = rows_total = 0
    for vocab in sizes(backend).vocabs:
        rows = sizes(backend).rows(vocab)
        x = (make_logits if is_logits else make_probs)(rows, vocab, "peaked", seed=vocab + 32)
        gen = torch.Generator().manual_seed(vocab)
        k_rows = torch.randint(-1, min(vocab, 300) + 1, (rows,), generator=gen)
        p_rows = torch.rand(rows, generator=gen)
        for k, p in ((10, 0.9), (vocab, 0.5), (1, 1.0), (k_rows, 0.8), (50, p_rows), (k_rows, p_rows)):
            seeds, offsets = oracle_seed_offset(rows, 77, 0)
            want, _, cands = oracle.sample_with_candidates(np64(x), is_logits, 1.0, _param(k), _param(p), 0.0,
                                                           seeds, offsets)
            fn = fastsample.top_k_top_p_sampling_from_logits if is_logits else fastsample.top_k_top_p_sampling_from_probs
            got = fn(x, k, p, seed=77, backend=backend)
            flips += check_tokens(got, want, cands, what=f"{backend} logits={is_logits} V={vocab} k={k} p={p}")
            rows_total += rows
    assert_rare(flips, rows_total, f"{backend} top_k_top_p_sampling is_logits={is_logits}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_all_filters(backend, dtype):
    """temperature -> top-k -> top-p -> min-p together, scalars and per-row tensors, with logprobs."""
    flips = rows_total = 0
    # Half-precision inputs differ from float32 ones only in how they are loaded: small vocabularies suffice.
    vocabs = [v for v in sizes(backend).vocabs if dtype == torch.float32 or v <= 32000]
    for vocab in vocabs:
        rows = sizes(backend).rows(vocab)
        for kind in ("flat", "peaked"):
            x = make_logits(rows, vocab, kind, seed=vocab + 33).to(dtype)
            gen = torch.Generator().manual_seed(vocab + 1)
            temps = torch.rand(rows, generator=gen) * 1.5 + 0.1
            temps[::3] = 0.0  # greedy rows mixed with sampled ones
            ks = torch.randint(0, min(vocab, 100) + 1, (rows,), generator=gen)
            ps = torch.rand(rows, generator=gen) * 0.5 + 0.5
            mps = torch.rand(rows, generator=gen) * 0.2
            for t, k, p, mp in ((1.0, 0, 1.0, 0.0), (0.7, 40, 0.9, 0.05), (1.3, 0, 0.95, 0.0), (0.0, 5, 0.5, 0.1),
                                (temps, 20, 0.9, 0.0), (0.8, ks, ps, mps), (temps, ks, ps, mps)):
                flips += _check_sample(backend, x, t, k, p, mp, seed=vocab + 2, offset=1,
                                       what=f"{backend} {kind} {dtype} V={vocab} T={t} k={k} p={p} min_p={mp}")
                rows_total += rows
    assert_rare(flips, rows_total, f"{backend} sample {dtype}")


# -------------------------------------------------------------------------------------------- edge rows
def test_sample_edge_rows(backend):
    inf, nan = math.inf, math.nan
    x = torch.randn(10, 20, generator=torch.Generator().manual_seed(40))
    x[0, 4] = nan                        # NaN -> -1
    x[1] = -inf                          # all -inf -> -1
    x[2, [3, 11, 12]] = inf              # +inf tokens share the mass
    x[3, :15] = -inf                     # a few finite logits left
    x[4, 7] = x[4, 9] = x[4].max() + 1   # tied maxima (greedy row below takes the lower id)
    x[5, 0] = nan                        # NaN with T = 0 is still -1
    temps = torch.tensor([1.0, 1.0, 0.5, 1.0, 0.0, 0.0, -1.0, nan, 1.0, 1.0])  # rows 6, 7: invalid T -> -1
    ks = torch.tensor([0, 0, 2, 30, 0, 0, 0, 0, 20, 0])                       # k >= V: no filter
    ps = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0])     # p = 0: most probable only
    rows_flipped = _check_sample(backend, x, temps, ks, ps, 0.0, seed=5, what=f"{backend} edge rows")
    assert rows_flipped == 0
    got = fastsample.sample(x, temps, ks, ps, seed=5, backend=backend)
    assert got[[0, 1, 5, 6, 7]].tolist() == [-1] * 5 and got[4].item() == 7
    assert got[8].item() == int(torch.argmax(x[8]))


def test_greedy_row_with_inf_logits(backend):
    """T = 0 is greedy before +inf logits share the mass: the lowest +inf id, whatever the seed."""
    x = torch.randn(4, 20, generator=torch.Generator().manual_seed(41))
    x[:, [13, 5, 8]] = math.inf
    for seed in range(6):
        tokens, logprobs = fastsample.sample(x, 0.0, seed=seed, return_logprobs=True, backend=backend)
        assert tokens.tolist() == [5] * 4
        torch.testing.assert_close(logprobs, torch.full((4,), -math.log(3.0)))


def test_sample_vocab_one(backend):
    x = torch.tensor([[0.5], [-math.inf], [math.nan], [math.inf]])
    got = fastsample.sample(x, 0.7, 3, 0.5, 0.1, seed=1, backend=backend)
    assert got.tolist() == [0, -1, -1, 0]
    probs = torch.tensor([[0.5], [0.0], [math.nan], [2.0]])
    assert fastsample.sampling_from_probs(probs, seed=1, backend=backend).tolist() == [0, -1, -1, 0]


def test_sampling_from_probs_invalid_rows(backend):
    probs = make_probs(6, 40, "flat", seed=41)
    probs[0] = 0.0                  # zero total
    probs[1, 5] = -1e-3             # negative entry
    probs[2, 6] = math.nan
    probs[3, 7] = math.inf
    probs[4, 1:] = 0.0              # a single token left
    got = fastsample.sampling_from_probs(probs, seed=2, backend=backend)
    assert got.tolist()[:5] == [-1, -1, -1, -1, 0]
    seeds, offsets = oracle_seed_offset(6, 2)
    want, _, cands = oracle.sample_with_candidates(np64(probs), False, seed=seeds, offset=offsets)
    check_tokens(got, want, cands, what=f"{backend} invalid probs rows")


@pytest.mark.parametrize("kwargs, error", [({"temperature": -0.5}, ValueError), ({"top_p": 1.5}, ValueError),
                                           ({"min_p": -0.1}, ValueError), ({"top_k": 2.5}, TypeError),
                                           ({"temperature": torch.ones(3)}, ValueError)])
def test_sample_rejects(backend, kwargs, error):
    with pytest.raises(error):
        fastsample.sample(torch.zeros(2, 5), **kwargs, backend=backend)


def test_sampling_rejects_bad_inputs(backend):
    with pytest.raises(TypeError):
        fastsample.sampling_from_probs(torch.ones(2, 5, dtype=torch.float64), backend=backend)
    with pytest.raises(TypeError):
        fastsample.sample(torch.ones(2, 5, dtype=torch.int64), backend=backend)
    with pytest.raises(ValueError):
        fastsample.sample(torch.ones(5), backend=backend)


# ---------------------------------------------------------------------------------------------- greedy
@pytest.mark.parametrize("dtype", DTYPES)
def test_greedy(backend, dtype):
    for vocab in sizes(backend).vocabs:
        rows = sizes(backend).rows(vocab)
        # Few distinct values: many rows have tied maxima, where the lowest id wins.
        x = torch.randint(-3, 3, (rows, vocab), generator=torch.Generator().manual_seed(vocab)).to(dtype)
        x[0, -1] = math.nan
        x[1 % rows] = -math.inf
        got = fastsample.greedy(x, backend=backend)
        assert got.dtype == torch.int64
        np.testing.assert_array_equal(np64(got), oracle.greedy(np64(x)), err_msg=f"{backend} V={vocab} {dtype}")
    x = torch.tensor([[1.0, math.inf, 2.0, math.inf], [-math.inf, -math.inf, -1e30, -math.inf]]).to(dtype)
    np.testing.assert_array_equal(np64(fastsample.greedy(x, backend=backend)), oracle.greedy(np64(x)))


# ------------------------------------------------------------------------------------------ chi-square
def _draw(backend, row: torch.Tensor, **params) -> torch.Tensor:
    """``draws`` tokens of `fastsample.sample` on copies of one logits row, one Philox offset each."""
    draws = sizes(backend).draws
    return fastsample.sample(row.expand(draws, -1), **params, seed=20240601, backend=backend)


@pytest.mark.parametrize("params", [
    {},
    {"temperature": 0.6},
    {"temperature": 1.4, "top_k": 12},
    {"top_p": 0.8},
    {"min_p": 0.08},
    {"temperature": 0.8, "top_k": 15, "top_p": 0.9, "min_p": 0.02},
])
def test_sample_distribution(backend, params):
    """Chi-square with a fixed seed: draws over many offsets follow the oracle's final renormalised distribution."""
    row = torch.randn(1, 40, generator=torch.Generator().manual_seed(50)) * 1.5
    got = _draw(backend, row, **params)
    expected = oracle.distribution(np64(row), True, **{k: _param(v) for k, v in params.items()})[0]
    assert chi_square_pvalue(got, expected) > 1e-4


def test_sample_distribution_inf_logits(backend):
    """+inf logits share the whole mass equally, whatever the temperature."""
    row = torch.randn(1, 30, generator=torch.Generator().manual_seed(51))
    row[0, [2, 17, 29]] = math.inf
    got = _draw(backend, row, temperature=0.3)
    expected = oracle.distribution(np64(row), True, 0.3)[0]
    assert set(np.flatnonzero(expected)) == {2, 17, 29}
    assert chi_square_pvalue(got, expected) > 1e-4


def test_sampling_from_probs_distribution(backend):
    draws = sizes(backend).draws
    row = make_probs(1, 25, "flat", seed=52)
    row[0, 3] = 0.0
    got = fastsample.sampling_from_probs(row.expand(draws, -1), seed=77, backend=backend)
    assert chi_square_pvalue(got, oracle.distribution(np64(row), False)[0]) > 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_probs(backend, dtype):
    """float16/bfloat16 probs go to the kernels as they are (widened inside, like logits): tokens equal the
    oracle's on the half-precision values, renorm returns float32, speculative equals its float32 twin."""
    vocab = 1000
    rows = sizes(backend).rows(vocab)
    probs = make_probs(rows, vocab, "peaked", seed=77).to(dtype)
    seeds, offsets = oracle_seed_offset(rows, 5, 0)
    got = fastsample.top_k_top_p_sampling_from_probs(probs, 50, 0.9, seed=5, backend=backend)
    want, _, cands = oracle.sample_with_candidates(np64(probs), False, top_k=50, top_p=f32(0.9), seed=seeds,
                                                   offset=offsets)
    assert_rare(check_tokens(got, want, cands, what=f"{backend} {dtype}"), rows, f"{backend} {dtype} probs")

    renormed = fastsample.top_k_renorm_probs(probs, 50, backend=backend)
    assert renormed.dtype == torch.float32
    want_renorm, _ = oracle.renorm_probs(np64(probs), top_k=50)
    np.testing.assert_allclose(np64(renormed), want_renorm, atol=1e-6, rtol=1e-5)

    draft = make_probs(rows * 2, vocab, "flat", seed=78).reshape(rows, 2, vocab).to(dtype)
    target = make_probs(rows * 3, vocab, "flat", seed=79).reshape(rows, 3, vocab).to(dtype)
    ids = torch.randint(0, vocab, (rows, 2), generator=torch.Generator().manual_seed(80))
    half = fastsample.chain_speculative_sampling(draft, ids, target, seed=3, backend=backend)
    full = fastsample.chain_speculative_sampling(draft.float(), ids, target.float(), seed=3, backend=backend)
    for h, f in zip(half, full):
        assert torch.equal(h, f)
