"""Property-based tests (hypothesis): every public op on every backend that runs here, on random shapes,
dtypes, per-row parameters, value patterns and memory layouts, against tests/oracle.py.

Properties checked on every example:
- tokens lie in [0, V) or are -1, and -1 exactly on the rows the oracle calls invalid;
- tokens equal the oracle's, or lie in its rounding window (`oracle.sample_with_candidates`, as in
  tests/test_sampling.py); speculative rows equal the oracle's unless it flags them ambiguous;
- renormalised rows match one of the oracle's candidate kept sets: zero exactly on dropped tokens, within
  tolerance elsewhere, and so sum to 1 (invalid rows: all zeros);
- softmax, top_k, top_k_mask_logits and greedy equal the oracle (exactly, or within float32 tolerance);
- no input is modified (inputs are compared bit for bit with a copy taken before the call).

Examples are deterministic (``derandomize=True``, no example database). The CI profile runs a few dozen
examples per test; ``FASTSAMPLE_FUZZ=long`` runs many more (and larger Triton shapes).
"""
import os

import numpy as np
import pytest
import torch
from conftest import check_close, check_renorm, check_tokens, np64
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import fastsample
import oracle

LONG = os.environ.get("FASTSAMPLE_FUZZ") == "long"
BACKENDS = ("cpu", "torch", "triton")
# Examples per test and backend; the Triton interpreter is ~100x slower per element, so it gets fewer.
EXAMPLES = {"cpu": 400, "torch": 150, "triton": 40} if LONG else {"cpu": 30, "torch": 12, "triton": 4}
# Largest B * V per example (the float64 oracle loops over rows in numpy; the interpreter over blocks).
ELEMENTS = {"cpu": 1 << 20, "torch": 1 << 19, "triton": 1 << 12 if LONG else 600}
MAX_VOCAB = {"cpu": 300000, "torch": 300000, "triton": 4096 if LONG else 300}
TOL = (1e-6, 1e-5)  # (atol, rtol) of float32 probabilities, as in test_softmax.py / test_topp.py
NAN, INF = float("nan"), float("inf")


def fuzz(backend: str):
    # No shrinking: examples are large tensors, and shrinking them can take longer than the whole run; the
    # failure message names the shape, dtype, pattern, layout and seed of the example instead.
    return settings(max_examples=EXAMPLES[backend], derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])


