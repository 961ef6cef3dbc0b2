"""The CUDA C++ backend (csrc/cuda, csrc/include/fastsample/cuda) on a GPU: every op (the tree verification
included) against tests/oracle.py and against the CPU backend for the same seeds, the bad-input rows, CUDA-graph
capture + replay == eager, and grid invariance (the same row gives the same token whether its row is split over
one CTA or many).

Skipped without a GPU or without an extension built with CUDA kernels (`make check-cuda` still compiles the
code on machines without one).
"""
import numpy as np
import pytest
import torch
from conftest import assert_rare, check_close, check_renorm, check_tokens, make_logits, make_probs, np64, oracle_seed_offset

import fastsample
import oracle
from fastsample import _ops


def _cuda_ready() -> bool:
    return torch.cuda.is_available() and _ops.AVAILABLE and _ops.cuda_built()


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _cuda_ready(), reason="needs a GPU and fastsample._C built "
                                                                            "with its CUDA kernels")]

VOCABS = (1, 7, 1000, 32000, 128256)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _rows(vocab: int) -> int:
    return max(2, min(64, (1 << 20) // vocab))


def _cuda(t):
    return t.cuda() if isinstance(t, torch.Tensor) else t


# ------------------------------------------------------------------------------------------ per-op vs oracle
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab", VOCABS)
def test_softmax(vocab, dtype):
    x = make_logits(_rows(vocab), vocab, "peaked", seed=vocab).to(dtype)
    temps = torch.rand(x.shape[0]) * 2
    temps[0] = 0.0
    got = fastsample.softmax(x.cuda(), temps.cuda(), backend="cuda")
    check_close(got, oracle.softmax(np64(x), np64(temps)), atol=1e-6, rtol=2e-5, what="softmax")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab", VOCABS)
def test_top_k(vocab, dtype):
    x = make_logits(_rows(vocab), vocab, "flat", seed=vocab)
    x = (x * 4).round().to(dtype)  # many ties: ties must go to the lower index
    x[0, :: max(1, vocab // 3)] = float("nan")
    for k in sorted({1, min(50, vocab), vocab}):
        values, indices = fastsample.top_k(x.cuda(), k, backend="cuda")
        want_v, want_i = oracle.top_k(np64(x), k)
        assert torch.equal(indices.cpu(), torch.from_numpy(want_i)), f"top_k indices, k={k}"
        assert values.dtype == dtype
        np.testing.assert_array_equal(np64(values), want_v)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab", VOCABS)
def test_top_k_mask_logits(vocab, dtype):
    rows = _rows(vocab)
    x = (make_logits(rows, vocab, "flat", seed=vocab) * 4).round().to(dtype)
    x[1 % rows, 0] = float("nan")  # a NaN row comes back unchanged
    ks = torch.randint(-1, vocab + 2, (rows,))
    got = fastsample.top_k_mask_logits(x.cuda(), ks.cuda(), backend="cuda")
    np.testing.assert_array_equal(np64(got), oracle.top_k_mask_logits(np64(x), np64(ks)))


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("kind", ["flat", "peaked"])
def test_renorm_probs(vocab, kind):
    probs = make_probs(_rows(vocab), vocab, kind, seed=vocab + 1)
    rows = probs.shape[0]
    gen = torch.Generator().manual_seed(vocab)
    ks = torch.randint(0, min(vocab, 100) + 1, (rows,), generator=gen)
    ps = torch.rand(rows, generator=gen)
    mps = torch.rand(rows, generator=gen) * 0.2
    flips = 0
    for fn, arg, kw in ((fastsample.top_k_renorm_probs, ks, "top_k"), (fastsample.top_p_renorm_probs, ps, "top_p"),
                        (fastsample.min_p_renorm_probs, mps, "min_p")):
        got = fn(probs.cuda(), arg.cuda(), backend="cuda")
        cands = oracle.renorm_candidates(np64(probs), **{kw: np64(arg)})
        flips += check_renorm(got, cands, atol=1e-7, rtol=1e-5, what=f"{kw}_renorm_probs")
        sure = torch.tensor([len(c) == 1 for c in cands])  # rows whose kept set rounding cannot change
        cpu = fn(probs, arg, backend="cpu")
        torch.testing.assert_close(got.cpu()[sure], cpu[sure], atol=1e-7, rtol=1e-5)
    assert_rare(flips, 3 * rows, "renorm_probs")


def _sample_params(rows: int, vocab: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    temps = torch.rand(rows, generator=gen) * 1.5 + 0.1
    temps[::7] = 0.0  # greedy rows
    ks = torch.randint(0, min(vocab, 100) + 1, (rows,), generator=gen)
    ps = torch.rand(rows, generator=gen) * 0.5 + 0.5
    mps = torch.rand(rows, generator=gen) * 0.1
    return temps, ks, ps, mps


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab", VOCABS)
def test_sample_matches_oracle_and_cpu(vocab, dtype):
    """Per-row temperature / top-k / top-p / min-p: tokens equal the oracle's (rounding windows aside) and the
    CPU backend's for the same seeds; logprobs match the oracle."""
    rows = _rows(vocab)
    x = make_logits(rows, vocab, "peaked", seed=3 * vocab).to(dtype)
    temps, ks, ps, mps = _sample_params(rows, vocab, vocab)
    tokens, logprobs = fastsample.sample(x.cuda(), temps.cuda(), ks.cuda(), ps.cuda(), mps.cuda(), True, seed=11,
                                         backend="cuda")
    seeds, offsets = oracle_seed_offset(rows, 11)
    want, want_lp, cands = oracle.sample_with_candidates(np64(x), True, np64(temps), np64(ks), np64(ps), np64(mps),
                                                         seeds, offsets)
    flips = check_tokens(tokens, want, cands, "sample (cuda)")
    assert_rare(flips, rows, "sample (cuda)")
    same = np64(tokens) == want
    check_close(logprobs[torch.from_numpy(same).cuda()], want_lp[same], atol=1e-4, rtol=1e-4, what="logprobs")
    cpu = fastsample.sample(x, temps, ks, ps, mps, seed=11, backend="cpu")
    ambiguous = np.array([len(c) > 1 for c in cands])
    differ = (np64(cpu) != np64(tokens)) & ~ambiguous
    assert not differ.any(), f"cuda and cpu tokens differ on unambiguous rows {np.flatnonzero(differ)[:5]}"


@pytest.mark.parametrize("vocab", VOCABS)
def test_sampling_from_probs(vocab):
    rows = _rows(vocab)
    probs = make_probs(rows, vocab, "flat", seed=vocab)
    got = fastsample.top_k_top_p_sampling_from_probs(probs.cuda(), 40, 0.8, seed=5, backend="cuda")
    seeds, offsets = oracle_seed_offset(rows, 5)
    want, _, cands = oracle.sample_with_candidates(np64(probs), False, 1.0, 40, np.float32(0.8), 0.0, seeds, offsets)
    assert_rare(check_tokens(got, want, cands, "top_k_top_p_sampling_from_probs"), rows)


def test_bad_rows():
    """NaN rows, all -inf rows, negative / NaN temperatures and out-of-range per-row top_p / min_p give -1
    and a NaN logprob; +inf logits share the mass; probs with a negative entry or zero total give -1."""
    vocab = 1000
    x = make_logits(8, vocab, "flat", seed=0)
    x[0, 5] = float("nan")
    x[1] = float("-inf")
    x[2, [3, 9]] = float("inf")
    temps = torch.tensor([1.0, 1.0, 1.0, -1.0, float("nan"), 1.0, 1.0, 0.0])
    ps = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, float("nan"), 1.5, 1.0])
    tokens, logprobs = fastsample.sample(x.cuda(), temps.cuda(), 0, ps.cuda(), 0.0, True, seed=1, backend="cuda")
    tokens, logprobs = tokens.cpu(), logprobs.cpu()
    assert tokens[[0, 1, 3, 4, 5, 6]].eq(-1).all() and logprobs[[0, 1, 3, 4, 5, 6]].isnan().all()
    assert tokens[2].item() in (3, 9) and abs(logprobs[2].item() - np.log(0.5)) < 1e-6
    assert tokens[7].item() == int(x[7].argmax())
    probs = make_probs(3, vocab, "flat", seed=1)
    probs[0, 4] = -0.1
    probs[1] = 0.0
    got = fastsample.sampling_from_probs(probs.cuda(), seed=2, backend="cuda").cpu()
    assert got[:2].eq(-1).all() and 0 <= got[2] < vocab
    renorm = fastsample.top_p_renorm_probs(probs.cuda(), 0.9, backend="cuda").cpu()
    assert renorm[:2].eq(0).all()


@pytest.mark.parametrize("vocab", (7, 1000, 128256))
def test_chain_speculative_sampling(vocab):
    gen = torch.Generator().manual_seed(vocab)
    batch, n = 16, 4
    q = torch.softmax(torch.randn(batch, n, vocab, generator=gen) * 2, -1)
    p = torch.softmax(torch.randn(batch, n + 1, vocab, generator=gen) * 2, -1)
    ids = torch.multinomial(q.reshape(-1, vocab), 1, generator=gen).reshape(batch, n)
    ids[0, 1] = vocab  # out of range: rejected at position 1
    got = fastsample.chain_speculative_sampling(q.cuda(), ids.cuda(), p.cuda(), seed=9, backend="cuda")
    seeds, offsets = oracle_seed_offset(batch, 9)
    want_out, want_acc, want_emit, ambiguous = oracle.chain_speculative_sampling(np64(q), np64(ids), np64(p), seeds,
                                                                                  offsets)
    ok = ~ambiguous
    for g, w in zip(got, (want_out, want_acc, want_emit)):
        np.testing.assert_array_equal(np64(g)[ok], w[ok])
    cpu = fastsample.chain_speculative_sampling(q, ids, p, seed=9, backend="cpu")
    for g, c in zip(got, cpu):
        np.testing.assert_array_equal(np64(g)[ok], np64(c)[ok])


def _tree_inputs(batch: int, n: int, vocab: int, seed: int):
    """(ids, parents, target [B, n+1, V], draft [B, n, V]): random trees (each node's parent uniform over the
    root and the earlier nodes, some nodes unused) whose tokens are drawn from a draft close to the target at
    their parent, so that paths are often accepted."""
    gen = torch.Generator().manual_seed(seed)
    parents = torch.stack([torch.randint(-1, max(i, 0), (batch,), generator=gen) if i else torch.full((batch,), -1)
                           for i in range(n)], 1)
    logits = torch.randn(batch, n + 1, vocab, generator=gen) * 3
    target = torch.softmax(logits, -1)
    at_parent = logits.gather(1, (parents + 1).unsqueeze(2).expand(batch, n, vocab))
    draft = torch.softmax(at_parent + 0.5 * torch.randn(at_parent.shape, generator=gen), -1)
    ids = torch.multinomial(draft.reshape(-1, vocab), 1, generator=gen).reshape(batch, n)
    ids = torch.where(torch.rand(batch, n, generator=gen) < 0.1, -1, ids)
    return ids, parents, target, draft


@pytest.mark.parametrize("sampled", [True, False], ids=["sampled", "deterministic"])
@pytest.mark.parametrize("vocab", (7, 1000, 128256))
def test_tree_speculative_sampling(vocab, sampled):
    """The CUDA tree kernel == the oracle (away from float boundaries) == the CPU kernel, both draft modes."""
    batch, n = (16, 10) if vocab == 128256 else (64, 12)
    ids, parents, target, draft = _tree_inputs(batch, n, vocab, seed=vocab + sampled)
    draft = draft if sampled else None
    ids[0, 0] = vocab  # out of range: rejected, never read
    parents[1, 3] = 3  # malformed: the row is all -1
    got = fastsample.tree_speculative_sampling(ids.cuda(), parents.cuda(), target.cuda(), _cuda(draft), seed=9,
                                               offset=4, backend="cuda")
    seeds, offsets = oracle_seed_offset(batch, 9, 4)
    want = oracle.tree_speculative_sampling(np64(ids), np64(parents), np64(target),
                                            None if draft is None else np64(draft), seeds, offsets)
    ok = ~want[3]
    for g, w in zip(got, want[:3]):
        np.testing.assert_array_equal(np64(g)[ok], w[ok])
    assert_rare(int(want[3].sum()), want[3].size, f"tree V={vocab}")
    cpu = fastsample.tree_speculative_sampling(ids, parents, target, draft, seed=9, offset=4, backend="cpu")
    for g, c in zip(got, cpu):
        np.testing.assert_array_equal(np64(g)[ok], np64(c)[ok])
    assert (np64(got[0])[1] == -1).all() and int(got[2][1]) == 0
    assert 0 < int(want[2].sum())  # some paths accepted


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_tree_speculative_sampling_half_rows(dtype):
    """Half-precision rows are read in their own dtype: the same tokens as the CPU kernel on the same rows."""
    ids, parents, target, draft = _tree_inputs(32, 8, 3000, seed=5)
    target, draft = target.to(dtype), draft.to(dtype)
    for d in (draft, None):
        got = fastsample.tree_speculative_sampling(ids.cuda(), parents.cuda(), target.cuda(), _cuda(d), seed=2,
                                                   backend="cuda")
        cpu = fastsample.tree_speculative_sampling(ids, parents, target, d, seed=2, backend="cpu")
        for g, c in zip(got, cpu):
            assert torch.equal(g.cpu(), c)


def test_tree_speculative_sampling_int64_offsets():
    """B * (N + 1) * V > 2^31 elements: the last row, read beyond the 32-bit range, gives what it gives alone."""
    batch, n, vocab = 17, 31, 1 << 22
    gen = torch.Generator(device="cuda").manual_seed(0)
    target = torch.rand(batch, n + 1, vocab, device="cuda", dtype=torch.float16, generator=gen)
    assert target.numel() > 2**31
    ids = torch.randint(0, vocab, (batch, n), device="cuda", generator=gen)
    ids[:, 0] = target[:, 0].argmax(-1)  # likely accepted: the walk descends into node 0's row
    parents = torch.full((batch, n), -1, device="cuda")
    parents[:, 1:] = 0
    seeds = torch.arange(batch, device="cuda")
    offsets = torch.zeros(batch, dtype=torch.int64, device="cuda")
    full = fastsample.tree_speculative_sampling(ids, parents, target, seed=seeds, offset=offsets, backend="cuda")
    b = batch - 1
    alone = fastsample.tree_speculative_sampling(ids[b:], parents[b:], target[b:].contiguous(), seed=seeds[b:],
                                                 offset=offsets[b:], backend="cuda")
    for f, a in zip(full, alone):
        assert torch.equal(f[b:], a)
    del target


def test_tree_speculative_sampling_graph_replay():
    """seed/offset on the device: a captured tree verification replays with new seeds, no host sync inside."""
    ids, parents, target, draft = (t.cuda() for t in _tree_inputs(8, 12, 1000, seed=3))
    seed = torch.full((8,), 3, dtype=torch.int64, device="cuda")
    offset = torch.arange(8, dtype=torch.int64, device="cuda")

    def step():
        return fastsample.tree_speculative_sampling(ids, parents, target, draft, seed=seed, offset=offset,
                                                    backend="cuda")

    step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for new_seed in (3, 17, 123456789):
        seed.fill_(new_seed)
        graph.replay()
        eager = step()
        torch.cuda.synchronize()
        for c, e in zip(captured, eager):
            assert torch.equal(c, e)


def test_tree_greedy_verify():
    """The CUDA argmax under the tree walk == the oracle."""
    ids, parents, _, _ = _tree_inputs(40, 16, 6, seed=8)
    logits = torch.randn(40, 17, 6, generator=torch.Generator().manual_seed(2))
    logits[3, 0, 2] = float("nan")
    got = fastsample.tree_greedy_verify(ids.cuda(), parents.cuda(), logits.cuda(), backend="cuda")
    want = oracle.tree_greedy_verify(np64(ids), np64(parents), np64(logits))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np64(g), w)


# ------------------------------------------------------------------------------- graphs and grid invariance
def test_cuda_graph_replay_equals_eager():
    """seed/offset live on the device: a captured `sample` replays with new seeds, no host sync inside."""
    vocab, rows = 32000, 8
    x = make_logits(rows, vocab, "peaked", seed=4).cuda()
    seed = torch.full((rows,), 3, dtype=torch.int64, device="cuda")
    offset = torch.arange(rows, dtype=torch.int64, device="cuda")
    temps, ks, ps, mps = (t.cuda() for t in _sample_params(rows, vocab, 4))

    def step():
        return fastsample.sample(x, temps, ks, ps, mps, True, seed=seed, offset=offset, backend="cuda")

    step()  # warm-up outside capture (allocator, lazy init)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for new_seed in (3, 17, 123456789):
        seed.fill_(new_seed)
        graph.replay()
        eager = step()
        torch.cuda.synchronize()
        assert torch.equal(captured[0], eager[0])
        assert torch.equal(captured[1], eager[1])


def test_grid_invariance():
    """One row alone (split over many CTAs) and inside a large batch (one CTA) gives the same token: masses are
    exact fixed-point sums, so the grid shape cannot change a result."""
    vocab, rows = 128256, 256
    x = make_logits(rows, vocab, "flat", seed=8).cuda()
    seeds = torch.arange(rows, dtype=torch.int64, device="cuda") + 100
    offsets = torch.zeros(rows, dtype=torch.int64, device="cuda")
    batch = fastsample.sample(x, 0.8, 50, 0.9, 0.0, True, seed=seeds, offset=offsets, backend="cuda")
    for b in (0, 77, 255):
        alone = fastsample.sample(x[b:b + 1], 0.8, 50, 0.9, 0.0, True, seed=seeds[b:b + 1], offset=offsets[b:b + 1],
                                  backend="cuda")
        assert torch.equal(alone[0], batch[0][b:b + 1]) and torch.equal(alone[1], batch[1][b:b + 1])
