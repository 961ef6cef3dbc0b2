"""Triton-only checks: Philox known answers in a kernel, the multi-program (split-row) path, and GPU runs.

The shared suites (test_softmax, test_topk, ...) already run the Triton backend through the ``backend``
fixture on small shapes. Here: rows long enough to be split across programs (V = 131072 under the
interpreter, and short rows with a lowered split threshold), token for token against the ``cpu`` backend
and the oracle, and the same kernels on CUDA tensors where a GPU exists (``-m gpu``).
"""
import numpy as np
import pytest
import torch
from conftest import assert_rare, check_tokens, make_logits, make_probs, np64, oracle_seed_offset

import fastsample
import oracle

triton_ops = pytest.importorskip("fastsample.triton.ops")
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from fastsample.triton import launch  # noqa: E402
from fastsample.triton.philox import philox_uniform  # noqa: E402

FILTERS = dict(temperature=0.8, top_k=50, top_p=0.9, min_p=0.0)


def _cpu_or_skip():
    from fastsample import _ops

    if not _ops.AVAILABLE:
        pytest.skip(f"the cpu backend is not built: {_ops.IMPORT_ERROR}")


@triton.jit
def _philox_kernel(out_ptr, seed, c0, c1, c2, c3):
    w0, w1, w2, w3 = tl.philox(tl.full((), seed, tl.int64), tl.full((), c0, tl.uint32), tl.full((), c1, tl.uint32),
                               tl.full((), c2, tl.uint32), tl.full((), c3, tl.uint32))
    tl.store(out_ptr + 0, w0.to(tl.int64))
    tl.store(out_ptr + 1, w1.to(tl.int64))
    tl.store(out_ptr + 2, w2.to(tl.int64))
    tl.store(out_ptr + 3, w3.to(tl.int64))


