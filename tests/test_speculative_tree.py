"""tree_speculative_sampling and tree_greedy_verify on every backend (cpu, torch, triton, cuda): exact tokens
against tests/oracle.py on random trees in both draft modes, the emitted tokens' distribution (chi-square over
the first two tokens, fixed seeds), a path tree equal to chain_speculative_sampling, and bad input."""
import numpy as np
import pytest
import torch
from conftest import CUDA_KERNELS, GPU_BACKENDS, _on_gpu, assert_rare, chi_square_pvalue, np64

import fastsample
import oracle

# With a GPU, triton runs compiled on CUDA copies of the inputs (marked gpu); without one, in the interpreter.
TRITON_MARKS = [pytest.mark.gpu] if "triton" in GPU_BACKENDS else []
# The CUDA C++ kernel (csrc/include/fastsample/cuda/speculative_tree.cuh) on a GPU with an extension built with it.
CUDA_MARKS = [pytest.mark.gpu, pytest.mark.skipif(not CUDA_KERNELS, reason="needs a GPU and fastsample._C built "
                                                                            "with its CUDA kernels")]
CUDA = pytest.param("cuda", marks=CUDA_MARKS)
TREE_BACKENDS = ("cpu", "torch", pytest.param("triton", marks=TRITON_MARKS), CUDA)
# The Triton interpreter runs a row in ~60 ms: it gets one vocabulary for the random trees and no chi-square
# test (its tokens equal the oracle's, and the oracle's distribution is checked through cpu and torch).
FAST_BACKENDS = ("cpu", "torch", CUDA)
RANDOM_TREE_CASES = [(b, v) for b in ("cpu", "torch") for v in (2, 50, 1000)]
RANDOM_TREE_CASES.append(pytest.param("triton", 50, marks=TRITON_MARKS))
RANDOM_TREE_CASES += [pytest.param("cuda", v, marks=CUDA_MARKS) for v in (2, 50, 1000, 5000)]


def _op(name: str, backend: str):
    """fastsample.<name>, moved to the GPU for a GPU backend (conftest._on_gpu)."""
    fn = getattr(fastsample, name)
    return _on_gpu(fn) if backend in GPU_BACKENDS else fn
ALPHA = 1e-3  # chi-square significance; every seed is fixed, so a pass or a failure is reproducible


