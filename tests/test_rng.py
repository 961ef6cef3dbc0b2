"""Random numbers (docs/design.md section 4): the oracle's Philox, the kernels' uniforms, and the _rng seed rules."""
import numpy as np
import pytest
import torch
from conftest import np64, sizes
from scipy import stats

import fastsample
import oracle
from fastsample import _rng


# ------------------------------------------------------------------------------------------ oracle Philox
@pytest.mark.parametrize("counter, key, want", [
    # The two known answers of docs/design.md section 4 and Random123's all-ones vector (kat_vectors).
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
])
def test_philox_known_answers(counter, key, want):
    assert tuple(int(w) for w in oracle.philox4x32_10(*counter, *key)) == want


def test_philox_vectorised_matches_scalar():
    rng = np.random.default_rng(1)
    words = rng.integers(0, 2**32, size=(6, 50), dtype=np.uint64)
    vec = oracle.philox4x32_10(*words)
    for i in range(0, 50, 7):
        one = oracle.philox4x32_10(*(int(w[i]) for w in words))
        assert [int(v[i]) for v in vec] == [int(v) for v in one]


def test_uniform_layout():
    """u = (word0 >> 8) / 2^24 with key = (lo, hi) of the seed and counter = (lo, hi of offset, draw, 0);
    negative seeds and offsets are their two's-complement bit patterns."""
    seed = np.array([0, 1, -1, 2**40 + 3, -(2**62)], dtype=np.int64)
    offset = np.array([0, 2**33 + 5, -2, 7, 123456789012], dtype=np.int64)
    u = oracle.uniform(seed, offset, 3)
    for b in range(seed.size):
        s, o = int(seed[b]) % 2**64, int(offset[b]) % 2**64
        w0 = int(oracle.philox4x32_10(o & 0xFFFFFFFF, o >> 32, 3, 0, s & 0xFFFFFFFF, s >> 32)[0])
        assert u[b] == (w0 >> 8) / 2**24
    assert ((u >= 0) & (u < 1)).all()
    assert np.all(u.astype(np.float32) == u)  # 24 bits: exact in float32


# ---------------------------------------------------------------------------- the kernels' uniforms
def _uniform_tokens(backend, seed, offset, vocab=4096):
    """Tokens of sampling_from_probs on the uniform distribution over ``vocab`` (a power of two): every CDF
    step k / V is exact in float32 whatever the summation order, so the token is exactly floor(u * V)."""
    probs = torch.full((seed.shape[0], vocab), 1.0 / vocab)
    return np64(fastsample.sampling_from_probs(probs, seed=seed, offset=offset, backend=backend))


