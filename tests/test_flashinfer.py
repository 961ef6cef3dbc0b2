"""fastsample.flashinfer: FlashInfer's sampling API (0.6.18 signatures) on every backend that runs here.

The docstring examples of flashinfer.sampling (their inputs come from torch.manual_seed(42) on the CPU, so they
are reproduced exactly; outputs printed to 4 decimals), FlashInfer's documented semantics (dtypes, indices,
return_valid, joint order, seed/offset forms, maybe_output_* accumulation, top_k tie_break), and sampled
distributions against tests/oracle.py.
"""
import inspect

import numpy as np
import pytest
import torch

import oracle
from conftest import chi_square_pvalue
from fastsample import flashinfer as fi

DOC_ATOL = 1.5e-4  # the docstrings print 4 decimals


def draws_for(backend: str) -> int:
    """Draws per chi-square test: the Triton interpreter runs one program per row, so it gets fewer."""
    return 600 if backend == "triton" else 4000


@pytest.fixture(autouse=True)
def _on_backend(backend, monkeypatch):
    """Every test once per backend: the drop-in has no backend argument, so it follows $FASTSAMPLE_BACKEND."""
    monkeypatch.setenv("FASTSAMPLE_BACKEND", backend)


def doc_probs():
    torch.manual_seed(42)
    pre = torch.rand(4, 5)
    return pre / pre.sum(dim=-1, keepdim=True)


# FlashInfer 0.6.18's parameter lists (name, default), from flashinfer/sampling.py and flashinfer/topk.py
_RNG = [("deterministic", True), ("generator", None), ("check_nan", False), ("seed", None), ("offset", None)]
SIGNATURES = {
    "softmax": [("logits", None), ("temperature", None), ("enable_pdl", None)],
    "sampling_from_logits": [("logits", None), ("indices", None), *_RNG],
    "sampling_from_probs": [("probs", None), ("indices", None), *_RNG, ("return_valid", False)],
    "top_p_sampling_from_probs": [("probs", None), ("top_p", None), ("indices", None), *_RNG,
                                  ("return_valid", False)],
    "top_k_sampling_from_probs": [("probs", None), ("top_k", None), ("indices", None), *_RNG,
                                  ("return_valid", False)],
    "min_p_sampling_from_probs": [("probs", None), ("min_p", None), ("indices", None), *_RNG,
                                  ("return_valid", False)],
    "top_k_top_p_sampling_from_logits": [("logits", None), ("top_k", None), ("top_p", None), ("indices", None),
                                         ("filter_apply_order", "top_k_first"), *_RNG],
    "top_k_top_p_sampling_from_probs": [("probs", None), ("top_k", None), ("top_p", None), ("indices", None),
                                        ("filter_apply_order", "top_k_first"), *_RNG, ("return_valid", False)],
    "top_p_renorm_probs": [("probs", None), ("top_p", None), ("is_deterministic", False)],
    "top_k_renorm_probs": [("probs", None), ("top_k", None)],
    "top_k_mask_logits": [("logits", None), ("top_k", None)],
    "chain_speculative_sampling": [("draft_probs", None), ("draft_token_ids", None), ("target_probs", None),
                                   ("maybe_output_accepted_token_num", None),
                                   ("maybe_output_emitted_draft_token_num", None), ("deterministic", True),
                                   ("generator", None), ("seed", None), ("offset", None)],
    "get_seed_and_offset": [("increment", None), ("generator", None), ("device", None)],
    "top_k": [("input", None), ("k", None), ("sorted", False), ("deterministic", False),
              ("tie_break", fi.TopKTieBreak.NONE), ("dsa_graph_safe", False)],
}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_signature_matches_flashinfer(name):
    params = inspect.signature(getattr(fi, name)).parameters.values()
    got = [(p.name, None if p.default is inspect.Parameter.empty else p.default) for p in params]
    assert got == SIGNATURES[name]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)


def test_aliases():
    assert fi.top_p_renorm_prob is fi.top_p_renorm_probs and fi.top_k_renorm_prob is fi.top_k_renorm_probs
    assert fi.topk is fi.top_k