def _random_trees(gen: torch.Generator, batch: int, max_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """parents [B, max_nodes] and a used-node mask: per row a breadth-first tree of depth 1..6 and branching
    1..4 cut at a random size (uneven rows), with an occasional unused node inside (its subtree unreachable)."""
    parents = torch.full((batch, max_nodes), -1, dtype=torch.int64)
    used = torch.zeros(batch, max_nodes, dtype=torch.bool)
    for b in range(batch):
        depth = int(torch.randint(1, 7, (), generator=gen))
        branching = int(torch.randint(1, 5, (), generator=gen))
        size = int(torch.randint(1, max_nodes + 1, (), generator=gen))
        level, count = [-1], 0
        for _ in range(depth):
            nxt = []
            for node in level:
                for _ in range(branching):
                    if count < size:
                        parents[b, count] = node
                        nxt.append(count)
                        count += 1
            level = nxt
        used[b, :count] = True
        if count > 2 and torch.rand((), generator=gen) < 0.2:
            used[b, int(torch.randint(0, count, (), generator=gen))] = False
    return parents, used


def _tree_case(seed: int, batch: int, max_nodes: int, vocab: int, sampled: bool):
    """(ids, parents, target_probs, draft_probs or None): children drawn from the draft (sampled) or from a
    noisy copy of the target at their parent (deterministic), so that paths are often accepted."""
    gen = torch.Generator().manual_seed(seed)
    parents, used = _random_trees(gen, batch, max_nodes)
    logits = torch.randn(batch, max_nodes + 1, vocab, generator=gen) * 2.5
    target = torch.softmax(logits, dim=-1)
    parent_rows = (parents + 1).unsqueeze(2).expand(batch, max_nodes, vocab)
    at_parent = logits.gather(1, parent_rows)
    draft = torch.softmax(at_parent + torch.randn(at_parent.shape, generator=gen), dim=-1)
    ids = torch.multinomial(draft.reshape(-1, vocab), 1, generator=gen).reshape(batch, max_nodes)
    ids = torch.where(used, ids, -1)
    return ids, parents, target, (draft if sampled else None)


def _assert_matches_oracle(got, want, what):
    out, nodes, emitted = got
    w_out, w_nodes, w_emitted, ambiguous = want
    clear = ~ambiguous
    np.testing.assert_array_equal(np64(out)[clear], w_out[clear], err_msg=what)
    np.testing.assert_array_equal(np64(nodes)[clear], w_nodes[clear], err_msg=what)
    np.testing.assert_array_equal(np64(emitted)[clear], w_emitted[clear], err_msg=what)
    assert_rare(int(ambiguous.sum()), ambiguous.size, what)


@pytest.mark.parametrize("backend, vocab", RANDOM_TREE_CASES)
@pytest.mark.parametrize("sampled", [True, False], ids=["sampled", "deterministic"])
def test_random_trees_match_oracle(backend, sampled, vocab):
    batch, max_nodes = (12, 12) if backend == "triton" else (48, 24)
    ids, parents, target, draft = _tree_case(vocab, batch=batch, max_nodes=max_nodes, vocab=vocab, sampled=sampled)
    seed = torch.randint(0, 2**62, (batch,), generator=torch.Generator().manual_seed(1))
    tree_op = _op("tree_speculative_sampling", backend)
    got = tree_op(ids, parents, target, draft, seed=seed, offset=7, backend=backend)
    want = oracle.tree_speculative_sampling(np64(ids), np64(parents), np64(target),
                                            None if draft is None else np64(draft), np64(seed), 7)
    _assert_matches_oracle(got, want, f"{backend} sampled={sampled} V={vocab}")
    # The test must exercise both outcomes: some paths accepted, some rejections.
    assert 0 < int(want[2].sum()) < int((np64(ids) != -1).sum())


@pytest.mark.parametrize("backend", TREE_BACKENDS)
def test_half_precision_rows_match_oracle(backend):
    ids, parents, target, draft = _tree_case(5, batch=8, max_nodes=12, vocab=300, sampled=True)
    target, draft = target.to(torch.bfloat16), draft.to(torch.float16)
    got = _op("tree_speculative_sampling", backend)(ids.to(torch.int32), parents.to(torch.int32), target, draft,
                                                    seed=3, backend=backend)
    want = oracle.tree_speculative_sampling(np64(ids), np64(parents), np64(target), np64(draft), 3,
                                            np.arange(8))
    _assert_matches_oracle(got, want, backend)


@pytest.mark.parametrize("backend", TREE_BACKENDS)
def test_path_tree_equals_chain(backend):
    gen = torch.Generator().manual_seed(11)
    batch, n, vocab = 16 if backend == "triton" else 64, 6, 40
    target = torch.softmax(torch.randn(batch, n + 1, vocab, generator=gen) * 2, dim=-1)
    draft = torch.softmax(torch.randn(batch, n, vocab, generator=gen) * 2, dim=-1)
    ids = torch.multinomial(draft.reshape(-1, vocab), 1, generator=gen).reshape(batch, n)
    ids[::5, 2] = vocab + 3  # out of range: rejected at its position by both
    parents = torch.arange(-1, n - 1).expand(batch, n)
    seed = torch.randint(0, 2**62, (batch,), generator=gen)
    chain = _op("chain_speculative_sampling", backend)
    chain_out, _, chain_emitted = chain(draft, ids, target, seed=seed, backend=backend)
    out, nodes, emitted = _op("tree_speculative_sampling", backend)(ids, parents, target, draft, seed=seed,
                                                                    backend=backend)
    assert torch.equal(out, chain_out) and torch.equal(emitted, chain_emitted)
    position = torch.arange(n).unsqueeze(0)
    assert torch.equal(nodes, torch.where(position < emitted.unsqueeze(1), position, -1))
    assert 0 < int(emitted.sum()) < batch * n


def _two_step_model(vocab: int, gen: torch.Generator):
    """Target and draft of a two-token language: first-token rows [V] and second-token tables [V, V]."""
    p1 = torch.softmax(torch.randn(vocab, generator=gen), dim=0)
    p2 = torch.softmax(torch.randn(vocab, vocab, generator=gen) * 1.5, dim=1)
    q1 = torch.softmax(torch.randn(vocab, generator=gen), dim=0)
    q2 = torch.softmax(torch.randn(vocab, vocab, generator=gen) * 1.5, dim=1)
    return p1, p2, q1, q2


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("sampled", [True, False], ids=["sampled", "deterministic"])
def test_first_two_tokens_follow_the_target(backend, sampled):
    """A root with 3 children, each with 2 children (N = 9). The second token comes from the same call when a
    root child is accepted, else from a second call at the emitted token with no tree (all nodes unused)."""
    gen = torch.Generator().manual_seed(21 + sampled)
    vocab, draws, k1, k2 = 4, 20000, 3, 2
    p1, p2, q1, q2 = _two_step_model(vocab, gen)
    n = k1 + k1 * k2
    parents = torch.tensor([-1] * k1 + [c for c in range(k1) for _ in range(k2)]).expand(draws, n)
    if sampled:  # siblings i.i.d. from the draft at their parent
        first = torch.multinomial(q1, draws * k1, replacement=True, generator=gen).view(draws, k1)
        second = torch.multinomial(q2[first.reshape(-1)], k2, replacement=True, generator=gen).view(draws, k1 * k2)
    else:  # a fixed top-k style expansion
        first = torch.tensor([2, 0, 3]).expand(draws, k1)
        second = torch.tensor([1, 3, 0, 1, 2, 3]).expand(draws, k1 * k2)
    ids = torch.cat([first, second], dim=1)
    target = torch.cat([p1.expand(draws, 1, vocab), p2[first], torch.full((draws, k1 * k2, vocab), 1 / vocab)], 1)
    draft = torch.cat([q1.expand(draws, k1, vocab), q2[first].repeat_interleave(k2, dim=1)], 1) if sampled else None
    seed = torch.arange(draws)
    out, _, emitted = _op("tree_speculative_sampling", backend)(ids, parents, target, draft, seed=seed, backend=backend)
    t1 = out[:, 0]
    again, _, _ = _op("tree_speculative_sampling", backend)(torch.full((draws, 1), -1), torch.full((draws, 1), -1),
                                                       torch.stack([p2[t1], p2[t1]], 1), None, seed=seed, offset=1,
                                                       backend=backend)
    t2 = torch.where(emitted >= 1, out[:, 1], again[:, 0])
    expected = (p1.double().unsqueeze(1) * p2.double()).reshape(-1).numpy()
    assert chi_square_pvalue(t1 * vocab + t2, expected) > ALPHA
    assert 0.1 < (emitted >= 1).double().mean() < 0.95  # both routes to the second token are exercised


@pytest.mark.parametrize("backend", TREE_BACKENDS)
def test_malformed_parents_give_minus_one_rows(backend):
    ids, parents, target, draft = _tree_case(3, batch=6, max_nodes=5, vocab=20, sampled=True)
    ids = ids.clamp(min=0)  # every node used
    parents[0, 3] = 3  # parent == child
    parents[1, 2] = 4  # parent after child (with node 4's parent, a cycle)
    parents[1, 4] = 2
    parents[2, 1] = -2  # out of range
    parents[3, 4] = 99
    ids[4, 4], parents[4, 4] = -1, 99  # an unused node's parent is not looked at
    tree_op = _op("tree_speculative_sampling", backend)
    out, nodes, emitted = tree_op(ids, parents, target, draft, seed=5, backend=backend)
    assert (out[:4] == -1).all() and (nodes[:4] == -1).all() and (emitted[:4] == 0).all()
    assert (out[4:, 0] >= 0).all()


@pytest.mark.parametrize("backend", TREE_BACKENDS)
def test_nan_target_row_gives_minus_one_final_token(backend):
    ids = torch.tensor([[3, 5]])
    parents = torch.tensor([[-1, -1]])
    target = torch.full((1, 3, 8), 1 / 8)
    target[0, 0, 0] = float("nan")  # only read by the final draw: the children's tokens have p = 0 (rejected)
    target[0, 0, [3, 5]] = 0.0
    for draft in (None, torch.full((1, 2, 8), 1 / 8)):
        out, nodes, emitted = _op("tree_speculative_sampling", backend)(ids, parents, target, draft, seed=1,
                                                                   backend=backend)
        assert emitted.tolist() == [0] and out.tolist() == [[-1, -1, -1]] and nodes.tolist() == [[-1, -1]]


@pytest.mark.parametrize("backend", TREE_BACKENDS)
def test_out_of_range_ids_are_rejected_not_read(backend):
    target = torch.zeros(2, 3, 4)
    target[:, :, 1] = 1.0  # the target emits token 1 everywhere
    ids = torch.tensor([[4, 1], [-7, 1]])
    parents = torch.tensor([[-1, -1], [-1, -1]])
    out, nodes, emitted = _op("tree_speculative_sampling", backend)(ids, parents, target, None, seed=2, backend=backend)
    assert out.tolist() == [[1, 1, -1]] * 2 and nodes.tolist() == [[1, -1]] * 2 and emitted.tolist() == [1, 1]


@pytest.mark.parametrize("backend", FAST_BACKENDS)  # the walk is shared torch code; triton's argmax is tested
def test_greedy_verify_matches_oracle(backend):
    ids, parents, _, _ = _tree_case(8, batch=40, max_nodes=16, vocab=6, sampled=False)
    logits = torch.randn(40, 17, 6, generator=torch.Generator().manual_seed(2))
    logits[3, 0, 2] = float("nan")
    logits[5] = 0.0  # all ties: the lowest id
    got = _op("tree_greedy_verify", backend)(ids, parents, logits, backend=backend)
    want = oracle.tree_greedy_verify(np64(ids), np64(parents), np64(logits))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np64(g), w)
    assert int(want[2].sum()) > 0 and got[0][3, 0] == -1


