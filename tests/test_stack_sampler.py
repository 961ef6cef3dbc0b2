"""The stack sampler (fastsample.sample_stack, docs/ops.md "sample_stack") against tests/oracle.py.

Backends: "cpu" (C++), "torch" (stack/reference.py), "triton" (triton/stack_sampler.py, run by the
interpreter on CPU tensors here, so its tests use vocabularies of at most 1000 tokens) and "cuda"
(stack/cuda.py over the CUDA kernels: on a GPU only; its composition is also tested on the CPU with a
stand-in for the kernel). The CUDA route is tested at the end.
"""
import math

import numpy as np
import pytest
import torch
from conftest import assert_rare, chi_square_pvalue, f32, make_logits, np64

import fastsample
import oracle
from fastsample import _ops

BACKENDS = ["cpu", "torch", "triton"]
COMPILED = ["cpu", "torch"]  # tests whose vocabulary is too big for the Triton interpreter
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LOGPROB_TOL = dict(atol=3e-5, rtol=1e-5)


CUDA_KERNELS = torch.cuda.is_available() and _ops.cuda_built()


def _on_gpu(fn):
    """sample_stack with its tensor arguments moved to the GPU and its results moved back."""
    def call(*args, **kwargs):
        move = lambda v: v.cuda() if isinstance(v, torch.Tensor) else v  # noqa: E731
        out = fn(*map(move, args), **{k: move(v) for k, v in kwargs.items()})
        return type(out)(*(None if t is None else t.cpu() for t in out))

    return call


@pytest.fixture(params=[*BACKENDS, pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not CUDA_KERNELS, reason="needs a GPU and fastsample._C built with its CUDA "
                                                                 "kernels")])])
def backend(request, monkeypatch):
    if request.param == "cuda":
        monkeypatch.setattr(fastsample, "sample_stack", _on_gpu(fastsample.sample_stack))
    return request.param


def _rand_mask(rows, vocab, gen, allow=0.5):
    """int32 bitmask [rows, ceil(V/32)] allowing each token with probability `allow` (row 0 allows every token)."""
    allowed = torch.rand(rows, vocab, generator=gen) < allow
    allowed[0] = True
    words = (vocab + 31) // 32
    padded = torch.zeros(rows, words * 32, dtype=torch.int64)
    padded[:, :vocab] = allowed.long()
    bits = (padded.view(rows, words, 32) << torch.arange(32)).sum(-1)
    return torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32)


def _ids(rows, length, vocab, gen, pad=0.3):
    """int64 ids [rows, length] with -1 padding, repeats, and ids 0 and V-1 present."""
    ids = torch.randint(0, vocab, (rows, length), generator=gen)
    if length >= 2:
        ids[:, 0], ids[:, 1] = 0, vocab - 1
    return torch.where(torch.rand(rows, length, generator=gen) < pad, -1, ids)


def _case(rows, vocab, seed, dtype=torch.float32, kind="flat", mask=True, bias=True, penalties=True):
    gen = torch.Generator().manual_seed(seed)
    x = make_logits(rows, vocab, kind, seed).to(dtype)
    args = {}
    if mask:
        args["allowed_mask"] = _rand_mask(rows, vocab, gen)
    if bias:
        args["bias_ids"] = _ids(rows, 6, vocab, gen)
        args["bias_values"] = torch.randn(rows, 6, generator=gen) * 3
    if penalties:
        args["prompt_ids"] = _ids(rows, 12, vocab, gen)
        args["output_ids"] = _ids(rows, 8, vocab, gen)
        args["repetition_penalty"] = 1.3
        args["frequency_penalty"] = 0.4
        args["presence_penalty"] = -0.2
    return x, args


def _oracle(x, args, **kw):
    """oracle.sample_stack with the public API's keyword names (scalars rounded to float32 like the kernels)."""
    vocab = x.shape[1]
    conv = lambda v: np64(v) if isinstance(v, torch.Tensor) else (f32(v) if isinstance(v, float) else v)  # noqa
    mask = args.get("allowed_mask")
    return oracle.sample_stack(
        np64(x), None if mask is None else oracle.allowed_from_bitmask(np64(mask), vocab),
        *(np64(args[k]) if k in args else None for k in ("bias_ids", "bias_values", "prompt_ids", "output_ids")),
        conv(args.get("repetition_penalty", 1.0)), conv(args.get("frequency_penalty", 0.0)),
        conv(args.get("presence_penalty", 0.0)), conv(kw.get("temperature", 1.0)), conv(kw.get("top_k", 0)),
        conv(kw.get("top_p", 1.0)), conv(kw.get("min_p", 0.0)), kw.get("order", "hf") == "vllm",
        kw.get("num_samples") or 1, kw["seeds"], kw["offsets"], kw.get("logprobs") or "processed",
        kw.get("top_logprobs", 0), top_n_sigma=conv(kw.get("top_n_sigma", -1.0)))


def _run_and_check(backend, x, args, what, **kw):
    """Run sample_stack and compare with the oracle: tokens exactly (boundary rows counted), logprobs, ranks
    and top-N on rows that drew the oracle's tokens. Returns (rows that took the other side of a near-tie, rows)."""
    rows = x.shape[0]
    seed = 1234
    seeds, offsets = np.full(rows, seed), np.arange(rows)
    want = _oracle(x, args, seeds=seeds, offsets=offsets, **kw)
    got = fastsample.sample_stack(x, **args, **kw, seed=seed, backend=backend)
    tokens = np64(got.tokens).reshape(rows, -1)
    flips = 0
    for b in range(rows):
        for j, cands in enumerate(want["candidates"][b]):
            assert tokens[b, j] in cands, f"{what}: row {b} draw {j}: got {tokens[b, j]}, oracle {sorted(cands)[:5]}"
            flips += tokens[b, j] != want["tokens"][b, j]
    if kw.get("logprobs"):
        same = (tokens == want["tokens"]).all(axis=1)
        lp = np64(got.logprobs).reshape(rows, -1)
        np.testing.assert_allclose(lp[same], want["logprobs"][same], equal_nan=True, err_msg=f"{what}: logprobs",
                                   **LOGPROB_TOL)
        ranks = np64(got.ranks).reshape(rows, -1)
        assert (ranks[same] == want["ranks"][same]).all(), f"{what}: ranks"
        if kw.get("top_logprobs"):
            np.testing.assert_allclose(np64(got.top_logprobs)[same], want["top_values"][same], equal_nan=True,
                                       err_msg=f"{what}: top logprobs", **LOGPROB_TOL)
            assert (np64(got.top_ids)[same] == want["top_ids"][same]).all(), f"{what}: top ids"
    return int(flips), tokens.size


# --------------------------------------------------------------------------------- exact tokens vs oracle
FILTERS = [dict(), dict(temperature=0.7, top_k=20), dict(temperature=0.8, top_p=0.9),
           dict(temperature=1.2, min_p=0.1), dict(temperature=0.8, top_k=50, top_p=0.9, min_p=0.05),
           dict(temperature=0.0, top_k=5)]


# (mask, bias, penalties): none, each alone, all.
STEPS = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)]


