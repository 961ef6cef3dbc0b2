"""speculative_decode: greedy mode == target greedy (batched, unequal acceptance, EOS); sampling mode has the
target's joint distribution over the first two tokens (chi-square, fixed seeds); statistics are consistent.
Tree mode (draft-model trees, n-gram prompt lookup): the same checks, plus the path tree == the chain."""
import copy
from types import SimpleNamespace

import pytest
import torch

from fastsample.decoding import greedy_decode, left_pad, speculative_decode
from fastsample.decoding.proposers import ngram_continuations, trie
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


# ---- tree speculative decoding: draft-model trees and n-gram prompt lookup (issue 27) ----

def noisy_copy(model, scale, seed=1):
    """The model with Gaussian noise of ``scale`` times each weight tensor's std added: a draft whose agreement
    with the model is set by the scale."""
    draft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.std())
    return draft


class MarkovModel(torch.nn.Module):
    """A first-order Markov chain in the decoders' model protocol (not a transformers model): the logits after
    token v are ``table[v]``. ``cycle=True`` makes one random cycle through the vocabulary the most likely walk
    (by ``margin``), so greedy decoding copies whatever stretch of the cycle the prompt repeats. The cache is the
    legacy tuple form holding the token ids, so crop and the tree path's column moves apply to it."""

    def __init__(self, vocab=50, margin=6.0, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(vocab, generator=gen)
        self.succ = torch.empty(vocab, dtype=torch.int64)
        self.succ[self.order] = self.order.roll(-1)
        self.table = torch.randn(vocab, vocab, generator=gen)
        self.table[torch.arange(vocab), self.succ] += margin

    def walk(self, start, length):
        seq = [start]
        while len(seq) < length:
            seq.append(int(self.succ[seq[-1]]))
        return seq

    def forward(self, input_ids, cache=None, use_cache=True, attention_mask=None, position_ids=None):
        ids = input_ids.float()[:, None, :, None]
        if cache is not None:
            ids = torch.cat([cache[0][0], ids], dim=2)
        return SimpleNamespace(logits=self.table[input_ids], cache=((ids, ids),))


@pytest.fixture(scope="module")
def llama_pair():
    target = tiny_llama(seed=0, init=0.5)
    return target, noisy_copy(target, 0.1)  # accepts 20-40 % of greedy draft tokens


TREE_CASES = {
    "chain": dict(gamma=3),
    "path-tree": dict(tree=(3, 1)),
    "tree-3x2": dict(tree=(3, 2)),
    "tree-4x3-6-nodes": dict(tree=(4, 3), max_nodes=6),
    "ngram": dict(proposer="ngram"),
    "ngram-3x2": dict(proposer="ngram", tree=(3, 2)),
}


@pytest.mark.parametrize("case", sorted(TREE_CASES))
@torch.no_grad()
def test_tree_greedy_equals_target_greedy(llama_pair, case):
    target, draft = llama_pair
    kwargs = TREE_CASES[case]
    ids, mask = prompts()
    draft = None if kwargs.get("proposer") == "ngram" else draft
    out = speculative_decode(target, draft, ids, mask, max_new_tokens=20, **kwargs)
    assert torch.equal(out.sequences, greedy_decode(target, ids, mask, max_new_tokens=20))
    assert 1 <= out.tokens_per_target_forward


@torch.no_grad()
def test_path_tree_is_the_chain_and_branches_help(llama_pair):
    """tree=(d, 1) proposes the chain's tokens: the same statistics; wider trees emit more per target forward."""
    target, draft = llama_pair
    ids, mask = prompts()
    chain = speculative_decode(target, draft, ids, mask, max_new_tokens=24, gamma=4)
    path = speculative_decode(target, draft, ids, mask, max_new_tokens=24, tree=(4, 1))
    wide = speculative_decode(target, draft, ids, mask, max_new_tokens=24, tree=(4, 3))
    assert torch.equal(chain.sequences, path.sequences) and torch.equal(chain.sequences, wide.sequences)
    assert path.tokens_per_target_forward == chain.tokens_per_target_forward
    assert path.target_forwards == chain.target_forwards
    assert wide.tokens_per_target_forward > path.tokens_per_target_forward


@torch.no_grad()
def test_tree_eos_stops_rows(llama_pair):
    target, draft = llama_pair
    ids, mask = prompts()
    free = greedy_decode(target, ids, mask, max_new_tokens=14)
    eos = int(free[1, ids.shape[1] + 4])
    ref = greedy_decode(target, ids, mask, max_new_tokens=14, eos_token_id=eos, pad_token_id=PAD)
    for kwargs in (dict(tree=(3, 2)), dict(proposer="ngram")):
        d = None if kwargs.get("proposer") else draft
        out = speculative_decode(target, d, ids, mask, max_new_tokens=14, eos_token_id=eos, pad_token_id=PAD,
                                 **kwargs)
        assert torch.equal(out.sequences, ref), kwargs


@torch.no_grad()
def test_ngram_copies_repeating_prompt():
    """A target that continues a cycle, and a prompt holding 1.3 turns of it: prompt lookup proposes the right
    continuations, so each target forward emits several tokens, and the output is still the target's greedy."""
    model = MarkovModel(vocab=50)
    cyc = model.walk(int(model.order[0]), 65)
    other = model.walk(int(model.order[7]), 58)
    ids, mask = left_pad([cyc, other], pad_token_id=0)
    out = speculative_decode(model, None, ids, mask, max_new_tokens=30, proposer="ngram", gamma=5)
    assert torch.equal(out.sequences, greedy_decode(model, ids, mask, max_new_tokens=30))
    assert out.tokens_per_target_forward > 1.5
    assert out.draft_forwards == 0
    fresh = torch.tensor([[int(model.order[3])]])  # a one-token prompt: nothing to look up at first
    alone = speculative_decode(model, None, fresh, max_new_tokens=12, proposer="ngram")
    assert torch.equal(alone.sequences, greedy_decode(model, fresh, max_new_tokens=12))


def _joint_first_two(target_logits_fn, prompt, vocab, temperature):
    p1 = torch.softmax(target_logits_fn(prompt)[0, -1].double() / temperature, -1)
    seconds = torch.cat([prompt.expand(vocab, -1), torch.arange(vocab)[:, None]], 1)
    p2 = torch.softmax(target_logits_fn(seconds)[:, -1].double() / temperature, -1)
    return (p1[:, None] * p2).flatten()


@pytest.mark.parametrize("kwargs", [dict(tree=(3, 2)), dict(tree=(2, 3), tree_mode="sample"),
                                    dict(tree=(2, 2), tree_mode="sample", temperature=0.7)],
                         ids=["topk-tree", "sampled-tree", "sampled-tree-T0.7"])
@torch.no_grad()
def test_tree_sampling_has_target_distribution(kwargs):
    """Joint law of the first two new tokens (16 x 16 cells) over 8000 rows with their own seeds."""
    vocab, n = 16, 8000
    target = tiny_llama(seed=0, vocab=vocab, init=0.3)
    draft = noisy_copy(target, 0.3)
    prompt = torch.tensor([[3, 1, 4, 1]])
    kwargs = dict(kwargs)
    temperature = kwargs.pop("temperature", 1.0)
    out = speculative_decode(target, draft, prompt.expand(n, -1).contiguous(), max_new_tokens=2, do_sample=True,
                             temperature=temperature, seed=torch.arange(n) * 7 + 1, **kwargs)
    counts = torch.bincount(out.sequences[:, -2] * vocab + out.sequences[:, -1], minlength=vocab * vocab)
    joint = _joint_first_two(lambda x: target(x).logits, prompt, vocab, temperature)
    assert chi_square_p(counts, joint) > 1e-3
    assert 0 < out.acceptance_rate < 1


@torch.no_grad()
def test_ngram_sampling_has_target_distribution():
    """Prompt lookup in sampling mode on a Markov target whose prompt repeats: proposals get accepted and
    rejected, and the first two tokens still follow the target."""
    vocab, n = 16, 8000
    model = MarkovModel(vocab=vocab, margin=1.5, seed=2)
    prompt = torch.tensor([model.walk(int(model.order[0]), 20)])
    out = speculative_decode(model, None, prompt.expand(n, -1).contiguous(), max_new_tokens=2, do_sample=True,
                             proposer="ngram", tree=(2, 2), seed=torch.arange(n) * 3 + 5)
    counts = torch.bincount(out.sequences[:, -2] * vocab + out.sequences[:, -1], minlength=vocab * vocab)
    joint = _joint_first_two(lambda x: model(x).logits, prompt, vocab, 1.0)
    assert chi_square_p(counts, joint) > 1e-3
    assert 0 < out.acceptance_rate < 1


@pytest.mark.parametrize("kwargs", [dict(tree=(3, 2)), dict(tree=(3, 2), tree_mode="sample"),
                                    dict(proposer="ngram")])
@torch.no_grad()
def test_tree_per_row_seeds_reproduce(llama_pair, kwargs):
    """A row's tokens depend on its own seed: equal seeds on equal prompts give equal rows, another seed
    another row, and an int seed s is the tensor s + row."""
    target, draft = llama_pair
    draft = None if kwargs.get("proposer") else draft
    ids = torch.tensor([[5, 6, 7, 5, 6]] * 4)
    run = lambda seed: speculative_decode(target, draft, ids, max_new_tokens=16, do_sample=True, temperature=1.5,
                                          seed=seed, **kwargs).sequences
    rows = run(torch.tensor([11, 12, 11, 13]))
    assert torch.equal(rows[0], rows[2])
    assert not torch.equal(rows[0], rows[1])
    assert torch.equal(run(11), run(torch.tensor([11, 12, 13, 14])))


def test_tree_arguments_checked(llama_pair):
    ids, mask = prompts()
    target, draft = llama_pair
    for kwargs, word in [(dict(proposer="medusa"), "proposer"), (dict(tree=(0, 2)), "depth"),
                         (dict(tree=(2, 0)), "branching"), (dict(tree=3), "tree"),
                         (dict(tree=(2, 2), tree_mode="beam"), "tree_mode"),
                         (dict(tree=(2, 2), tree_mode="sample"), "do_sample"),
                         (dict(tree=(2, 2), max_nodes=0), "max_nodes")]:
        with pytest.raises(ValueError, match=word):
            speculative_decode(target, draft, ids, mask, max_new_tokens=4, **kwargs)
    with pytest.raises(ValueError, match="draft"):
        speculative_decode(target, None, ids, mask, max_new_tokens=4)


def test_ngram_continuations_and_trie():
    assert ngram_continuations([5, 6, 7, 5, 6, 8, 5, 6], 3, 4) == [[8, 5, 6], [7, 5, 6]]
    assert ngram_continuations([1, 2, 1, 2], 4, 3) == [[1, 2, 1, 2]]  # copies on past the end: a period
    assert ngram_continuations([1, 2, 3], 2, 3) == []
    assert ngram_continuations([4, 1, 4, 2, 4, 3, 4], 1, 2) == [[3], [2]]  # most recent first, up to 2
    conts = [[8, 5, 6], [7, 5, 6], [8, 5, 9]]
    assert trie(conts, 8) == ([8, 5, 6, 7, 5, 6, 9], [-1, 0, 1, -1, 3, 4, 1])
    assert trie(conts, 4) == ([8, 5, 6, 7], [-1, 0, 1, -1])
