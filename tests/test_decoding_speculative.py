"""speculative_decode: greedy mode == target greedy (batched, unequal acceptance, EOS); sampling mode has the
target's joint distribution over the first two tokens (chi-square, fixed seeds); statistics are consistent."""
import pytest
import torch

from fastsample.decoding import greedy_decode, speculative_decode
from test_decoding_model import PAD, prompts, tiny_gpt2, tiny_llama, truncated_draft
from test_decoding_sample import chi_square_p


@pytest.fixture(scope="module")
def pair():
    target = tiny_gpt2(seed=0, init=0.5)
    return target, truncated_draft(target)


@pytest.mark.parametrize("gamma", [1, 3, 5])
@torch.no_grad()
def test_greedy_equals_target_greedy(pair, gamma):
    target, draft = pair
    ids, mask = prompts()
    out = speculative_decode(target, draft, ids, mask, max_new_tokens=16, gamma=gamma)
    assert torch.equal(out.sequences, greedy_decode(target, ids, mask, max_new_tokens=16))
    assert 0 < out.acceptance_rate < 1
    assert 1 <= out.tokens_per_target_forward <= gamma + 1


@torch.no_grad()
def test_rows_accept_unequally_yet_match(pair):
    """Decoded alone, the rows have different acceptance rates; batched, each row is still its target greedy."""
    target, draft = pair
    ids, mask = prompts()
    rates = []
    for row in range(3):
        alone = ids[row][mask[row].bool()][None]
        res = speculative_decode(target, draft, alone, max_new_tokens=16, gamma=3)
        assert res.sequences[0, -16:].tolist() == greedy_decode(target, alone, max_new_tokens=16)[0, -16:].tolist()
        rates.append(res.acceptance_rate)
    assert len(set(rates)) > 1
    batched = speculative_decode(target, draft, ids, mask, max_new_tokens=16, gamma=3)
    assert torch.equal(batched.sequences, greedy_decode(target, ids, mask, max_new_tokens=16))


@torch.no_grad()
def test_identical_draft_accepts_everything(pair):
    target, _ = pair
    ids, mask = prompts()
    out = speculative_decode(target, target, ids, mask, max_new_tokens=12, gamma=3)
    assert torch.equal(out.sequences, greedy_decode(target, ids, mask, max_new_tokens=12))
    assert out.acceptance_rate == 1.0 and out.tokens_per_target_forward == 4.0 and out.target_forwards == 3


@torch.no_grad()
def test_eos_and_llama():
    target = tiny_llama(seed=0, init=0.5)
    draft = tiny_llama(seed=0, layers=1, init=0.5)  # same seed: shares the embeddings' initial values
    ids, mask = prompts()
    free = greedy_decode(target, ids, mask, max_new_tokens=14)
    eos = int(free[2, ids.shape[1] + 5])
    ref = greedy_decode(target, ids, mask, max_new_tokens=14, eos_token_id=eos, pad_token_id=PAD)
    out = speculative_decode(target, draft, ids, mask, max_new_tokens=14, gamma=4, eos_token_id=eos,
                             pad_token_id=PAD)
    assert torch.equal(out.sequences, ref)


@pytest.mark.parametrize("gamma,temperature,top_k", [(2, 1.0, 0), (3, 0.7, 6)])
@torch.no_grad()
def test_sampling_has_target_distribution(gamma, temperature, top_k):
    """Joint law of the first two new tokens (16 x 16 cells) over 12000 rows with their own seeds."""
    vocab, n = 16, 12000
    target = tiny_gpt2(seed=0, vocab=vocab, init=0.3)
    draft = truncated_draft(target)  # accepts about 60-70 %: both the accepted and the residual paths run
    prompt = torch.tensor([[3, 1, 4, 1]])
    out = speculative_decode(target, draft, prompt.expand(n, -1).contiguous(), max_new_tokens=2, gamma=gamma,
                             do_sample=True, temperature=temperature, top_k=top_k, seed=torch.arange(n) * 7 + 1)
    pairs = out.sequences[:, -2] * vocab + out.sequences[:, -1]
    counts = torch.bincount(pairs, minlength=vocab * vocab)

    def dist(logits):
        logits = logits.double() / temperature
        if top_k:
            kth = logits.topk(top_k, -1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, -float("inf"))
        return torch.softmax(logits, -1)

    p1 = dist(target(prompt).logits[0, -1])
    seconds = torch.cat([prompt.expand(vocab, -1), torch.arange(vocab)[:, None]], 1)
    p2 = dist(target(seconds).logits[:, -1])
    joint = (p1[:, None] * p2).flatten()
    assert chi_square_p(counts, joint) > 1e-3
    assert 0 < out.acceptance_rate < 1


def test_arguments_checked(pair):
    ids, mask = prompts()
    with pytest.raises(ValueError, match="gamma"):
        speculative_decode(*pair, ids, mask, max_new_tokens=4, gamma=0)
