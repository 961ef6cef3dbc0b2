"""The stack sampler's llama.cpp steps against llama.cpp's own samplers (llama-cpp-python, no model needed):
the same float32 logits through `llama_sampler_apply` and through `fastsample.sample_stack`, then the kept
sets must be equal and the probabilities within 1e-5 relative (docs/ops.md "sample_stack", step 5a).

llama-cpp-python is a test-only extra (`pip install .[llama-cpp]`); without it this file is skipped, saying so.
"""
import ctypes

import numpy as np
import pytest
import torch
from conftest import make_logits, np64

import fastsample

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install .[llama-cpp]): "
                                                    "the comparison with llama.cpp's own samplers is skipped")

BACKENDS = ["cpu", "torch", "triton"]


def _llama_apply(sampler, row: np.ndarray) -> np.ndarray:
    """llama.cpp's sampler on one row of float32 logits: the logits it leaves, by token id (-inf = dropped)."""
    vocab = row.size
    data = (llama_cpp.llama_token_data * vocab)(*(llama_cpp.llama_token_data(i, float(v), 0.0)
                                                  for i, v in enumerate(row)))
    cur = llama_cpp.llama_token_data_array(data=data, size=vocab, selected=-1, sorted=False)
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(cur))
    out = np.full(vocab, -np.inf)
    for k in range(cur.size):
        out[cur.data[k].id] = cur.data[k].logit
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    w = np.exp(z - z.max())
    return w / w.sum()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [0.5, 1.0, 2.5])
@pytest.mark.parametrize("vocab", [12, 1000])  # a short row tells the population sigma from the sample one
def test_top_n_sigma_equals_llama_cpp(backend, n, vocab):
    rows = 6
    x = make_logits(rows, vocab, "flat", 5)
    x[1, ::3] = -float("inf")  # masked tokens: left out of sigma by both
    x[2] = make_logits(1, vocab, "peaked", 6)[0]
    got = fastsample.sample_stack(x, top_n_sigma=n, logprobs="processed", top_logprobs=vocab, seed=0,
                                  backend=backend)
    sampler = llama_cpp.llama_sampler_init_top_n_sigma(n)
    try:
        for b in range(rows):
            want = _llama_apply(sampler, np64(x[b]).astype(np.float32))
            mine = np.full(vocab, -np.inf)
            mine[np64(got.top_ids[b])] = np64(got.top_logprobs[b])
            assert (np.isfinite(mine) == np.isfinite(want)).all(), f"row {b}: kept sets differ"
            kept = np.isfinite(want)
            np.testing.assert_allclose(np.exp(mine[kept]), _softmax(want[kept]), rtol=1e-5, atol=0)
    finally:
        llama_cpp.llama_sampler_free(sampler)


# ------------------------------------------------------------------------------- the long-tail steps
def _mine(got, b: int, vocab: int) -> np.ndarray:
    """fastsample's final log-distribution of row b, by token id (-inf = dropped), from top_logprobs=V."""
    out = np.full(vocab, -np.inf)
    out[np64(got.top_ids[b])] = np64(got.top_logprobs[b])
    return out


def _compare(got, want_rows, what: str, float32_temperature: bool = False):
    """Kept sets equal (a token llama.cpp keeps with a probability that underflows float64, as a DRY penalty of
    1e6 gives, counts as dropped) and probabilities within 1e-5 relative. With float32_temperature (llama.cpp's
    temp_ext divides by a temperature it computed in float32 from a float32 entropy: its own rounding, about
    1e-6 of T, moves log p by that much times the logit's distance from the max), the log-probabilities are
    compared within 1e-5 * (1 + distance) instead."""
    for b, want in enumerate(want_rows):
        mine = _mine(got, b, want.size)
        finite = np.isfinite(want)
        p_want = np.zeros(want.size)
        p_want[finite] = _softmax(want[finite])
        kept = p_want > 0
        assert (np.isfinite(mine) == kept).all(), f"{what} row {b}: kept sets differ"
        if float32_temperature:
            distance = want[kept].max() - want[kept]
            np.testing.assert_array_less(np.abs(mine[kept] - np.log(p_want[kept])), 1e-5 * (1 + distance),
                                         err_msg=f"{what} row {b}")
        else:
            np.testing.assert_allclose(np.exp(mine[kept]), p_want[kept], rtol=1e-5, atol=0, err_msg=f"{what} row {b}")