@pytest.mark.parametrize("order", ["hf", "vllm"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_tokens_every_step(backend, order, dtype):
    flips = total = 0
    for vocab in (1, 33, 1000 if backend == "triton" else 2000):
        for s, (mask, bias, penalties) in enumerate(STEPS):
            x, args = _case(8, vocab, seed=vocab + s, dtype=dtype, kind="peaked" if s % 2 else "flat",
                            mask=mask, bias=bias, penalties=penalties)
            # Triton computes steps 1-3 in its kernels and shares steps 4-7 with "torch": two filter sets suffice.
            for filters in FILTERS[-2:] if backend == "triton" else FILTERS:
                f, n = _run_and_check(backend, x, args, f"{backend} {order} {dtype} V={vocab} {s} {filters}",
                                      order=order, num_samples=2, logprobs="processed", top_logprobs=min(vocab, 3),
                                      **filters)
                flips, total = flips + f, total + n
    assert_rare(flips, total, f"{backend} stack sampler {order} {dtype}")


# top-n-sigma alone, with the other filters, per row (0 and -1 turn it off for a row).
SIGMA_FILTERS = [dict(top_n_sigma=1.0), dict(temperature=0.7, top_k=200, top_p=0.9, top_n_sigma=1.0),
                 dict(temperature=1.3, min_p=0.02, top_p=0.95,
                      top_n_sigma=torch.tensor([0.5, 0.0, -1.0, 2.0, 0.3, 1.0, 3.0, 0.7]))]


@pytest.mark.parametrize("order", ["hf", "vllm"])
def test_top_n_sigma_exact_tokens(backend, order):
    """Top-n-sigma (llama.cpp's rule, before the other filters) against the oracle: tokens, and through the
    processed logprobs and top-N the kept set itself; with and without steps 1-3 (masked tokens, -inf, are left
    out of sigma)."""
    flips = total = 0
    vocab = 1000 if backend == "triton" else 3000
    for s, steps in enumerate((STEPS[0], STEPS[4])):
        x, args = _case(8, vocab, seed=70 + s, kind="peaked" if s else "flat",
                        **dict(zip(("mask", "bias", "penalties"), map(bool, steps))))
        for filters in SIGMA_FILTERS:
            f, n = _run_and_check(backend, x, args, f"{backend} {order} top-n-sigma {steps} {filters}", order=order,
                                  num_samples=2, logprobs="processed", top_logprobs=5, **filters)
            flips, total = flips + f, total + n
    assert_rare(flips, total, f"{backend} top-n-sigma {order}")


def test_top_n_sigma_one_draw_and_bad_values(backend):
    """The one-draw call with top-n-sigma (the device routes leave their fused `sample` path for it), and bad n:
    a NaN or inf scalar is a ValueError naming it, a NaN or inf row of a tensor returns -1."""
    x, args = _case(6, 500, seed=77)
    seeds, offsets = np.full(6, 1234), np.arange(6)
    want = _oracle(x, args, seeds=seeds, offsets=offsets, top_n_sigma=0.8)
    got = fastsample.sample_stack(x, **args, top_n_sigma=0.8, seed=1234, backend=backend)
    assert all(int(t) in c[0] for t, c in zip(got.tokens, want["candidates"]))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="top_n_sigma"):
            fastsample.sample_stack(x, top_n_sigma=bad, backend=backend)
    rows = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 0.0, 2.0])
    got = fastsample.sample_stack(x, top_n_sigma=rows, seed=0, backend=backend)
    assert [int(t) >= 0 for t in got.tokens] == [True, False, False, False, True, True]


@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_tokens_one_draw_without_logprobs(backend, dtype):
    """One draw in HF order without logprobs (the Triton backend's fused path through the `sample` kernels)."""
    flips = total = 0
    # The interpreter runs the `sample` kernels slowly: Triton takes no steps and all steps (each step alone
    # is covered by test_exact_tokens_every_step).
    steps = [(0, STEPS[0]), (4, STEPS[4])] if backend == "triton" else list(enumerate(STEPS))
    for vocab in (33, 1000) if backend == "triton" else (1, 33, 1000):
        for s, (mask, bias, penalties) in steps:
            x, args = _case(8, vocab, seed=vocab + s, dtype=dtype, kind="peaked" if s % 2 else "flat",
                            mask=mask, bias=bias, penalties=penalties)
            for filters in FILTERS:
                f, n = _run_and_check(backend, x, args, f"{backend} one draw {dtype} V={vocab} {s} {filters}",
                                      **filters)
                flips, total = flips + f, total + n
    assert_rare(flips, total, f"{backend} stack sampler one draw {dtype}")


def test_orders_differ_as_documented(backend):
    # HF: top-p over the top-k survivors, then min-p; vLLM: min-p first, top-p over what min-p and top-k keep.
    x = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.06, 0.04]]))
    common = dict(top_p=0.75, min_p=0.4, logprobs="processed", top_logprobs=5, seed=0, backend=backend)
    hf = fastsample.sample_stack(x, **common)
    vllm = fastsample.sample_stack(x, order="vllm", **common)
    # HF keeps {0, 1, 2} by top-p (mass above token 2: 0.7 < 0.75), then min-p (0.16) keeps {0, 1, 2}; vLLM:
    # min-p keeps {0, 1, 2}, then top-p over their mass 0.9 (target 0.675) keeps {0, 1}.
    assert np.isfinite(np64(hf.top_logprobs)[0, :3]).all() and np.isinf(np64(hf.top_logprobs)[0, 3:]).all()
    assert np.isfinite(np64(vllm.top_logprobs)[0, :2]).all() and np.isinf(np64(vllm.top_logprobs)[0, 2:]).all()


@pytest.mark.parametrize("mode", ["processed", "raw"])
def test_logprobs_ranks_top_n(backend, mode):
    flips = total = 0
    for vocab in (7, 1000) if backend == "triton" else (7, 1000, 32000):
        x, args = _case(6, vocab, seed=vocab, kind="peaked")
        for filters in FILTERS:
            f, n = _run_and_check(backend, x, args, f"{backend} {mode} V={vocab} {filters}", num_samples=3,
                                  logprobs=mode, top_logprobs=min(vocab, 6), **filters)
            flips, total = flips + f, total + n
    assert_rare(flips, total, f"{backend} logprobs {mode}")


@pytest.mark.parametrize("backend", COMPILED)
def test_large_vocab_bench_shape(backend):
    """The benchmark's settings at V = 128256 (mask of half the vocabulary, 16 biased ids, long histories)."""
    gen = torch.Generator().manual_seed(5)
    rows, vocab = 4, 128256
    x = make_logits(rows, vocab, "peaked", 9)
    args = dict(allowed_mask=_rand_mask(rows, vocab, gen), bias_ids=torch.randint(0, vocab, (rows, 16), generator=gen),
                bias_values=torch.randn(rows, 16, generator=gen), prompt_ids=_ids(rows, 1024, vocab, gen, 0.1),
                output_ids=_ids(rows, 256, vocab, gen, 0.1), repetition_penalty=1.1, frequency_penalty=0.2,
                presence_penalty=0.1)
    flips = total = 0
    for filters in (dict(temperature=0.8, top_k=50, top_p=0.9, min_p=0.05), dict(temperature=0.8, top_p=0.9)):
        f, n = _run_and_check(backend, x, args, f"{backend} V={vocab} {filters}", logprobs="processed",
                              top_logprobs=5, **filters)
        flips, total = flips + f, total + n
    assert_rare(flips, total, f"{backend} stack sampler V={vocab}")


