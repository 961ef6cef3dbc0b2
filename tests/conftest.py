"""Shared fixtures and helpers: the `backend` fixture, per-backend shapes, conversions, token and chi-square checks.

Every kernel test runs once per backend through the public API (``fastsample.<fn>(..., backend=backend)``)
and compares with tests/oracle.py.
"""
import importlib.metadata
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

# Without a GPU the Triton backend runs on CPU tensors through the interpreter; the flag is read when
# Triton kernels are defined, so it must be set before anything imports fastsample.triton.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402


def _import_the_installed_package():
    """Import fastsample as installed, not the source folder next to the tests.

    ``python -m pytest`` puts the working directory first on sys.path, so from the repository root the source
    folder fastsample/ would shadow an installed wheel (and it has no compiled _C). An editable install
    (``make install``) is this source tree, so then the source tree is right; any other install wins over it.
    Imported here, once, so that no later sys.path change (test_bench.py adds the root for bench/) matters.
    """
    root = Path(__file__).resolve().parent.parent
    elsewhere = [p for p in sys.path if Path(p or os.curdir).resolve() != root]
    installed = next(iter(importlib.metadata.distributions(name="fastsample", path=elsewhere)), None)
    direct_url = json.loads((installed and installed.read_text("direct_url.json")) or "{}")
    if installed is not None and not direct_url.get("dir_info", {}).get("editable"):
        sys.path[:] = elsewhere
    import fastsample

    return fastsample


fastsample = _import_the_installed_package()


def pytest_report_header(config):
    return f"fastsample imported from {Path(fastsample.__file__).parent}"


BACKENDS = ("cpu", "torch", "triton", "cuda")
# Every test shape/seed choice derives from these, so a failure names a reproducible case.
ALL_VOCABS = (1, 2, 7, 1000, 32000, 128256, 262144)
TRITON_VOCABS = (1, 7, 100, 1000)
# Backends whose kernels run on the GPU: "cuda" always, "triton" unless the interpreter runs it on the CPU.
GPU_BACKENDS = ("cuda",) if os.environ.get("TRITON_INTERPRET") == "1" else ("cuda", "triton")
CUDA_KERNELS = torch.cuda.is_available() and fastsample._ops.AVAILABLE and fastsample._ops.cuda_built()
# The public op functions the `backend` fixture routes to the GPU (everything sampling.py defines, and more).
PUBLIC_OPS = [*(name for name, fn in vars(fastsample.sampling).items()
                if callable(fn) and not name.startswith("_") and fn.__module__ == fastsample.sampling.__name__),
              "chain_speculative_sampling"]


def _to_gpu(value):
    """A CPU tensor copied to the GPU with the same sizes, strides and storage offset (an expanded or strided
    view stays one, so the kernels' handling of views is still tested); anything else as it is."""
    if not isinstance(value, torch.Tensor):
        return value
    storage = torch.as_strided(value, (value.untyped_storage().nbytes() // value.element_size(),), (1,), 0)
    return torch.as_strided(storage.cuda(), value.shape, value.stride(), value.storage_offset())


def _on_gpu(fn):
    """``fn`` with its tensor arguments moved to the GPU and its tensor results moved back: a test written for
    CPU tensors then runs a GPU backend unchanged (inputs copied exactly, results compared on the host)."""
    def call(*args, **kwargs):
        args = [_to_gpu(a) for a in args]
        kwargs = {k: _to_gpu(v) for k, v in kwargs.items()}
        result = fn(*args, **kwargs)
        if isinstance(result, tuple):
            return tuple(r.cpu() for r in result)
        return result.cpu()

    return call


@pytest.fixture(params=[*BACKENDS[:-1], pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not CUDA_KERNELS, reason="needs a GPU and fastsample._C built with its CUDA "
                                                                 "kernels")])])
def backend(request, monkeypatch) -> str:
    """The backend name passed as ``backend=`` to the public API. Every CPU backend must be importable: a
    missing extension fails its tests rather than skipping them. For a GPU backend the public functions take
    and return CPU tensors (`_on_gpu`), so every op test runs on every backend, as the design asks."""
    if request.param in GPU_BACKENDS:
        for name in PUBLIC_OPS:
            monkeypatch.setattr(fastsample, name, _on_gpu(getattr(fastsample, name)))
    return request.param