@pytest.mark.parametrize("arg, bad, error", [
    ("parents", torch.zeros(2, 3), TypeError),
    ("parents", torch.zeros(2, 4, dtype=torch.int64), ValueError),
    ("draft_token_ids", [[0, 1, 2]] * 2, TypeError),
    ("target_probs", torch.zeros(2, 3, 5), ValueError),
    ("target_probs", torch.zeros(2, 4, 5, dtype=torch.float64), TypeError),
    ("draft_probs", torch.zeros(2, 3, 6), ValueError),
])
def test_bad_arguments_raise_naming_the_argument(arg, bad, error):
    args = {"draft_token_ids": torch.zeros(2, 3, dtype=torch.int64), "parents": torch.full((2, 3), -1),
            "target_probs": torch.full((2, 4, 5), 0.2), "draft_probs": torch.full((2, 3, 5), 0.2), arg: bad}
    with pytest.raises(error, match=arg):
        fastsample.tree_speculative_sampling(**args, seed=0)


def test_cuda_backend_needs_cuda_tensors():
    args = (torch.zeros(1, 1, dtype=torch.int64), torch.full((1, 1), -1), torch.full((1, 2, 3), 1 / 3))
    with pytest.raises(ValueError, match="backend 'cuda' needs CUDA tensors"):
        fastsample.tree_speculative_sampling(*args, seed=0, backend="cuda")