# ------------------------------------------------------------------------------ penalties, bias, bitmask
def _transcription(x, mask_bits, bias_ids, bias_values, prompt, output, r, f, q):
    """The docs/ops.md rules written out token by token in float64 (independent of oracle.py's vector form)."""
    rows, vocab = x.shape
    y = x.astype(np.float64).copy()
    for b in range(rows):
        for i, v in zip(bias_ids[b], bias_values[b]):
            if i != -1:
                y[b, i] += v
        counts = {}
        for i in output[b]:
            if i != -1:
                counts[i] = counts.get(i, 0) + 1
        seen = set(counts) | {i for i in prompt[b] if i != -1}
        for i in seen:
            y[b, i] = y[b, i] / r if y[b, i] > 0 else y[b, i] * r
        for i, c in counts.items():
            y[b, i] -= f * c + q
        for i in range(vocab):
            if not (mask_bits[b, i // 32] >> (i % 32)) & 1:
                y[b, i] = -np.inf
    return y


@pytest.mark.parametrize("vocab", [1, 31, 32, 33, 100])
def test_penalties_bias_mask_transcription(backend, vocab):
    """With T = 1 and no filters, the processed logprobs of every token are log_softmax of the processed
    logits: compare them with the token-by-token transcription (repeats, -1 padding, empty histories, ids 0
    and V - 1, V not a multiple of 32)."""
    gen = torch.Generator().manual_seed(vocab)
    rows = 5
    x = make_logits(rows, vocab, "flat", vocab)
    mask = _rand_mask(rows, vocab, gen, allow=0.7)
    bias_ids, prompt, output = _ids(rows, 5, vocab, gen), _ids(rows, 7, vocab, gen), _ids(rows, 9, vocab, gen)
    prompt[1], output[1], bias_ids[2] = -1, -1, -1  # empty histories and an empty bias row
    output[3, :4] = vocab - 1  # a repeated output id
    bias_values = torch.randn(rows, 5, generator=gen)
    r, f, q = f32(1.5), f32(0.3), f32(-0.7)
    got = fastsample.sample_stack(x, allowed_mask=mask, bias_ids=bias_ids, bias_values=bias_values,
                                  prompt_ids=prompt, output_ids=output, repetition_penalty=r, frequency_penalty=f,
                                  presence_penalty=q, logprobs="processed", top_logprobs=vocab, seed=0,
                                  backend=backend)
    y = _transcription(np64(x), np64(mask) & 0xFFFFFFFF, np64(bias_ids), np64(bias_values), np64(prompt),
                       np64(output), r, f, q)
    y32 = y.astype(np.float32).astype(np.float64)  # the processed logit is rounded to float32 once
    with np.errstate(invalid="ignore"):  # rows the mask empties are NaN: invalid rows
        want = y32 - y32.max(1, keepdims=True)
        want = want - np.log(np.exp(want).sum(1, keepdims=True))
    values = np.full((rows, vocab), np.nan)
    np.put_along_axis(values, np64(got.top_ids), np64(got.top_logprobs), axis=1)
    np.testing.assert_allclose(values, want, **LOGPROB_TOL)


# The GPU backends finish one draw without logprobs on the `sample` kernels, everything else with torch steps
# (fastsample/stack_compose.py): both routes must flag the invalid rows.
@pytest.mark.parametrize("route", [dict(num_samples=2, logprobs="processed", top_logprobs=2), dict()],
                         ids=["torch-steps", "sample-kernels"])
def test_mask_allowing_nothing_and_nan_rows(backend, route):
    x = make_logits(4, 40, "flat", 1)
    mask = torch.full((4, 2), -1, dtype=torch.int32)
    mask[0] = 0  # nothing allowed
    x[1, 7] = float("nan")
    mask[2, 1] = 0  # the NaN-free row 2 with its tokens 32..39 masked
    x[2, 35] = float("nan")  # a masked NaN still makes the raw row invalid
    bias_ids = torch.tensor([[-1], [-1], [-1], [3]])
    got = fastsample.sample_stack(x, allowed_mask=mask, bias_ids=bias_ids,
                                  bias_values=torch.tensor([[0.0], [0.0], [0.0], [float("nan")]]), **route,
                                  seed=0, backend=backend)
    assert (np64(got.tokens) == -1).all()
    if route:
        assert np.isnan(np64(got.logprobs)).all() and (np64(got.ranks) == -1).all()
        assert (np64(got.top_ids) == -1).all() and np.isnan(np64(got.top_logprobs)).all()


def test_out_of_range_history_id_is_an_invalid_row(backend):
    x = make_logits(3, 10, "flat", 2)
    prompt = torch.tensor([[1, -1], [10, 2], [-2, 3]])
    got = fastsample.sample_stack(x, prompt_ids=prompt, repetition_penalty=1.2, seed=0, backend=backend)
    assert np64(got.tokens)[0] >= 0 and (np64(got.tokens)[1:] == -1).all()


def test_greedy_rows_and_inf(backend):
    x = torch.tensor([[0.0, 3.0, 3.0, 1.0], [0.0, float("inf"), 1.0, float("inf")]])
    got = fastsample.sample_stack(x, temperature=torch.tensor([0.0, 1.0]), num_samples=64, logprobs="processed",
                                  top_logprobs=3, seed=7, backend=backend)
    t = np64(got.tokens)
    assert (t[0] == 1).all() and set(t[1]) == {1, 3}
    np.testing.assert_allclose(np64(got.logprobs), -math.log(2), rtol=1e-6)
    assert (np64(got.ranks) == 2).all()
    assert np64(got.top_ids).tolist() == [[1, 2, 0], [1, 3, 0]]


# ---------------------------------------------------------------------------------------- distributions
@pytest.mark.parametrize("order", ["hf", "vllm"])
def test_chi_square_of_n_draws(backend, order):
    vocab, n = 50, 20000
    x, args = _case(1, vocab, seed=11)
    kw = dict(temperature=0.9, top_k=30, top_p=0.95, min_p=0.02, order=order)
    got = fastsample.sample_stack(x, **args, **kw, num_samples=n, seed=3, backend=backend)
    want = _oracle(x, args, seeds=np.array([3]), offsets=np.array([0]), **kw)
    expected = np.exp(want["processed"][0])
    assert chi_square_pvalue(got.tokens[0], expected) > 1e-4


def test_draws_are_the_philox_stream(backend):
    """Draw j of a row is Philox draw j (on a uniform row, token = floor(u_j * V)), and num_samples=None gives
    draw 0 with shape [B]."""
    vocab = 1000
    x = torch.zeros(2, vocab)
    got = fastsample.sample_stack(x, num_samples=5, seed=9, offset=3, backend=backend)
    u = oracle.uniform(np.array([[9], [9]]), np.array([[3], [4]]), np.arange(5)[None])
    assert (np64(got.tokens) == np.floor(u * vocab)).all()
    single = fastsample.sample_stack(x, seed=9, offset=3, backend=backend)
    assert single.tokens.shape == (2,) and torch.equal(single.tokens, got.tokens[:, 0])


# --------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, error, name", [
    (dict(allowed_mask=torch.zeros(2, 1, dtype=torch.int32)), ValueError, "allowed_mask"),
    (dict(allowed_mask=torch.zeros(2, 2, dtype=torch.int64)), TypeError, "allowed_mask"),
    (dict(bias_ids=torch.zeros(2, 3, dtype=torch.int64)), ValueError, "bias_values"),
    (dict(bias_ids=torch.zeros(2, 3, dtype=torch.int64), bias_values=torch.zeros(2, 2)), ValueError, "bias_values"),
    (dict(bias_ids=torch.zeros(2, 3), bias_values=torch.zeros(2, 3)), TypeError, "bias_ids"),
    (dict(prompt_ids=torch.zeros(3, 3, dtype=torch.int64)), ValueError, "prompt_ids"),
    (dict(output_ids=torch.zeros(2, dtype=torch.int64)), ValueError, "output_ids"),
    (dict(repetition_penalty=0.0), ValueError, "repetition_penalty"),
    (dict(repetition_penalty=-1.0), ValueError, "repetition_penalty"),
    (dict(frequency_penalty=float("nan")), ValueError, "frequency_penalty"),
    (dict(presence_penalty=float("inf")), ValueError, "presence_penalty"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(order="sglang"), ValueError, "order"),
    (dict(num_samples=0), ValueError, "num_samples"),
    (dict(logprobs="final"), ValueError, "logprobs"),
    (dict(top_logprobs=2), ValueError, "top_logprobs"),
    (dict(logprobs="raw", top_logprobs=80), ValueError, "top_logprobs"),
])
def test_bad_input_names_the_argument(kwargs, error, name):
    x = torch.randn(2, 40)
    with pytest.raises(error, match=name):
        fastsample.sample_stack(x, **kwargs, backend="cpu")


