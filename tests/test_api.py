"""Cross-cutting checks of the public API on every backend: argument validation (docs/design.md section 5),
empty batches, V = 1, non-contiguous inputs, random-number control (seeds, offsets, generators, batch invariance), and the
op registration (torch.library.opcheck, torch.compile)."""
import math

import pytest
import torch

import fastsample
from fastsample import _ops

BATCH, VOCAB = 6, 50
NAN = float("nan")
INF = float("inf")

# Public function -> (kind of input, keyword arguments besides the input, whether it draws random numbers).
FUNCTIONS = {
    "softmax": ("logits", {"temperature": 0.8}, False),
    "top_k": ("logits", {"k": 5}, False),
    "top_k_mask_logits": ("logits", {"top_k": 5}, False),
    "top_k_renorm_probs": ("probs", {"top_k": 5}, False),
    "top_p_renorm_probs": ("probs", {"top_p": 0.7}, False),
    "min_p_renorm_probs": ("probs", {"min_p": 0.1}, False),
    "sampling_from_probs": ("probs", {}, True),
    "sampling_from_logits": ("logits", {}, True),
    "top_k_sampling_from_probs": ("probs", {"top_k": 5}, True),
    "top_p_sampling_from_probs": ("probs", {"top_p": 0.7}, True),
    "min_p_sampling_from_probs": ("probs", {"min_p": 0.1}, True),
    "top_k_top_p_sampling_from_probs": ("probs", {"top_k": 5, "top_p": 0.7}, True),
    "top_k_top_p_sampling_from_logits": ("logits", {"top_k": 5, "top_p": 0.7}, True),
    "sample": ("logits", {"temperature": 0.8, "top_k": 5, "top_p": 0.7, "min_p": 0.05, "return_logprobs": True},
               True),
    "greedy": ("logits", {}, False),
}


def _input(kind: str, batch: int = BATCH, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    logits = torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 2
    return torch.softmax(logits, dim=1) if kind == "probs" else logits


def _call(name: str, x, backend: str, **override):
    """Call public function ``name`` on x with its default arguments, a fixed seed where it draws, and
    ``override`` on top."""
    _, kwargs, draws = FUNCTIONS[name]
    kwargs = {**kwargs, **override}
    if name == "top_k" and isinstance(x, torch.Tensor) and x.dim() == 2:
        kwargs["k"] = min(kwargs["k"], x.shape[1])
    if draws:
        kwargs.setdefault("seed", 1234)
    return getattr(fastsample, name)(x, **kwargs, backend=backend)


def _as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


def _assert_identical(got, want):
    for a, b in zip(_as_tuple(got), _as_tuple(want), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


# ------------------------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize("name,override,arg", [
    ("sample", {"temperature": -0.5}, "temperature"),
    ("sample", {"temperature": NAN}, "temperature"),
    ("sample", {"temperature": INF}, "temperature"),
    ("sample", {"top_p": 1.5}, "top_p"),
    ("sample", {"top_p": -0.1}, "top_p"),
    ("sample", {"top_p": NAN}, "top_p"),
    ("sample", {"min_p": 1.01}, "min_p"),
    ("sample", {"min_p": -1}, "min_p"),
    ("softmax", {"temperature": -1.0}, "temperature"),
    ("top_p_renorm_probs", {"top_p": 2.0}, "top_p"),
    ("min_p_renorm_probs", {"min_p": -0.5}, "min_p"),
    ("top_p_sampling_from_probs", {"top_p": NAN}, "top_p"),
    ("min_p_sampling_from_probs", {"min_p": 3.0}, "min_p"),
    ("top_k_top_p_sampling_from_logits", {"top_p": -1.0}, "top_p"),
    ("top_k", {"k": -1}, "k"),
    ("top_k", {"k": VOCAB + 1}, "k"),
    ("sample", {"seed": 2**63}, "seed"),
    ("sample", {"offset": -2**63 - 1}, "offset"),
])
def test_scalar_out_of_range_raises_value_error(backend, name, override, arg):
    x = _input(FUNCTIONS[name][0])
    if name == "top_k":  # _call clamps k to the vocabulary; call directly so the bad k gets through
        with pytest.raises(ValueError, match=arg):
            fastsample.top_k(x, override["k"], backend=backend)
        return
    with pytest.raises(ValueError, match=arg):
        _call(name, x, backend, **override)