def test_softmax_docstring_example():
    torch.manual_seed(42)
    logits = torch.rand(4, 5)
    want = torch.tensor([[0.2309, 0.2385, 0.1401, 0.2493, 0.1412], [0.2019, 0.1431, 0.2448, 0.2837, 0.1265],
                         [0.2401, 0.1707, 0.2249, 0.1664, 0.1979], [0.1724, 0.2719, 0.1991, 0.1465, 0.2101]])
    got = fi.softmax(logits, temperature=1.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=DOC_ATOL, rtol=0)
    torch.testing.assert_close(fi.softmax(logits, torch.full((4,), 0.5), enable_pdl=True),
                               torch.softmax(logits / 0.5, -1), atol=1e-6, rtol=1e-5)


def test_renorm_docstring_examples():
    probs = doc_probs()
    top_p = torch.tensor([[0.0, 0.4882, 0.0, 0.5118, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0],
                          [0.5181, 0.0, 0.4819, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(fi.top_p_renorm_probs(probs, 0.3), top_p, atol=DOC_ATOL, rtol=0)
    top_k = torch.tensor([[0.3201, 0.3319, 0.0, 0.3480, 0.0], [0.2573, 0.0, 0.3398, 0.4028, 0.0],
                          [0.3672, 0.0, 0.3416, 0.0, 0.2912], [0.0, 0.4243, 0.2750, 0.0, 0.3007]])
    torch.testing.assert_close(fi.top_k_renorm_probs(probs, 3), top_k, atol=DOC_ATOL, rtol=0)


def test_top_k_mask_logits_docstring_example():
    torch.manual_seed(42)
    logits = torch.randn(4, 5)
    inf = float("inf")
    want = torch.tensor([[1.9269, 1.4873, 0.9007, -inf, -inf], [1.0783, 0.8008, 1.6806, -inf, -inf],
                         [-inf, 0.2415, -0.2316, 0.0418, -inf], [0.8599, -0.3097, -inf, 0.8034, -inf]])
    torch.testing.assert_close(fi.top_k_mask_logits(logits, 3), want, atol=DOC_ATOL, rtol=0)
    half = fi.top_k_mask_logits(logits.to(torch.bfloat16), torch.tensor([3, 3, 3, 3], dtype=torch.int32))
    assert half.dtype == torch.bfloat16 and torch.equal(torch.isinf(half), torch.isinf(want))


def test_chain_speculative_docstring_example():
    """Position 0 always accepts (p >= q), position 1 always rejects (p = 0), the residual is all on token 0."""
    draft = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [0.2, 0.3, 0.4, 0.1]]])
    ids = torch.tensor([[2, 1]], dtype=torch.int32)
    target = torch.tensor([[[0.0, 0.1, 0.6, 0.3], [1.0, 0.0, 0.0, 0.0], [0.7, 0.1, 0.1, 0.1]]])
    out, accepted, emitted = fi.chain_speculative_sampling(draft, ids, target)
    assert out.dtype == torch.int32 and accepted.dtype == torch.int32 and emitted.dtype == torch.int32
    assert out.tolist() == [[2, 0, -1]] and accepted.tolist() == [1] and emitted.tolist() == [1]
    acc, emi = torch.full((1,), 10, dtype=torch.int32), torch.full((1,), 20, dtype=torch.int32)
    _, acc_out, emi_out = fi.chain_speculative_sampling(draft, ids, target, acc, emi, seed=1, offset=0)
    assert acc_out is acc and emi_out is emi and acc.tolist() == [11] and emi.tolist() == [21]


