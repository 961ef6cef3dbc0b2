"""Sampling from logits: sampling_from_logits, top_k_top_p_sampling_from_logits and the fused `sample` in
the variants issue 6 sets targets for (T=0.8 with k=50,p=0.9; top-p only; the full distribution; + min-p)."""
from __future__ import annotations

import torch

import fastsample

from .common import BenchOp
from .providers import fastsample_impls, flashinfer_impl, hf_impl, hf_sample

# (temperature, top_k, top_p, min_p) of each `sample` variant.
SAMPLE_VARIANTS = ((0.8, 50, 0.9, 0.0), (0.8, 0, 0.9, 0.0), (0.8, 0, 1.0, 0.0), (0.8, 50, 0.9, 0.1))
K, P = 50, 0.9


def _prepare(logits: torch.Tensor) -> dict:
    return {"logits": logits}


def torch_sample(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """The fastest plain-torch sampler (vLLM's recipe): narrow to the top-k candidates with torch.topk (or sort
    the whole row when top-p stands alone), softmax over them, cut by cumsum and min-p, then multinomial."""
    x = logits.float()
    if temperature != 1.0:
        x = x / temperature
    if top_k > 0:
        x, ids = torch.topk(x, top_k, dim=-1)
    elif top_p < 1.0:
        x, ids = torch.sort(x, dim=-1, descending=True)
    else:
        ids = None
    probs = torch.softmax(x, dim=-1)
    if top_p < 1.0:
        probs = probs.masked_fill(torch.cumsum(probs, dim=-1) - probs >= top_p, 0.0)
    if min_p > 0.0:
        probs = probs.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), 0.0)
    choice = torch.multinomial(probs, num_samples=1)
    return (choice if ids is None else ids.gather(1, choice)).squeeze(1)


def _flashinfer_sample(temperature: float, top_k: int, top_p: float, min_p: float) -> dict:
    """FlashInfer's closest call for a `sample` variant ({} for min-p, which it has only on probs)."""
    if min_p > 0.0:
        return {}
    if top_k > 0:
        return flashinfer_impl("top_k_top_p_sampling_from_logits",
                               lambda fn, d: fn(d["logits"] / temperature, top_k, top_p))
    if top_p < 1.0:
        return flashinfer_impl("top_p_sampling_from_probs",
                               lambda fn, d: fn(torch.softmax(d["logits"] / temperature, dim=-1), top_p))
    return flashinfer_impl("sampling_from_logits", lambda fn, d: fn(d["logits"] / temperature))


def _sample_label(temperature: float, top_k: int, top_p: float, min_p: float) -> str:
    return f"sample(T={temperature},k={top_k},p={top_p}" + (f",min_p={min_p})" if min_p > 0.0 else ")")


def _sample_op(temperature: float, top_k: int, top_p: float, min_p: float) -> BenchOp:
    settings = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p}
    return BenchOp(_sample_label(temperature, top_k, top_p, min_p), "sampling", _prepare, {
        **fastsample_impls(lambda d, backend: fastsample.sample(d["logits"], **settings, backend=backend)),
        "torch": lambda d: lambda: torch_sample(d["logits"], temperature, top_k, top_p, min_p),
        **hf_impl(lambda d, warpers: hf_sample(d["logits"], warpers), **settings),
        **_flashinfer_sample(temperature, top_k, top_p, min_p),
    })


OPS = [
    BenchOp("sampling_from_logits", "sampling", _prepare, {
        **fastsample_impls(lambda d, backend: fastsample.sampling_from_logits(d["logits"], backend=backend)),
        "torch": lambda d: lambda: torch.multinomial(torch.softmax(d["logits"], dim=-1, dtype=torch.float32), 1),
        **flashinfer_impl("sampling_from_logits", lambda fn, d: fn(d["logits"])),
    }),
    BenchOp(f"top_k_top_p_sampling_from_logits(k={K},p={P})", "sampling", _prepare, {
        **fastsample_impls(lambda d, backend: fastsample.top_k_top_p_sampling_from_logits(
            d["logits"], K, P, backend=backend)),
        "torch": lambda d: lambda: torch_sample(d["logits"], 1.0, K, P, 0.0),
        **hf_impl(lambda d, warpers: hf_sample(d["logits"], warpers), top_k=K, top_p=P),
        **flashinfer_impl("top_k_top_p_sampling_from_logits", lambda fn, d: fn(d["logits"], K, P)),
    }),
    *(_sample_op(*variant) for variant in SAMPLE_VARIANTS),
]
