"""top_k, top_k_mask_logits, top_k_renorm_probs, top_k_sampling_from_probs vs the oracle (docs/ops.md)."""
import math

import numpy as np
import pytest
import torch
from conftest import (assert_rare, check_renorm, check_tokens, chi_square_pvalue, make_logits, make_probs, np64,
                      sizes, sweep_filter_sampling)

import fastsample
import oracle

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
RENORM_TOL = (1e-6, 1e-5)  # (atol, rtol) of renormalised float32 probabilities


def _tied_logits(rows: int, vocab: int, seed: int) -> torch.Tensor:
    """float32 logits with many exact ties (few distinct values) plus NaN, +inf and -inf entries."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-8, 8, (rows, vocab), generator=gen).float() / 4
    special = torch.rand(rows, vocab, generator=gen)
    x[special < 0.02] = -math.inf
    x[(special > 0.5) & (special < 0.505)] = math.inf
    x[special > 0.997] = math.nan
    return x


def _check_top_k(x: torch.Tensor, k: int, backend: str, what: str) -> None:
    values, indices = fastsample.top_k(x, k, backend=backend)
    want_v, want_i = oracle.top_k(np64(x), k)
    assert values.dtype == x.dtype and indices.dtype == torch.int64, what
    assert values.shape == indices.shape == (x.shape[0], k), what
    np.testing.assert_array_equal(np64(indices), want_i, err_msg=f"{what}: indices")
    np.testing.assert_array_equal(np64(values), want_v, err_msg=f"{what}: values")


# ---------------------------------------------------------------------------------------------- top_k
@pytest.mark.parametrize("dtype", DTYPES)
def test_top_k_random(backend, dtype):
    for vocab in sizes(backend).vocabs:
        rows = sizes(backend).rows(vocab)
        x = make_logits(rows, vocab, "flat", seed=vocab).to(dtype)
        for k in sorted({1, min(5, vocab), min(50, vocab), vocab}):
            _check_top_k(x, k, backend, f"{backend} V={vocab} k={k} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_top_k_ties_nan_inf(backend, dtype):
    """Ties go to the lower index first; NaN counts as larger than +inf (NaNs first, in index order)."""
    vocab = 300
    x = _tied_logits(sizes(backend).batch, vocab, seed=1).to(dtype)
    for k in (0, 1, 3, 40, vocab - 1, vocab):
        _check_top_k(x, k, backend, f"{backend} ties k={k} {dtype}")


def test_top_k_unsorted(backend):
    """sorted=False may order a row's k entries freely but must pick the same entries."""
    x = _tied_logits(sizes(backend).batch, 200, seed=2)
    values, indices = fastsample.top_k(x, 17, sorted=False, backend=backend)
    want_v, want_i = oracle.top_k(np64(x), 17)
    got_i = np64(indices)
    np.testing.assert_array_equal(np.sort(got_i, axis=1), np.sort(want_i, axis=1))
    np.testing.assert_array_equal(np64(values), np.take_along_axis(np64(x), got_i, axis=1))


@pytest.mark.parametrize("k, error", [(-1, ValueError), (11, ValueError), (2.0, TypeError), (True, TypeError)])
def test_top_k_rejects(backend, k, error):
    with pytest.raises(error):
        fastsample.top_k(torch.zeros(2, 10), k, backend=backend)


# ---------------------------------------------------------------------------------- top_k_mask_logits
def _check_mask(x, k, backend, what):
    got = fastsample.top_k_mask_logits(x, k, backend=backend)
    assert got.dtype == x.dtype and got.shape == x.shape, what
    want = oracle.top_k_mask_logits(np64(x), np64(k) if isinstance(k, torch.Tensor) else k)
    np.testing.assert_array_equal(np64(got), want, err_msg=what)