SAMPLERS = {  # name -> (call on probs, its oracle distribution kwargs)
    "sampling_from_probs": (lambda p, **kw: fi.sampling_from_probs(p, **kw), {}),
    "top_p": (lambda p, **kw: fi.top_p_sampling_from_probs(p, 0.5, **kw), {"top_p": 0.5}),
    "top_k": (lambda p, **kw: fi.top_k_sampling_from_probs(p, 3, **kw), {"top_k": 3}),
    "min_p": (lambda p, **kw: fi.min_p_sampling_from_probs(p, 0.6, **kw), {"min_p": 0.6}),
    "top_k_top_p": (lambda p, **kw: fi.top_k_top_p_sampling_from_probs(p, 3, 0.6, **kw), {"top_k": 3, "top_p": 0.6}),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_distribution_and_dtype(name, backend):
    """One docstring distribution drawn 4000 times (indices repeat its row): int32 ids from the oracle's
    filtered distribution, chi-square."""
    call, params = SAMPLERS[name]
    probs = doc_probs()[1:2]
    indices = torch.zeros(draws_for(backend), dtype=torch.int64)
    tokens = call(probs, indices=indices, seed=7, offset=0)
    assert tokens.dtype == torch.int64 and tokens.shape == indices.shape
    expected = oracle.distribution(probs.numpy(), False, **params)[0]
    assert chi_square_pvalue(tokens, expected) > 1e-4
    plain = call(probs.expand(3, 5).contiguous())
    assert plain.dtype == torch.int32 and plain.shape == (3,)


def test_sampling_from_logits_matches_oracle(backend):
    torch.manual_seed(0)
    logits = torch.randn(1, 6) * 2
    tokens = fi.sampling_from_logits(logits, torch.zeros(draws_for(backend), dtype=torch.int32), seed=3, offset=0)
    assert tokens.dtype == torch.int32
    assert chi_square_pvalue(tokens.long(), oracle.distribution(logits.numpy(), True)[0]) > 1e-4


def test_indices_map_outputs_to_rows():
    probs = torch.eye(4)  # row j puts all its mass on token j
    indices = torch.tensor([3, 0, 0, 2, 1, 3], dtype=torch.int32)
    out = fi.top_k_top_p_sampling_from_probs(probs, torch.tensor([2, 2, 2, 2, 2, 2], dtype=torch.int32), 0.9,
                                             indices=indices)
    assert out.dtype == torch.int32 and out.tolist() == indices.tolist()
    with pytest.raises(ValueError, match="indices"):
        fi.sampling_from_probs(probs, indices=torch.tensor([4]))


def test_invalid_rows_flashinfer_convention():
    probs = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.3, 0.5], [float("nan"), 0.5, 0.5]])
    samples, valid = fi.top_p_sampling_from_probs(probs, 0.9, return_valid=True)
    assert valid.dtype == torch.bool and valid.tolist() == [False, True, False]
    assert samples[0] == 0 and samples[2] == 0 and 0 <= int(samples[1]) < 3
    with pytest.raises(ValueError, match="NaN"):
        fi.sampling_from_probs(probs, check_nan=True)
    logits = torch.tensor([[-float("inf")] * 3, [0.0, 1.0, 2.0]])
    assert fi.sampling_from_logits(logits)[0] == 0  # no valid token: 0, as FlashInfer


def test_joint_order_intersects_top_k_and_nucleus(backend):
    """joint keeps the top-k set AND the unfiltered distribution's nucleus; top_k_first runs top-p over the
    renormalised top-k survivors. Here they differ: joint keeps {0, 1} (0.4 < 0.45 precedes token 1),
    top_k_first keeps {0} (4/7 > 0.45 precedes token 1 after renormalising the top 2)."""
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    indices = torch.zeros(draws_for(backend), dtype=torch.int64)
    first = fi.top_k_top_p_sampling_from_probs(probs, 2, 0.45, indices=indices, seed=1, offset=0)
    assert (first == 0).all()
    joint = fi.top_k_top_p_sampling_from_probs(probs, 2, 0.45, indices=indices, filter_apply_order="joint",
                                               seed=1, offset=0)
    assert chi_square_pvalue(joint, np.array([4 / 7, 3 / 7, 0, 0])) > 1e-4
    for order, want in (("joint", [4 / 7, 3 / 7, 0, 0]), ("top_k_first", [1.0, 0, 0, 0])):
        from_logits = fi.top_k_top_p_sampling_from_logits(probs.log(), 2, 0.45, indices=indices,
                                                          filter_apply_order=order, seed=2, offset=0)
        assert chi_square_pvalue(from_logits, np.array(want)) > 1e-4
    with pytest.raises(ValueError, match="filter_apply_order"):
        fi.top_k_top_p_sampling_from_probs(probs, 2, 0.5, filter_apply_order="top_p_first")


def test_seed_offset_forms():
    probs = torch.full((6, 50), 0.02)
    by_int = fi.sampling_from_probs(probs, seed=5, offset=8)
    by_len1 = fi.sampling_from_probs(probs, seed=torch.tensor([5]), offset=torch.tensor([8]))
    assert torch.equal(by_int, by_len1)
    assert len(set(by_int.tolist())) > 1  # rows of one seed draw different uniforms
    rows = fi.sampling_from_probs(probs, seed=torch.arange(6), offset=torch.zeros(6, dtype=torch.int64))
    assert torch.equal(rows, fi.sampling_from_probs(probs, seed=torch.arange(6),
                                                    offset=torch.zeros(6, dtype=torch.int64)))
    first = fi.sampling_from_probs(probs[:1], seed=torch.arange(1), offset=torch.zeros(1, dtype=torch.int64))
    assert first[0] == rows[0]  # per-row seeds: a row's draw does not depend on the batch
    with pytest.raises(ValueError, match="both"):
        fi.sampling_from_probs(probs, seed=torch.tensor([5]), offset=8)
    with pytest.raises(ValueError, match="length"):
        fi.sampling_from_probs(probs, seed=torch.arange(3), offset=torch.arange(3))
    torch.manual_seed(3)
    a = fi.sampling_from_probs(probs)
    torch.manual_seed(3)
    assert torch.equal(a, fi.sampling_from_probs(probs))


