"""softmax(logits, temperature): fused temperature + safe softmax vs the oracle (docs/ops.md "softmax")."""
import math

import numpy as np
import pytest
import torch
from conftest import check_close, f32, make_logits, np64, sizes

import fastsample
import oracle

# (atol, rtol) of the float32 output. The oracle gets the exact fp16/bf16 input values, and the math is float32
# for every input dtype, so the low-precision inputs need no looser tolerance than float32 ones.
TOL = {torch.float32: (1e-6, 1e-5), torch.float16: (1e-6, 1e-5), torch.bfloat16: (1e-6, 1e-5)}
DTYPES = list(TOL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["flat", "peaked"])
def test_softmax_random(backend, dtype, kind):
    for vocab in sizes(backend).vocabs:
        rows = sizes(backend).rows(vocab)
        x = make_logits(rows, vocab, kind, seed=vocab).to(dtype)
        for temperature in (None, 0.7, 1.9):
            got = fastsample.softmax(x, temperature, backend=backend)
            assert got.dtype == torch.float32 and got.shape == x.shape
            want = oracle.softmax(np64(x), 1.0 if temperature is None else f32(temperature))
            check_close(got, want, *TOL[dtype], what=f"{backend} V={vocab} {kind} {dtype} T={temperature}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_per_row_temperature(backend, dtype):
    vocab = 1000
    temps = torch.tensor([0.5, 1.0, 2.0, 0.0, -1.0, math.nan, 1e-3, 50.0])
    # Integer logits have exact ties, so the T = 0 row spreads its mass over several maxima.
    x = torch.randint(-6, 6, (temps.numel(), vocab), generator=torch.Generator().manual_seed(3)).to(dtype)
    got = fastsample.softmax(x, temps, backend=backend)
    want = oracle.softmax(np64(x), np64(temps))
    assert np.isnan(want[4]).all() and np.isnan(want[5]).all()  # T < 0 and T NaN rows are invalid
    check_close(got, want, *TOL[dtype], what=f"{backend} per-row T {dtype}")


def test_softmax_zero_temperature(backend):
    x = torch.randint(0, 4, (8, 50), generator=torch.Generator().manual_seed(4)).float()
    got = fastsample.softmax(x, 0.0, backend=backend)
    want = oracle.softmax(np64(x), 0.0)
    assert (want.max(1) < 1).any()  # the case covers rows with several maxima sharing the mass
    check_close(got, want, *TOL[torch.float32], what=f"{backend} T=0")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_special_rows(backend, dtype):
    inf, nan = math.inf, math.nan
    x = torch.randn(7, 64, generator=torch.Generator().manual_seed(5))
    x[0, [3, 40]] = inf              # +inf tokens share the mass equally
    x[1, ::2] = -inf                 # -inf tokens get exactly 0
    x[2] = -inf                      # no finite logit: invalid, NaN row
    x[3, 17] = nan                   # a NaN: invalid, NaN row
    x[4, 5] = inf
    x[4, 6] = -inf                   # a single +inf takes everything
    x[5] = 1e4 * torch.sign(x[5])    # huge logits: the safe softmax must not overflow
    x[6, 9] = nan
    x[6, 10] = inf
    x = x.to(dtype)
    for temperature in (1.0, 0.3, torch.tensor([1.0, 2.0, 0.5, 1.0, 0.0, 0.25, 1.0])):
        got = fastsample.softmax(x, temperature, backend=backend)
        t = np64(temperature) if isinstance(temperature, torch.Tensor) else temperature
        check_close(got, oracle.softmax(np64(x), t), *TOL[dtype], what=f"{backend} special rows T={temperature}")


def test_softmax_vocab_one_and_shapes(backend):
    x = torch.tensor([[3.0], [-math.inf], [math.nan]])
    check_close(fastsample.softmax(x, backend=backend), oracle.softmax(np64(x)), 0, 0, what="V=1")
    # A non-contiguous input is made contiguous, never read with the wrong strides.
    big = make_logits(64, 20, "flat", seed=6)
    check_close(fastsample.softmax(big.t(), backend=backend), oracle.softmax(np64(big.t())),
                *TOL[torch.float32], what="transposed input")


@pytest.mark.parametrize("temperature, error", [(-1.0, ValueError), (math.nan, ValueError), ("1", TypeError),
                                                (torch.ones(3), ValueError), (torch.ones(2, dtype=torch.int64),
                                                                             TypeError)])
def test_softmax_rejects(backend, temperature, error):
    with pytest.raises(error):
        fastsample.softmax(torch.zeros(2, 5), temperature, backend=backend)
