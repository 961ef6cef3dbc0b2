"""Benchmark logits: `flat` (standard normal, the hardest case for top-p: the nucleus holds most of the
vocabulary) and `peaked` (Zipf-like, as a trained LM's next-token distribution: top-1 probability 0.35-0.6)."""
from __future__ import annotations

import torch

from .common import Shape

DISTS = ("flat", "peaked")
# Zipf exponents per row: p_rank ~ rank^-s gives a top-1 probability of 1/zeta(s), 0.35 at s = 1.45 and 0.59
# at s = 1.95, nearly independent of V; the nucleus at p = 0.9 then holds about 7 to 90 tokens.
_ZIPF_S = (1.45, 1.95)


def make_logits(shape: Shape, device: torch.device, seed: int = 0) -> torch.Tensor:
    """[B, V] logits of `shape` on `device`, the same for a given seed on every run."""
    gen = torch.Generator().manual_seed(seed)
    batch, vocab = shape.batch, shape.vocab
    if shape.dist == "flat":
        logits = torch.randn(batch, vocab, generator=gen)
    elif shape.dist == "peaked":
        s = _ZIPF_S[0] + (_ZIPF_S[1] - _ZIPF_S[0]) * torch.rand(batch, 1, generator=gen)
        by_rank = -s * torch.log(torch.arange(1, vocab + 1, dtype=torch.float32))
        # Shuffle ids per row so that kernels cannot profit from the most probable tokens sitting first.
        ids = torch.argsort(torch.rand(batch, vocab, generator=gen), dim=1)
        logits = torch.empty(batch, vocab).scatter_(1, ids, by_rank.expand(batch, vocab))
    else:
        raise ValueError(f"unknown logits distribution {shape.dist!r}; expected one of {DISTS}")
    return logits.to(device=device, dtype=shape.dtype)
