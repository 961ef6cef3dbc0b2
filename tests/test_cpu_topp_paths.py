"""Top-p without top-k on long rows takes a CPU-specific route (csrc/cpu/top_p.h): a sample of the row
places four thresholds around the estimated boundary, one fused pass finds the exact mass above each and
gathers the tokens of the central region, and the region that brackets the boundary is refined (gathered
again by a second pass when it is not the central one, or the central one held too many tokens); when the
heaviest block maxima alone reach p, the row is settled from them instead. Whatever route a row takes, its
kept set and token must be the oracle's. The rows here are built to hit each route: flat rows (central
region), peaked rows (block maxima), a few heavy tokens the sample never sees (estimate far off: block
maxima), many such tokens in too many blocks to bound (a wide gather), tokens between the sampled runs
shifted up (the boundary above the central region, mostly above every threshold), the sampled runs shifted
up (the boundary below every threshold), a dense cluster at the boundary (the central region overflows), ties across the boundary (gathered groups of equal value), and p at its extremes (p = 0: the
max group; p = 0.999: a boundary far out in the tail). Single rows are split over threads.
test_each_route_is_taken checks, through the extension's test-only route counters, that these rows do take
the route they are built for (a row masked wherever the sample looks gives no estimate at all).
"""
import numpy as np
import pytest
import torch
from conftest import assert_rare, check_renorm, check_tokens, np64, oracle_seed_offset

import fastsample
import oracle

VOCAB = 65536  # long enough to be sampled rather than read whole


