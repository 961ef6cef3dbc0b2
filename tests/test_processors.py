"""fastsample.processors against HF's LogitsProcessors (same semantics) or a direct per-row loop."""
import math

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    MinPLogitsWarper,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from fastsample.processors import (
    EntropyAdaptiveSampler,
    EpsilonFilter,
    EtaFilter,
    NoRepeatNGram,
    PresenceFrequencyPenalty,
    RepetitionPenalty,
    TypicalFilter,
    entropy_varentropy,
    filter_logits,
)

B, V = 6, 50


def random_case(seed, length=30, vocab=V):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 8, (B, length), generator=g)  # few distinct ids: n-grams repeat
    scores = torch.randn(B, vocab, generator=g) * 3
    return ids, scores


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("penalty", [0.5, 1.3, 2.0])
def test_repetition_penalty(seed, penalty):
    ids, scores = random_case(seed)
    torch.testing.assert_close(RepetitionPenalty(penalty)(ids, scores),
                               RepetitionPenaltyLogitsProcessor(penalty)(ids, scores.clone()))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("length", [2, 3, 30])
def test_no_repeat_ngram(seed, n, length):
    ids, scores = random_case(seed, length)
    ours = NoRepeatNGram(n)(ids, scores)
    ref = NoRepeatNGramLogitsProcessor(n)(ids, scores.clone())
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("presence,frequency,prompt_length", [(0.5, 0.0, 0), (0.0, 0.3, 10), (1.0, -0.2, 25)])
def test_presence_frequency(seed, presence, frequency, prompt_length):
    ids, scores = random_case(seed)
    out = PresenceFrequencyPenalty(presence, frequency, prompt_length)(ids, scores)
    for b in range(B):
        counted = ids[b, prompt_length:].tolist()
        for tok in range(V):
            c = counted.count(tok)
            expect = scores[b, tok].item() - presence * (c > 0) - frequency * c
            assert out[b, tok].item() == pytest.approx(expect, abs=1e-5)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mass,min_keep", [(0.2, 1), (0.5, 1), (0.9, 3), (0.99, 1)])
def test_typical(seed, mass, min_keep):
    _, scores = random_case(seed)
    scores[0, :10] = -math.inf  # already filtered tokens stay filtered
    ours = TypicalFilter(mass, min_keep)(None, scores)
    ref = TypicalLogitsWarper(mass, min_tokens_to_keep=min_keep)(None, scores.clone())
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("epsilon,min_keep", [(0.01, 1), (0.05, 1), (0.3, 2), (0.9, 3)])
def test_epsilon(seed, epsilon, min_keep):
    _, scores = random_case(seed)
    ours = EpsilonFilter(epsilon, min_keep)(None, scores)
    ref = EpsilonLogitsWarper(epsilon, min_tokens_to_keep=min_keep)(None, scores.clone())
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("epsilon", [1e-4, 3e-3, 0.02, 0.5])
def test_eta(seed, epsilon):
    """EtaFilter (the stack sampler's eta step) keeps HF's EtaLogitsWarper's set."""
    _, scores = random_case(seed)
    scores[1, ::4] = -math.inf
    ours = EtaFilter(epsilon)(None, scores)
    ref = EtaLogitsWarper(epsilon)(None, scores.clone())
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("t,k,p,min_p", [(0.7, 10, 1.0, 0.0), (1.3, 0, 0.8, 0.0), (1.0, 20, 0.9, 0.05),
                                         (0.5, 0, 1.0, 0.1)])
def test_filter_logits_matches_hf_warpers(seed, t, k, p, min_p):
    """The masks of filter_logits are HF's temperature -> top-k -> top-p -> min-p chain."""
    _, scores = random_case(seed)
    ref = TemperatureLogitsWarper(t)(None, scores.clone())
    for warper, on in ((TopKLogitsWarper(max(k, 1)), k > 0), (TopPLogitsWarper(p), p < 1),
                       (MinPLogitsWarper(max(min_p, 1e-9)), min_p > 0)):
        ref = warper(None, ref) if on else ref
    ours = filter_logits(scores, t, k, p, min_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    torch.testing.assert_close(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)])


def test_entropy_varentropy_float64():
    _, scores = random_case(0)
    scores[1, 5:] = -math.inf
    scores[2] = 0.0
    h, vh = entropy_varentropy(scores)
    for b in range(B):
        x = scores[b].double().numpy()
        x = x[np.isfinite(x)]
        p = np.exp(x - x.max())
        p /= p.sum()
        ent = -(p * np.log(p)).sum()
        assert h[b].item() == pytest.approx(ent, abs=1e-4)
        assert vh[b].item() == pytest.approx((p * (np.log(p) + ent) ** 2).sum(), abs=1e-4)
    assert h[2].item() == pytest.approx(math.log(V), abs=1e-4) and abs(vh[2].item()) < 1e-4


def test_entropy_adaptive_policy():
    """Each row gets the parameters the documented table gives for its own (H, VH)."""
    g = torch.Generator().manual_seed(0)
    peaked = torch.full((V,), -30.0)
    peaked[7] = 30.0
    bimodal = torch.full((V,), -30.0)
    bimodal[[3, 4]] = 10.0
    logits = torch.stack([peaked, torch.zeros(V), torch.randn(V, generator=g) * 4, bimodal,
                          torch.randn(V, generator=g) * 0.5, torch.randn(V, generator=g) * 8])
    policy = EntropyAdaptiveSampler(temperature=0.8, top_k=10, top_p=0.9, min_p=0.05)
    got = policy(logits)
    h, vh = entropy_varentropy(logits)
    regimes = []
    for b in range(len(logits)):
        if h[b] < 0.1 and vh[b] < 0.1:
            regimes.append("confident")
            expect = (0.0, 10)
        elif h[b] > 3.0 or vh[b] > 3.0:
            regimes.append("uncertain")
            expect = (0.8 * 1.5, 20)
        else:
            regimes.append("default")
            expect = (0.8, 10)
        assert got["temperature"][b].item() == pytest.approx(expect[0])
        assert got["top_k"][b].item() == expect[1]
        assert got["top_p"][b].item() == pytest.approx(0.9) and got["min_p"][b].item() == pytest.approx(0.05)
    assert {"confident", "uncertain", "default"} <= set(regimes)
