"""The GPU suite: what `make bench` (and tools/gpu_check.py) time on a CUDA device.

Shapes: B in 1, 32, 256 (a single stream, a typical decode batch, a large serving batch) x V in 128256 (Llama 3)
and 151936 (Qwen 2/3), both logit distributions, float32 and bfloat16 (run.py adds bfloat16 on a GPU).
Providers: fastsample's cuda and triton backends, the sort-based reference (reference.py), plain torch, Hugging
Face's warpers and FlashInfer's flashinfer.sampling when it imports (providers.py). Timing: CUDA events around
each call (common.measure); every row also carries the bandwidth limit, one read of the logits at the
device's measured copy bandwidth (limit.copy_bandwidth), in the '× bw limit' column.
"""
from __future__ import annotations

from .inputs import DISTS

BATCHES = (1, 32, 256)
VOCABS = (128256, 151936)
SHAPES = tuple(((b, v), DISTS) for b in BATCHES for v in VOCABS)
