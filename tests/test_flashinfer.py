"""fastsample.flashinfer: FlashInfer's sampling API (0.6.18 signatures) on every backend that runs here.

The docstring examples of flashinfer.sampling (their inputs come from torch.manual_seed(42) on the CPU, so they
are reproduced exactly; outputs printed to 4 decimals), FlashInfer's documented semantics (dtypes, indices,
return_valid, joint order, seed/offset forms, maybe_output_* accumulation, top_k tie_break), and sampled
distributions against tests/oracle.py.
"""
import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import oracle
from conftest import assert_rare, check_tokens, chi_square_pvalue
from fastsample import flashinfer as fi
from fastsample import indexed

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


# ------------------------------------------------------------------------------------ indices (issue 30)
def check_indexed(got, x, indices, is_logits=False, seed=0, offset=0, **params):
    """Output i of ``got`` against the oracle's token for row x[indices[i]] with Philox draw 0 of
    (seed_i, offset_i): exact except within rounding of a CDF step (counted, must stay rare)."""
    rows = x[indices.long()].numpy()
    want, _, candidates = oracle.sample_with_candidates(rows, is_logits, seed=seed, offset=offset, **params)
    assert_rare(check_tokens(torch.where(got.long() >= 0, got.long(), -1), want, candidates, "indexed"), len(rows))


@pytest.mark.parametrize("outputs", [3, 23])  # fewer outputs than rows (copied rows), more (grouped by row)
def test_indices_exact_with_per_output_params(outputs, backend):
    """Repeated indices and per-output parameters (FlashInfer's documented rule: one value per output, shape =
    len(indices)): output i is row indices[i] sampled with its own top_k / top_p / min_p and offset o + i."""
    gen = torch.Generator().manual_seed(outputs)
    probs = torch.rand(5, 40, generator=gen) ** 4
    indices = torch.randint(0, 5, (outputs,), generator=gen, dtype=torch.int32)
    top_k = torch.randint(1, 45, (outputs,), generator=gen)
    top_p = torch.rand(outputs, generator=gen) * 0.5 + 0.5
    min_p = torch.rand(outputs, generator=gen) * 0.3
    offsets = 9 + np.arange(outputs)
    got = fi.top_k_top_p_sampling_from_probs(probs, top_k, top_p, indices=indices, seed=11, offset=9)
    assert got.dtype == torch.int32 and got.shape == (outputs,)
    check_indexed(got, probs, indices, seed=11, offset=offsets, top_k=top_k.numpy(), top_p=top_p.numpy())
    got = fi.min_p_sampling_from_probs(probs, min_p, indices=indices.long(), seed=11, offset=9)
    assert got.dtype == torch.int64
    check_indexed(got, probs, indices, seed=11, offset=offsets, min_p=min_p.numpy())
    logits = probs.log()
    got = fi.sampling_from_logits(logits, indices, seed=12, offset=0)
    check_indexed(got, logits, indices, True, seed=12, offset=np.arange(outputs))


def test_indices_blocks_do_not_change_tokens(monkeypatch, backend):
    """The grouped path works a block of CDF rows and a block of outputs at a time (memory bounds); with
    blocks of one row and 4 outputs, every output still gets its own group and offset: the same tokens.
    Not under the Triton interpreter: one-row blocks mean ~50 kernel launches, each costly there."""
    if backend == "triton":
        pytest.skip("the blocking is backend-independent Python; see the docstring")
    gen = torch.Generator().manual_seed(3)
    probs = torch.rand(6, 40, generator=gen)
    indices = torch.randint(0, 6, (30,), generator=gen)
    top_p = torch.rand(30, generator=gen) * 0.5 + 0.5
    calls = (lambda: fi.top_p_sampling_from_probs(probs, 0.8, indices, seed=2, offset=5),
             lambda: fi.top_p_sampling_from_probs(probs, top_p, indices, seed=2, offset=5),
             lambda: fi.sampling_from_probs(probs, indices, seed=torch.arange(30), offset=torch.zeros(30).long()),
             lambda: fi.sampling_from_probs(probs, torch.zeros(30, dtype=torch.int64), seed=2, offset=5))
    whole = [call() for call in calls]
    monkeypatch.setattr(indexed, "CDF_ENTRIES", 40)
    monkeypatch.setattr(indexed, "OUTPUT_BLOCK", 4)
    for call, want in zip(calls, whole):
        assert torch.equal(call(), want)