@pytest.mark.parametrize("name,override,arg", [
    ("sample", {"top_k": 2.5}, "top_k"),
    ("sample", {"top_k": True}, "top_k"),
    ("sample", {"top_k": torch.ones(BATCH)}, "top_k"),
    ("sample", {"temperature": torch.ones(BATCH, dtype=torch.int64)}, "temperature"),
    ("sample", {"top_p": "0.5"}, "top_p"),
    ("sample", {"min_p": torch.zeros(BATCH, dtype=torch.int32)}, "min_p"),
    ("sample", {"seed": 1.0}, "seed"),
    ("sample", {"seed": torch.zeros(BATCH)}, "seed"),
    ("sample", {"offset": torch.zeros(BATCH, dtype=torch.float64)}, "offset"),
    ("top_k_renorm_probs", {"top_k": torch.full((BATCH,), 2.0)}, "top_k"),
    ("top_p_renorm_probs", {"top_p": torch.ones(BATCH, dtype=torch.int64)}, "top_p"),
])
def test_wrong_parameter_type_raises_type_error(backend, name, override, arg):
    with pytest.raises(TypeError, match=arg):
        _call(name, _input(FUNCTIONS[name][0]), backend, **override)


def test_top_k_k_must_be_int(backend):
    with pytest.raises(TypeError, match="k"):
        fastsample.top_k(_input("logits"), 2.0, backend=backend)


@pytest.mark.parametrize("name,x,arg", [
    ("sample", torch.zeros(BATCH, VOCAB, dtype=torch.int64), "logits"),
    ("sample", torch.zeros(BATCH, VOCAB, dtype=torch.float64), "logits"),
    ("sample", [[0.0] * VOCAB] * BATCH, "logits"),
    ("softmax", torch.zeros(BATCH, VOCAB, dtype=torch.int32), "logits"),
    ("top_k_mask_logits", torch.zeros(BATCH, VOCAB, dtype=torch.bool), "logits"),
    ("sampling_from_probs", torch.full((BATCH, VOCAB), 1, dtype=torch.int32), "probs"),
    ("top_p_renorm_probs", torch.full((BATCH, VOCAB), 0.02, dtype=torch.float64), "probs"),
    ("top_k", torch.zeros(BATCH, VOCAB, dtype=torch.int64), "x"),
])
def test_wrong_input_dtype_raises_type_error(backend, name, x, arg):
    with pytest.raises(TypeError, match=arg):
        _call(name, x, backend)


@pytest.mark.parametrize("name,shape", [(name, shape) for name in FUNCTIONS
                                        for shape in ((VOCAB,), (2, 3, VOCAB), (BATCH, 0), ())])
def test_wrong_input_shape_raises_value_error(backend, name, shape):
    kind = FUNCTIONS[name][0]
    arg = "x" if name == "top_k" else kind
    x = torch.full(shape, 0.02)
    with pytest.raises(ValueError, match=arg):
        _call(name, x, backend)


@pytest.mark.parametrize("name,override,arg", [
    ("sample", {"temperature": torch.ones(BATCH + 1)}, "temperature"),
    ("sample", {"top_k": torch.ones(BATCH, 1, dtype=torch.int64)}, "top_k"),
    ("sample", {"top_p": torch.ones(1)}, "top_p"),
    ("sample", {"min_p": torch.zeros(())}, "min_p"),
    ("top_p_renorm_probs", {"top_p": torch.ones(BATCH, 1)}, "top_p"),
    ("top_k_mask_logits", {"top_k": torch.ones(2 * BATCH, dtype=torch.int64)}, "top_k"),
    ("softmax", {"temperature": torch.ones(BATCH - 1)}, "temperature"),
    ("sample", {"seed": torch.zeros(BATCH + 1, dtype=torch.int64)}, "seed"),
    ("sampling_from_probs", {"offset": torch.zeros(BATCH, 2, dtype=torch.int64)}, "offset"),
])
def test_wrong_parameter_shape_raises_value_error(backend, name, override, arg):
    with pytest.raises(ValueError, match=arg):
        _call(name, _input(FUNCTIONS[name][0]), backend, **override)


def test_unknown_backend_raises_value_error():
    with pytest.raises(ValueError, match="backend"):
        fastsample.sample(_input("logits"), backend="nope")


