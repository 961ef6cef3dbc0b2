"""Sizes: a batch of more than 2^31 elements on the CPU backend, and the peak extra memory of each CPU op.

Two tests cross 2^31 elements in one call: the one-pass ops on float16 rows (4 GiB, seconds: always run) and
every op family on float32 rows (8 GiB, minutes: FASTSAMPLE_BIG=1).

The 2^31 test plants rows whose answer is known without an oracle pass over 8 GiB: a row of zeros with one
1.0 at a chosen column (probs: that token; greedy/top_k: that column), a row with one +inf (logits: that
token; probs: invalid, -1) and all-zero rows (probs: -1; greedy: 0). Planted rows sit past element 2^31 so an
int32 offset anywhere would read the wrong row.
"""
import os
import re

import pytest
import torch

import fastsample

BIG_BATCH, BIG_VOCAB = 16385, 131072  # 2^31 + 2^17 elements
GIB = 1 << 30


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        return int(re.search(r"MemAvailable:\s+(\d+) kB", f.read()).group(1)) * 1024


def _planted(dtype):
    x = torch.zeros(BIG_BATCH, BIG_VOCAB, dtype=dtype)
    ones = {16383: 131071, 16384: 77, 8000: 5, 0: 131071}  # row -> column of its single 1.0
    infs = {16382: 12345, 16381: 0}  # row -> column of its single +inf
    for b, j in ones.items():
        x[b, j] = 1.0
    for b, j in infs.items():
        x[b, j] = float("inf")
    return x, ones, infs


@pytest.mark.skipif(os.environ.get("FASTSAMPLE_BIG") != "1", reason="8 GiB and minutes: FASTSAMPLE_BIG=1 runs it")
@pytest.mark.skipif(_available_bytes() < 11 * GIB, reason="needs 11 GiB of free memory")
def test_cpu_tokens_beyond_2_pow_31_elements():
    """Tokens of planted rows past element 2^31 (on 2 idle cores: 4 minutes, 8 minutes of CPU, 8.3 GiB peak
    RSS; rows of ties under top-k, like the zero rows here, are the slow part: every token is a candidate)."""
    x, ones, infs = _planted(torch.float32)  # 8 GiB; float32 so that no op widens a copy of it
    assert x.numel() > 2**31 and x.is_contiguous()
    rows = sorted([*ones, *infs, 16380, 12000])
    zero_rows = [16380, 12000]

    tokens = fastsample.sampling_from_probs(x, seed=1, backend="cpu")
    for b in rows:
        assert tokens[b].item() == (ones[b] if b in ones else -1), f"sampling_from_probs row {b}"
    tokens = fastsample.top_k_top_p_sampling_from_probs(x, 5, 0.5, seed=2, backend="cpu")
    for b in rows:
        assert tokens[b].item() == (ones[b] if b in ones else -1), f"top_k_top_p_sampling_from_probs row {b}"

    tokens = fastsample.greedy(x, backend="cpu")
    for b in rows:
        assert tokens[b].item() == ones.get(b, infs.get(b, 0)), f"greedy row {b}"
    tokens, logprobs = fastsample.sample(x, 0.7, top_k=3, top_p=0.9, return_logprobs=True, seed=3, backend="cpu")
    for b, j in infs.items():  # a single +inf takes all the mass
        assert tokens[b].item() == j and logprobs[b].item() == 0.0, f"sample row {b}"
    assert ((tokens >= 0) & (tokens < BIG_VOCAB)).all()

    values, indices = fastsample.top_k(x, 2, backend="cpu")
    for b in rows:
        top = ones.get(b, infs.get(b))
        want = [top, 0 if top != 0 else 1] if top is not None else [0, 1]
        assert indices[b].tolist() == want, f"top_k row {b}"
    assert values[16382].tolist() == [float("inf"), 0.0] and values[16383].tolist() == [1.0, 0.0]
    assert all(tokens[b].item() >= 0 for b in zero_rows)  # zero logits: a valid uniform row