@pytest.mark.skipif(not _ops.AVAILABLE, reason="fastsample._C is not built")
@pytest.mark.parametrize("arg, bad, error", [
    (0, torch.zeros(40), ValueError), (0, torch.zeros(2, 40, dtype=torch.int64), TypeError),
    (1, torch.zeros(2, 1, dtype=torch.int32), ValueError), (1, torch.zeros(2, 2, dtype=torch.int64), TypeError),
    (2, torch.zeros(2, 3, dtype=torch.int64), ValueError),  # bias_ids without bias_values
    (4, torch.zeros(2, 3), TypeError), (5, torch.zeros(3, 3, dtype=torch.int64), ValueError),
    (6, torch.ones(3), ValueError)])
def test_both_cpu_ops_reject_bad_steps_1_3_arguments_alike(arg, bad, error):
    """sample_stack and stack_processed_logits share one parser of the mask, bias, history and penalty arguments
    (csrc/cpu/stack_inputs.cpp): the same ValueError for a bad shape, TypeError for a wrong dtype, naming it."""
    names = ["logits", "allowed_mask", "bias", "bias_values", "prompt_ids", "output_ids", "repetition"]
    steps_1_3 = [torch.randn(2, 40), None, None, None, None, None, None, 1.0, None, 0.0, None, 0.0]
    steps_1_3[arg] = bad
    seed = torch.zeros(2, dtype=torch.int64)
    calls = [lambda: torch.ops.fastsample.stack_processed_logits(*steps_1_3),
             lambda: torch.ops.fastsample.sample_stack(*steps_1_3, None, 1.0, None, 0, None, 1.0, None, 0.0, False, 1,
                                                       seed, seed, 0, 0)]
    for call in calls:
        with pytest.raises(error, match=names[arg]):
            call()


def test_negative_penalties_and_bad_tensor_entries(backend):
    x = make_logits(3, 20, "flat", 3)
    out = torch.tensor([[1, 1], [2, -1], [3, 4]])
    got = fastsample.sample_stack(x, output_ids=out, repetition_penalty=torch.tensor([1.0, 0.0, 1.0]),
                                  frequency_penalty=torch.tensor([-0.5, 0.0, float("nan")]), seed=0,
                                  backend=backend)
    assert np64(got.tokens)[0] >= 0 and (np64(got.tokens)[1:] == -1).all()
    # Out of range without a history too (nothing penalised): the rule itself, not a NaN logit, drops the row.
    got = fastsample.sample_stack(x, frequency_penalty=torch.tensor([0.0, float("nan"), 0.0]),
                                  presence_penalty=torch.tensor([0.0, 0.0, float("inf")]), seed=0, backend=backend)
    assert np64(got.tokens)[0] >= 0 and (np64(got.tokens)[1:] == -1).all()


def test_cuda_route(monkeypatch):
    """The stack sampler picks its backend through fastsample.backends like every op: "cuda" gives fastsample._ops,
    whose sample_stack sends CUDA tensors to stack/cuda.py; "cuda" without the CUDA kernels is a RuntimeError that
    names the way out, never a silent fallback. No GPU here, so the device is faked."""
    from types import SimpleNamespace

    from fastsample.stack import cuda as stack_cuda

    monkeypatch.setattr(fastsample.stack.api, "ops_for", lambda x, backend: fastsample.backends.backend_ops("cuda"))
    monkeypatch.setattr(_ops, "cuda_built", lambda: False)
    with pytest.raises(RuntimeError, match="backend='triton'"):
        fastsample.sample_stack(torch.randn(2, 40), backend="cuda")
    seen = []
    monkeypatch.setattr(stack_cuda, "sample_stack", seen.append)
    on_cuda = SimpleNamespace(logits=SimpleNamespace(device=torch.device("cuda")))
    _ops.sample_stack(on_cuda)
    assert seen == [on_cuda]


@pytest.mark.parametrize("kw", [dict(temperature=0.8, top_k=50, top_p=0.9, min_p=0.05),
                                dict(temperature=0.0), dict(order="vllm", top_p=0.8, min_p=0.1, num_samples=2,
                                                            logprobs="processed", top_logprobs=3)])
def test_cuda_composition_on_cpu(monkeypatch, kw):
    """stack/cuda.py (stack_processed_logits, then the `sample` op's fused path or the torch steps, and the
    invalid-row flags) run on CPU tensors, where both ops have CPU kernels; on a GPU the `backend` fixture's
    "cuda" runs every test of this file through the CUDA kernels."""
    from fastsample.stack import cuda as stack_cuda

    monkeypatch.setattr(fastsample.stack.api, "ops_for", lambda x, backend: stack_cuda)
    flips = total = 0
    for i, steps in enumerate(STEPS):
        x, args = _case(12, 300, seed=40 + i, **dict(zip(("mask", "bias", "penalties"), map(bool, steps))))
        x[3, 7] = float("nan")
        if steps[2]:
            args["repetition_penalty"] = torch.tensor([1.3] * 11 + [0.0])
        f, n = _run_and_check("cuda", x, args, f"cuda composition {steps} {kw}", **kw)
        got = fastsample.sample_stack(x, **args, **kw, seed=1, backend="cuda")
        assert (got.tokens[3] == -1).all() and (not steps[2] or (got.tokens[11] == -1).all())
        flips, total = flips + f, total + n
    assert_rare(flips, total, "cuda composition")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not CUDA_KERNELS, reason="needs a GPU and fastsample._C built with its CUDA kernels")])])