# ------------------------------------------------------------------------------------------ invalid rows
def test_out_of_range_row_parameters_give_minus_one_rows(backend):
    logits = _input("logits", batch=8)
    temperature = torch.tensor([1.0, -1.0, NAN, 0.5, 1.0, 1.0, INF, 1.0])
    top_p = torch.tensor([0.9, 0.9, 0.9, 0.9, 1.5, -0.1, NAN, 0.9])
    min_p = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, NAN])
    tokens, logprobs = fastsample.sample(logits, temperature, top_k=torch.tensor([0, 3, -4, 60, 5, 1, 2, 9]),
                                         top_p=top_p, min_p=min_p, return_logprobs=True, seed=3, backend=backend)
    invalid = torch.tensor([False, True, True, False, True, True, True, True])
    # T = +inf alone (all other parameters valid) also invalidates its row.
    alone = fastsample.sample(logits[:2], torch.tensor([INF, 1.0]), seed=3, backend=backend)
    assert alone[0].item() == -1 and alone[1].item() >= 0
    assert (tokens[invalid] == -1).all()
    assert ((tokens[~invalid] >= 0) & (tokens[~invalid] < logits.shape[1])).all()
    assert logprobs[invalid].isnan().all() and logprobs[~invalid].isfinite().all()

    more_min_p = torch.tensor([1.5, -0.1, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0])
    tokens = fastsample.sample(logits, min_p=more_min_p, seed=3, backend=backend)
    assert tokens[:2].tolist() == [-1, -1] and (tokens[2:] >= 0).all()

    # Filters do not change a greedy row's token, but an out-of-range value still invalidates the row.
    tokens = fastsample.sample(logits, 0.0, top_p=top_p, min_p=more_min_p, seed=3, backend=backend)
    assert tokens.tolist() == [-1, -1, *logits[2:4].argmax(dim=1).tolist(), -1, -1, -1, logits[7].argmax().item()]