def _with_sampler(sampler, fn):
    try:
        return fn(sampler)
    finally:
        llama_cpp.llama_sampler_free(sampler)


def _init_dry(multiplier, base, allowed_length, last_n):
    """llama_sampler_init_dry without a vocabulary and without (string) breakers, whatever the binding's
    parameter list (some versions also take the training context size)."""
    import inspect

    values = []
    for name in inspect.signature(llama_cpp.llama_sampler_init_dry).parameters:
        low = name.lower()
        values.append(None if "vocab" in low or "model" in low else 4096 if "ctx" in low
                      else multiplier if "multiplier" in low else base if "base" in low
                      else allowed_length if "allowed" in low else last_n if "last_n" in low
                      else 0 if low.startswith("num") or low.startswith("n_") else None)
    return llama_cpp.llama_sampler_init_dry(*values)


def _rows(vocab, seed, rows=5):
    x = make_logits(rows, vocab, "flat", seed)
    x[1] = make_logits(1, vocab, "peaked", seed + 1)[0]
    x[2] = x[2] * 3  # sharper
    return x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_typical_equals_llama_cpp(backend, p):
    vocab = 500
    x = _rows(vocab, 21)
    got = fastsample.sample_stack(x, typical_p=p, logprobs="processed", top_logprobs=vocab, seed=0, backend=backend)
    want = [_with_sampler(llama_cpp.llama_sampler_init_typical(p, 1), lambda s: _llama_apply(s, np64(r).astype(np.float32)))
            for r in x]
    _compare(got, want, f"typical {p}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("threshold", [0.01, 0.05, 0.2])
def test_xtc_equals_llama_cpp(backend, threshold):
    """XTC with probability 1 (llama.cpp's coin then always says yes, so its own random numbers do not matter)."""
    vocab = 300
    x = _rows(vocab, 22)
    got = fastsample.sample_stack(x, xtc_probability=1.0, xtc_threshold=threshold, logprobs="processed",
                                  top_logprobs=vocab, seed=0, backend=backend)
    want = [_with_sampler(llama_cpp.llama_sampler_init_xtc(1.0, threshold, 1, 1234),
                          lambda s: _llama_apply(s, np64(r).astype(np.float32))) for r in x]
    _compare(got, want, f"xtc {threshold}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temp,delta,exponent", [(1.0, 0.5, 1.0), (0.7, 0.5, 2.0), (0.3, 1.0, 0.5)])
def test_dynatemp_equals_llama_cpp(backend, temp, delta, exponent):
    vocab = 400
    x = _rows(vocab, 23)
    got = fastsample.sample_stack(x, temperature=temp, dynatemp_range=delta, dynatemp_exponent=exponent,
                                  logprobs="processed", top_logprobs=vocab, seed=0, backend=backend)
    want = [_with_sampler(llama_cpp.llama_sampler_init_temp_ext(temp, delta, exponent),
                          lambda s: _llama_apply(s, np64(r).astype(np.float32))) for r in x]
    _compare(got, want, f"temp_ext {temp} {delta} {exponent}", float32_temperature=True)


def _dry_history(rows, length, vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    phrase = torch.randint(0, vocab, (rows, 6), generator=gen)
    hist = phrase.repeat(1, length // 6 + 1)[:, :length].clone()
    hist[:, length // 3] = torch.randint(0, vocab, (rows,), generator=gen)
    return hist


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("multiplier,base,allowed,last_n", [(0.8, 1.75, 2, 64), (2.0, 3.0, 1, 20), (0.5, 1.1, 4, 40)])
def test_dry_equals_llama_cpp(backend, multiplier, base, allowed, last_n):
    """DRY without breakers (llama.cpp's take strings, which need a vocabulary), history fed with
    llama_sampler_accept, explicit dry_penalty_last_n (see the issue: -1 means nothing without a model)."""
    vocab, length = 60, 50
    x = _rows(vocab, 24, rows=4)
    hist = _dry_history(4, length, vocab, 24)
    got = fastsample.sample_stack(x, output_ids=hist, dry_multiplier=multiplier, dry_base=base,
                                  dry_allowed_length=allowed, dry_penalty_last_n=last_n, logprobs="processed",
                                  top_logprobs=vocab, seed=0, backend=backend)

    def run(b):
        def apply(s):
            for t in hist[b].tolist():
                llama_cpp.llama_sampler_accept(s, t)
            return _llama_apply(s, np64(x[b]).astype(np.float32))
        return _with_sampler(_init_dry(multiplier, base, allowed, last_n), apply)

    want = [run(b) for b in range(4)]
    assert any((w != np64(x[b]).astype(np.float32)).any() for b, w in enumerate(want)), "no DRY penalty applied"
    _compare(got, want, f"dry {multiplier} {base} {allowed} {last_n}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_llama_cpp_chain_equals_llama_cpp(backend):
    """order='llama.cpp' against llama.cpp's own chain: DRY -> top-n-sigma -> top-k -> typical -> top-p -> min-p ->
    XTC (probability 1) -> temp_ext, on the same logits and history."""
    vocab, length = 400, 60
    x = _rows(vocab, 25, rows=4)
    hist = _dry_history(4, length, vocab, 25)
    kw = dict(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2, dry_penalty_last_n=64, top_n_sigma=2.0,
              top_k=200, typical_p=0.95, top_p=0.95, min_p=0.01, xtc_probability=1.0, xtc_threshold=0.05,
              temperature=0.8, dynatemp_range=0.3, dynatemp_exponent=1.0)
    got = fastsample.sample_stack(x, output_ids=hist, order="llama.cpp", **kw, logprobs="processed",
                                  top_logprobs=vocab, seed=0, backend=backend)

    def run(b):
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        for s in (_init_dry(0.8, 1.75, 2, 64), llama_cpp.llama_sampler_init_top_n_sigma(2.0),
                  llama_cpp.llama_sampler_init_top_k(200), llama_cpp.llama_sampler_init_typical(0.95, 1),
                  llama_cpp.llama_sampler_init_top_p(0.95, 1), llama_cpp.llama_sampler_init_min_p(0.01, 1),
                  llama_cpp.llama_sampler_init_xtc(1.0, 0.05, 1, 1234),
                  llama_cpp.llama_sampler_init_temp_ext(0.8, 0.3, 1.0)):
            llama_cpp.llama_sampler_chain_add(chain, s)

        def apply(c):
            for t in hist[b].tolist():
                llama_cpp.llama_sampler_accept(c, t)
            return _llama_apply(c, np64(x[b]).astype(np.float32))
        return _with_sampler(chain, apply)

    _compare(got, [run(b) for b in range(4)], "llama.cpp chain", float32_temperature=True)


def test_mirostat_v2_truncation_equals_llama_cpp_rule():
    """llama.cpp's mirostat v2 draws with its own generator, so (as the issue asks) its draw is compared with the
    oracle's uniforms in test_stack_sampler.py; here the truncation it applies before the draw: the tokens it
    keeps (surprise <= mu) are those with nonzero probability in fastsample's final distribution."""
    vocab = 300
    x = _rows(vocab, 26)
    mu = torch.tensor([3.0, 6.0, 1.0, 10.0, 0.5])
    got = fastsample.sample_stack(x, mirostat_mu=mu, mirostat_tau=3.0, mirostat_eta=0.1, logprobs="processed",
                                  top_logprobs=vocab, seed=0, backend="torch")
    for b in range(x.shape[0]):
        z = np64(x[b]).astype(np.float32).astype(np.float64)
        p = _softmax(z)
        keep = -np.log2(p) <= float(mu[b])
        keep[np.argmax(z)] = True
        assert (np.isfinite(_mine(got, b, vocab)) == keep).all()
