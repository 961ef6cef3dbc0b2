"""sample_decode: the first token's distribution (chi-square against HF's processors and warpers, fixed seeds),
per-row seeds, greedy rows, EOS, the entropy-adaptive policy."""
import pytest
import torch
from scipy import stats
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from fastsample.decoding import greedy_decode, sample_decode
from fastsample.processors import EntropyAdaptiveSampler, RepetitionPenalty, TypicalFilter
from test_decoding_model import PAD, prompts, tiny_gpt2

N = 6000


def chi_square_p(counts, probs):
    """p-value of counts against probs, cells with an expected count < 5 merged into one."""
    counts, probs = counts.double(), probs.double() / probs.double().sum()
    expected = probs * counts.sum()
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum().reshape(1)])
    exp = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    if exp[-1] == 0:
        assert obs[-1] == 0, "a token of probability 0 was sampled"
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs.numpy(), (exp * obs.sum() / exp.sum()).numpy()).pvalue


CASES = {
    "temperature": (dict(temperature=0.8), [TemperatureLogitsWarper(0.8)], False),
    "top-k-top-p-min-p": (dict(temperature=1.3, top_k=12, top_p=0.9, min_p=0.05),
                          [TemperatureLogitsWarper(1.3), TopKLogitsWarper(12), TopPLogitsWarper(0.9),
                           MinPLogitsWarper(0.05)], False),
    "penalty-typical": (dict(temperature=1.1, top_k=20), [TemperatureLogitsWarper(1.1), TopKLogitsWarper(20),
                                                          TypicalLogitsWarper(0.8)], True),
}


@pytest.mark.parametrize("case", sorted(CASES))
@torch.no_grad()
def test_first_token_distribution(case):
    kwargs, hf_warpers, penalised = CASES[case]
    model = tiny_gpt2(vocab=64, init=0.5)
    prompt = torch.tensor([[5, 6, 7, 5]])
    ids = prompt.expand(N, -1).contiguous()
    procs = [RepetitionPenalty(1.4)] if penalised else []
    warpers = [TypicalFilter(0.8)] if penalised else []
    out = sample_decode(model, ids, max_new_tokens=1, processors=procs, warpers=warpers, seed=1234, **kwargs)
    counts = torch.bincount(out[:, -1], minlength=64)

    scores = model(prompt).logits[:, -1].float()
    if penalised:
        scores = RepetitionPenaltyLogitsProcessor(1.4)(prompt, scores)
    for w in hf_warpers:
        scores = w(prompt, scores)
    probs = torch.softmax(scores, -1)[0]
    assert chi_square_p(counts, probs) > 1e-3
    assert counts[probs == 0].sum() == 0


@torch.no_grad()
def test_per_row_seeds_reproduce():
    model = tiny_gpt2()
    ids, mask = prompts()
    seeds = torch.tensor([11, 22, 33])
    out = sample_decode(model, ids, mask, max_new_tokens=10, temperature=1.0, top_k=50, seed=seeds)
    assert torch.equal(out, sample_decode(model, ids, mask, max_new_tokens=10, temperature=1.0, top_k=50, seed=seeds))
    perm = torch.tensor([2, 0, 1])
    permuted = sample_decode(model, ids[perm], mask[perm], max_new_tokens=10, temperature=1.0, top_k=50,
                             seed=seeds[perm])
    assert torch.equal(permuted, out[perm])
    other = sample_decode(model, ids, mask, max_new_tokens=10, temperature=1.0, top_k=50, seed=seeds + 1)
    assert not torch.equal(other, out)
    # a row alone gets the same tokens as in a batch of equal-length prompts
    same_len = torch.tensor([[5, 6, 7], [8, 9, 10]])
    batch = sample_decode(model, same_len, max_new_tokens=10, seed=torch.tensor([5, 6]))
    alone = sample_decode(model, same_len[1:], max_new_tokens=10, seed=torch.tensor([6]))
    assert torch.equal(batch[1:], alone)


@torch.no_grad()
def test_temperature_zero_rows_are_greedy():
    model = tiny_gpt2()
    ids, mask = prompts()
    out = sample_decode(model, ids, mask, max_new_tokens=10, temperature=torch.tensor([0.0, 1.0, 0.0]), seed=3)
    greedy = greedy_decode(model, ids, mask, max_new_tokens=10)
    assert torch.equal(out[[0, 2]], greedy[[0, 2]])
    assert not torch.equal(out[1], greedy[1])


@torch.no_grad()
def test_eos_pads_the_row():
    model = tiny_gpt2()
    ids, mask = prompts()
    free = sample_decode(model, ids, mask, max_new_tokens=12, seed=7)
    p = ids.shape[1]
    eos = int(free[0, p + 4])
    out = sample_decode(model, ids, mask, max_new_tokens=12, seed=7, eos_token_id=eos, pad_token_id=PAD)
    for row in range(3):
        new = free[row, p:].tolist()
        end = new.index(eos) + 1 if eos in new else len(new)
        assert out[row, p:p + end].tolist() == new[:end]
        assert (out[row, p + end:] == PAD).all()


@torch.no_grad()
def test_entropy_adaptive_regimes():
    """All-confident thresholds give greedy decoding; never-triggered thresholds give plain sampling."""
    model = tiny_gpt2()
    ids, mask = prompts()
    sure = EntropyAdaptiveSampler(low_entropy=1e9, low_varentropy=1e9)
    assert torch.equal(sample_decode(model, ids, mask, max_new_tokens=8, adaptive=sure, seed=1),
                       greedy_decode(model, ids, mask, max_new_tokens=8))
    plain = EntropyAdaptiveSampler(temperature=0.9, top_k=30, top_p=0.95, low_entropy=-1.0, high_entropy=1e9,
                                   high_varentropy=1e9)
    assert torch.equal(sample_decode(model, ids, mask, max_new_tokens=8, adaptive=plain, seed=1),
                       sample_decode(model, ids, mask, max_new_tokens=8, temperature=0.9, top_k=30, top_p=0.95,
                                     seed=1))
    unsure = EntropyAdaptiveSampler(temperature=0.9, top_k=30, high_entropy=-1.0)
    assert torch.equal(sample_decode(model, ids, mask, max_new_tokens=8, adaptive=unsure, seed=1),
                       sample_decode(model, ids, mask, max_new_tokens=8, temperature=0.9 * 1.5, top_k=60,
                                     top_p=0.95, seed=1))
