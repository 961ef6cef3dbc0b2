"""Calls every CUDA op of fastsample once at a small and a large vocabulary: the workload tools/gpu_check.py
runs under ``compute-sanitizer --tool memcheck`` and ``--tool racecheck``.

Each public function runs with ``backend=backend`` on float32 (and bfloat16 where it takes logits), with
scalar and per-row parameters, on rows that include the edge cases (a NaN row, an all -inf row), so that the
kernels' guarded paths run too. Prints one line per call and exits 0; the sanitizer's exit code says whether
it found errors. Usage: ``python tools/sanitize_ops.py [--vocabs 1000 151936] [--batch 3]``.
"""
from __future__ import annotations

import argparse
import sys

import torch

sys.path.insert(0, __file__.rsplit("/tools/", 1)[0])
import fastsample  # noqa: E402


def logits_for(batch: int, vocab: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    x = torch.randn(batch, vocab, device=device) * 3
    if batch >= 3:
        x[1, vocab // 2] = float("nan")
        x[2] = float("-inf")
    return x.to(dtype)


def calls(batch: int, vocab: int, device: str = "cuda", backend: str = "cuda"):
    """(label, zero-argument call) for every public op at this shape on ``backend``."""
    f = fastsample
    kw = dict(backend=backend, seed=1234)
    k_arr = torch.full((batch,), min(50, vocab), dtype=torch.int64, device=device)
    p_arr = torch.full((batch,), 0.9, device=device)
    t_arr = torch.full((batch,), 0.8, device=device)
    for dtype in (torch.float32, torch.bfloat16):
        x = logits_for(batch, vocab, dtype, device)
        tag = str(dtype).removeprefix("torch.")
        yield f"softmax {tag}", lambda x=x: f.softmax(x, temperature=0.8, backend=backend)
        yield f"top_k {tag}", lambda x=x: f.top_k(x, min(50, vocab), backend=backend)
        yield f"top_k_mask_logits {tag}", lambda x=x: f.top_k_mask_logits(x, k_arr, backend=backend)
        yield f"greedy {tag}", lambda x=x: f.greedy(x, backend=backend)
        yield f"sampling_from_logits {tag}", lambda x=x: f.sampling_from_logits(x, **kw)
        yield f"top_k_top_p_sampling_from_logits {tag}", \
            lambda x=x: f.top_k_top_p_sampling_from_logits(x, min(50, vocab), 0.9, **kw)
        yield f"sample scalars {tag}", lambda x=x: f.sample(x, temperature=0.8, top_k=min(50, vocab), top_p=0.9,
                                                              min_p=0.05, return_logprobs=True, **kw)
        yield f"sample per-row {tag}", lambda x=x: f.sample(x, temperature=t_arr, top_k=k_arr, top_p=p_arr,
                                                              return_logprobs=True, **kw)
    probs = torch.softmax(logits_for(batch, vocab, torch.float32, device).nan_to_num(nan=0.0), dim=-1).nan_to_num(nan=0.0)
    yield "top_k_renorm_probs", lambda: f.top_k_renorm_probs(probs, k_arr, backend=backend)
    yield "top_p_renorm_probs", lambda: f.top_p_renorm_probs(probs, 0.9, backend=backend)
    yield "min_p_renorm_probs", lambda: f.min_p_renorm_probs(probs, 0.1, backend=backend)
    yield "sampling_from_probs", lambda: f.sampling_from_probs(probs, **kw)
    yield "top_k_sampling_from_probs", lambda: f.top_k_sampling_from_probs(probs, k_arr, **kw)
    yield "top_p_sampling_from_probs", lambda: f.top_p_sampling_from_probs(probs, p_arr, **kw)
    yield "min_p_sampling_from_probs", lambda: f.min_p_sampling_from_probs(probs, 0.1, **kw)
    yield "top_k_top_p_sampling_from_probs", lambda: f.top_k_top_p_sampling_from_probs(probs, k_arr, 0.9, **kw)
    n = 3
    draft = torch.softmax(torch.randn(batch, n, vocab, device=device), dim=-1)
    target = torch.softmax(torch.randn(batch, n + 1, vocab, device=device), dim=-1)
    ids = torch.randint(0, vocab, (batch, n), device=device)
    yield "chain_speculative_sampling", lambda: f.chain_speculative_sampling(draft, ids, target, **kw)
    yield from stack_calls(batch, vocab, device, backend)


def stack_calls(batch: int, vocab: int, device: str, backend: str):
    """sample_stack with every step on (mask, bias, penalties with an out-of-range id in the last row), through
    the fused path (one draw, HF order) and the other (vLLM order, n draws, logprobs and top-N)."""
    words = (vocab + 31) // 32
    mask = torch.randint(-2**31, 2**31 - 1, (batch, words), dtype=torch.int32, device=device)
    hist = lambda n: torch.randint(-1, vocab, (batch, n), device=device)  # noqa: E731
    output = hist(256)
    output[-1, 0] = vocab  # an invalid row, not an out-of-bounds access
    common = dict(allowed_mask=mask, bias_ids=hist(16), bias_values=torch.randn(batch, 16, device=device),
                  prompt_ids=hist(1024), output_ids=output, repetition_penalty=1.1, frequency_penalty=0.2,
                  presence_penalty=torch.full((batch,), 0.1, device=device), temperature=0.8, top_k=min(50, vocab),
                  top_p=0.9, min_p=0.05, backend=backend, seed=1234)
    for dtype in (torch.float32, torch.bfloat16):
        x = logits_for(batch, vocab, dtype, device)
        tag = str(dtype).removeprefix("torch.")
        yield f"sample_stack one draw {tag}", lambda x=x: fastsample.sample_stack(x, **common)
        yield f"sample_stack vllm n=2 logprobs {tag}", lambda x=x: fastsample.sample_stack(
            x, **common, order="vllm", num_samples=2, logprobs="processed", top_logprobs=3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocabs", nargs="+", type=int, default=[1000, 151936])
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--backend", default="cuda", help="cpu runs the same calls without a GPU (a dry run)")
    args = parser.parse_args()
    device = "cpu" if args.backend == "cpu" else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("sanitize_ops: no CUDA device")
        return 2
    torch.manual_seed(0)
    for vocab in args.vocabs:
        for label, call in calls(args.batch, vocab, device, args.backend):
            call()
            if device == "cuda":
                torch.cuda.synchronize()
            print(f"ok {label} B={args.batch} V={vocab}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