# ------------------------------------------------------------------------------------------ strategies
def vocabs(backend: str):
    """Vocabulary sizes, weighted towards the edges of vector widths and blocks: 2^k, 2^k +- 1, 16m +- 1,
    64m +- 1, and 1."""
    top = MAX_VOCAB[backend]
    powers = st.integers(0, top.bit_length() - 1).map(lambda k: 1 << k)
    near_power = st.tuples(powers, st.sampled_from([-1, 0, 1])).map(lambda t: t[0] + t[1])
    multiple = st.tuples(st.sampled_from([16, 64]), st.integers(1, max(1, top // 64)), st.sampled_from([-1, 0, 1]))
    near_multiple = multiple.map(lambda t: t[0] * t[1] + t[2])
    anything = st.integers(1, top)
    return st.one_of(st.just(1), near_power, near_multiple, anything).map(lambda v: min(max(v, 1), top))


PATTERNS = ("normal", "peaked", "ties", "all_equal", "one_inf", "neg_inf_runs", "nan_row", "huge", "subnormal",
            "zeros")


@st.composite
def matrices(draw, backend: str, probs: bool):
    """(x, what): a [B, V] float tensor (float32 probs; float32/float16/bfloat16 logits) in a random layout."""
    vocab = draw(vocabs(backend))
    batch = draw(st.integers(0, max(1, min(64, ELEMENTS[backend] // vocab))))
    dtype = torch.float32 if probs else draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    pattern = draw(st.sampled_from(PATTERNS))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, vocab, generator=gen, dtype=torch.float64)
    rows = torch.arange(batch)
    pick = lambda n: torch.randint(0, max(vocab, 1), (n,), generator=gen)  # noqa: E731
    if pattern == "peaked":
        x = x * 6
    elif pattern == "ties":
        x = torch.round(x * 2) / 2
    elif pattern == "all_equal":
        x = torch.full_like(x, 0.25)
    elif pattern == "one_inf" and batch:  # one +inf in about half of the rows (probs: those rows are invalid)
        some = rows[torch.rand(batch, generator=gen) < 0.5]
        x[some, pick(some.numel())] = INF
    elif pattern == "neg_inf_runs" and batch:
        start = pick(1).item()
        x[:, start:start + max(1, vocab // 3)] = -INF
        if batch > 1:
            x[0] = -INF  # a whole row of -inf (probs: all zeros)
    elif pattern == "nan_row" and batch:
        x[pick(1).item() % batch, pick(1).item()] = NAN
    elif pattern == "huge":
        x = x * (1e4 if dtype == torch.float16 else 1e37)
    elif pattern == "subnormal":
        x = x * (1e-6 if dtype == torch.float16 else 1e-40)
    elif pattern == "zeros" and batch:  # -inf logits, zero probabilities, in about half of the columns
        x[:, torch.rand(vocab, generator=gen) < 0.5] = -INF
    if probs:  # a weight exp(x - max) per token, -inf -> 0, NaN and +inf carried through; not normalised
        finite = torch.isfinite(x)
        top = torch.where(finite, x, -INF).amax(dim=1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        w = torch.where(finite, torch.exp(x - top), torch.zeros_like(x))
        w = torch.where(torch.isnan(x) | (x == INF), x, w)
        if pattern == "subnormal":
            w = w * 1e-39
        x = w * draw(st.sampled_from([1.0, 3.0, 1e-30]))
    x = x.to(dtype)
    layout = draw(st.sampled_from(["contiguous", "column_slice", "offset", "transposed"]))
    if layout == "column_slice":  # every other column of a wider tensor filled with NaN
        x = torch.stack([x, torch.full_like(x, NAN)], dim=2).flatten(1)[:, ::2]
    elif layout == "offset" and batch:  # a window into a larger tensor: nonzero storage offset, row stride > V
        big = torch.full((batch + 1, vocab + 5), NAN, dtype=dtype)
        big[1:, 3:3 + vocab] = x
        x = big[1:, 3:3 + vocab]
    elif layout == "transposed":
        x = x.t().contiguous().t()
    return x, f"B={batch} V={vocab} {dtype} {pattern} {layout} seed={seed}"


def _float_param(draw, batch, values):
    """A scalar (valid range only: scalars out of range raise) or a float32 tensor [B] (any value)."""
    if draw(st.booleans()):
        return draw(st.sampled_from(values))
    return torch.tensor(draw(st.lists(st.sampled_from(values + [NAN, -0.5, 1.5]), min_size=batch,
                                      max_size=batch)), dtype=torch.float32)


@st.composite
def params(draw, batch: int, vocab: int):
    """Per-row temperature, top_k, top_p, min_p: scalars or [B] tensors, boundary values included."""
    temps = [0.0, 1.0, 1e-6, 1e6, 0.3, 0.8, 1.7]
    ks = [0, 1, 2, vocab - 1, vocab, vocab + 1, -3, max(1, vocab // 3)]
    if draw(st.booleans()):
        top_k = draw(st.sampled_from(ks))
    else:
        top_k = torch.tensor(draw(st.lists(st.sampled_from(ks), min_size=batch, max_size=batch)), dtype=torch.int64)
    return dict(temperature=_float_param(draw, batch, temps), top_k=top_k,
                top_p=_float_param(draw, batch, [0.0, 1.0, 1e-7, 0.5, 0.9, 0.99]),
                min_p=_float_param(draw, batch, [0.0, 1.0, 1e-7, 0.05, 0.3]))


def _oracle_param(value):
    if isinstance(value, torch.Tensor):
        return np64(value)
    return float(np.float32(value)) if isinstance(value, float) else value


# ------------------------------------------------------------------------------------------ helpers
def _snapshot(*tensors):
    return [t.clone() for t in tensors if isinstance(t, torch.Tensor)]


def _assert_unmodified(before, *tensors):
    after = [t for t in tensors if isinstance(t, torch.Tensor)]
    for a, b in zip(after, before, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg="an input was modified")


def _check_sampled(got, x, is_logits, what, **kw):
    batch, vocab = x.shape
    assert got.dtype == torch.int64 and got.shape == (batch,), what
    t = np64(got)
    assert ((t == -1) | ((t >= 0) & (t < vocab))).all(), f"{what}: token out of range {t}"
    kw = {k: _oracle_param(v) for k, v in kw.items()}
    seeds, offsets = np.full(batch, 77, dtype=np.int64), np.arange(5, 5 + batch, dtype=np.int64)
    want, _, cands = oracle.sample_with_candidates(np64(x), is_logits, seed=seeds, offset=offsets, **kw)
    assert ((t == -1) == (want == -1)).all(), f"{what}: -1 rows {np.flatnonzero(t == -1)} != {np.flatnonzero(want == -1)}"
    check_tokens(got, want, cands, what=what)


# ------------------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_property(backend):
    @fuzz(backend)
    @given(data=st.data())
    def run(data):
        x, what = data.draw(matrices(backend, probs=False))
        kw = data.draw(params(x.shape[0], x.shape[1]))
        before = _snapshot(x, *kw.values())
        got, logprobs = fastsample.sample(x, **kw, return_logprobs=True, seed=77, offset=5, backend=backend)
        _assert_unmodified(before, x, *kw.values())
        _check_sampled(got, x, True, f"{backend} sample {what} {kw}", **kw)
        assert (torch.isnan(logprobs) == (got == -1)).all() and (logprobs[got >= 0] <= 1e-6).all(), what
    run()


SAMPLERS = {  # public function -> (is_logits, filter keywords it takes)
    "sampling_from_probs": (False, ()),
    "sampling_from_logits": (True, ()),
    "top_k_sampling_from_probs": (False, ("top_k",)),
    "top_p_sampling_from_probs": (False, ("top_p",)),
    "min_p_sampling_from_probs": (False, ("min_p",)),
    "top_k_top_p_sampling_from_probs": (False, ("top_k", "top_p")),
    "top_k_top_p_sampling_from_logits": (True, ("top_k", "top_p")),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_property(backend, name):
    is_logits, keys = SAMPLERS[name]

    @fuzz(backend)
    @given(data=st.data())
    def run(data):
        x, what = data.draw(matrices(backend, probs=not is_logits))
        all_params = data.draw(params(x.shape[0], x.shape[1]))
        kw = {k: all_params[k] for k in keys}
        before = _snapshot(x, *kw.values())
        got = getattr(fastsample, name)(x, *kw.values(), seed=77, offset=5, backend=backend)
        _assert_unmodified(before, x, *kw.values())
        _check_sampled(got, x, is_logits, f"{backend} {name} {what} {kw}", **kw)
    run()


# ------------------------------------------------------------------------------------------ renorm
RENORMS = {"top_k_renorm_probs": "top_k", "top_p_renorm_probs": "top_p", "min_p_renorm_probs": "min_p"}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(RENORMS))
def test_renorm_property(backend, name):
    key = RENORMS[name]

    @fuzz(backend)
    @given(data=st.data())
    def run(data):
        x, what = data.draw(matrices(backend, probs=True))
        value = data.draw(params(x.shape[0], x.shape[1]))[key]
        before = _snapshot(x, value)
        got = getattr(fastsample, name)(x, value, backend=backend)
        _assert_unmodified(before, x, value)
        what = f"{backend} {name} {what} {key}={value}"
        assert got.dtype == torch.float32 and got.shape == x.shape, what
        if x.shape[0] == 0:
            return
        cands = oracle.renorm_candidates(np64(x), **{key: _oracle_param(value)})
        check_renorm(got, cands, *TOL, what=what)
        sums = got.double().sum(dim=1)
        valid = torch.tensor([bool(c[0].any()) for c in cands])
        assert torch.allclose(sums[valid], torch.ones_like(sums[valid]), atol=1e-4), what
        assert (got[~valid] == 0).all(), what
    run()


# ------------------------------------------------------------------------------------------ the rest
@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_property(backend):
    @fuzz(backend)
    @given(data=st.data())
    def run(data):
        x, what = data.draw(matrices(backend, probs=False))
        temperature = data.draw(params(x.shape[0], x.shape[1]))["temperature"]
        before = _snapshot(x, temperature)
        got = fastsample.softmax(x, temperature, backend=backend)
        _assert_unmodified(before, x, temperature)
        check_close(got, oracle.softmax(np64(x), _oracle_param(temperature)), *TOL,
                    what=f"{backend} softmax {what} T={temperature}")
    run()


@pytest.mark.parametrize("backend", BACKENDS)
def test_top_k_and_mask_and_greedy_property(backend):
    @fuzz(backend)
    @given(data=st.data())
    def run(data):
        x, what = data.draw(matrices(backend, probs=False))
        vocab = x.shape[1]
        k = data.draw(st.sampled_from(sorted({min(v, vocab) for v in (0, 1, 2, vocab // 2, vocab - 1, vocab)})))
        mask_k = data.draw(params(x.shape[0], vocab))["top_k"]
        before = _snapshot(x, mask_k)
        values, indices = fastsample.top_k(x, k, backend=backend)
        masked = fastsample.top_k_mask_logits(x, mask_k, backend=backend)
        tokens = fastsample.greedy(x, backend=backend)
        _assert_unmodified(before, x, mask_k)
        want_values, want_indices = oracle.top_k(np64(x), k)
        assert values.dtype == x.dtype and indices.dtype == torch.int64, what
        np.testing.assert_array_equal(np64(indices), want_indices, err_msg=f"{backend} top_k k={k} {what}")
        np.testing.assert_array_equal(np64(values), want_values, err_msg=f"{backend} top_k values k={k} {what}")
        assert masked.dtype == x.dtype, what
        np.testing.assert_array_equal(np64(masked), oracle.top_k_mask_logits(np64(x), _oracle_param(mask_k)),
                                      err_msg=f"{backend} top_k_mask_logits k={mask_k} {what}")
        np.testing.assert_array_equal(np64(tokens), oracle.greedy(np64(x)), err_msg=f"{backend} greedy {what}")
    run()


@st.composite
def speculative_inputs(draw, backend: str):
    vocab = draw(vocabs(backend))
    n = draw(st.integers(0, 4))
    batch = draw(st.integers(0, max(1, min(16, ELEMENTS[backend] // (vocab * (2 * n + 1))))))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([0.5, 3.0]))
    q = torch.softmax(torch.randn(batch, n, vocab, generator=gen) * scale, dim=-1)
    p = torch.softmax(torch.randn(batch, n + 1, vocab, generator=gen) * scale, dim=-1)
    ids = torch.randint(-1, vocab + 1, (batch, n), generator=gen)  # out-of-range ids are rejected
    pattern = draw(st.sampled_from(["normal", "same", "zeros", "nan", "negative"]))
    if pattern == "same":  # target == draft on the draft positions: every test passes
        p[:, :n] = q
    elif pattern == "zeros" and batch:
        p[0] = 0.0
    elif pattern == "nan" and batch and n:
        q[-1, 0, 0] = NAN
    elif pattern == "negative" and batch:
        p[-1, -1, -1] = -0.1
    layout = draw(st.sampled_from(["contiguous", "strided", "transposed"]))
    if layout == "strided":  # every other element of a wider tensor
        p = torch.stack([p, torch.full_like(p, NAN)], dim=3).flatten(2)[:, :, ::2]
    elif layout == "transposed":
        p = p.transpose(1, 2).contiguous().transpose(1, 2)
    return q, ids, p, f"B={batch} n={n} V={vocab} {pattern} {layout} seed={seed}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_chain_speculative_sampling_property(backend):
    @fuzz(backend)
    @given(data=st.data())
    def run(data):
        q, ids, p, what = data.draw(speculative_inputs(backend))
        batch, n = ids.shape
        seed = torch.randint(0, 2**62, (batch,), generator=torch.Generator().manual_seed(batch))
        before = _snapshot(q, ids, p, seed)
        out, accepted, emitted = fastsample.chain_speculative_sampling(q, ids, p, seed=seed, backend=backend)
        _assert_unmodified(before, q, ids, p, seed)
        assert out.shape == (batch, n + 1) and accepted.shape == emitted.shape == (batch,), what
        t = np64(out)
        assert ((t == -1) | ((t >= 0) & (t < q.shape[2]))).all(), what
        want_out, want_acc, want_emit, ambiguous = oracle.chain_speculative_sampling(
            np64(q), np64(ids), np64(p), np64(seed), np.zeros(batch, dtype=np.int64))
        differs = (t != want_out).any(axis=1) | (np64(accepted) != want_acc) | (np64(emitted) != want_emit)
        bad = np.flatnonzero(differs & ~ambiguous)
        assert bad.size == 0, f"{backend} {what}: rows {bad.tolist()} got {t[bad].tolist()} want {want_out[bad].tolist()}"
    run()

