"""The implementations compared, which of them this machine has, and helpers the op modules share.

Providers:
  fastsample:cpu / :cuda / :triton   fastsample's compiled or Triton backends (public API, backend=...)
  fastsample:cpu-avx2                the CPU kernels on their AVX2 path, forced (csrc/cpu/isa.h), on a CPU whose
                                     default path is another (AVX-512): every CPU table shows both paths
  reference                          fastsample/reference.py through the public API (backend="torch"):
                                     vLLM-style sort + cumsum + exponential race; the speed-up baseline
  hf                                 Hugging Face transformers: the generate() warpers + softmax + multinomial
  torch                              the best plain torch primitives (torch.topk, torch.softmax, multinomial)
  flashinfer                         FlashInfer's sampling kernels, when importable on a GPU
"""
from __future__ import annotations

import importlib
from contextlib import contextmanager
from typing import Callable

import torch

FASTSAMPLE = {"fastsample:cpu": "cpu", "fastsample:cuda": "cuda", "fastsample:triton": "triton",
              "reference": "torch", "fastsample:cpu-avx2": "cpu"}
ALL = (*FASTSAMPLE, "hf", "torch", "flashinfer")
REFERENCE = "reference"


def _importable(module: str) -> str | None:
    """None when the optional `module` imports, else why not (for the run's list of skipped providers)."""
    try:
        importlib.import_module(module)
        return None
    except Exception as exc:  # a broken optional install (FlashInfer's) must not stop the benchmark
        return f"{type(exc).__name__}: {exc}"


def _required(module: str) -> None:
    """Imports `module`, which `make install` provides: a failure is a broken repository, so it propagates
    instead of turning the provider into a skipped one (a benchmark without its baseline is no benchmark)."""
    importlib.import_module(module)


def availability(device: torch.device) -> dict[str, str | None]:
    """Every provider -> None when it can run on `device`, else the reason it cannot."""
    from fastsample import _ops

    gpu = device.type == "cuda"
    built = None if _ops.AVAILABLE else f"fastsample._C did not import ({_ops.IMPORT_ERROR})"
    return {
        "fastsample:cpu": "needs a CPU device" if gpu else built,
        "fastsample:cuda": (built or (None if _ops.cuda_built() else "fastsample._C built without CUDA"))
        if gpu else "needs a CUDA device",
        "fastsample:triton": _importable("fastsample.triton.ops") if gpu else "needs a CUDA device",
        "reference": _required("fastsample.reference"),
        "hf": _required("transformers.generation.logits_process"),
        "torch": None,
        "flashinfer": _importable("flashinfer.sampling") if gpu else "needs a CUDA device",
        **{name: "needs a CPU device" if gpu else built or _path_missing(path) for name, path in CPU_PATHS.items()},
    }


# ------------------------------------------------------------------------------ forced CPU vector paths
# Providers that run fastsample's CPU kernels on a forced vector path: the path is switched around each of
# their cases, and their single-pass limit is timed on the same path.
CPU_PATHS = {"fastsample:cpu-avx2": "avx2"}


def _path_missing(path: str) -> str | None:
    """None when the CPU kernels can be switched to `path` and it is not already their default."""
    ops = torch.ops.fastsample_cpu
    default = ops.isa()
    try:
        got = ops.set_isa(path)
    finally:
        ops.set_isa(default)
    if got != path:
        return f"this CPU has no {path} path"
    return f"{path} is this CPU's default path (fastsample:cpu)" if default == path else None


@contextmanager
def on_cpu_path(provider: str):
    """Runs the block on the provider's forced CPU path (no change for other providers)."""
    path = CPU_PATHS.get(provider)
    if path is None:
        yield
        return
    ops = torch.ops.fastsample_cpu
    before = ops.isa()
    ops.set_isa(path)
    try:
        yield
    finally:
        ops.set_isa(before)


def isa_of(provider: str, device: torch.device) -> str:
    """The instruction set a CPU row ran: fastsample's CPU path (call inside on_cpu_path), else torch's
    own CPU capability; "" on a GPU."""
    if device.type == "cuda":
        return ""
    if FASTSAMPLE.get(provider) == "cpu" and provider != REFERENCE:
        return torch.ops.fastsample_cpu.isa()
    return torch.backends.cpu.get_cpu_capability().lower()


# ------------------------------------------------------------------------------ helpers for op modules
# An implementation maps the op's inputs to the zero-argument callable that gets timed, so that set-up
# (building warpers, looking up a library function) stays outside the timed region.
Impl = Callable[[dict], Callable[[], object]]


def fastsample_impls(call: Callable[[dict, str], object]) -> dict[str, Impl]:
    """One entry per fastsample backend (reference included) from `call(inputs, backend)`."""
    return {name: (lambda inputs, backend=backend: lambda: call(inputs, backend))
            for name, backend in FASTSAMPLE.items()}


def flashinfer_impl(name: str, call: Callable[[Callable, dict], object]) -> dict[str, Impl]:
    """{"flashinfer": ...} calling flashinfer.sampling.<name> (or flashinfer.<name>) when that exists, else {}.
    Looked up on first use, so that a machine without FlashInfer never imports it."""

    def impl(inputs: dict):
        import flashinfer
        import flashinfer.sampling

        fn = getattr(flashinfer.sampling, name, None) or getattr(flashinfer, name)
        return lambda: call(fn, inputs)

    return {"flashinfer": impl}


def hf_warpers(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> list:
    """The logits warpers `generate()` builds for these settings, in its order (temperature, top-k, top-p,
    min-p), each left out when disabled as generate() does."""
    from transformers.generation import logits_process as lp

    warpers = []
    if temperature != 1.0:
        warpers.append(lp.TemperatureLogitsWarper(temperature))
    if top_k > 0:
        warpers.append(lp.TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(lp.TopPLogitsWarper(top_p))
    if min_p > 0.0:
        warpers.append(lp.MinPLogitsWarper(min_p))
    return warpers


def hf_impl(call: Callable[[dict, list], object], **settings) -> dict[str, Impl]:
    """{"hf": ...} timing `call(inputs, warpers)`, with the warpers of `settings` built outside the timing."""

    def impl(inputs: dict):
        warpers = hf_warpers(**settings)
        return lambda: call(inputs, warpers)

    return {"hf": impl}


def hf_apply(scores: torch.Tensor, warpers: list) -> torch.Tensor:
    for warper in warpers:
        scores = warper(None, scores)  # the warpers ignore input_ids
    return scores


def hf_sample(logits: torch.Tensor, warpers: list) -> torch.Tensor:
    """generate()'s sampling step: float32 scores, the warpers, softmax, multinomial."""
    scores = hf_apply(logits.float(), warpers)  # generate() upcasts the logits to float32 first
    return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