@pytest.mark.parametrize("dtype", DTYPES)
def test_processed_logits_op_equals_the_transcription(device, dtype):
    """stack_processed_logits (the first op of the CUDA route) bit for bit against the float64 transcription
    rounded to float32 once, with its invalid-row flags (NaN logit, out-of-range id, r <= 0)."""
    gen = torch.Generator().manual_seed(21)
    rows, vocab = 6, 1000
    x = make_logits(rows, vocab, "flat", 21).to(dtype)
    mask = _rand_mask(rows, vocab, gen, allow=0.7)
    bias_ids, prompt, output = _ids(rows, 5, vocab, gen), _ids(rows, 40, vocab, gen), _ids(rows, 30, vocab, gen)
    output[3, :4] = vocab - 1
    bias_ids[3, :3] = 7  # a repeated bias id: its values add up
    bias_values = torch.randn(rows, 5, generator=gen)
    x[4, 9] = float("nan")
    prompt[5, 0] = vocab  # out of range: an invalid row
    rep = torch.tensor([1.5, 1.5, 0.0, 1.5, 1.5, 1.5])
    dev = lambda t: t.to(device)  # noqa: E731
    y, bad = torch.ops.fastsample.stack_processed_logits(
        dev(x), dev(mask), dev(bias_ids), dev(bias_values), dev(prompt), dev(output), dev(rep), 0.0, None,
        f32(0.3), None, f32(-0.7))
    assert np64(bad).tolist() == [False, False, True, False, True, True]
    in_range = np.where(np64(prompt) < vocab, np64(prompt), -1)
    want = _transcription(np64(x.float()), np64(mask) & 0xFFFFFFFF, np64(bias_ids), np64(bias_values), in_range,
                          np64(output), 1.5, f32(0.3), f32(-0.7)).astype(np.float32)
    rows_ok = [0, 1, 3]  # row 2's penalty differs (r = 0), 4 holds the NaN, 5 the out-of-range id
    np.testing.assert_array_equal(np64(y)[rows_ok], want[rows_ok])


# ---------------------------------------------------------------------------------- registration, compile
needs_extension = pytest.mark.skipif(not _ops.AVAILABLE, reason="fastsample._C is not built")


@needs_extension
def test_the_op_schemas_come_from_the_one_argument_definition():
    """csrc/ops.cpp spells the C++ schemas out; they must be fastsample/stack/spec.py's, parameter for parameter,
    since every Python layer passes the op's arguments as spec.StackOpArgs."""
    from fastsample.stack import spec

    assert str(torch.ops.fastsample.sample_stack.default._schema) == spec.schema("fastsample::sample_stack")
    assert str(torch.ops.fastsample.stack_processed_logits.default._schema) == spec.schema(
        "fastsample::stack_processed_logits", spec.STEPS_1_3, spec.PROCESSED_RESULTS)


@needs_extension
def test_opcheck():
    x, args = _case(3, 70, seed=1)
    seed, offset = torch.tensor([1, 2, 3]), torch.arange(3)
    op = torch.ops.fastsample.sample_stack.default
    torch.library.opcheck(op, (x, args["allowed_mask"], args["bias_ids"], args["bias_values"], args["prompt_ids"],
                               args["output_ids"], None, 1.2, torch.tensor([0.1, 0.0, 0.3]), 0.0, None, 0.1,
                               None, 0.8, None, 10, None, 0.9, None, 0.05, False, 2, seed, offset, 1, 4))
    torch.library.opcheck(op, (x.to(torch.bfloat16), None, None, None, None, None, None, 1.0, None, 0.0, None, 0.0,
                               torch.tensor([0.0, 1.0, 0.5]), 1.0, None, 0, None, 1.0, None, 0.0, True, 1, seed,
                               offset, 0, 0))
    torch.library.opcheck(op, (x, None, None, None, None, None, None, 1.0, None, 0.0, None, 0.0, None, 0.8, None, 10,
                               None, 0.9, None, 0.0, False, 1, seed, offset, 1, 2, torch.tensor([1.0, 0.0, 2.0]),
                               -1.0))



@needs_extension
def test_compile_fullgraph_equals_eager():
    x, args = _case(4, 300, seed=2)
    seed = torch.tensor([1, 2, 3, 4])

    def step(x, seed):
        out = fastsample.sample_stack(x, **args, temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, num_samples=2,
                                      logprobs="processed", top_logprobs=3, seed=seed, backend="cpu")
        return tuple(out)

    compiled = torch.compile(step, fullgraph=True)
    for got, want in zip(compiled(x, seed), step(x, seed)):
        if want is None:  # mirostat_mu without mirostat
            assert got is None
            continue
        assert torch.equal(got, want) or torch.allclose(got, want, equal_nan=True)


def test_compile_fullgraph_long_tail_equals_eager():
    """The long-tail route (steps 1-3 kernel, DRY, the llama.cpp chain, mirostat) traces without a graph break
    and gives the eager results."""
    x, args = _case(4, 300, seed=3)
    gen = torch.Generator().manual_seed(3)
    args["output_ids"] = _repeating_history(4, 30, 300, gen)
    seed = torch.tensor([1, 2, 3, 4])

    def step(x, seed, mu):
        out = fastsample.sample_stack(x, **args, order="llama.cpp", temperature=0.8, top_k=50, typical_p=0.95,
                                      xtc_probability=0.5, xtc_threshold=0.05, dynatemp_range=0.3,
                                      dry_multiplier=0.8, dry_sequence_breakers=[1, 2], mirostat_mu=mu,
                                      logprobs="processed", top_logprobs=3, seed=seed, backend="cpu")
        return tuple(out)

    mu = torch.full((4,), 8.0)
    compiled = torch.compile(step, fullgraph=True)
    for got, want in zip(compiled(x, seed, mu), step(x, seed, mu)):
        assert torch.equal(got, want) or torch.allclose(got, want, equal_nan=True)


def test_empty_batch_and_one_token_vocab(backend):
    empty = fastsample.sample_stack(torch.randn(0, 40), prompt_ids=torch.zeros(0, 3, dtype=torch.int64),
                                    repetition_penalty=1.2, num_samples=2, logprobs="raw", top_logprobs=3, seed=1,
                                    backend=backend)
    assert [tuple(t.shape) for t in empty[:5]] == [(0, 2), (0, 2), (0, 2), (0, 3), (0, 3)]
    assert empty.mirostat_mu is None
    one = fastsample.sample_stack(torch.randn(3, 1), top_k=1, top_p=0.5, logprobs="processed", top_logprobs=1,
                                  seed=1, backend=backend)
    assert one.tokens.tolist() == [0, 0, 0] and one.ranks.tolist() == [1, 1, 1]
    assert one.logprobs.tolist() == [0.0, 0.0, 0.0] and one.top_ids.tolist() == [[0], [0], [0]]


