"""contrastive_decode == a naive loop without KV cache; the plausible head holds; limits reduce to expert greedy;
beams == HF beam search driven by a processor that computes the contrastive score from scratch."""
import math

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from fastsample.decoding import contrastive_decode, greedy_decode
from test_decoding_model import PAD, prompts, tiny_gpt2, tiny_llama


@pytest.fixture(scope="module")
def pair():
    return tiny_gpt2(seed=0), tiny_gpt2(seed=1, layers=1)


def naive_scores(expert, amateur, seqs, alpha, beta, tau):
    """Score of every next token, recomputed from the whole sequence (no cache), from the papers' formulas."""
    with torch.no_grad():
        xe = expert(seqs).logits[:, -1].double()
        xa = amateur(seqs).logits[:, -1].double() / tau
    pe = torch.softmax(xe, -1)
    if beta is None:
        score = torch.log(pe) - torch.log_softmax(xa, -1)
    else:
        score = (1 + beta) * xe - beta * xa
    return torch.where(pe >= alpha * pe.max(-1, keepdim=True).values, score, -math.inf)


def naive_loop(expert, amateur, ids, steps, alpha, beta, tau):
    seqs = ids
    for _ in range(steps):
        score = naive_scores(expert, amateur, seqs, alpha, beta, tau)
        seqs = torch.cat([seqs, score.argmax(-1, keepdim=True)], 1)
    return seqs


ids = torch.tensor([[5, 6, 7, 8], [11, 12, 13, 14], [400, 3, 4, 9]])


@pytest.mark.parametrize("alpha,beta,tau", [(0.1, None, 1.0), (0.01, None, 0.5), (0.3, None, 2.0),
                                            (0.1, 0.5, 1.0), (0.05, 1.0, 0.7)])
def test_matches_naive_loop(pair, alpha, beta, tau):
    expert, amateur = pair
    out = contrastive_decode(expert, amateur, ids, max_new_tokens=10, alpha=alpha, beta=beta,
                             amateur_temperature=tau)
    assert torch.equal(out, naive_loop(expert, amateur, ids, 10, alpha, beta, tau))
    # the contrast matters: the output differs from the expert's greedy output
    assert not torch.equal(out, greedy_decode(expert, ids, max_new_tokens=10))


def test_never_leaves_the_head(pair):
    """alpha = 0.3 and an amateur that loves the expert's favourites: the choice stays in the head anyway."""
    expert, amateur = pair
    out = contrastive_decode(expert, amateur, ids, max_new_tokens=12, alpha=0.3, amateur_temperature=0.2)
    with torch.no_grad():
        probs = torch.softmax(expert(out).logits.float(), -1)
    for t in range(ids.shape[1], out.shape[1]):
        p = probs[:, t - 1]
        chosen = p.gather(1, out[:, t:t + 1])[:, 0]
        assert (chosen >= 0.3 * p.max(-1).values * (1 - 1e-5)).all()


@pytest.mark.parametrize("alpha,beta", [(1.0, None), (1.0, 0.7), (0.1, 0.0)])
def test_reduces_to_expert_greedy(pair, alpha, beta):
    expert, amateur = pair
    p_ids, mask = prompts()
    out = contrastive_decode(expert, amateur, p_ids, mask, max_new_tokens=10, alpha=alpha, beta=beta)
    assert torch.equal(out, greedy_decode(expert, p_ids, mask, max_new_tokens=10))


class ContrastiveProcessor(LogitsProcessor):
    """Turns HF beam search into contrastive beam search: replaces the expert log-probs by the naive score."""

    def __init__(self, expert, amateur, alpha, beta, tau):
        self.args = expert, amateur, alpha, beta, tau

    def __call__(self, input_ids, scores):
        return naive_scores(self.args[0], self.args[1], input_ids, *self.args[2:]).float()


@pytest.mark.parametrize("num_beams,alpha,beta,length_penalty", [(2, 0.1, None, 1.0), (3, 0.05, 0.5, 0.5),
                                                                 (4, 0.02, None, 2.0)])
def test_beams_match_hf_with_contrastive_processor(pair, num_beams, alpha, beta, length_penalty):
    expert, amateur = pair
    with torch.no_grad():
        ref = expert.generate(input_ids=ids, do_sample=False, num_beams=num_beams, max_new_tokens=8,
                              length_penalty=length_penalty, num_return_sequences=2, pad_token_id=PAD,
                              eos_token_id=None, output_scores=True, return_dict_in_generate=True,
                              logits_processor=LogitsProcessorList([ContrastiveProcessor(expert, amateur, alpha,
                                                                                         beta, 1.0)]))
    out = contrastive_decode(expert, amateur, ids, max_new_tokens=8, alpha=alpha, beta=beta, num_beams=num_beams,
                             length_penalty=length_penalty, num_return_sequences=2)
    assert torch.equal(out.sequences, ref.sequences)
    torch.testing.assert_close(out.sequences_scores, ref.sequences_scores, atol=1e-4, rtol=1e-4)


def test_llama_pair_with_padding():
    """Left padding and a Llama expert / amateur: each row equals the row decoded alone without padding."""
    expert, amateur = tiny_llama(seed=0), tiny_llama(seed=1, layers=1)
    p_ids, mask = prompts()
    out = contrastive_decode(expert, amateur, p_ids, mask, max_new_tokens=8, alpha=0.1)
    for row in range(3):
        alone = p_ids[row][mask[row].bool()][None]
        ref = naive_loop(expert, amateur, alone, 8, 0.1, None, 1.0)
        assert out[row, -8:].tolist() == ref[0, -8:].tolist()


def test_arguments_checked(pair):
    with pytest.raises(ValueError, match="alpha"):
        contrastive_decode(*pair, ids, max_new_tokens=2, alpha=1.5)
    with pytest.raises(ValueError, match="amateur_temperature"):
        contrastive_decode(*pair, ids, max_new_tokens=2, amateur_temperature=0.0)