def _rows(kind: str, batch: int = 8) -> torch.Tensor:
    gen = torch.Generator().manual_seed(11)
    if kind == "flat":
        return torch.randn(batch, VOCAB, generator=gen)
    if kind == "peaked":
        ranks = torch.arange(1, VOCAB + 1, dtype=torch.float32)
        return torch.stack([-1.2 * ranks.log()[torch.randperm(VOCAB, generator=gen)] for _ in range(batch)])
    if kind == "hidden_heavy":  # heavy tokens between the sampled runs (64 tokens every 512 here)
        x = torch.randn(batch, VOCAB, generator=gen)
        heavy = 256 + 512 * torch.randint(0, VOCAB // 512, (batch, 5), generator=gen)
        return x.scatter(1, heavy, torch.full((batch, 5), 12.0))
    if kind == "many_hidden":  # 200 equal heavy tokens in 200 blocks, unsampled: too many blocks to bound
        x = torch.randn(batch, VOCAB, generator=gen)
        heavy = torch.stack([128 + 256 * torch.randperm(256, generator=gen)[:200] for _ in range(batch)])
        return x.scatter(1, heavy, torch.full((batch, 200), 12.0))
    if kind == "unsampled_shift":  # the sample sees only the lower tokens: its boundary guess is too low
        x = torch.randn(batch, VOCAB, generator=gen)
        sampled = (torch.arange(VOCAB) % 512) < 64
        return torch.where(sampled, x, x + 0.7)
    if kind == "sampled_shift":  # the sample sees only raised tokens: its guess is too high, past the lower
        x = torch.randn(batch, VOCAB, generator=gen)  # outer threshold (the region below all of them)
        sampled = (torch.arange(VOCAB) % 512) < 64
        return torch.where(sampled, x + 1.5, x)
    if kind == "cluster":  # 30000 tokens within 1e-3 of each other around the boundary: more than a pass keeps
        x = torch.randn(batch, VOCAB, generator=gen)
        cluster = torch.stack([torch.randperm(VOCAB, generator=gen)[:30000] for _ in range(batch)])
        return x.scatter(1, cluster, 2.0 + 1e-3 * torch.rand(batch, 30000, generator=gen))
    if kind == "ties":  # a few distinct values, many tokens each
        return torch.randint(0, 6, (batch, VOCAB), generator=gen).float()
    if kind == "masked_sample":  # -inf wherever the sample looks: no estimate, the whole row is the region
        x = torch.randn(batch, VOCAB, generator=gen)
        sampled = (torch.arange(VOCAB) % 512) < 64
        return x.masked_fill(sampled, float("-inf"))
    raise ValueError(kind)


KINDS = ["flat", "peaked", "hidden_heavy", "many_hidden", "unsampled_shift", "sampled_shift", "cluster", "ties",
         "masked_sample"]
# The order of the counters torch.ops.fastsample_cpu.top_p_routes returns (csrc/cpu/top_p.h, TopPRoute).
ROUTES = ["central hit", "outer regather", "central overflow", "block maxima", "no estimate"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("top_p", [0.0, 0.3, 0.9, 0.999])
@pytest.mark.parametrize("batch", [1, 8])
def test_top_p_sample_long_rows(kind, top_p, batch):
    logits = _rows(kind, batch)
    seed, offset = oracle_seed_offset(logits.shape[0], 5)
    got, got_lp = fastsample.sample(logits, temperature=0.9, top_p=top_p, seed=torch.from_numpy(seed),
                                    offset=torch.from_numpy(offset), return_logprobs=True, backend="cpu")
    want, want_lp, candidates = oracle.sample_with_candidates(np64(logits), True, 0.9, 0, top_p, 0.0, seed, offset)
    assert_rare(check_tokens(got, want, candidates, f"{kind} p={top_p}"), logits.shape[0])
    same = np64(got) == want
    np.testing.assert_allclose(np64(got_lp)[same], want_lp[same], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("top_p", [0.3, 0.9])
def test_top_p_renorm_long_rows(kind, top_p):
    probs = torch.softmax(_rows(kind, batch=4), dim=-1)
    got = fastsample.top_p_renorm_probs(probs, top_p, backend="cpu")
    flips = check_renorm(got, oracle.renorm_candidates(np64(probs), top_p=top_p), atol=1e-7, rtol=1e-4,
                         what=f"{kind} p={top_p}")
    assert_rare(flips, probs.shape[0])


@pytest.mark.parametrize("top_p", [0.5, 0.9, 1.0])
def test_rows_the_fused_pass_hands_back(top_p):
    """The passes weigh a block and take its stats in one read, against the reference as it stood; a block
    whose max passes that reference (every block of a steeply rising row), or that holds NaN or +inf after
    finite blocks (or both infinities, which the top-p pass cannot tell from NaN in one add), is weighed
    again the generic way. Those rows must still give the oracle's tokens."""
    gen = torch.Generator().manual_seed(5)
    rising = torch.arange(VOCAB, dtype=torch.float32) * 0.05  # 12.8 per block: past the 8 T of slack
    nan_row, inf_row = torch.randn(2, VOCAB, generator=gen)
    nan_row[40000] = float("nan")
    inf_row[[30000, 50000]] = float("inf")
    inf_row[[10, 30001]] = float("-inf")  # beside a +inf: the raw sum the top-p pass checks for NaN is NaN
    logits = torch.stack([rising, rising.flip(0), nan_row, inf_row])
    seed, offset = oracle_seed_offset(logits.shape[0], 9)
    got, got_lp = fastsample.sample(logits, temperature=0.9, top_p=top_p, seed=torch.from_numpy(seed),
                                    offset=torch.from_numpy(offset), return_logprobs=True, backend="cpu")
    want, want_lp, candidates = oracle.sample_with_candidates(np64(logits), True, 0.9, 0, top_p, 0.0, seed, offset)
    assert got[2].item() == -1 and want[2] == -1  # NaN: invalid row
    assert got[3].item() in (30000, 50000)
    assert_rare(check_tokens(got, want, candidates, f"p={top_p}"), logits.shape[0])
    same = (np64(got) == want) & (want >= 0)
    np.testing.assert_allclose(np64(got_lp)[same], want_lp[same], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind, top_p, route", [
    ("flat", 0.9, "central hit"),  # the estimate is good: the boundary lies between the central edges
    ("unsampled_shift", 0.9, "outer regather"),  # guess too low: the boundary lies above the central region
    ("sampled_shift", 0.9, "outer regather"),  # guess too high: below the central region
    ("many_hidden", 0.9, "outer regather"),  # 200 unsampled heavy tokens: too many blocks for the maxima
    ("cluster", 0.3, "central overflow"),  # 30000 tokens at the boundary: more than one pass keeps
    ("hidden_heavy", 0.9, "block maxima"),  # 5 unsampled heavy tokens hold more than p
    ("flat", 0.0, "block maxima"),  # p = 0: the heaviest maximum alone reaches it
    ("masked_sample", 0.9, "no estimate"),
])
def test_each_route_is_taken(kind, top_p, route):
    """Every row of a batch built for a route takes it, and still gives the oracle's token. One thread:
    rows are then never split into segments, whose central buffers would add up (the cluster would fit)."""
    import fastsample._C  # noqa: F401  (registers the test-only op)

    logits = _rows(kind, batch=8)
    seed, offset = oracle_seed_offset(logits.shape[0], 3)
    routes = torch.ops.fastsample_cpu.top_p_routes
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        routes(True)
        got = fastsample.sample(logits, temperature=0.9, top_p=top_p, seed=torch.from_numpy(seed),
                                offset=torch.from_numpy(offset), backend="cpu")
        counts = dict(zip(ROUTES, routes(True)))
    finally:
        torch.set_num_threads(threads)
    assert counts[route] == logits.shape[0], counts
    want, _, candidates = oracle.sample_with_candidates(np64(logits), True, 0.9, 0, top_p, 0.0, seed, offset)
    assert_rare(check_tokens(got, want, candidates, f"{kind} p={top_p}"), logits.shape[0])
