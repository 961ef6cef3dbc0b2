"""Long-tail steps of the stack sampler (issue 28) on CPU: llama.cpp's default chain with DRY + top-n-sigma + XTC
(DRY 0.8/1.75/2 over a 512-token history, top-n-sigma 1, top-k 40, top-p 0.95, min-p 0.05, XTC 0.5/0.1, T=0.8,
order="llama.cpp", no logprobs) and a mirostat v2 row, at B = 1 and 32, V = 128256 and 151936.

Columns: fastsample (backend="cpu": the C++ ops stack_tail_dry and stack_tail_filters), torch (the same call with
backend="torch": tail.py's torch ops), llama.cpp (llama-cpp-python's own sampler chain, DRY fed the history with
llama_sampler_accept, applied row after row on one thread to a llama_token_data_array restored from a copy before
each call: per batch = B x one row; skipped with the reason when llama_cpp cannot be imported), and plain
`fastsample.sample(T=0.8, k=50, p=0.9)` on the same logits.

Run: `python -m bench.stack_tail [--reps N] [--quick]` from the repository root; prints a markdown table (ms, the
median of N timed calls after a warm-up)."""
from __future__ import annotations

import argparse
import ctypes
import platform
import statistics
import time

import numpy as np
import torch

import fastsample

HISTORY = 512
CHAIN = dict(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2, dry_penalty_last_n=HISTORY, top_n_sigma=1.0,
             top_k=40, top_p=0.95, min_p=0.05, xtc_probability=0.5, xtc_threshold=0.1, temperature=0.8)


def _inputs(batch, vocab, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=gen) * 3
    phrase = torch.randint(0, vocab, (batch, 23), generator=gen)
    hist = phrase.repeat(1, HISTORY // 23 + 1)[:, :HISTORY].clone()  # repeats: DRY has matches
    hist[:, ::37] = torch.randint(0, vocab, (batch, hist[:, ::37].shape[1]), generator=gen)
    return logits, hist


def _time(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def _llama_cpp_chain(logits, hist, mirostat):
    """A callable running llama.cpp's chain on every row, or the reason it cannot run."""
    try:
        import llama_cpp
    except Exception as e:  # noqa: BLE001
        return f"llama_cpp not importable ({type(e).__name__}: {e})"
    import inspect

    batch, vocab = logits.shape
    chains, arrays = [], []
    for b in range(batch):
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        values = []
        for name in inspect.signature(llama_cpp.llama_sampler_init_dry).parameters:
            low = name.lower()
            values.append(None if "vocab" in low or "model" in low else 4096 if "ctx" in low
                          else CHAIN["dry_multiplier"] if "multiplier" in low else CHAIN["dry_base"] if "base" in low
                          else CHAIN["dry_allowed_length"] if "allowed" in low else HISTORY if "last_n" in low
                          else 0 if low.startswith("num") or low.startswith("n_") else None)
        steps = [llama_cpp.llama_sampler_init_dry(*values)]
        if mirostat:
            steps += [llama_cpp.llama_sampler_init_temp(CHAIN["temperature"]),
                      llama_cpp.llama_sampler_init_mirostat_v2(1234, 5.0, 0.1)]
        else:
            steps += [llama_cpp.llama_sampler_init_top_n_sigma(CHAIN["top_n_sigma"]),
                      llama_cpp.llama_sampler_init_top_k(CHAIN["top_k"]),
                      llama_cpp.llama_sampler_init_top_p(CHAIN["top_p"], 1),
                      llama_cpp.llama_sampler_init_min_p(CHAIN["min_p"], 1),
                      llama_cpp.llama_sampler_init_xtc(CHAIN["xtc_probability"], CHAIN["xtc_threshold"], 1, 1234),
                      llama_cpp.llama_sampler_init_temp(CHAIN["temperature"]),
                      llama_cpp.llama_sampler_init_dist(1234)]
        for s in steps:
            llama_cpp.llama_sampler_chain_add(chain, s)
        for t in hist[b].tolist():
            llama_cpp.llama_sampler_accept(chain, t)
        pristine = np.zeros(vocab, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        pristine["id"] = np.arange(vocab)
        pristine["logit"] = logits[b].numpy()
        work = pristine.copy()
        cur = llama_cpp.llama_token_data_array(
            data=work.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)), size=vocab, selected=-1,
            sorted=False)
        chains.append(chain)
        arrays.append((pristine, work, cur))

    def run():
        for chain, (pristine, work, cur) in zip(chains, arrays):
            work[:] = pristine
            cur.size, cur.selected, cur.sorted = vocab, -1, False
            llama_cpp.llama_sampler_apply(chain, ctypes.byref(cur))
    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="B = 1 and 32 at V = 128256 only")
    a = parser.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    print("| chain | B | V | fastsample cpu | torch | llama.cpp chain (1 thread) | plain sample(T,k=50,p=0.9) |")
    print("|---|---|---|---|---|---|---|")
    for vocab in (128256,) if a.quick else (128256, 151936):
        for batch in (1, 32):
            logits, hist = _inputs(batch, vocab)
            for mirostat in (False, True):
                if mirostat:
                    kw = dict(dry_multiplier=0.8, dry_penalty_last_n=HISTORY, temperature=0.8, order="llama.cpp",
                              mirostat_mu=torch.full((batch,), 10.0), mirostat_tau=5.0, mirostat_eta=0.1)
                else:
                    kw = dict(CHAIN, order="llama.cpp")
                fs = _time(lambda: fastsample.sample_stack(logits, output_ids=hist, **kw, backend="cpu"), a.reps)
                th = _time(lambda: fastsample.sample_stack(logits, output_ids=hist, **kw, backend="torch"),
                           max(1, a.reps // 3))
                chain = _llama_cpp_chain(logits, hist, mirostat)
                lc = f"{_time(chain, a.reps):.2f}" if callable(chain) else f"skipped: {chain}"
                plain = _time(lambda: fastsample.sample(logits, temperature=0.8, top_k=50, top_p=0.9), a.reps)
                name = "DRY+mirostat v2" if mirostat else "DRY+top-nσ+k+p+min-p+XTC+T"
                print(f"| {name} | {batch} | {vocab} | {fs:.2f} | {th:.1f} | {lc} | {plain:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