def test_draw_from_cdfs_cpu_op_equals_torch_rule():
    """The grouped path's per-output draw: the C++ op (CPU) and its torch twin (other devices) agree, -1 on a
    zero or NaN total, and a group id outside the CDF rows is an error before anything is read."""
    gen = torch.Generator().manual_seed(8)
    cdf = torch.rand(4, 50, generator=gen).double()
    cdf[:, ::3] = 0  # dropped tokens
    cdf = cdf.cumsum(1)
    cdf[2] = 0
    cdf[3, 7:] = float("nan")
    group = torch.randint(0, 4, (500,), generator=gen)
    for seed, offset, step in ((torch.tensor([5]), torch.tensor([2**40]), 1),
                               (torch.arange(500), torch.full((500,), -3), 0)):
        cpu = indexed._draw_cpu(cdf, group, seed, offset, step)
        assert torch.equal(cpu, indexed._draw_torch(cdf, group, seed, offset, step))
        assert ((cpu == -1) == (group >= 2)).all()
        kept = cdf[0].diff(prepend=cdf[0, :1] * 0) > 0
        assert kept[cpu[group == 0]].all()
    with pytest.raises(IndexError, match="group ids"):
        indexed._draw_cpu(cdf, torch.tensor([0, 4]), torch.tensor([1]), torch.tensor([0]), 1)


def test_indices_many_draws_of_few_rows_follow_each_rows_distribution(backend):
    """2 rows, 3000 outputs each (interleaved): each row's draws fit its own distribution, and per-output
    seeds make output i's token depend on its own seed only (here: equal to a one-output call)."""
    probs = torch.tensor([[0.5, 0.25, 0.125, 0.125], [0.0, 0.1, 0.2, 0.7]])
    n = draws_for(backend)
    indices = torch.arange(2 * n) % 2
    tokens = fi.sampling_from_probs(probs, indices, seed=5, offset=0)
    for row in (0, 1):
        assert chi_square_pvalue(tokens[row::2], probs[row].double().numpy()) > 1e-4
    seeds = torch.arange(100, 100 + 2 * n)
    offsets = torch.zeros(2 * n, dtype=torch.int64)
    tokens = fi.sampling_from_probs(probs, indices, seed=seeds, offset=offsets)
    for i in (0, 1, 2 * n - 1):
        alone = fi.sampling_from_probs(probs, indices[i:i + 1], seed=seeds[i:i + 1], offset=offsets[i:i + 1])
        assert alone.item() == tokens[i].item()


def test_indices_checked():
    probs = torch.full((3, 4), 0.25)
    for bad in ([3], [-1], [0, 1, 2, 3, 0]):  # out of range with fewer and with more outputs than rows
        with pytest.raises(ValueError, match=r"indices must be in \[0, 3\)"):
            fi.sampling_from_probs(probs, indices=torch.tensor(bad))
    with pytest.raises(TypeError, match="indices"):
        fi.sampling_from_probs(probs, indices=torch.zeros(5))
    with pytest.raises(ValueError, match="indices must be 1-D"):
        fi.sampling_from_probs(probs, indices=torch.zeros(2, 2, dtype=torch.int64))
    # Parameters follow the outputs: a tensor per row is the wrong length once len(indices) != rows.
    with pytest.raises(ValueError, match="batch size mismatch: expected top_p of length 5"):
        fi.top_p_sampling_from_probs(probs, torch.full((3,), 0.9), indices=torch.zeros(5, dtype=torch.int64))


