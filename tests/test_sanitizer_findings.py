"""Regression tests for what `make test-asan` (tools/asan_test.sh) found. Each reproduces the input that made
the sanitized build report, and checks the result the contract asks for; under the sanitizers (CI) a
relapse aborts the run, in a normal build the results are still checked."""
import torch

import fastsample


def test_cpu_top_p_estimate_negative_probs_no_signed_overflow():
    """UBSan, csrc/cpu/top_p.cpp estimate_bracket: the probs bucket index subtracted the float bits of every
    sampled token as int32, and a negative probability's bits (sign bit set) overflowed int32 (undefined
    behaviour, though the value was discarded). Rows with negative entries are invalid: -1 / all zeros."""
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(6, 70000, generator=gen), dim=1)
    probs[0, 4] = -0.1
    probs[1, :: 7] = -1e-30  # many negative entries, spread through the sample the estimate reads
    probs[2, 0] = -float("inf")
    probs[3, 100] = -3e38
    for top_p in (0.5, 0.9, torch.full((6,), 0.7)):
        tokens = fastsample.top_p_sampling_from_probs(probs, top_p, seed=1, backend="cpu")
        assert tokens[:4].tolist() == [-1] * 4 and (tokens[4:] >= 0).all()
        renormed = fastsample.top_p_renorm_probs(probs, top_p, backend="cpu")
        assert (renormed[:4] == 0).all() and torch.allclose(renormed[4:].sum(1), torch.ones(2))