# ------------------------------------------------------------------------------------ GPU (skipped here)
# The Triton interpreter cannot run on fake tensors, so tracing the Triton op is checked on a GPU only.
@pytest.mark.gpu
@pytest.mark.parametrize("gpu_backend", ["triton", pytest.param("cuda", marks=pytest.mark.skipif(
    not CUDA_KERNELS, reason="fastsample._C built without its CUDA kernels"))])
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_compile_fullgraph_and_cuda_graph_match_eager(gpu_backend):
    x, args = _case(4, 32000, seed=12)
    x, args = x.cuda(), {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    seed, offset = torch.arange(4, device="cuda") + 100, torch.zeros(4, dtype=torch.int64, device="cuda")

    def step(x, seed, offset):
        return tuple(fastsample.sample_stack(x, **args, temperature=0.7, top_k=20, top_p=0.9, min_p=0.05,
                                             num_samples=2, logprobs="processed", top_logprobs=3, seed=seed,
                                             offset=offset, backend=gpu_backend))

    eager = step(x, seed, offset)
    want = _oracle(x.cpu(), {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in args.items()},
                   temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, num_samples=2,
                   seeds=np.full(4, 100) + np.arange(4), offsets=np.zeros(4, dtype=np.int64))
    assert all(t in c for row, cands in zip(np64(eager[0]), want["candidates"]) for t, c in zip(row, cands))
    for got, ref in zip(torch.compile(step, fullgraph=True)(x, seed, offset), eager):
        assert torch.equal(got, ref) or torch.allclose(got, ref, equal_nan=True)
    step(x, seed, offset)  # warm up before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step(x, seed, offset)
    graph.replay()
    torch.cuda.synchronize()
    for got, ref in zip(captured, eager):
        assert torch.equal(got, ref) or torch.allclose(got, ref, equal_nan=True)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_KERNELS, reason="needs a GPU and fastsample._C built with its CUDA kernels")
def test_gpu_opcheck_of_the_cuda_overrides_op():
    x, args = _case(3, 70, seed=1)
    cuda = lambda t: t.cuda() if isinstance(t, torch.Tensor) else t  # noqa: E731
    op = torch.ops.fastsample.stack_processed_logits.default
    for dtype in DTYPES:
        torch.library.opcheck(op, tuple(map(cuda, (
            x.to(dtype), args["allowed_mask"], args["bias_ids"], args["bias_values"], args["prompt_ids"],
            args["output_ids"], None, 1.2, torch.tensor([0.1, 0.0, 0.3]), 0.0, None, 0.1))))
    torch.library.opcheck(op, (x.cuda(), None, None, None, None, None, None, 1.0, None, 0.0, None, 0.0))


# ------------------------------------------------------------------------ long-tail steps (stack/tail.py)
def _tail_oracle(x, args, seeds, offsets, **kw):
    """oracle.sample_stack_tail with the public keyword names (float scalars rounded to float32)."""
    conv = lambda v: np64(v) if isinstance(v, torch.Tensor) else (f32(v) if isinstance(v, float) else v)  # noqa
    vocab = x.shape[1]
    mask = args.get("allowed_mask")
    kw = {k: (conv(v) if k not in ("order", "num_samples", "logprobs", "top_logprobs",
                                   "dry_sequence_breakers") else v) for k, v in kw.items()}
    breakers = kw.pop("dry_sequence_breakers", None)
    if isinstance(breakers, torch.Tensor):
        breakers = np64(breakers)
    return oracle.sample_stack_tail(
        np64(x), None if mask is None else oracle.allowed_from_bitmask(np64(mask), vocab),
        *(np64(args[k]) if k in args else None for k in ("bias_ids", "bias_values", "prompt_ids", "output_ids")),
        conv(args.get("repetition_penalty", 1.0)), conv(args.get("frequency_penalty", 0.0)),
        conv(args.get("presence_penalty", 0.0)), num_samples=kw.pop("num_samples", None) or 1, seed=seeds,
        offset=offsets, logprobs=kw.pop("logprobs", None) or "processed", top_n=kw.pop("top_logprobs", 0),
        dry_sequence_breakers=breakers, **kw)


def _tail_check(backend, x, args, what, **kw):
    """sample_stack with long-tail steps against the oracle: tokens (near-ties counted), logprobs, ranks,
    top-N and mirostat_mu. Returns (flips, draws)."""
    rows = x.shape[0]
    seed = 4321
    seeds, offsets = np.full(rows, seed), np.arange(rows)
    want = _tail_oracle(x, args, seeds, offsets, **kw)
    got = fastsample.sample_stack(x, **args, **kw, seed=seed, backend=backend)
    tokens = np64(got.tokens).reshape(rows, -1)
    flips = 0
    for b in range(rows):
        for j, cands in enumerate(want["candidates"][b]):
            assert tokens[b, j] in cands, f"{what}: row {b} draw {j}: got {tokens[b, j]}, oracle {sorted(cands)[:5]}"
            flips += tokens[b, j] != want["tokens"][b, j]
    same = (tokens == want["tokens"]).all(axis=1)
    if kw.get("logprobs"):
        np.testing.assert_allclose(np64(got.logprobs).reshape(rows, -1)[same], want["logprobs"][same],
                                   equal_nan=True, err_msg=f"{what}: logprobs", **LOGPROB_TOL)
        assert (np64(got.ranks).reshape(rows, -1)[same] == want["ranks"][same]).all(), f"{what}: ranks"
        if kw.get("top_logprobs"):
            np.testing.assert_allclose(np64(got.top_logprobs)[same], want["top_values"][same], equal_nan=True,
                                       err_msg=f"{what}: top logprobs", **LOGPROB_TOL)
            assert (np64(got.top_ids)[same] == want["top_ids"][same]).all(), f"{what}: top ids"
    if kw.get("mirostat_mu") is not None:
        np.testing.assert_allclose(np64(got.mirostat_mu)[same], want["mirostat_mu"][same], rtol=1e-5, atol=1e-5,
                                   err_msg=f"{what}: mirostat_mu")
    else:
        assert got.mirostat_mu is None
    return int(flips), tokens.size