def test_error_wording_matches_flashinfer():
    """FlashInfer's tests match these phrases (its csrc/sampling_utils.h); the messages also name the argument."""
    probs = torch.full((3, 4), 0.25)
    calls = {"top_p": lambda v: fi.top_p_sampling_from_probs(probs, v),
             "top_k": lambda v: fi.top_k_sampling_from_probs(probs, v),
             "min_p": lambda v: fi.min_p_sampling_from_probs(probs, v)}
    for name, call in calls.items():
        with pytest.raises(ValueError, match=rf"Expected a 1D tensor or scalar.*{name}.*got a 2D tensor"):
            call(torch.ones(3, 4))
        with pytest.raises(ValueError, match=rf"Expected a 1D tensor of shape \(batch_size,\) or scalar.*{name}"
                                             r".*got a 0-dimensional tensor"):
            call(torch.tensor(1))
        with pytest.raises(ValueError, match=rf"Sampling parameter tensor batch size mismatch.*{name}"):
            call(torch.ones(2))


def test_joint_logits_equal_probs_draw_for_draw(monkeypatch):
    """joint order: the logits entry point is softmax then the probs path, so it gives the tokens of
    top_k_top_p_sampling_from_probs(torch.softmax(logits)) with the same generator state. Random rows rarely
    show a last-bit difference between two softmax implementations, so the probabilities the probs path
    receives are also checked to be torch.softmax's, bit for bit."""
    gen = torch.Generator().manual_seed(4)
    logits = torch.rand(24, 1000, generator=gen) * 5
    for indices in (None, torch.randint(0, 24, (60,), generator=gen)):
        g_logits = torch.Generator().manual_seed(9)
        g_probs = g_logits.clone_state()
        got = fi.top_k_top_p_sampling_from_logits(logits, 500, 0.5, indices, "joint", generator=g_logits)
        want = fi.top_k_top_p_sampling_from_probs(torch.softmax(logits, -1), 500, 0.5, indices, "joint",
                                                  generator=g_probs)
        assert torch.equal(got, want)
    seen = []
    draw = fi._draw
    monkeypatch.setattr(fi, "_draw", lambda x, *args, **kwargs: seen.append(x) or draw(x, *args, **kwargs))
    fi.top_k_top_p_sampling_from_logits(logits, 500, 0.5, filter_apply_order="joint")
    assert len(seen) == 1 and torch.equal(seen[0], torch.softmax(logits, -1))


def test_indices_memory_stays_o_outputs(backend):
    """2,000,000 draws from one row of 128256 tokens: copying the rows would take 2e6 x 128256 x 4 bytes
    (1 TB); the grouped path's peak memory growth stays under 100 MB (the ids themselves are 16 MB).
    Measured in a fresh process by its peak resident size (VmHWM, reset before the call; getrusage's maxrss
    would start from this test process's size, inherited across fork and exec). Once, on the cpu backend: the
    grouping is the same on every backend, and the others' draws here run in torch ops (torch) or under the
    Triton interpreter, whose own copies would be measured instead."""
    if backend != "cpu":
        pytest.skip("measured on the cpu backend only (see the docstring)")
    draws, vocab = 2_000_000, 128256
    script = ("import re, torch; from fastsample import flashinfer as fi\n"
              "kib = lambda key: int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
              "probs = torch.softmax(torch.randn(1, VOCAB), -1); idx = torch.zeros(DRAWS, dtype=torch.int64)\n"
              "open('/proc/self/clear_refs', 'w').write('5')  # VmHWM := VmRSS\n"
              "rss = kib('VmRSS')\n"
              "out = fi.top_k_sampling_from_probs(probs, 50, indices=idx, seed=1, offset=0)\n"
              "assert out.shape == idx.shape and int(out.max()) < VOCAB\n"
              "print(kib('VmHWM') - rss)\n").replace("DRAWS", str(draws)).replace("VOCAB", str(vocab))
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    growth_kib = int(result.stdout)
    assert growth_kib < 100 * 1024, f"peak memory grew by {growth_kib / 1024:.0f} MiB"
