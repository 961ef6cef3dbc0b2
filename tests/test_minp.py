"""min_p_renorm_probs and min_p_sampling_from_probs vs the oracle (keep i iff p_i >= min_p * max p)."""
import math

import numpy as np
import pytest
import torch
from conftest import (check_renorm, check_tokens, chi_square_pvalue, np64, sizes, sweep_filter_renorm,
                      sweep_filter_sampling)

import fastsample
import oracle

RENORM_TOL = (1e-6, 1e-5)  # (atol, rtol) of renormalised float32 probabilities


def _min_p_values(rows: int, seed: int):
    """Scalar min_p values (0 disables, 1 keeps only the maxima) and a per-row tensor."""
    per_row = torch.rand(rows, generator=torch.Generator().manual_seed(seed)) * 0.3
    per_row[::4] = 0.0
    per_row[1::4] = 1.0
    return [0.0, 0.01, 0.1, 0.5, 1.0, per_row]


def test_min_p_renorm_probs(backend):
    sweep_filter_renorm(backend, fastsample.min_p_renorm_probs, "min_p", _min_p_values, 20, RENORM_TOL)


def test_min_p_ties_and_invalid_rows(backend):
    probs = torch.tensor([
        [0.1, 0.4, 0.2, 0.4, 0.2],      # min_p 0.45: keep >= 0.18, ties included
        [0.1, 0.4, 0.2, 0.4, 0.2],      # min_p 1: both maxima
        [0.3, 0.3, 0.3, 0.3, 0.3],      # all tied: all kept
        [0.0, 0.0, 0.7, 0.0, 0.0],      # zeros never kept... except with min_p 0 they are kept with weight 0
        [0.1, math.nan, 0.2, 0.3, 0.4],  # invalid: NaN
        [0.1, -0.1, 0.2, 0.3, 0.4],     # invalid: negative
        [0.0, 0.0, 0.0, 0.0, 0.0],      # invalid: zero total
        [0.1, 0.2, 0.3, 0.4, 0.5],      # invalid: min_p NaN
        [0.1, 0.2, 0.3, 0.4, 0.5],      # invalid: min_p > 1
    ])
    mp = torch.tensor([0.45, 1.0, 0.9, 0.0, 0.1, 0.1, 0.1, math.nan, 1.5])
    got = fastsample.min_p_renorm_probs(probs, mp, backend=backend)
    cands = oracle.renorm_candidates(np64(probs), min_p=np64(mp))
    assert all(len(c) == 1 for c in cands) and all(not c[0].any() for c in cands[4:])
    check_renorm(got, cands, *RENORM_TOL, what=f"{backend} min-p ties/invalid")
    tokens = fastsample.min_p_sampling_from_probs(probs, mp, seed=6, backend=backend)
    want, _, cands = oracle.sample_with_candidates(np64(probs), False, min_p=np64(mp), seed=6, offset=np.arange(9))
    assert (want[4:] == -1).all()
    check_tokens(tokens, want, cands, what=f"{backend} min-p ties/invalid sampling")


@pytest.mark.parametrize("mp, error", [(-0.1, ValueError), (1.1, ValueError), (math.nan, ValueError),
                                       (None, TypeError), (torch.zeros(3), ValueError)])
def test_min_p_rejects(backend, mp, error):
    with pytest.raises(error):
        fastsample.min_p_renorm_probs(torch.ones(2, 5), mp, backend=backend)


def test_min_p_sampling_exact(backend):
    sweep_filter_sampling(backend, fastsample.min_p_sampling_from_probs, "min_p",
                          lambda rows, vocab: _min_p_values(rows, vocab + 1), 21, lambda vocab: vocab + 1, 8)


@pytest.mark.parametrize("mp", [0.0, 0.3, 0.6, 1.0])
def test_min_p_sampling_distribution(backend, mp):
    """Chi-square with a fixed seed: draws over many offsets follow the oracle's renormalised min-p set."""
    draws = sizes(backend).draws
    row = torch.tensor([0.05, 0.2, 0.1, 0.1, 0.02, 0.3, 0.1, 0.08, 0.05])
    got = fastsample.min_p_sampling_from_probs(row.expand(draws, -1), mp, seed=999, backend=backend)
    expected = oracle.distribution(np64(row[None]), False, min_p=mp)[0]
    assert chi_square_pvalue(got, expected) > 1e-4