@pytest.mark.skipif(_available_bytes() < 6 * GIB, reason="needs 6 GiB of free memory")
def test_cpu_one_pass_ops_beyond_2_pow_31_elements():
    """The cheap half of the test above, run everywhere: ops whose cost is about one pass (greedy, sampling from
    the full distribution, `sample` with temperature only) over one float16 batch of 2^31 + 2^17 elements
    (4 GiB; ~15 s on 2 cores), on planted rows past element 2^31, where an int32 offset would read another row.
    """
    x = torch.zeros(BIG_BATCH, BIG_VOCAB, dtype=torch.float16)
    assert x.numel() > 2**31
    x[0, 131071] = x[16384, 77] = 1.0  # greedy: that column
    x[16383, 131071] = x[16380, 3] = float("inf")  # every op: that token (all the mass), logprob 0
    x[16382, 5] = float("nan")  # a NaN row: -1 everywhere
    x[16381] = float("-inf")  # no finite logit: -1 everywhere
    planted = {0: 131071, 16384: 77, 16383: 131071, 16380: 3, 16382: -1, 16381: -1}

    greedy = fastsample.greedy(x, backend="cpu")
    tokens = fastsample.sampling_from_logits(x, seed=1, backend="cpu")
    sampled, logprobs = fastsample.sample(x, 0.7, return_logprobs=True, seed=2, backend="cpu")
    for b, j in planted.items():
        assert greedy[b].item() == j, f"greedy row {b}"
        if b in (16383, 16380, 16382, 16381):
            assert tokens[b].item() == j and sampled[b].item() == j, f"sampling row {b}"
    assert logprobs[16383].item() == 0.0 and logprobs[16380].item() == 0.0
    valid = torch.ones(BIG_BATCH, dtype=torch.bool)
    valid[[16382, 16381]] = False
    for out in (tokens, sampled):  # the zero rows are uniform: any id, never out of range
        assert ((out[valid] >= 0) & (out[valid] < BIG_VOCAB)).all() and (out[~valid] == -1).all()


MEASURE = r"""
import json, re, sys, torch
sys.path.insert(0, {tests!r})
import fastsample
from test_api import FUNCTIONS

def status():
    text = open("/proc/self/status").read()
    return {{k: int(re.search(k + r":\s+(\d+) kB", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}}

batch, vocab = {batch}, {vocab}
gen = torch.Generator().manual_seed(0)
logits32 = torch.randn(batch, vocab, generator=gen) * 3
inputs = {{"logits": logits32, "probs": torch.softmax(logits32, dim=1)}}
for kind in ("logits", "probs"):
    inputs[kind + "_f16"] = inputs[kind].to(torch.float16)
    inputs[kind + "_bf16"] = inputs[kind].to(torch.bfloat16)
figures = {{}}
for name, (kind, kwargs, draws) in FUNCTIONS.items():
    for dtype in (kind, kind + "_f16", kind + "_bf16"):
        x = inputs[dtype]
        kw = dict(kwargs, **({{"seed": 1}} if draws else {{}}))
        if name == "top_k":
            kw["k"] = 50
        call = lambda: getattr(fastsample, name)(x, **kw, backend="cpu")
        call(); call()  # warm: thread pools, allocator arenas
        open("/proc/self/clear_refs", "w").write("5")
        before = status()["VmRSS"]
        out = call()
        outs = out if isinstance(out, tuple) else (out,)
        out_bytes = sum(o.numel() * o.element_size() for o in outs)
        figures[f"{{name}} {{dtype}}"] = dict(extra=status()["VmHWM"] - before - out_bytes, output=out_bytes,
                                              input=x.numel() * x.element_size())
        del out, outs
print(json.dumps(figures))
"""


def test_cpu_peak_extra_memory_has_no_copy_of_the_input():
    """Peak resident memory of each op beyond its inputs and outputs (VmHWM after a reset, in a fresh process
    on 2 OpenMP threads): the per-thread and per-row scratch, never a [B, V] copy. float32 rows are read in
    place; float16/bfloat16 rows are widened one row at a time into a buffer per thread (csrc/cpu/common.h
    for_input_rows), so every dtype has the same bound."""
    import json
    import subprocess
    import sys

    batch, vocab, threads = 64, 131072, 2  # inputs of 32 MiB (float32) and 16 MiB (float16/bfloat16)
    script = MEASURE.format(tests=os.path.dirname(os.path.abspath(__file__)), batch=batch, vocab=vocab)
    safe_path = ["-P"] if sys.flags.safe_path else []
    # Large blocks straight from mmap and back on free: glibc would otherwise keep freed scratch resident
    # after the warm-up call, hiding it from the high-water mark of the measured call.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536",
               OMP_NUM_THREADS=str(threads))
    run = subprocess.run([sys.executable, *safe_path, "-c", script], capture_output=True, text=True, timeout=600,
                         env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"\npeak extra memory (MiB) beyond input and output, B={batch} V={vocab}, CPU backend, {threads} threads:")
    for op, f in figures.items():
        print(f"  {op:45s} extra {f['extra'] / 2**20:7.2f}   output {f['output'] / 2**20:7.2f}   "
              f"input {f['input'] / 2**20:7.2f}")
    # The smallest [B, V] copy (a bool mask) is 8 MiB, a float32 copy 32 MiB. The scratch: a widened row per
    # thread (0.5 MiB each) and per-row candidate lists, well under 4 MiB here.
    bound = 4 * 2**20 + threads * vocab * 4
    over = {op: round(f["extra"] / 2**20, 2) for op, f in figures.items() if f["extra"] > bound}
    assert not over, f"ops whose peak extra memory (MiB) suggests a copy of the input: {over}"