def test_out_of_range_row_parameters_in_softmax_and_renorm(backend):
    logits = torch.tensor([[1.0, 3.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    probs = fastsample.softmax(logits, torch.tensor([0.0, -1.0, NAN]), backend=backend)
    assert probs[0].tolist() == [0.0, 0.5, 0.5]  # T == 0: uniform over the maxima
    assert probs[1:].isnan().all()
    assert fastsample.softmax(logits, torch.tensor([1.0, INF, 1.0]), backend=backend)[1].isnan().all()
    renormed = fastsample.top_p_renorm_probs(torch.softmax(logits, dim=1), torch.tensor([0.0, 1.5, NAN]),
                                             backend=backend)
    assert renormed[0].tolist() == [0.0, 0.5, 0.5] and (renormed[1:] == 0).all()


def test_bad_rows_never_crash_or_leave_the_vocabulary(backend):
    logits = torch.randn(5, 7)
    logits[0, 3] = NAN
    logits[1] = -INF
    logits[2, [2, 5]] = INF
    logits[3, :6] = -INF
    for name in ("sampling_from_logits", "sample", "greedy", "top_k_top_p_sampling_from_logits"):
        tokens = _as_tuple(_call(name, logits, backend))[0]
        assert tokens[:2].tolist() == [-1, -1], name
        assert tokens[2].item() in (2, 5) and tokens[3].item() == 6 and 0 <= tokens[4].item() < 7, name
    probs = torch.softmax(torch.randn(5, 7), dim=1)
    probs[0, 1] = NAN
    probs[1] = 0.0
    probs[2, 4] = -0.1
    probs[3, 0] = INF
    for name in ("sampling_from_probs", "top_k_sampling_from_probs", "top_p_sampling_from_probs",
                 "min_p_sampling_from_probs", "top_k_top_p_sampling_from_probs"):
        tokens = _call(name, probs, backend)
        assert tokens[:4].tolist() == [-1] * 4 and 0 <= tokens[4].item() < 7, name
    for name in ("top_k_renorm_probs", "top_p_renorm_probs", "min_p_renorm_probs"):
        renormed = _call(name, probs, backend)
        assert (renormed[:4] == 0).all() and renormed[4].sum().item() == pytest.approx(1.0, abs=1e-6), name


# ------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_empty_batch(backend, name):
    x = _input(FUNCTIONS[name][0], batch=0)
    result = _as_tuple(_call(name, x, backend))
    for out in result:
        assert out.shape[0] == 0
    if name in ("softmax", "top_k_mask_logits") or name.endswith("renorm_probs"):
        assert result[0].shape == (0, VOCAB)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_vocabulary_of_one(backend, name):
    x = _input(FUNCTIONS[name][0], vocab=1)
    if FUNCTIONS[name][0] == "probs":
        x = torch.full((BATCH, 1), 0.3)  # unnormalised: the single token still takes all the mass
    result = _as_tuple(_call(name, x, backend))
    if name == "top_k":
        assert result[1].tolist() == [[0]] * BATCH and torch.equal(result[0], x)
    elif name == "top_k_mask_logits":
        assert torch.equal(result[0], x)
    elif name == "softmax" or name.endswith("renorm_probs"):
        assert result[0].tolist() == [[1.0]] * BATCH
    else:
        assert result[0].tolist() == [0] * BATCH
        if name == "sample":
            assert result[1].tolist() == [0.0] * BATCH


def _non_contiguous(x: torch.Tensor, layout: str) -> torch.Tensor:
    """A non-contiguous tensor equal to x: transposed storage, every other column, or every other row."""
    if layout == "transposed":
        return x.t().contiguous().t()
    if layout == "column_slice":
        return torch.stack([x, torch.full_like(x, NAN)], dim=2).flatten(1)[:, ::2]
    return torch.stack([x, torch.full_like(x, NAN)], dim=1).flatten(0, 1)[::2]


@pytest.mark.parametrize("layout", ["transposed", "column_slice", "row_slice"])
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_non_contiguous_input_equals_contiguous(backend, name, layout):
    x = _input(FUNCTIONS[name][0])
    strided = _non_contiguous(x, layout)
    assert torch.equal(strided, x) and not strided.is_contiguous()
    _assert_identical(_call(name, strided, backend), _call(name, x, backend))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_non_contiguous_half_logits_and_row_parameters(backend, dtype):
    x = _input("logits").to(dtype)
    params = torch.rand(4, 2 * BATCH, generator=torch.Generator().manual_seed(1))
    temperature, top_p, min_p = params[0, ::2] + 0.5, params[1, ::2] * 0.5 + 0.5, params[2, ::2] * 0.2
    top_k = torch.arange(2 * BATCH)[::2]
    seed = torch.arange(100, 100 + 2 * BATCH)[::2]
    args = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, return_logprobs=True)
    got = fastsample.sample(_non_contiguous(x, "transposed"), **args, seed=seed, backend=backend)
    want = fastsample.sample(x, **{k: v.contiguous() if isinstance(v, torch.Tensor) else v
                                   for k, v in args.items()}, seed=seed.contiguous(), backend=backend)
    _assert_identical(got, want)


# ------------------------------------------------------------------------------------------ random numbers
def _row_args(batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return dict(temperature=torch.rand(batch, generator=gen) + 0.5,
                top_k=torch.randint(0, 40, (batch,), generator=gen),
                top_p=torch.rand(batch, generator=gen) * 0.5 + 0.5,
                min_p=torch.rand(batch, generator=gen) * 0.1,
                seed=torch.randint(0, 2**62, (batch,), generator=gen))


def test_per_row_seeds_are_batch_invariant(backend):
    batch = 16
    logits = _input("logits", batch=batch, vocab=300)
    args = _row_args(batch)
    whole, whole_lp = fastsample.sample(logits, **args, return_logprobs=True, offset=7, backend=backend)

    def subset(rows):
        picked = {k: v[rows] for k, v in args.items()}
        return fastsample.sample(logits[rows], **picked, return_logprobs=True, offset=7, backend=backend)

    perm = torch.randperm(batch, generator=torch.Generator().manual_seed(2))
    tokens, logprobs = subset(perm)
    assert torch.equal(tokens, whole[perm]) and torch.equal(logprobs, whole_lp[perm])
    for row in (0, 9, 15):
        tokens, logprobs = subset(torch.tensor([row]))
        assert torch.equal(tokens, whole[row:row + 1]) and torch.equal(logprobs, whole_lp[row:row + 1])
    # The same rows inside a larger batch.
    bigger = torch.cat([torch.arange(batch), torch.arange(batch)])
    assert torch.equal(subset(bigger)[0], torch.cat([whole, whole]))


def test_batch_invariance_for_probs(backend):
    batch = 10
    probs = _input("probs", batch=batch, vocab=200)
    seed = torch.randint(0, 2**62, (batch,), generator=torch.Generator().manual_seed(3))
    whole = fastsample.top_k_top_p_sampling_from_probs(probs, 30, 0.8, seed=seed, backend=backend)
    for row in range(batch):
        alone = fastsample.top_k_top_p_sampling_from_probs(probs[row:row + 1], 30, 0.8, seed=seed[row:row + 1],
                                                           backend=backend)
        assert alone.item() == whole[row].item()


def test_manual_seed_makes_calls_reproducible(backend):
    logits = _input("logits", batch=32, vocab=1000) * 0.1  # nearly flat: different seeds give different tokens
    torch.manual_seed(123)
    first = fastsample.sample(logits, backend=backend)
    second = fastsample.sample(logits, backend=backend)
    torch.manual_seed(123)
    assert torch.equal(fastsample.sample(logits, backend=backend), first)
    assert torch.equal(fastsample.sample(logits, backend=backend), second)
    assert not torch.equal(first, second)  # the default generator advanced between the calls


def test_explicit_generator(backend):
    logits = _input("logits", batch=32, vocab=1000) * 0.1
    torch.manual_seed(0)
    first = fastsample.sample(logits, generator=torch.Generator().manual_seed(5), backend=backend)
    state = torch.get_rng_state()
    torch.manual_seed(1)  # the default generator does not matter once one is given
    gen = torch.Generator().manual_seed(5)
    assert torch.equal(fastsample.sample(logits, generator=gen, backend=backend), first)
    assert not torch.equal(fastsample.sample(logits, generator=gen, backend=backend), first)
    torch.manual_seed(0)
    fastsample.sample(logits, generator=torch.Generator().manual_seed(5), backend=backend)
    assert torch.equal(torch.get_rng_state(), state)  # ... and is not consumed


def test_int_seed_and_offset_equal_their_tensor_forms(backend):
    logits = _input("logits", batch=BATCH, vocab=500) * 0.2
    got = fastsample.sample(logits, seed=99, offset=40, backend=backend)
    seed = torch.full((BATCH,), 99, dtype=torch.int64)
    # An int seed shares one Philox key over the batch, so the rows take offsets o, o + 1, ...
    assert torch.equal(fastsample.sample(logits, seed=seed, offset=torch.arange(40, 40 + BATCH), backend=backend),
                       got)
    # Per-row seeds keep one offset for every row (batch invariance).
    assert torch.equal(fastsample.sample(logits, seed=seed, offset=3, backend=backend),
                       fastsample.sample(logits, seed=seed, offset=torch.full((BATCH,), 3), backend=backend))
    assert torch.equal(fastsample.sample(logits, seed=seed.to(torch.int32), offset=3, backend=backend),
                       fastsample.sample(logits, seed=seed, offset=3, backend=backend))
    # Seeds and offsets use all 64 bits, negative values included.
    wide = torch.tensor([-1, 2**62, -2**63, 2**32, 1, 2**32 + 1])
    tokens = fastsample.sample(logits, seed=wide, offset=wide.flip(0), backend=backend)
    assert ((tokens >= 0) & (tokens < 500)).all()
    assert len(set(tokens.tolist())) > 1


def test_seed_only_offset_only(backend):
    logits = _input("logits", batch=BATCH, vocab=500) * 0.2
    # With only an offset, the seed is still drawn from the default generator.
    torch.manual_seed(4)
    a = fastsample.sample(logits, offset=11, backend=backend)
    torch.manual_seed(4)
    assert torch.equal(fastsample.sample(logits, offset=11, backend=backend), a)
    assert not torch.equal(fastsample.sample(logits, seed=5, offset=0, backend=backend),
                           fastsample.sample(logits, seed=5, offset=BATCH, backend=backend))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("gpu_backend", ["torch", None])
def test_cuda_seed_tensors_and_graph_capture_match_cpu(gpu_backend):
    """On the GPU, seeds and offsets may live on the device (no host sync) and the call can be captured in a
    CUDA graph; tokens equal the CPU torch backend's. None: the backend resolve_backend picks for CUDA."""
    logits = _input("logits", batch=64, vocab=4096)
    args = _row_args(64)
    want = fastsample.sample(logits, **args, return_logprobs=True, backend="torch")
    dev = {k: v.cuda() for k, v in args.items()}
    static_logits = logits.cuda()
    got = fastsample.sample(static_logits, **dev, return_logprobs=True, backend=gpu_backend)
    assert torch.equal(got[0].cpu(), want[0])
    torch.testing.assert_close(got[1].cpu(), want[1], rtol=1e-5, atol=1e-5)

    fastsample.sample(static_logits, **dev, return_logprobs=True, backend=gpu_backend)  # warm-up outside the graph
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fastsample.sample(static_logits, **dev, return_logprobs=True, backend=gpu_backend)
    static_logits.copy_(torch.flip(logits, dims=[1]).cuda())
    graph.replay()
    want = fastsample.sample(torch.flip(logits, dims=[1]), **args, return_logprobs=True, backend="torch")
    assert torch.equal(captured[0].cpu(), want[0])


# ------------------------------------------------------------------------------------------ op registration
needs_extension = pytest.mark.skipif(not _ops.AVAILABLE, reason="fastsample._C is not built")


def _opcheck_cases():
    gen = torch.Generator().manual_seed(0)
    batch, vocab = 4, 16
    logits = torch.randn(batch, vocab, generator=gen)
    probs = torch.softmax(logits, dim=1)
    k_arr = torch.tensor([0, 3, 16, 1])
    t_arr = torch.tensor([1.0, 0.0, 0.5, 2.0])
    p_arr = torch.tensor([0.9, 0.0, 1.0, 0.5])
    mp_arr = torch.tensor([0.0, 0.1, 0.5, 1.0])
    seed = torch.randint(0, 2**62, (batch,), generator=gen)
    offset = torch.arange(batch)
    q = torch.softmax(torch.randn(batch, 3, vocab, generator=gen), dim=-1)
    p = torch.softmax(torch.randn(batch, 4, vocab, generator=gen), dim=-1)
    ids = torch.randint(0, vocab, (batch, 3), generator=gen)
    return {
        "softmax": [(logits, None, 0.7), (logits.to(torch.bfloat16), t_arr, 1.0)],
        "top_k": [(logits, 3, True), (logits.to(torch.float16), 0, False)],
        "top_k_mask_logits": [(logits, None, 3), (logits.to(torch.bfloat16), k_arr, 0)],
        "renorm_probs": [(probs, None, 5, None, 0.9, None, 0.0), (probs, k_arr, 0, p_arr, NAN, mp_arr, NAN),
                         (probs.to(torch.bfloat16), None, 5, None, 0.9, None, 0.0)],
        "sample": [(logits, True, None, 0.8, None, 5, None, 0.9, None, 0.05, seed, offset, True),
                   (probs, False, t_arr, NAN, k_arr, 0, p_arr, NAN, mp_arr, NAN, seed, offset, False)],
        "chain_speculative_sampling": [(q, ids, p, seed, offset)],
        "tree_speculative_sampling": [(ids, torch.tensor([-1, -1, 0]).expand(batch, 3), p, q, seed, offset),
                                      (ids, torch.tensor([-1, 0, 1]).expand(batch, 3), p.to(torch.float16), None,
                                       seed, offset)],
        "logsumexp": [(logits,), (logits.to(torch.float16),)],
        "draw_from_cdfs": [(probs.double().cumsum(1), torch.tensor([3, 0, 0, 2, 3, 1]), seed[:1], offset[:1], 1),
                           (probs.double().cumsum(1), torch.tensor([1, 1, 0, 2]), seed, offset, 0)],
        # the stack sampler's own cases, with masks and histories, are in test_stack_sampler.py
        "sample_stack": [(logits, None, None, None, None, ids, None, 1.2, None, 0.1, None, 0.0, t_arr, NAN, k_arr, 0,
                          None, 0.9, None, 0.05, True, 2, seed, offset, 1, 3)],
        "stack_processed_logits": [(logits, None, None, None, None, ids, None, 1.2, None, 0.1, None, 0.0)],
        # the long-tail filter chain (step codes of fastsample/stack/tail.py CPU_STEP_CODES), with and without mu
        "stack_tail_filters": [(logits, t_arr, k_arr, p_arr, mp_arr, torch.full((batch,), 1.5), p_arr,
                                torch.full((batch,), 0.01), torch.full((batch,), 0.02), torch.full((batch,), 0.5),
                                torch.full((batch,), 0.1), torch.rand(batch, generator=gen),
                                torch.full((batch,), 0.3), torch.ones(batch), None, [1, 2, 3, 4, 5, 6, 7, 8, 9]),
                               (logits, t_arr, k_arr, p_arr, mp_arr, torch.full((batch,), -1.0), p_arr,
                                torch.zeros(batch), torch.zeros(batch), torch.zeros(batch), torch.full((batch,), 0.1),
                                torch.zeros(batch), torch.zeros(batch), torch.ones(batch), torch.full((batch,), 4.0),
                                [2, 3, 6, 4, 5, 9, 0]),
                               # draws on the survivors (no z) after DRY's override list
                               (logits, t_arr, k_arr, p_arr, mp_arr, torch.full((batch,), 1.0), p_arr,
                                torch.zeros(batch), torch.zeros(batch), torch.zeros(batch), torch.full((batch,), 0.1),
                                torch.zeros(batch), torch.zeros(batch), torch.ones(batch), None, [2, 3, 4, 0],
                                torch.rand(batch, 2, generator=gen), False,
                                torch.tensor([[1, 3, 0]] * batch), torch.tensor([[0.5, 2.0, 0.0]] * batch))],
        # DRY's override list over a right-aligned history (-1 on the left), with and without breakers
        "stack_tail_dry": [(torch.tensor([[-1, 1, 2, 3, 1, 2, 3, 1, 2]] * batch), torch.full((batch,), 0.8),
                            torch.full((batch,), 1.75), torch.full((batch,), 2), torch.full((batch,), -1),
                            torch.tensor([[3, -1]] * batch), logits.shape[1]),
                           (torch.tensor([[5, 5, 5, 5]] * batch), torch.ones(batch), torch.full((batch,), 2.0),
                            torch.ones(batch, dtype=torch.int64), torch.full((batch,), 3), None, logits.shape[1])],
        # vocab-parallel per-rank passes (fastsample/distributed/_local.py; their own tests: test_distributed.py)
        **_dist_cases(logits, t_arr),
    }


def _dist_cases(logits, t_arr):
    batch = logits.shape[0]
    m, mode = logits.amax(dim=1), torch.tensor([1, 0, 1, 2])
    t = torch.where(t_arr > 0, t_arr, 1.0)
    theta = torch.tensor([-math.inf, 0.0, -0.5, -math.inf])
    log_min_p = torch.tensor([-math.inf, -1.0, -2.0, -math.inf], dtype=torch.float64)
    per_nat = torch.where(mode == 1, 8.0 / t, 0.0)
    q = torch.ops.fastsample.dist_weigh(logits, m, t, mode, theta, log_min_p, per_nat, 55, True)[0]
    chosen, prefix = torch.tensor([0, -1, 2, 0]), torch.zeros(batch, dtype=torch.int64)
    target = q.clamp(min=0)[:, :3].sum(1)
    return {
        "dist_row_stats": [(logits, logits[:, 2].contiguous()), (logits.to(torch.bfloat16), m)],
        "dist_weigh": [(logits, m, t, mode, theta, log_min_p, per_nat, 55, True),
                       (logits, m, t, mode, theta, log_min_p, per_nat, 40, False)],
        "dist_digit_hist": [(logits, q, m, per_nat, chosen, prefix, 24)],
        "dist_kept": [(logits, q, theta)],
        "dist_walk": [(logits, q, m, t, mode, theta, log_min_p, target, 55),
                      (logits, None, m, t, mode, theta, log_min_p, target, 55)],
    }


@needs_extension
def test_every_registered_op_has_an_opcheck_case():
    names = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names()
             if name.startswith("fastsample::")}
    assert names == set(_opcheck_cases())


@needs_extension
@pytest.mark.parametrize("op_name", list(_opcheck_cases()))
def test_opcheck(op_name):
    op = getattr(torch.ops.fastsample, op_name).default
    for args in _opcheck_cases()[op_name]:
        torch.library.opcheck(op, args)


@needs_extension
def test_compile_fullgraph_equals_eager_on_cpu():
    logits = _input("logits", batch=4, vocab=64)
    seed = torch.tensor([1, 2, 3, 4])

    def step(x, seed):
        return fastsample.sample(x, temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, return_logprobs=True,
                                 seed=seed, backend="cpu")

    compiled = torch.compile(step, fullgraph=True)
    _assert_identical(compiled(logits, seed), step(logits, seed))
    assert math.isfinite(step(logits, seed)[1].sum().item())