@triton.jit
def _uniform_kernel(out_ptr, seed_ptr, offset_ptr, draw):
    i = tl.arange(0, 4)
    tl.store(out_ptr + i, philox_uniform(tl.load(seed_ptr + i), tl.load(offset_ptr + i), draw))


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("counter, key, words", [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_tl_philox_has_the_design_key_and_counter_layout(counter, key, words):
    out = torch.zeros(4, dtype=torch.int64, device=_device())
    seed = key[0] | (key[1] << 32)  # tl.philox's key is (lo32(seed), hi32(seed))
    seed = seed - (1 << 64) if seed >= 1 << 63 else seed
    _philox_kernel[(1,)](out, seed, *counter)
    assert [int(v) for v in out.cpu()] == list(words)


@pytest.mark.parametrize("draw", [0, 1, 7])
def test_philox_uniform_equals_the_oracle(draw):
    seed = torch.tensor([0, 1, -5, 2**62 + 3], dtype=torch.int64, device=_device())
    offset = torch.tensor([0, 2**33 + 1, -1, 12345], dtype=torch.int64, device=_device())
    out = torch.empty(4, dtype=torch.float32, device=_device())
    _uniform_kernel[(1,)](out, seed, offset, draw)
    assert np.array_equal(np64(out), oracle.uniform(np64(seed), np64(offset), draw))


def test_large_vocab_is_split_across_programs():
    grid = launch.split(2, 131072, torch.device("cpu"))
    assert grid.chunks > 1 and grid.chunks * grid.chunk_len >= 131072 > (grid.chunks - 1) * grid.chunk_len


@pytest.mark.parametrize("kind", ["flat", "peaked"])
def test_sample_v131072_matches_cpu_backend_and_oracle(kind):
    _cpu_or_skip()
    rows, vocab, seed = 2, 131072, 11
    x = make_logits(rows, vocab, kind, seed=5)
    got = fastsample.sample(x, **FILTERS, seed=seed, backend="triton")
    cpu = fastsample.sample(x, **FILTERS, seed=seed, backend="cpu")
    seeds, offsets = oracle_seed_offset(rows, seed)
    want, _, cands = oracle.sample_with_candidates(np64(x), True, float(np.float32(0.8)), 50,
                                                   float(np.float32(0.9)), 0.0, seeds, offsets)
    assert_rare(check_tokens(got, want, cands, what=f"triton V={vocab}"), rows)
    assert (got == cpu).sum() >= rows - 1, f"triton {got.tolist()} vs cpu {cpu.tolist()}"


def test_top_k_and_renorm_v131072_match_cpu_backend():
    _cpu_or_skip()
    x = make_logits(2, 131072, "flat", seed=6)
    values, indices = fastsample.top_k(x, 40, backend="triton")
    want_v, want_i = fastsample.top_k(x, 40, backend="cpu")
    assert torch.equal(indices, want_i) and torch.equal(values, want_v)
    probs = make_probs(2, 131072, "peaked", seed=7)
    got = fastsample.top_p_renorm_probs(probs, 0.7, backend="triton")
    want = fastsample.top_p_renorm_probs(probs, 0.7, backend="cpu")
    assert torch.equal(got > 0, want > 0)
    torch.testing.assert_close(got, want, atol=1e-7, rtol=1e-5)


@pytest.fixture
def short_chunks(monkeypatch):
    """Split rows of a few hundred entries into several programs, so short rows take the multi-chunk path."""
    monkeypatch.setattr(launch, "MIN_CHUNK", 256)


@pytest.mark.parametrize("is_logits", [True, False])
def test_multi_chunk_rows_give_the_same_tokens_as_one_chunk(short_chunks, is_logits):
    _cpu_or_skip()
    rows, vocab, seed = 4, 1500, 3
    grid = launch.split(rows, vocab, torch.device("cpu"))
    assert grid.chunks > 1
    x = make_logits(rows, vocab, "peaked", seed=8) if is_logits else make_probs(rows, vocab, "peaked", seed=8)
    top_k = torch.tensor([0, 5, 300, 1499])
    top_p = torch.tensor([0.5, 1.0, 0.95, 0.0])
    if is_logits:
        got = fastsample.sample(x, 0.7, top_k, top_p, 0.05, seed=seed, backend="triton")
        want = fastsample.sample(x, 0.7, top_k, top_p, 0.05, seed=seed, backend="cpu")
    else:
        got = fastsample.top_k_top_p_sampling_from_probs(x, top_k, top_p, seed=seed, backend="triton")
        want = fastsample.top_k_top_p_sampling_from_probs(x, top_k, top_p, seed=seed, backend="cpu")
    assert torch.equal(got, want)


def test_multi_chunk_softmax_top_k_and_speculative(short_chunks):
    _cpu_or_skip()
    x = make_logits(3, 1500, "flat", seed=9)
    torch.testing.assert_close(fastsample.softmax(x, 0.5, backend="triton"), fastsample.softmax(x, 0.5, backend="cpu"))
    assert torch.equal(fastsample.top_k_mask_logits(x, 17, backend="triton"),
                       fastsample.top_k_mask_logits(x, 17, backend="cpu"))
    draft = make_probs(3, 1500, "flat", seed=10).reshape(3, 1, 1500) / 3
    target = make_probs(6, 1500, "flat", seed=11).reshape(3, 2, 1500) / 3
    ids = torch.tensor([[4], [900], [1499]])
    got = fastsample.chain_speculative_sampling(draft, ids, target, seed=5, backend="triton")
    want = fastsample.chain_speculative_sampling(draft, ids, target, seed=5, backend="cpu")
    for g, w in zip(got, want):
        assert torch.equal(g, w)


# --------------------------------------------------------------------------------------------- GPU only
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("batch, vocab", [(1, 128256), (32, 128256), (256, 32000)])
def test_gpu_sample_matches_cpu_backend(batch, vocab):
    _cpu_or_skip()
    x = make_logits(batch, vocab, "flat", seed=batch)
    want = fastsample.sample(x, **FILTERS, seed=1, backend="cpu")
    got = fastsample.sample(x.cuda(), **FILTERS, seed=1, backend="triton").cpu()
    assert_rare(int((got != want).sum()), batch, "gpu triton vs cpu")


@pytest.mark.gpu
@gpu
def test_gpu_ops_match_cpu_backend():
    _cpu_or_skip()
    x = make_logits(8, 50000, "peaked", seed=2)
    probs = make_probs(8, 50000, "peaked", seed=3)
    xc, pc = x.cuda(), probs.cuda()
    torch.testing.assert_close(fastsample.softmax(xc, 0.7, backend="triton").cpu(),
                               fastsample.softmax(x, 0.7, backend="cpu"))
    values, indices = fastsample.top_k(xc, 100, backend="triton")
    assert torch.equal(indices.cpu(), fastsample.top_k(x, 100, backend="cpu")[1])
    got = fastsample.top_k_renorm_probs(pc, 64, backend="triton").cpu()
    torch.testing.assert_close(got, fastsample.top_k_renorm_probs(probs, 64, backend="cpu"))
    got = fastsample.sampling_from_probs(pc, seed=4, backend="triton").cpu()
    assert torch.equal(got, fastsample.sampling_from_probs(probs, seed=4, backend="cpu"))


@pytest.mark.gpu
@gpu
def test_gpu_compile_fullgraph_and_cuda_graph_match_eager():
    x = make_logits(4, 32000, "flat", seed=12).cuda()
    seed = torch.arange(4, device="cuda", dtype=torch.int64) + 100
    offset = torch.zeros(4, device="cuda", dtype=torch.int64)

    def step(logits, seed, offset):
        return fastsample.sample(logits, 0.8, 50, 0.9, seed=seed, offset=offset, backend="triton")

    eager = step(x, seed, offset)
    compiled = torch.compile(step, fullgraph=True)(x, seed, offset)
    assert torch.equal(compiled, eager)
    step(x, seed, offset)  # warm up (compiles the kernels) before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step(x, seed, offset)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager)