# (atol, rtol) of renormalised probabilities returned in a half-precision dtype: the float32 result's rounding
# to that dtype (half an ulp, relative), plus the float32 tolerance of the other renorm tests.
HALF_RENORM_TOL = {torch.float16: (1e-6, 2**-11 + 1e-5), torch.bfloat16: (1e-6, 2**-8 + 1e-5)}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_probs(dtype):
    """Renormalised half-precision probs equal the float64 oracle's (on the same half-precision inputs) within
    the rounding to that dtype; the kept set is the oracle's."""
    gen = torch.Generator().manual_seed(11)
    probs = doc_probs()
    big = torch.softmax(torch.randn(4, 1000, generator=gen) * 3, dim=1)
    for x, kw in ((probs, dict(top_k=3)), (big, dict(top_k=50)), (probs, dict(top_p=0.3)), (big, dict(top_p=0.6))):
        fn = fi.top_k_renorm_probs if "top_k" in kw else fi.top_p_renorm_probs
        got = fn(x.to(dtype), *kw.values())
        assert got.dtype == dtype
        want, ambiguous = oracle.renorm_probs(x.to(dtype).double().numpy(), **kw)
        atol, rtol = HALF_RENORM_TOL[dtype]
        np.testing.assert_allclose(got.double().numpy()[~ambiguous], want[~ambiguous], atol=atol, rtol=rtol,
                                   err_msg=f"{fn.__name__} {dtype} {kw}")
        assert ((got.double().numpy() > 0) == (want > 0))[~ambiguous].all(), f"{fn.__name__} {dtype}: kept set"
    tokens = fi.top_k_sampling_from_probs(probs.to(dtype), 1)
    assert tokens.tolist() == probs.argmax(-1).tolist()


def test_top_k_tie_break_and_dtypes():
    x = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]], dtype=torch.bfloat16)
    values, idx = fi.top_k(x, 2)
    assert values.dtype == torch.bfloat16 and idx.dtype == torch.int64
    assert idx.tolist() == [[1, 2]]
    _, idx = fi.top_k(x, 2, sorted=True, tie_break=fi.TopKTieBreak.SMALL)
    assert idx.tolist() == [[1, 2]]
    values, idx = fi.top_k(x, 2, True, True, fi.TopKTieBreak.LARGE, True)
    assert idx.tolist() == [[4, 2]] and values.tolist() == [[3.0, 3.0]]
    torch.manual_seed(0)
    y = torch.randn(3, 100)
    values, idx = fi.top_k(y, 7, sorted=True)
    ref_v, ref_i = torch.topk(y, 7)
    assert torch.equal(values, ref_v) and torch.equal(idx, ref_i)


def test_parameter_tensors_cast_as_flashinfer():
    """Per-row parameters as int32 / float64 tensors: row 0 filters down to its top token, row 1 keeps all."""
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.0, 0.0, 1.0]]).repeat(200, 1)
    top_k = torch.tensor([1, 3], dtype=torch.int32).repeat(200)
    top_p = torch.tensor([0.1, 1.0], dtype=torch.float64).repeat(200)
    min_p = torch.tensor([0.9, 0.0], dtype=torch.float64).repeat(200)
    want = torch.tensor([0, 2]).repeat(200)
    for out in (fi.top_k_sampling_from_probs(probs, top_k), fi.top_p_sampling_from_probs(probs, top_p),
                fi.min_p_sampling_from_probs(probs, min_p), fi.top_k_top_p_sampling_from_probs(probs, top_k, 1.0),
                fi.top_k_top_p_sampling_from_logits(probs.log(), 3, top_p)):
        assert out.dtype == torch.int32 and torch.equal(out.long(), want)
    renormed = fi.top_k_renorm_probs(probs[:2], torch.tensor([1, 3], dtype=torch.int32))
    torch.testing.assert_close(renormed, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
