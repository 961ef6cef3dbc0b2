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
