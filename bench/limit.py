"""The single-pass limit: the time of one fused pass that reads the logits once and computes each row's
exp-sum (max + sum of exp, online). No exact sampling op can beat it by much, so each op's time is reported as
a ratio to it. On a GPU the copy-bandwidth bound (bytes of the logits / measured copy bandwidth) is reported
as well.

The pass is fastsample's own `torch.ops.fastsample.logsumexp` as soon as the extension registers it for the
device; until then torch.logsumexp stands in, labelled as a substitute in every table and CSV row."""
from __future__ import annotations

from typing import Callable

import torch

from .common import measure


SUBSTITUTE = ("torch.logsumexp (substitute)", lambda x: torch.logsumexp(x, dim=-1))


def single_pass(device: torch.device) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """(label, fn): the best available one-pass exp-sum over [B, V] logits on `device`."""
    from fastsample import _ops

    key = "CUDA" if device.type == "cuda" else "CPU"
    if _ops.AVAILABLE and hasattr(torch.ops.fastsample, "logsumexp") and \
            torch._C._dispatch_has_kernel_for_dispatch_key("fastsample::logsumexp", key):
        return "fastsample.logsumexp", torch.ops.fastsample.logsumexp
    return SUBSTITUTE


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Device-memory copy bandwidth in bytes/s (read + write), from the median of timed 1 GiB copies."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    timing = measure(lambda: dst.copy_(src), device, min_time_s=0.2, min_reps=10)
    return 2 * nbytes / (timing.median_ms * 1e-3)
