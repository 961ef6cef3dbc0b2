"""Top-p without top-k on long rows takes a CPU-specific route (csrc/cpu/row_plan.cpp): the boundary
bucket is estimated from every 16th token, one vectorised pass checks exact masses at bucket edges around
the estimate, and a missed estimate falls back to the exact histogram. Whatever route a row takes, its
kept set and token must be the oracle's. The rows here are built to hit each route: flat and peaked rows
(estimate right), a few heavy tokens at indices the estimate never samples (estimate far off: fallback),
ties across the boundary, and p at its extremes."""
import numpy as np
import pytest
import torch
from conftest import assert_rare, check_renorm, check_tokens, np64, row_seeds

import fastsample
import oracle

VOCAB = 65536  # long enough for the estimated histogram


def _rows(kind: str, batch: int = 8) -> torch.Tensor:
    gen = torch.Generator().manual_seed(11)
    if kind == "flat":
        return torch.randn(batch, VOCAB, generator=gen)
    if kind == "peaked":
        ranks = torch.arange(1, VOCAB + 1, dtype=torch.float32)
        return torch.stack([-1.2 * ranks.log()[torch.randperm(VOCAB, generator=gen)] for _ in range(batch)])
    if kind == "hidden_heavy":  # heavy tokens only at odd indices: every-16th sampling never sees them
        x = torch.randn(batch, VOCAB, generator=gen)
        heavy = 1 + 2 * torch.randint(0, VOCAB // 2, (batch, 5), generator=gen)
        return x.scatter(1, heavy, torch.full((batch, 5), 12.0))
    if kind == "ties":  # a few distinct values, many tokens each
        return torch.randint(0, 6, (batch, VOCAB), generator=gen).float()
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["flat", "peaked", "hidden_heavy", "ties"])
@pytest.mark.parametrize("top_p", [0.0, 0.3, 0.9, 0.999])
def test_top_p_sample_long_rows(kind, top_p):
    logits = _rows(kind)
    seed, offset = row_seeds(logits.shape[0], 5)
    got, got_lp = fastsample.sample(logits, temperature=0.9, top_p=top_p, seed=torch.from_numpy(seed),
                                    offset=torch.from_numpy(offset), return_logprobs=True, backend="cpu")
    want, want_lp, candidates = oracle.sample_with_candidates(np64(logits), True, 0.9, 0, top_p, 0.0, seed, offset)
    assert_rare(check_tokens(got, want, candidates, f"{kind} p={top_p}"), logits.shape[0])
    same = np64(got) == want
    np.testing.assert_allclose(np64(got_lp)[same], want_lp[same], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["flat", "peaked", "hidden_heavy", "ties"])
@pytest.mark.parametrize("top_p", [0.3, 0.9])
def test_top_p_renorm_long_rows(kind, top_p):
    probs = torch.softmax(_rows(kind, batch=4), dim=-1)
    got = fastsample.top_p_renorm_probs(probs, top_p, backend="cpu")
    flips = check_renorm(got, oracle.renorm_candidates(np64(probs), top_p=top_p), atol=1e-7, rtol=1e-4,
                         what=f"{kind} p={top_p}")
    assert_rare(flips, probs.shape[0])