def _repeating_history(rows, length, vocab, gen, period=7):
    """Output ids [rows, length] that repeat a random phrase (so DRY has matches), with -1 padding at the end
    of some rows."""
    phrase = torch.randint(0, vocab, (rows, period), generator=gen)
    ids = phrase.repeat(1, length // period + 1)[:, :length].clone()
    ids[:, length // 2] = torch.randint(0, vocab, (rows,), generator=gen)  # one break in the pattern
    ids[1::2, length - 3:] = -1
    return ids


_ROWS = 8
TAIL_CASES = [
    dict(typical_p=0.9), dict(typical_p=0.3, temperature=0.7, top_k=100),
    dict(typical_p=torch.tensor([0.9, 1.0, 0.0, 0.5, 0.95, 0.2, 1.0, 0.7])),
    dict(epsilon=3e-3), dict(eta=3e-3, temperature=1.3), dict(epsilon=1e-3, eta=1e-2, top_p=0.95),
    dict(xtc_probability=1.0, xtc_threshold=0.02),
    dict(xtc_probability=torch.tensor([0.5] * _ROWS), xtc_threshold=torch.tensor([0.02, 0.1, 0.6, 0.0, 0.05,
                                                                               0.01, 0.3, 0.02])),
    dict(dynatemp_range=0.5), dict(dynatemp_range=1.0, temperature=0.5, dynatemp_exponent=2.0, min_p=0.01),
    dict(dynatemp_range=torch.tensor([0.0, 0.3, 1.5, 0.8, 2.0, 0.1, 0.5, 0.9]), temperature=0.8),
    dict(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2),
    dict(dry_multiplier=2.0, dry_base=3.0, dry_allowed_length=torch.tensor([0, 1, 2, 3, 4, 2, 2, 5]),
         dry_penalty_last_n=torch.tensor([-1, 0, 10, 20, 5, -1, 3, 40]), dry_sequence_breakers=[5, 9]),
    dict(mirostat_mu=torch.tensor([10.0, 3.0, 6.0, 1.0, 0.0, 20.0, 5.0, 8.0]), mirostat_tau=3.0,
         mirostat_eta=0.2),
    dict(order="llama.cpp", temperature=0.8, top_k=200, top_p=0.9, min_p=0.02),
    dict(order="llama.cpp", temperature=0.9, top_n_sigma=1.5, top_k=300, typical_p=0.9, top_p=0.95, min_p=0.01,
         xtc_probability=1.0, xtc_threshold=0.02, dynatemp_range=0.3, dry_multiplier=0.8),
    dict(order="vllm", temperature=0.9, min_p=0.02, top_k=300, top_p=0.9, typical_p=0.95, eta=1e-3),
]


@pytest.mark.parametrize("case", range(len(TAIL_CASES)))
def test_long_tail_steps_exact(backend, case):
    """Each long-tail step alone and in chains, scalar and per-row, against oracle.sample_stack_tail: tokens,
    processed logprobs, ranks, top-N (so the kept set) and mirostat's updated mu; with steps 1-3 on and off."""
    kw = TAIL_CASES[case]
    flips = total = 0
    vocab = 500 if backend == "triton" else 2000
    for s, steps in enumerate((STEPS[0], STEPS[4])):
        x, args = _case(_ROWS, vocab, seed=90 + s + 3 * case, kind="peaked" if case % 2 else "flat",
                        **dict(zip(("mask", "bias", "penalties"), map(bool, steps))))
        gen = torch.Generator().manual_seed(case)
        args["output_ids"] = _repeating_history(_ROWS, 40, vocab, gen)
        draws = {} if "mirostat_mu" in kw else dict(num_samples=2)
        f, n = _tail_check(backend, x, args, f"{backend} {kw} {steps}", logprobs="processed", top_logprobs=20,
                           **draws, **kw)
        flips, total = flips + f, total + n
    assert_rare(flips, total, f"{backend} long-tail {kw}")


def test_long_tail_one_draw_without_logprobs(backend):
    """The plain call (one draw, tokens only) through the long-tail route on each backend."""
    x, args = _case(_ROWS, 300, seed=5, kind="peaked")
    kw = dict(order="llama.cpp", typical_p=0.9, xtc_probability=1.0, xtc_threshold=0.05, temperature=0.8)
    want = _tail_oracle(x, args, np.full(_ROWS, 4321), np.arange(_ROWS), **kw)
    got = fastsample.sample_stack(x, **args, **kw, seed=4321, backend=backend)
    assert got.tokens.shape == (_ROWS,)
    assert all(int(t) in c[0] for t, c in zip(got.tokens, want["candidates"]))


def test_dry_penalties_applied(backend):
    """DRY changes the processed distribution exactly as the oracle's override list says (a test that fails if
    DRY did nothing: the oracle must find penalties)."""
    vocab = 40
    gen = torch.Generator().manual_seed(3)
    x = make_logits(4, vocab, "flat", 3)
    hist = _repeating_history(4, 30, vocab, gen, period=5)
    prompt = torch.randint(0, vocab, (4, 6), generator=gen)
    kw = dict(dry_multiplier=1.5, dry_base=2.0, dry_allowed_length=2, dry_penalty_last_n=25,
              dry_sequence_breakers=torch.tensor([[-1, -1], [int(hist[1, 20]), -1], [0, 1], [-1, 2]]))
    penalised = sum(bool(oracle.dry_penalties([int(t) for t in torch.cat([prompt[b], hist[b]]) if t >= 0], vocab,
                                              1.5, 2.0, 2, 25, {int(t) for t in kw["dry_sequence_breakers"][b]
                                                                if t >= 0})) for b in range(4))
    assert penalised >= 3
    args = dict(prompt_ids=prompt, output_ids=hist)
    _tail_check(backend, x, args, f"{backend} DRY", logprobs="processed", top_logprobs=vocab, **kw)


def test_dry_exponent_clamp_and_off_switches(backend):
    """Long repeats with a large base hit llama.cpp's exponent clamp (a finite penalty); multiplier 0, base < 1
    and dry_penalty_last_n = 0 turn DRY off (the tokens equal plain sampling)."""
    vocab = 30
    x = make_logits(2, vocab, "flat", 4)
    hist = torch.tensor([[1, 2, 3] * 30, [4, 5] * 45])
    _tail_check(backend, x, dict(output_ids=hist), f"{backend} DRY clamp", logprobs="processed", top_logprobs=vocab,
                dry_multiplier=0.5, dry_base=100.0, dry_allowed_length=1)
    plain = fastsample.sample_stack(x, output_ids=hist, seed=1, backend=backend, logprobs="processed")
    for off in (dict(dry_multiplier=0.0), dict(dry_multiplier=1.0, dry_base=0.5),
                dict(dry_multiplier=1.0, dry_penalty_last_n=0)):
        got = fastsample.sample_stack(x, output_ids=hist, seed=1, backend=backend, logprobs="processed",
                                      order="llama.cpp", **off)
        assert torch.equal(got.tokens, plain.tokens), off
        torch.testing.assert_close(got.logprobs, plain.logprobs)


def test_mirostat_state_loop(backend):
    """Mirostat v2 over several steps: mu from one call feeds the next, equal to the oracle at every step."""
    x = make_logits(4, 200, "peaked", 8)
    mu = torch.full((4,), 2 * 3.0)
    for step in range(4):
        seeds, offsets = np.full(4, 11 + step), np.arange(4)
        want = _tail_oracle(x, {}, seeds, offsets, mirostat_mu=mu, mirostat_tau=3.0, mirostat_eta=0.1)
        got = fastsample.sample_stack(x, mirostat_mu=mu, mirostat_tau=3.0, mirostat_eta=0.1, seed=11 + step,
                                      backend=backend)
        assert all(int(t) in c[0] for t, c in zip(got.tokens, want["candidates"]))
        np.testing.assert_allclose(np64(got.mirostat_mu), want["mirostat_mu"], rtol=1e-5, atol=1e-6)
        mu = got.mirostat_mu
    assert not torch.equal(mu, torch.full((4,), 6.0))


def test_xtc_coin_uses_its_own_draw():
    """XTC's coin is Philox draw 0xFFFFFFFF: with probability 0.5 some rows apply it and some do not, exactly
    where the oracle's uniform says."""
    x = make_logits(64, 100, "peaked", 9)
    u = oracle.uniform(np.full(64, 5), np.arange(64), oracle.XTC_DRAW)
    assert 0 < (u <= 0.5).sum() < 64
    got = fastsample.sample_stack(x, xtc_probability=0.5, xtc_threshold=0.01, logprobs="processed",
                                  top_logprobs=1, seed=5, backend="torch")
    plain = fastsample.sample_stack(x, logprobs="processed", top_logprobs=1, seed=5, backend="torch")
    changed = np64(got.top_ids[:, 0]) != np64(plain.top_ids[:, 0])
    assert (changed <= (u <= 0.5)).all() and changed.any()


def test_dry_in_small_blocks_equals_one_block(monkeypatch):
    """DRY's history comparison split into blocks of a few columns gives the same processed logits."""
    from fastsample.stack import tail

    vocab = 50
    gen = torch.Generator().manual_seed(12)
    x = make_logits(3, vocab, "flat", 12)
    hist = _repeating_history(3, 45, vocab, gen, period=4)
    kw = dict(dry_multiplier=1.2, dry_base=1.5, dry_allowed_length=1, logprobs="processed", top_logprobs=vocab,
              seed=3, backend="torch")
    whole = fastsample.sample_stack(x, output_ids=hist, **kw)
    monkeypatch.setattr(tail, "_DRY_CHUNK", 7)
    blocks = fastsample.sample_stack(x, output_ids=hist, **kw)
    assert torch.equal(whole.top_ids, blocks.top_ids) and torch.equal(whole.top_logprobs, blocks.top_logprobs)
    plain = fastsample.sample_stack(x, output_ids=hist, **{**kw, "dry_multiplier": 0.0})
    assert not torch.equal(whole.top_logprobs, plain.top_logprobs)


@pytest.mark.skipif(not _ops.AVAILABLE, reason="needs the compiled extension")
@pytest.mark.parametrize("case", range(len(TAIL_CASES)))
def test_cpu_draws_on_survivors_equal_dense_draws(case):
    """Without logprobs the CPU route draws inside stack_tail_filters on the surviving ids only; the tokens
    (several draws) and mirostat's mu equal those of the dense route that logprobs take, in every order."""
    kw = dict(TAIL_CASES[case])
    x, args = _case(_ROWS, 1500, seed=300 + case, kind="peaked" if case % 2 else "flat")
    args["output_ids"] = _repeating_history(_ROWS, 40, 1500, torch.Generator().manual_seed(case))
    n = None if "mirostat_mu" in kw else 3
    kw.pop("order", None)
    for order in ("hf", "vllm", "llama.cpp"):
        sparse = fastsample.sample_stack(x, **args, **kw, order=order, num_samples=n, seed=4, backend="cpu")
        dense = fastsample.sample_stack(x, **args, **kw, order=order, num_samples=n, seed=4, backend="cpu",
                                        logprobs="processed")
        assert torch.equal(sparse.tokens, dense.tokens)
        if dense.mirostat_mu is not None:
            assert torch.equal(sparse.mirostat_mu, dense.mirostat_mu)


@pytest.mark.skipif(not _ops.AVAILABLE, reason="needs the compiled extension")
@pytest.mark.parametrize("seed", range(6))
def test_cpu_dry_kernel_equals_torch_dry(seed, monkeypatch):
    """The CPU kernel of DRY's override list (op stack_tail_dry, a Z-function over the history) gives the same
    float32 processed logits as tail.py's torch DRY: random repeats, breakers per row and shared, per-row
    lengths, windows shorter and longer than the history, -1 padding, a clamped exponent."""
    from fastsample.stack import tail

    if not tail.dry_kernel_available():
        pytest.skip("fastsample._C was built before the stack_tail_dry kernel: rebuild it")
    rows, vocab = 6, 60
    gen = torch.Generator().manual_seed(seed)
    x = make_logits(rows, vocab, "flat", seed)
    hist = _repeating_history(rows, 90, vocab, gen, period=2 + seed % 5)
    prompt = torch.randint(0, 8, (rows, 30), generator=gen)
    prompt[0, :5] = -1
    breakers = torch.randint(-1, vocab, (rows, 3), generator=gen)
    calls = []
    real = tail.dry

    def both(y, p_ids, o_ids, t, kernel=False):
        fast = real(y, p_ids, o_ids, t, kernel=True)
        ref = real(y, p_ids, o_ids, t, kernel=False)
        calls.append(1)
        assert torch.equal(fast, ref)
        return fast

    monkeypatch.setattr(tail, "dry", both)
    for kw in (dict(dry_multiplier=0.8), dict(dry_multiplier=torch.rand(rows, generator=gen) * 2, dry_base=3.0,
                                             dry_allowed_length=torch.randint(0, 4, (rows,), generator=gen),
                                             dry_penalty_last_n=torch.randint(-1, 100, (rows,), generator=gen)),
               dict(dry_multiplier=1.0, dry_base=1e30, dry_allowed_length=0, dry_sequence_breakers=breakers),
               dict(dry_multiplier=0.5, dry_base=1.2, dry_sequence_breakers=[int(hist[0, 3]), 1],
                    dry_penalty_last_n=50)):
        for p_ids in (None, prompt):
            fastsample.sample_stack(x, prompt_ids=p_ids, output_ids=hist, **kw, order="llama.cpp", seed=seed,
                                    logprobs="processed", backend="cpu")  # the route that scatters DRY's list
    assert len(calls) == 8


@pytest.mark.skipif(not _ops.AVAILABLE, reason="needs the compiled extension")
@pytest.mark.parametrize("case", range(len(TAIL_CASES)))
def test_cpu_filter_kernel_equals_torch_steps(case, monkeypatch):
    """The CPU kernel of the long-tail filter chain (op stack_tail_filters) keeps the same tokens, with the same
    float64 logits, as tail.py's torch steps, in every order."""
    from fastsample.stack import tail

    if not tail.cpu_kernel_available():
        pytest.skip("fastsample._C was built before the stack_tail_filters kernel: rebuild it")
    kw = dict(TAIL_CASES[case])
    x, args = _case(_ROWS, 1500, seed=200 + case, kind="peaked" if case % 2 else "flat")
    args["output_ids"] = _repeating_history(_ROWS, 40, 1500, torch.Generator().manual_seed(case))
    calls = []
    real = tail.filtered_cpu

    def both(y_in, op_args, t, u=None, overrides=None):
        y = y_in if overrides is None else y_in.scatter_add(1, overrides[0], -overrides[1])  # DRY as torch does
        z_cpu, g_cpu = real(y, op_args, t)
        z_ref, g_ref = tail.filtered(y, op_args, t)
        calls.append(1)
        assert torch.equal(g_cpu, g_ref)
        assert torch.equal(z_cpu > -math.inf, z_ref > -math.inf), "kept sets differ"
        torch.testing.assert_close(z_cpu, z_ref, rtol=1e-12, atol=1e-12)
        if u is not None:  # the draws on the survivors (no logprobs): the same greedy rows
            drawn = real(y_in, op_args, t, u, overrides)
            assert torch.equal(drawn[1], g_ref)
            return drawn
        return z_cpu, g_cpu

    monkeypatch.setattr(tail, "filtered_cpu", both)
    for order in ("hf", "vllm", "llama.cpp"):
        kw["order"] = order
        fastsample.sample_stack(x, **args, **kw, seed=9, backend="cpu")
    assert len(calls) >= 1  # orders "hf" and "vllm" without a long-tail step take the fused op instead
