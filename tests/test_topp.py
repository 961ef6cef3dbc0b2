"""top_p_renorm_probs and top_p_sampling_from_probs vs the oracle (docs/design.md section 5, docs/ops.md "Filters")."""
import math

import numpy as np
import pytest
import torch
from conftest import (check_renorm, check_tokens, chi_square_pvalue, make_probs, np64, sizes, sweep_filter_renorm,
                      sweep_filter_sampling)

import fastsample
import oracle

RENORM_TOL = (1e-6, 1e-5)  # (atol, rtol) of renormalised float32 probabilities


def _p_values(rows: int, seed: int):
    """Scalar p values (0 keeps only the most probable token(s), 1 disables the filter) and a per-row tensor."""
    per_row = torch.rand(rows, generator=torch.Generator().manual_seed(seed))
    per_row[::5] = 0.0
    per_row[1::5] = 1.0
    return [0.0, 0.3, 0.9, 1.0, per_row]


def test_top_p_renorm_probs(backend):
    sweep_filter_renorm(backend, fastsample.top_p_renorm_probs, "top_p", _p_values, 10, RENORM_TOL)


def test_top_p_ties_at_the_boundary(backend):
    """Tokens as probable as the boundary token are all kept (order independence), whatever their ids."""
    probs = torch.tensor([
        [0.1, 0.3, 0.3, 0.3],          # p = 0.2: the three 0.3 tokens are one group, all kept
        [0.2, 0.4, 0.2, 0.2],          # p = 0.5: 0.4 then the three 0.2s (mass above them 0.4 < 0.5)
        [0.25, 0.25, 0.25, 0.25],      # one group: always kept
        [0.0, 0.5, 0.0, 0.5],          # p = 0: both maxima kept
        [0.6, 0.1, 0.1, 0.2],          # p = 0.7: 0.6 and 0.2 (above 0.1s is 0.8 >= 0.7)
    ])
    p = torch.tensor([0.2, 0.5, 0.01, 0.0, 0.7])
    got = fastsample.top_p_renorm_probs(probs, p, backend=backend)
    cands = oracle.renorm_candidates(np64(probs), top_p=np64(p))
    assert all(len(c) == 1 for c in cands)  # none of these is near a rounding boundary
    np.testing.assert_array_equal(cands[0][0] > 0, [False, True, True, True])
    check_renorm(got, cands, *RENORM_TOL, what=f"{backend} boundary ties")
    tokens = fastsample.top_p_sampling_from_probs(probs.repeat(20, 1), p.repeat(20), seed=8, backend=backend)
    want, _, cands = oracle.sample_with_candidates(np64(probs.repeat(20, 1)), False, top_p=np64(p.repeat(20)),
                                                   seed=8, offset=np.arange(100))
    check_tokens(tokens, want, cands, what=f"{backend} boundary ties sampling")


def test_top_p_invalid_rows(backend):
    probs = make_probs(8, 50, "flat", seed=11)
    probs[0, 3] = math.nan
    probs[1, 4] = -0.5
    probs[2] = 0.0
    probs[3, 9] = math.inf
    p = torch.tensor([0.9, 0.9, 0.9, 0.9, math.nan, -0.1, 1.5, 0.5])  # rows 4-6: out-of-range p is invalid
    got = fastsample.top_p_renorm_probs(probs, p, backend=backend)
    cands = oracle.renorm_candidates(np64(probs), top_p=np64(p))
    assert all(not c[0].any() for c in cands[:7])
    check_renorm(got, cands, *RENORM_TOL, what=f"{backend} invalid rows")
    tokens = fastsample.top_p_sampling_from_probs(probs, p, seed=4, backend=backend)
    np.testing.assert_array_equal(np64(tokens)[:7], -1)
    want, _, cands = oracle.sample_with_candidates(np64(probs), False, top_p=np64(p), seed=4, offset=np.arange(8))
    check_tokens(tokens, want, cands, what=f"{backend} invalid rows sampling")


@pytest.mark.parametrize("p, error", [(-0.1, ValueError), (1.1, ValueError), (math.nan, ValueError),
                                      ("0.5", TypeError), (torch.tensor([1, 1]), TypeError)])
def test_top_p_rejects(backend, p, error):
    with pytest.raises(error):
        fastsample.top_p_sampling_from_probs(torch.ones(2, 5), p, backend=backend)


def test_top_p_sampling_exact(backend):
    sweep_filter_sampling(backend, fastsample.top_p_sampling_from_probs, "top_p",
                          lambda rows, vocab: _p_values(rows, vocab + 1), 12, lambda vocab: vocab, 3)


@pytest.mark.parametrize("p", [0.0, 0.45, 0.75, 1.0])
def test_top_p_sampling_distribution(backend, p):
    """Chi-square with a fixed seed: draws over many offsets follow the oracle's renormalised nucleus."""
    draws = sizes(backend).draws
    row = torch.tensor([0.05, 0.2, 0.1, 0.1, 0.02, 0.3, 0.1, 0.08, 0.05])
    got = fastsample.top_p_sampling_from_probs(row.expand(draws, -1), p, seed=4321, backend=backend)
    expected = oracle.distribution(np64(row[None]), False, top_p=p)[0]
    assert chi_square_pvalue(got, expected) > 1e-4