def test_kernel_uniforms_match_philox(backend):
    rows = 512 if backend != "triton" else 16
    gen = torch.Generator().manual_seed(2024)
    seed = torch.randint(-(2**63), 2**63 - 1, (rows,), generator=gen, dtype=torch.int64)
    # Offsets across the whole int64 range exercise both counter words (hi32 of the offset too).
    offset = torch.randint(-(2**63), 2**63 - 1, (rows,), generator=gen, dtype=torch.int64)
    offset[: rows // 4] = torch.arange(rows // 4)  # and the small offsets real callers use
    got = _uniform_tokens(backend, seed, offset)
    want = np.floor(oracle.uniform(np64(seed), np64(offset), 0) * 4096).astype(np.int64)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"rows {bad[:5].tolist()}: seed {np64(seed)[bad[:5]].tolist()}, offset " \
                          f"{np64(offset)[bad[:5]].tolist()}: got {got[bad[:5]].tolist()}, want {want[bad[:5]].tolist()}"


def test_kernel_uniform_int_seed_offsets(backend):
    """An int seed and int offset o give row b the counter offset o + b."""
    rows = 64 if backend != "triton" else 8
    got = np64(fastsample.sampling_from_probs(torch.full((rows, 4096), 1 / 4096), seed=99, offset=1000,
                                              backend=backend))
    want = np.floor(oracle.uniform(99, np.arange(1000, 1000 + rows), 0) * 4096).astype(np.int64)
    np.testing.assert_array_equal(got, want)


def test_kernel_uniforms_are_uniform(backend):
    """The kernels' u over consecutive offsets of one seed pass a chi-square test in 64 equiprobable bins (the top
    6 bits of u), with a fixed seed: a sanity check of the generator as the kernels use it."""
    rows = sizes(backend).draws
    got = _uniform_tokens(backend, torch.full((rows,), 5, dtype=torch.int64), torch.arange(rows))
    counts = np.bincount(got // 64, minlength=64)
    assert stats.chisquare(counts).pvalue > 1e-4


# --------------------------------------------------------------------------------------- _rng rules
def test_per_row_seed_offset_int_seed():
    seed, offset = _rng.per_row_seed_offset(5, torch.device("cpu"), seed=7, offset=10)
    assert seed.dtype == offset.dtype == torch.int64
    assert seed.tolist() == [7] * 5 and offset.tolist() == [10, 11, 12, 13, 14]
    seed, offset = _rng.per_row_seed_offset(3, torch.device("cpu"), seed=-3)
    assert seed.tolist() == [-3] * 3 and offset.tolist() == [0, 1, 2]


def test_per_row_seed_offset_tensor_seed_and_offset():
    seeds = torch.tensor([5, -6, 2**62], dtype=torch.int64)
    seed, offset = _rng.per_row_seed_offset(3, torch.device("cpu"), seed=seeds, offset=4)
    assert seed.tolist() == seeds.tolist() and offset.tolist() == [4, 4, 4]  # per-row seeds: offset o, not o + b
    offs = torch.tensor([9, 8, 7], dtype=torch.int32)
    seed, offset = _rng.per_row_seed_offset(3, torch.device("cpu"), seed=1, offset=offs)
    assert seed.tolist() == [1, 1, 1] and offset.dtype == torch.int64 and offset.tolist() == [9, 8, 7]


def test_per_row_seed_offset_drawn_from_generator():
    torch.manual_seed(123)
    s1, o1 = _rng.per_row_seed_offset(4, torch.device("cpu"))
    torch.manual_seed(123)
    s2, o2 = _rng.per_row_seed_offset(4, torch.device("cpu"), offset=3)
    assert s1.tolist() == s2.tolist() and len(set(s1.tolist())) == 1 and 0 <= int(s1[0]) < 2**63
    assert o1.tolist() == [0, 1, 2, 3] and o2.tolist() == [3, 4, 5, 6]
    # An explicit generator: reproducible, and it leaves torch's default generator alone.
    state = torch.get_rng_state()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = _rng.per_row_seed_offset(2, torch.device("cpu"), generator=g1)[0]
    b = _rng.per_row_seed_offset(2, torch.device("cpu"), generator=g2)[0]
    assert a.tolist() == b.tolist()
    assert torch.equal(torch.get_rng_state(), state)
    # Successive calls draw fresh seeds.
    assert _rng.per_row_seed_offset(2, torch.device("cpu"), generator=g1)[0].tolist() != a.tolist()


@pytest.mark.parametrize("kwargs, error", [
    ({"seed": 1.5}, TypeError),
    ({"seed": True}, TypeError),
    ({"seed": 2**63}, ValueError),
    ({"offset": False}, TypeError),
    ({"offset": 0.0}, TypeError),
    ({"seed": torch.zeros(3, dtype=torch.int64)}, ValueError),
    ({"seed": torch.zeros(4)}, TypeError),
    ({"offset": torch.zeros(4, 1, dtype=torch.int64)}, ValueError),
])
def test_per_row_seed_offset_rejects(kwargs, error):
    with pytest.raises(error):
        _rng.per_row_seed_offset(4, torch.device("cpu"), **kwargs)


# --------------------------------------------------------------------------------- through the public API
def test_manual_seed_reproducible(backend):
    logits = torch.randn(8, 100, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(77)
    a = fastsample.sampling_from_logits(logits, backend=backend)
    torch.manual_seed(77)
    b = fastsample.sampling_from_logits(logits, backend=backend)
    assert torch.equal(a, b)
    # The drawn seed acts exactly like seed=S, offset=0.
    torch.manual_seed(77)
    s = int(_rng.per_row_seed_offset(8, torch.device("cpu"))[0][0])
    assert torch.equal(a, fastsample.sampling_from_logits(logits, seed=s, backend=backend))


def test_explicit_generator(backend):
    logits = torch.randn(8, 100, generator=torch.Generator().manual_seed(1))
    a = fastsample.sampling_from_logits(logits, generator=torch.Generator().manual_seed(3), backend=backend)
    b = fastsample.sampling_from_logits(logits, generator=torch.Generator().manual_seed(3), backend=backend)
    assert torch.equal(a, b)
    s = int(_rng.per_row_seed_offset(8, torch.device("cpu"), generator=torch.Generator().manual_seed(3))[0][0])
    assert torch.equal(a, fastsample.sampling_from_logits(logits, seed=s, backend=backend))


def test_strided_seed_and_offset_tensors(backend):
    """Per-row seed/offset tensors that are views (stride 0 from expand, or strided slices) give the same tokens
    as contiguous copies: kernels must not assume unit stride (a drawn seed reaches them as an expand view)."""
    logits = torch.randn(6, 100, generator=torch.Generator().manual_seed(2))
    seed = torch.tensor([12345]).expand(6)
    offset = torch.arange(12)[::2]
    want = fastsample.sampling_from_logits(logits, seed=seed.contiguous(), offset=offset.contiguous(),
                                           backend=backend)
    assert torch.equal(fastsample.sampling_from_logits(logits, seed=seed, offset=offset, backend=backend), want)


def test_batch_invariance_with_tensor_seeds(backend):
    """With per-row seeds a row's token depends only on its own seed, offset and logits: the same rows in
    another batch (permuted, and one by one) give the same tokens."""
    rows = 16 if backend != "triton" else 4
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(rows, 300, generator=gen)
    seeds = torch.randint(0, 2**62, (rows,), generator=gen, dtype=torch.int64)
    full = fastsample.sample(logits, temperature=0.8, top_k=50, top_p=0.9, seed=seeds, offset=5, backend=backend)
    perm = torch.randperm(rows, generator=gen)
    permuted = fastsample.sample(logits[perm], temperature=0.8, top_k=50, top_p=0.9, seed=seeds[perm], offset=5,
                                 backend=backend)
    assert torch.equal(permuted, full[perm])
    for b in range(0, rows, 3):
        one = fastsample.sample(logits[b:b + 1], temperature=0.8, top_k=50, top_p=0.9, seed=seeds[b:b + 1],
                                offset=5, backend=backend)
        assert one.item() == full[b].item()