@dataclass(frozen=True)
class Sizes:
    """Shapes a test uses on one backend (the Triton interpreter is orders of magnitude slower).

    Attributes
    ----------
    batch : rows per exact-comparison call at small vocabularies.
    vocabs : vocabulary sizes of the exact-comparison tests.
    draws : draws (rows) per chi-square test.
    """

    batch: int
    vocabs: tuple
    draws: int

    def rows(self, vocab: int) -> int:
        """Rows for a call at ``vocab``: fewer at large V so the suite stays within a few minutes."""
        return max(2, min(self.batch, (1 << 18) // vocab))


def sizes(backend: str) -> Sizes:
    """The shapes every test uses on ``backend``."""
    if backend == "triton" and backend not in GPU_BACKENDS:  # the interpreter
        return Sizes(batch=3, vocabs=TRITON_VOCABS, draws=1000)
    return Sizes(batch=32, vocabs=ALL_VOCABS, draws=40000)


def np64(t: torch.Tensor) -> np.ndarray:
    """A tensor as numpy: floats as float64 (fp16/bf16/fp32 values are exact in float64), ints as int64."""
    t = t.detach().cpu()
    if t.dtype.is_floating_point:
        return t.to(torch.float32).numpy().astype(np.float64)
    return t.to(torch.int64).numpy()


def f32(value: float) -> float:
    """``value`` rounded to float32: what the kernels see for a scalar or float32 per-row parameter."""
    return float(np.float32(value))


def oracle_seed_offset(batch: int, seed: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (seed, offset) for an int seed and int offset (fastsample/_rng.py: offsets o + b)."""
    return np.full(batch, seed, dtype=np.int64), np.arange(offset, offset + batch, dtype=np.int64)


def make_logits(batch: int, vocab: int, kind: str, seed: int) -> torch.Tensor:
    """float32 logits [batch, vocab]: "flat" standard normal, or "peaked" (normal * 5, a heavy head)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, vocab, generator=gen)
    if kind == "peaked":
        x = x * 5
    elif kind != "flat":
        raise ValueError(kind)
    return x


def make_probs(batch: int, vocab: int, kind: str, seed: int) -> torch.Tensor:
    """Unnormalised float32 probabilities [batch, vocab] from softmax of `make_logits` (scaled by 3 so rows need
    not sum to 1)."""
    return torch.softmax(make_logits(batch, vocab, kind, seed).double(), -1).float() * 3


def assert_rare(flips: int, rows: int, what: str = "") -> None:
    """Rows where a kernel took the other side of a near-tie must be rare: under 0.1% of a test's rows, or at
    most one in a small test. More means the kernel's float32 error is far above rounding."""
    assert flips <= max(1, rows // 1000), f"{what}: {flips} of {rows} rows differ from the float64 oracle " \
                                          f"within rounding of a boundary; expected at most {max(1, rows // 1000)}"


def check_tokens(got: torch.Tensor, want: np.ndarray, candidates: list, what: str = "") -> int:
    """Compare kernel tokens with ``oracle.sample_with_candidates``; return how many rows differ from the oracle.

    Rows with a single candidate (not ambiguous) must equal the oracle exactly. Ambiguous rows are still
    checked: the token must be one that rounding within the oracle's tolerance can produce. The return value
    (rows on the other side of a near-tie) goes to `assert_rare`.
    """
    got = np64(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    ambiguous = np.array([len(c) > 1 for c in candidates], dtype=bool)
    bad = np.flatnonzero((got != want) & ~ambiguous)
    assert bad.size == 0, (f"{what}: {bad.size} rows differ from the oracle, e.g. rows {bad[:5].tolist()}: "
                           f"got {got[bad[:5]].tolist()}, want {want[bad[:5]].tolist()}")
    off = [b for b in np.flatnonzero(ambiguous) if int(got[b]) not in candidates[b]]
    assert not off, (f"{what}: ambiguous rows {off[:5]} got tokens {[int(got[b]) for b in off[:5]]}, "
                     f"outside the rounding window {[sorted(candidates[b]) for b in off[:5]]}")
    return int((got != want).sum())


def check_renorm(got: torch.Tensor, candidates: list, atol: float, rtol: float, what: str = "") -> int:
    """Compare renormalised probabilities with ``oracle.renorm_candidates``; return how many rows matched only a
    kept set other than the float64 one (for `assert_rare`).

    A row matches a candidate when it is zero exactly where the candidate is and within (atol, rtol) elsewhere.
    """
    g = np64(got)
    assert g.shape == (len(candidates), candidates[0][0].size), f"{what}: shape {g.shape}"
    flips = 0
    for b, cands in enumerate(candidates):
        match = [j for j, want in enumerate(cands)
                 if ((g[b] == 0) == (want == 0)).all() and np.allclose(g[b], want, atol=atol, rtol=rtol)]
        if not match:
            want = cands[0]
            diff = np.flatnonzero(((g[b] == 0) != (want == 0)) | ~np.isclose(g[b], want, atol=atol, rtol=rtol))
            raise AssertionError(f"{what}: row {b} differs from the oracle at {diff.size} tokens, e.g. "
                                 f"{diff[:5].tolist()}: got {g[b, diff[:5]].tolist()}, want {want[diff[:5]].tolist()}")
        flips += match[0] > 0
    return flips


def oracle_value(value):
    """A filter value as the oracle takes it: a per-row tensor as a float64 array, a scalar as it is."""
    return np64(value) if isinstance(value, torch.Tensor) else value


def sweep_filter_renorm(backend: str, renorm, key: str, values, probs_seed: int, tol: tuple) -> None:
    """``renorm(probs, v, backend=...)`` against ``oracle.renorm_candidates(..., key=v)`` over flat and peaked
    rows at each test vocabulary, for every v in ``values(rows, vocab)``; near-tie flips must be rare."""
    import oracle
    flips = rows_total = 0
    for kind in ("flat", "peaked"):
        for vocab in sizes(backend).vocabs:
            rows = sizes(backend).rows(vocab)
            probs = make_probs(rows, vocab, kind, seed=vocab + probs_seed)
            for v in values(rows, vocab):
                got = renorm(probs, v, backend=backend)
                cands = oracle.renorm_candidates(np64(probs), **{key: oracle_value(v)})
                flips += check_renorm(got, cands, *tol, what=f"{backend} {kind} V={vocab} {key}={v}")
                rows_total += rows
    assert_rare(flips, rows_total, f"{backend} {renorm.__name__}")


def sweep_filter_sampling(backend: str, sampler, key: str, values, probs_seed: int, seed_of, offset: int,
                          kinds=("flat", "peaked")) -> None:
    """``sampler(probs, v, seed=seed_of(vocab), offset=offset, backend=...)`` against the oracle's token for each
    row (per-row seeds of docs/ops.md) over each kind of rows at each test vocabulary, for every v in
    ``values(rows, vocab)``; near-tie flips must be rare."""
    import oracle
    flips = rows_total = 0
    for kind in kinds:
        for vocab in sizes(backend).vocabs:
            rows = sizes(backend).rows(vocab)
            probs = make_probs(rows, vocab, kind, seed=vocab + probs_seed)
            for v in values(rows, vocab):
                got = sampler(probs, v, seed=seed_of(vocab), offset=offset, backend=backend)
                seeds, offsets = oracle_seed_offset(rows, seed_of(vocab), offset)
                want, _, cands = oracle.sample_with_candidates(np64(probs), False, **{key: oracle_value(v)},
                                                               seed=seeds, offset=offsets)
                flips += check_tokens(got, want, cands, what=f"{backend} {kind} V={vocab} {key}={v}")
                rows_total += rows
    assert_rare(flips, rows_total, f"{backend} {sampler.__name__}")


def check_close(got: torch.Tensor, want: np.ndarray, atol: float, rtol: float, what: str = "") -> None:
    """Assert |got - want| <= atol + rtol * |want| elementwise, NaN where the oracle has NaN, same infinities."""
    g = np64(got)
    assert g.shape == want.shape, f"{what}: shape {g.shape} != {want.shape}"
    np.testing.assert_allclose(g, want, atol=atol, rtol=rtol, equal_nan=True, err_msg=what)


def chi_square_pvalue(tokens: torch.Tensor, expected: np.ndarray) -> float:
    """p-value of a chi-square goodness-of-fit test of ``tokens`` (draws) against the distribution ``expected``.

    Draws outside [0, V) or of a zero-probability token fail an assertion straight away (a chi-square test
    would only make them unlikely). Bins expecting fewer than 5 draws are pooled, as the test requires. Tests
    call this with fixed kernel seeds and a threshold like 1e-4, so the result is deterministic, never flaky.
    """
    t = np64(tokens)
    vocab = expected.size
    assert ((t >= 0) & (t < vocab)).all(), f"tokens out of range: {np.unique(t[(t < 0) | (t >= vocab)])[:10]}"
    observed = np.bincount(t, minlength=vocab).astype(np.float64)
    assert observed[expected == 0].sum() == 0, \
        f"drew tokens of zero probability: {np.flatnonzero((expected == 0) & (observed > 0))[:10].tolist()}"
    exp_counts = expected / expected.sum() * t.size
    small = exp_counts < 5
    obs_bins, exp_bins = list(observed[~small]), list(exp_counts[~small])
    if small.any():
        if exp_counts[small].sum() >= 5 or not obs_bins:
            obs_bins.append(observed[small].sum())
            exp_bins.append(exp_counts[small].sum())
        else:  # the pooled bin is itself too small: fold it into a large one
            obs_bins[-1] += observed[small].sum()
            exp_bins[-1] += exp_counts[small].sum()
    if len(exp_bins) < 2:  # one possible outcome: the zero-probability check above was the whole test
        return 1.0
    return float(stats.chisquare(obs_bins, exp_bins).pvalue)


class _DeprecationLogAsWarning(logging.Handler):
    """transformers logs its "`past_key_values`/`cache_params` are deprecated. Use `cache` instead." notice
    (logger.warning_once) instead of warning: re-issue it as a FutureWarning, which pytest.ini turns into an
    error, so that a deprecated cache keyword anywhere in fastsample fails the test that used it."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "are deprecated. Use `cache` instead" in message:
            warnings.warn(message, FutureWarning, stacklevel=2)


logging.getLogger("transformers").addHandler(_DeprecationLogAsWarning())