@pytest.mark.parametrize("dtype", DTYPES)
def test_top_k_mask_logits_random(backend, dtype):
    for vocab in sizes(backend).vocabs:
        rows = sizes(backend).rows(vocab)
        x = make_logits(rows, vocab, "peaked", seed=vocab + 1).to(dtype)
        for k in (0, 1, 20, vocab - 1, vocab, vocab + 5):
            _check_mask(x, k, backend, f"{backend} V={vocab} k={k} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_top_k_mask_logits_ties_and_per_row_k(backend, dtype):
    """Ties at the k-th value are all kept; NaN rows come back unchanged; k <= 0 or >= V leaves a row alone."""
    rows, vocab = 8, 64
    x = _tied_logits(rows, vocab, seed=3).to(dtype)
    x[1, 10] = math.nan
    ks = torch.tensor([1, 5, 0, -3, vocab, vocab + 1, 13, 2], dtype=torch.int64)
    _check_mask(x, ks, backend, f"{backend} per-row k {dtype}")
    for k in (1, 3, 30):
        _check_mask(x, k, backend, f"{backend} ties k={k} {dtype}")


# ---------------------------------------------------------------------------------- top_k_renorm_probs
def _tied_probs(rows: int, vocab: int, seed: int) -> torch.Tensor:
    """Unnormalised probabilities with exact ties and zeros."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 6, (rows, vocab), generator=gen).float() / 8


def test_top_k_renorm_probs(backend):
    flips = rows_total = 0
    for vocab in sizes(backend).vocabs:
        rows = sizes(backend).rows(vocab)
        probs = make_probs(rows, vocab, "flat", seed=vocab + 2)
        for k in (0, 1, 10, vocab, torch.randint(-2, vocab + 2, (rows,), generator=torch.Generator().manual_seed(4))):
            got = fastsample.top_k_renorm_probs(probs, k, backend=backend)
            cands = oracle.renorm_candidates(np64(probs), top_k=np64(k) if isinstance(k, torch.Tensor) else k)
            flips += check_renorm(got, cands, *RENORM_TOL, what=f"{backend} V={vocab} k={k}")
            rows_total += rows
    assert_rare(flips, rows_total, f"{backend} top_k_renorm_probs")


def test_top_k_renorm_probs_ties_and_invalid_rows(backend):
    probs = _tied_probs(8, 40, seed=5)
    probs[2, 3] = math.nan
    probs[3, 4] = -0.25
    probs[4] = 0.0
    probs[5, 7] = math.inf
    for k in (1, 2, 5, torch.tensor([1, 2, 3, 4, 5, 6, 7, 8])):
        got = fastsample.top_k_renorm_probs(probs, k, backend=backend)
        cands = oracle.renorm_candidates(np64(probs), top_k=np64(k) if isinstance(k, torch.Tensor) else k)
        assert all(not c[0].any() for c in cands[2:6])  # the invalid rows are all zeros
        check_renorm(got, cands, *RENORM_TOL, what=f"{backend} ties k={k}")


# ---------------------------------------------------------------------------- top_k_sampling_from_probs
def test_top_k_sampling_exact(backend):
    def ks(rows, vocab):
        return (1, 5, 100, vocab, torch.randint(-1, vocab + 1, (rows,), generator=torch.Generator().manual_seed(vocab)))
    sweep_filter_sampling(backend, fastsample.top_k_sampling_from_probs, "top_k", ks, 3, lambda vocab: vocab, 17)


def test_top_k_sampling_ties_and_invalid(backend):
    probs = _tied_probs(8, 30, seed=6)
    probs[0] = 0.0
    probs[1, 2] = math.nan
    probs[2, 0] = -1.0
    k = torch.tensor([3, 3, 3, 1, 2, 0, 30, 100])
    got = fastsample.top_k_sampling_from_probs(probs, k, seed=3, backend=backend)
    want, _, cands = oracle.sample_with_candidates(np64(probs), False, top_k=np64(k), seed=3, offset=np.arange(8))
    assert (want[:3] == -1).all()
    assert check_tokens(got, want, cands, what=f"{backend} ties/invalid") == 0


@pytest.mark.parametrize("k", [1, 3, 8])
def test_top_k_sampling_distribution(backend, k):
    """Chi-square with a fixed seed: draws over many offsets follow the oracle's renormalised top-k distribution
    (including a tie at the k-th value, where all tied tokens are kept)."""
    draws = sizes(backend).draws
    row = torch.tensor([0.05, 0.2, 0.1, 0.1, 0.02, 0.3, 0.1, 0.08, 0.05])
    probs = row.expand(draws, -1)
    got = fastsample.top_k_sampling_from_probs(probs, k, seed=1234, backend=backend)
    expected = oracle.distribution(np64(row[None]), False, top_k=k)[0]
    assert chi_square_pvalue(got, expected) > 1e-4
