"""`make gpu-decoders`: fastsample's decoders end to end on one device, in one bounded command (issue 21).

Parts (each with its own time limit; a part that fails, raises or runs out of time is named in the summary while
the others still run):
1. decoders: a random Llama (HF transformers, made here) runs every decoder of ``fastsample.decoding``; greedy
   and beam search are compared with HF ``generate`` token for token, sampling by seeds, batch invariance and
   the first token's distribution (chi-square vs HF's processors and warpers), contrastive decoding with the
   naive no-cache loop of tests/test_decoding_contrastive.py, speculative decoding with the target's greedy;
2. syncs: ``torch.profiler`` over a few ``sample_decode`` steps; every device-to-host sync inside the sampling
   calls is listed (the goal is none), and ``torch.cuda.set_sync_debug_mode("warn")`` checks it a second way;
3. graph: ``fastsample.sample`` with per-row seed/offset device tensors captured in a CUDA graph, replayed
   inside a decode loop and compared with eager calls (each compiled backend);
4. timing: sampling's share of a decode step at B = 1, 32, 128, fastsample vs HF's processors and warpers +
   ``torch.multinomial`` on the same logits (CUDA events on a GPU, perf_counter on the CPU).

Token-for-token comparisons in bfloat16 can part at a near-tie (two scores closer than the arithmetic that
differs between the two paths); such a divergence is reported with its score gap as "near-tie" and does not
fail, a divergence at a larger gap fails.

Without a GPU it runs the same parts on the CPU (float32 or ``--dtype bfloat16``, ``--config small``; the graph
part runs its decode loop without the capture) and says which checks need a GPU: a rehearsal. Without
transformers a stand-in model (``ToyLM``) runs the decoders and the HF parts are skipped, loudly. The extension must already be built for the device (``make gpu-check`` does it), or pass
``--build`` to build it here first with tools/gpu_check.py's build step.

Files in --out: gpu-decoders-<device>.md (the summary, to commit), gpu-decoders-<device>.log, and build.log
with --build. Exit status 0 when every check passed (skipped ones aside), 1 otherwise, 124 when the whole run
hit --limit.

Usage: ``python tools/gpu_decoders.py --out DIR [--build] [--config full|small|tiny] [--dtype bfloat16]``
(``--help`` for the rest).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata
import importlib.util
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parent.parent
PAD = 0
# Model sizes. "full" is issue 21's model: vocab 128256, a few small layers (bfloat16 on a GPU). "small" keeps
# the vocab for a CPU rehearsal in well under a minute; "tiny" is the test suite's.
CONFIGS = {
    "full": dict(vocab=128256, hidden=512, intermediate=1408, layers=4, heads=8, kv_heads=2, chi_rows=4000),
    "small": dict(vocab=128256, hidden=64, intermediate=128, layers=2, heads=2, kv_heads=1, chi_rows=1000),
    "tiny": dict(vocab=1000, hidden=32, intermediate=64, layers=2, heads=2, kv_heads=1, chi_rows=500),
}
# Seconds per part, in the order they run (the graph last: a failed capture can leave the device unusable);
# together they stay under --limit's default (the build, with --build, has its own limit in tools/gpu_check.py).
LIMITS = {"decoders": 180, "syncs": 90, "timing": 180, "graph": 90}
# Events that make the host wait for the device (names as torch.profiler reports them).
SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
               "aten::item", "aten::_local_scalar_dense", "aten::nonzero")


# ------------------------------------------------------------------------------------------ report
class Report:
    """Checks and tables of every part; written after each part, so that a run stopped by its time limit
    still leaves a summary of what it did."""

    def __init__(self, out: Path, slug: str, title: str):
        self.path, self.log_path = out / f"gpu-decoders-{slug}.md", out / f"gpu-decoders-{slug}.log"
        self.title, self.env, self.times = title, {}, {}
        self.sections: dict[str, list[str]] = {}
        self.failed: list[str] = []
        self.log_file = open(self.log_path, "w")
        self.start = time.monotonic()

    def log(self, msg: str) -> None:
        stamp = f"[gpu-decoders {time.monotonic() - self.start:6.1f} s]"
        print(f"{stamp} {msg}", flush=True)
        self.log_file.write(f"{stamp} {msg}\n")
        self.log_file.flush()

    def add(self, part: str, line: str) -> None:
        self.sections.setdefault(part, []).append(line)

    def check(self, part: str, name: str, status: str, detail: str = "") -> None:
        """``status``: "ok", "FAIL", "near-tie" (a bfloat16 tie, not a failure) or "skipped: why"."""
        if not self.sections.get(part, [""])[-1].startswith("|"):
            self.add(part, "| check | result | detail |")
            self.add(part, "|---|---|---|")
        self.add(part, f"| {name} | {status} | {detail} |")
        self.log(f"{part}: {name}: {status} {detail}")
        if status == "FAIL":
            self.failed.append(f"{part}/{name}")

    def summary(self, stopped: str | None = None) -> str:
        verdict = "PASSED" if not self.failed else "FAILED: " + ", ".join(self.failed)
        if stopped:
            verdict = f"STOPPED ({stopped}); " + verdict
        times = ", ".join(f"{k} {v:.1f} s" for k, v in self.times.items())
        lines = [f"# gpu-decoders: {self.title}", "", f"{verdict}. {times}.", "", "## Environment",
                 *(f"- {k}: {v}" for k, v in self.env.items())]
        for part, body in self.sections.items():
            lines += ["", f"## {part}", *body]
        return "\n".join(lines + ["", f"Log: {self.log_path.name}"]) + "\n"

    def write(self, stopped: str | None = None) -> str:
        text = self.summary(stopped)
        self.path.write_text(text)
        return text


class PartTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raises PartTimeout in the main thread after ``seconds`` (when control is back in Python)."""
    def expire(signum, frame):
        raise PartTimeout(f"over its {seconds:.0f} s limit")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_part(report: Report, name: str, fn, *args) -> None:
    start = time.monotonic()
    report.log(f"--- {name}")
    try:
        with time_limit(LIMITS[name]), torch.no_grad():
            fn(report, *args)
    except Exception as exc:  # noqa: BLE001  (a part's failure is reported; the next part still runs)
        report.log(traceback.format_exc())
        report.check(name, "part", "FAIL", f"{type(exc).__name__}: {str(exc)[:200]}")
    report.times[name] = time.monotonic() - start
    report.write()


# ------------------------------------------------------------------------------------------ models
class ToyLM(torch.nn.Module):
    """Stand-in when transformers is missing: each token's logits come from its embedding plus the mean of
    the unmasked columns so far, with a cache of embeddings in the legacy per-layer (key, value) layout, so
    that every decoder (crop, reorder, holes) runs."""

    def __init__(self, vocab: int, hidden: int, layers: int = 1):
        super().__init__()
        self.emb, self.head = torch.nn.Embedding(vocab, hidden), torch.nn.Linear(hidden, vocab, bias=False)
        self.scale = float(layers)

    def forward(self, input_ids, cache=None, use_cache=True, attention_mask=None, position_ids=None):
        x = self.emb(input_ids)
        keys = x[:, None] if not cache else torch.cat([cache[0][0], x[:, None]], 2)  # [B, 1, L, H]
        mask = (torch.ones(keys.shape[:3], device=x.device) if attention_mask is None
                else attention_mask[:, None].to(x.dtype))[..., None]
        t = input_ids.shape[1]
        mean = (keys * mask).cumsum(2)[:, 0, -t:] / mask.cumsum(2)[:, 0, -t:].clamp(min=1)
        return SimpleNamespace(logits=self.head(torch.tanh(self.scale * (x + mean))), cache=((keys, keys),))


def make_models(cfg: dict, device, dtype, hf: bool):
    """(target, draft): a random Llama and a 1-layer draft sharing its embeddings, first layer, norm and head
    (a cheap related model: speculative decoding's draft and contrastive decoding's amateur)."""
    torch.manual_seed(0)
    if not hf:
        target = ToyLM(cfg["vocab"], cfg["hidden"], cfg["layers"])
        draft = ToyLM(cfg["vocab"], cfg["hidden"], 1)
        draft.load_state_dict(target.state_dict())
        return target.to(device, dtype).eval(), draft.to(device, dtype).eval()
    from transformers import LlamaConfig, LlamaForCausalLM

    # a wide init (0.2) makes the next-token distributions peaked, so greedy choices are far from ties
    config = LlamaConfig(vocab_size=cfg["vocab"], hidden_size=cfg["hidden"], intermediate_size=cfg["intermediate"],
                         num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
                         num_key_value_heads=cfg["kv_heads"], max_position_embeddings=256, initializer_range=0.2,
                         bos_token_id=1, eos_token_id=2, pad_token_id=PAD)
    target = LlamaForCausalLM(config).eval()
    draft = LlamaForCausalLM(LlamaConfig(**{**config.to_dict(), "num_hidden_layers": 1})).eval()
    draft.load_state_dict(target.state_dict(), strict=False)
    return target.to(device, dtype), draft.to(device, dtype)


def random_prompts(batch: int, vocab: int, device, lengths=(7, 3, 5, 1), seed: int = 1):
    """Left-padded random prompts of the given lengths (cycled over the batch)."""
    from fastsample.decoding import left_pad

    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, vocab, (lengths[i % len(lengths)],), generator=gen).tolist() for i in range(batch)]
    return left_pad(rows, PAD, device=device)


def from_tests(module: str, *names: str):
    """Objects of a tests/ module (the suite's own references, not copied here), or None when it cannot be
    imported (e.g. pytest or scipy missing on the GPU machine)."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return [getattr(mod, name) for name in names]


def full_scores(model, processors=()):
    """Scores of the next token from one no-cache forward over a row (positions count unmasked tokens, as the
    decoders and HF do), after ``processors``: the reference for where a divergence happened."""
    def scores(ids, mask):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        s = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].float()
        for proc in processors:
            s = proc(ids, s)
        return s[0]
    return scores


# ------------------------------------------------------------------------------------------ 1. decoders
def compare_tokens(report: Report, name: str, ours, ref, prompt_len: int, mask, scores_fn, dtype) -> None:
    """Token-for-token check of two [B, P + n] outputs. At the first differing token, ``scores_fn(prefix_ids,
    prefix_mask)`` gives the reference's scores: a gap between the two tokens within the arithmetic's reach
    (float32: 1e-4, half precision: 3e-2, relative to the best score) is a near-tie, anything else a failure."""
    n = min(ours.shape[1], ref.shape[1])
    diff = (ours[:, :n] != ref[:, :n]).nonzero()
    if not len(diff) and ours.shape == ref.shape:
        report.check("decoders", name, "ok", f"{ours.shape[0]} rows x {ours.shape[1] - prompt_len} tokens equal")
        return
    if not len(diff):
        report.check("decoders", name, "FAIL", f"lengths differ: {ours.shape[1]} vs {ref.shape[1]} columns")
        return
    row, col = (int(v) for v in diff[diff[:, 1].argmin()])
    prefix = ref[row:row + 1, :col]
    prefix_mask = torch.cat([mask[row:row + 1], torch.ones_like(prefix[:, mask.shape[1]:])], 1)
    scores = scores_fn(prefix, prefix_mask).double()
    a, b = int(ours[row, col]), int(ref[row, col])
    gap, top = abs(float(scores[a] - scores[b])), float(scores.max())
    tol = (1e-4 if dtype == torch.float32 else 3e-2) * max(1.0, abs(top))
    detail = (f"row {row} step {col - prompt_len}: {a} vs {b}, score gap {gap:.3g} (tolerance {tol:.3g}); "
              f"{int((ours[:, prompt_len:n] != ref[:, prompt_len:n]).any(1).sum())} rows differ")
    report.check("decoders", name, "near-tie" if gap <= tol else "FAIL", detail)


def check_greedy_and_beam(report: Report, model, ids, mask, dtype, hf: bool, new: int) -> None:
    from fastsample.decoding import greedy_decode
    from fastsample.processors import NoRepeatNGram, RepetitionPenalty

    p = ids.shape[1]
    ours = greedy_decode(model, ids, mask, max_new_tokens=new)
    seqs, cols = ids, mask
    for _ in range(new):  # the model-agnostic reference: argmax of a no-cache forward over the whole row
        scores = torch.stack([full_scores(model)(seqs[r:r + 1], cols[r:r + 1]) for r in range(len(seqs))])
        seqs = torch.cat([seqs, scores.argmax(-1, keepdim=True)], 1)
        cols = torch.cat([cols, torch.ones_like(cols[:, :1])], 1)
    compare_tokens(report, "greedy == no-cache argmax loop", ours, seqs, p, mask, full_scores(model), dtype)
    if not hf:
        report.check("decoders", "greedy == HF generate", "skipped: transformers is not installed")
        report.check("decoders", "beam == HF generate", "skipped: transformers is not installed")
        return
    common = dict(input_ids=ids, attention_mask=mask, do_sample=False, pad_token_id=PAD, eos_token_id=None,
                  max_new_tokens=new)
    compare_tokens(report, "greedy == HF generate", ours, model.generate(**common), p, mask, full_scores(model),
                   dtype)
    procs = [RepetitionPenalty(1.3), NoRepeatNGram(3)]
    ours = greedy_decode(model, ids, mask, max_new_tokens=new, processors=procs)
    ref = model.generate(**common, repetition_penalty=1.3, no_repeat_ngram_size=3)
    compare_tokens(report, "greedy + penalty, n-gram == HF generate", ours, ref, p, mask, full_scores(model, procs),
                   dtype)

    check_beam(report, "beam (3 beams, 2 returned) == HF generate", model, ids, mask, dtype, new)
    if dtype != torch.float32:  # the same comparison without half-precision rounding: exact up to 1e-4
        check_beam(report, "beam, float32 copy of the model, == HF generate", copy.deepcopy(model).float(), ids,
                   mask, torch.float32, new)


def check_beam(report: Report, name: str, model, ids, mask, dtype, new: int) -> None:
    """Sequences equal and scores within 1e-4 (float32) or 0.1 (half precision). In half precision, other
    sequences whose best score per prompt is within 0.1 of HF's are a near-tie: beams that rounding reorders."""
    from fastsample.decoding import beam_search

    kwargs = dict(num_beams=3, length_penalty=1.0, num_return_sequences=2, max_new_tokens=new)
    out = beam_search(model, ids, mask, pad_token_id=PAD, **kwargs)
    ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, pad_token_id=PAD, eos_token_id=None,
                         output_scores=True, return_dict_in_generate=True, **kwargs)
    tol = 1e-4 if dtype == torch.float32 else 0.1
    same = torch.equal(out.sequences, ref.sequences)
    err = float((out.sequences_scores - ref.sequences_scores).abs().max())
    best_err = float((out.sequences_scores.view(-1, 2)[:, 0] - ref.sequences_scores.view(-1, 2)[:, 0]).abs().max())
    status = "ok" if same and err <= tol else "near-tie" if dtype != torch.float32 and best_err <= tol else "FAIL"
    report.check("decoders", name, status, f"sequences {'equal' if same else 'DIFFER'}, max score difference "
                 f"{err:.2g}, best per prompt {best_err:.2g} (tolerance {tol})")


def check_sampling(report: Report, model, ids, mask, cfg: dict, hf: bool, new: int) -> None:
    """Per-row seeds reproduce, rows do not depend on the batch around them, temperature-0 rows are greedy, and
    the first token follows HF's processors + warpers (chi-square, as tests/test_decoding_sample.py)."""
    from fastsample.decoding import greedy_decode, sample_decode
    from fastsample.processors import EpsilonFilter, RepetitionPenalty

    dev, batch = ids.device, ids.shape[0]
    seeds = torch.arange(batch, device=dev) * 7 + 11
    temperature = torch.linspace(0.6, 1.2, batch, device=dev)
    kwargs = dict(max_new_tokens=new, temperature=temperature, top_k=50, top_p=0.9, min_p=0.02,
                  processors=[RepetitionPenalty(1.2)])
    out = sample_decode(model, ids, mask, seed=seeds, **kwargs)
    again = sample_decode(model, ids, mask, seed=seeds, **kwargs)
    report.check("decoders", "sample: per-row seeds reproduce", "ok" if torch.equal(out, again) else "FAIL")
    perm = torch.arange(batch - 1, -1, -1, device=dev)
    permuted = sample_decode(model, ids[perm], mask[perm], seed=seeds[perm],
                             **{**kwargs, "temperature": temperature[perm]})
    report.check("decoders", "sample: rows independent of the batch (reversed rows)",
                 "ok" if torch.equal(permuted, out[perm]) else "FAIL")
    t0 = torch.where(torch.arange(batch, device=dev) % 2 == 0, 0.0, 1.0)
    # epsilon filtering always keeps the best token, so a temperature-0 row stays the greedy row
    warped = sample_decode(model, ids, mask, max_new_tokens=new, temperature=t0, top_k=50, seed=seeds,
                           warpers=[EpsilonFilter(1e-3)])
    greedy = greedy_decode(model, ids, mask, max_new_tokens=new)
    report.check("decoders", "sample + epsilon warper: temperature-0 rows == greedy",
                 "ok" if torch.equal(warped[::2], greedy[::2]) else "FAIL")

    found = from_tests("test_decoding_sample", "chi_square_p") if hf else None
    if found is None:
        report.check("decoders", "sample: first-token distribution vs HF",
                     "skipped: needs transformers, scipy and tests/test_decoding_sample.py's imports")
        return
    from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    from fastsample.decoding.model import forward as model_forward

    chi_square_p = found[0]
    prompt, rows = ids[:1, -2:], cfg["chi_rows"]
    batch = prompt.expand(rows, -1).contiguous()
    first = sample_decode(model, batch, max_new_tokens=1, temperature=1.0, top_k=20, top_p=0.9,
                          processors=[RepetitionPenalty(1.3)], seed=1234)[:, -1]
    # the reference from the decoders' own forward of the same batch: bitwise the logits that were sampled, so
    # that half-precision rounding cannot move a token across the top-p boundary between the two
    scores = model_forward(model, batch, torch.ones_like(batch))[0][:1, -1]
    for proc in (RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(1.0), TopKLogitsWarper(20),
                 TopPLogitsWarper(0.9)):
        scores = proc(prompt, scores)
    probs = torch.softmax(scores, -1)[0].cpu()
    counts = torch.bincount(first.cpu(), minlength=probs.numel())
    outside = int(counts[probs == 0].sum())
    pvalue = chi_square_p(counts, probs) if not outside else 0.0
    report.check("decoders", f"sample: first token of {rows} rows vs HF warpers (chi-square)",
                 "ok" if pvalue > 1e-3 and outside == 0 else "FAIL",
                 f"p = {pvalue:.3g} over {int((probs > 0).sum())} kept tokens, {outside} draws outside them")


def check_contrastive_and_speculative(report: Report, target, draft, ids, mask, dtype, hf: bool, new: int) -> None:
    from fastsample.decoding import contrastive_decode, greedy_decode, speculative_decode

    p = ids.shape[1]
    greedy = greedy_decode(target, ids, mask, max_new_tokens=new)
    limit = contrastive_decode(target, draft, ids, mask, max_new_tokens=new, alpha=1.0)
    # with ties among the expert's best logits (common in bfloat16) the contrast picks among them: a near-tie
    compare_tokens(report, "contrastive alpha=1 == expert greedy", limit, greedy, p, mask, full_scores(target), dtype)
    naive = from_tests("test_decoding_contrastive", "naive_loop", "naive_scores") if hf else None
    if naive is not None:
        naive_loop, naive_scores = naive
        # prompts without padding: the naive loop takes no mask
        plain, _ = random_prompts(4, target.config.vocab_size, ids.device, lengths=(4,), seed=2)
        for alpha, beta in ((0.1, None), (0.1, 0.5)):
            out = contrastive_decode(target, draft, plain, max_new_tokens=new, alpha=alpha, beta=beta)
            ref = naive_loop(target, draft, plain, new, alpha, beta, 1.0)
            compare_tokens(report, f"contrastive (alpha {alpha}, beta {beta}) == naive no-cache loop", out, ref, 4,
                           torch.ones_like(plain),
                           lambda i, m, a=alpha, b=beta: naive_scores(target, draft, i, a, b, 1.0)[0], dtype)
    else:
        report.check("decoders", "contrastive == naive no-cache loop",
                     "skipped: needs transformers and tests/test_decoding_contrastive.py's imports")

    out = speculative_decode(target, draft, ids, mask, max_new_tokens=new, gamma=3)
    compare_tokens(report, "speculative greedy (gamma 3) == target greedy", out.sequences, greedy, p, mask,
                   full_scores(target), dtype)
    for label, extra in (("tree 3x2", dict(tree=(3, 2))), ("ngram", dict(proposer="ngram"))):
        name = f"speculative greedy ({label}) == target greedy"
        if not hf:  # tree mode scores the nodes through a 4-D attention mask, which ToyLM does not take
            report.check("decoders", name, "skipped: the stand-in model takes no 4-D tree mask")
            continue
        out = speculative_decode(target, None if extra.get("proposer") else draft, ids, mask, max_new_tokens=new,
                                 **extra)
        compare_tokens(report, name, out.sequences, greedy, p, mask, full_scores(target), dtype)
    seeds = torch.arange(ids.shape[0], device=ids.device) + 5
    kwargs = dict(max_new_tokens=new, gamma=4, do_sample=True, temperature=0.8, top_k=50, seed=seeds)
    a, b = (speculative_decode(target, draft, ids, mask, **kwargs) for _ in range(2))
    sane = (0 <= a.acceptance_rate <= 1 and 1 <= a.tokens_per_target_forward <= 5
            and a.sequences.shape == (ids.shape[0], p + new))
    report.check("decoders", "speculative sampling (gamma 4): seeds reproduce, statistics in range",
                 "ok" if sane and torch.equal(a.sequences, b.sequences) else "FAIL",
                 f"acceptance {a.acceptance_rate:.2f}, {a.tokens_per_target_forward:.2f} tokens per target forward")


def part_decoders(report: Report, target, draft, cfg: dict, dtype, hf: bool) -> None:
    ids, mask = random_prompts(4, cfg["vocab"], next(target.parameters()).device)
    new = 12
    report.add("decoders", f"4 left-padded prompts (lengths 7, 3, 5, 1), {new} new tokens, {dtype}.\n")
    check_greedy_and_beam(report, target, ids, mask, dtype, hf, new)
    check_sampling(report, target, ids, mask, cfg, hf, new)
    check_contrastive_and_speculative(report, target, draft, ids, mask, dtype, hf, new)


# ------------------------------------------------------------------------------------------ 2. syncs
@contextlib.contextmanager
def traced_sampling(sync_warnings: list | None):
    """Wraps sample_decode's per-step token choice (``next_token``: processors, filters, the draw) and, inside
    it, ``fastsample.sample`` and ``filter_logits`` in profiler ranges named ``sampling:<what>``. With a list,
    ``next_token`` also runs under ``torch.cuda.set_sync_debug_mode("warn")`` and the list collects the sync
    warnings."""
    from fastsample.decoding import sample as sample_module

    def traced(fn, name, watch=False):
        def call(*args, **kwargs):
            with torch.profiler.record_function(f"sampling:{name}"), warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                if watch:
                    torch.cuda.set_sync_debug_mode("warn")
                try:
                    return fn(*args, **kwargs)
                finally:
                    if watch:
                        torch.cuda.set_sync_debug_mode("default")
                        sync_warnings.extend(str(w.message) for w in seen if "synchroniz" in str(w.message))
        return call

    real = {name: getattr(sample_module, name) for name in ("decode_loop", "sample", "filter_logits")}

    def decode_loop(models, input_ids, attention_mask, max_new_tokens, next_token, *rest):
        step = traced(next_token, "next_token", watch=sync_warnings is not None)
        return real["decode_loop"](models, input_ids, attention_mask, max_new_tokens, step, *rest)

    sample_module.decode_loop = decode_loop
    sample_module.sample = traced(real["sample"], "fastsample.sample")
    sample_module.filter_logits = traced(real["filter_logits"], "filter_logits")
    try:
        yield
    finally:
        for name, fn in real.items():
            setattr(sample_module, name, fn)


def syncs_in_ranges(events) -> tuple[dict, dict, int]:
    """({range: {event: count}} of sync events inside ``sampling:*`` ranges (attributed to the innermost one),
    {event: count} of those outside, number of ``next_token`` ranges). A sync is an event named in SYNC_EVENTS
    or an op that launched a device-to-host copy."""
    cpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    ranges = [e for e in cpu if e.name.startswith("sampling:")]
    inside: dict[str, dict[str, int]] = {}
    outside: dict[str, int] = {}
    for e in cpu:
        dtoh = any("DtoH" in k.name for k in getattr(e, "kernels", []))
        if e.name not in SYNC_EVENTS and not dtoh:
            continue
        name = e.name + (" (DtoH copy)" if dtoh else "")
        span = e.time_range
        around = [r for r in ranges if r.time_range.start <= span.start and span.end <= r.time_range.end]
        if around:
            innermost = min(around, key=lambda r: r.time_range.end - r.time_range.start).name
            inside.setdefault(innermost, {}).setdefault(name, 0)
            inside[innermost][name] += 1
        else:
            outside[name] = outside.get(name, 0) + 1
    return inside, outside, sum(r.name == "sampling:next_token" for r in ranges)


def part_syncs(report: Report, model, cfg: dict) -> None:
    from fastsample.decoding import sample_decode
    from fastsample.processors import RepetitionPenalty, TypicalFilter

    dev = next(model.parameters()).device
    cuda = dev.type == "cuda"
    ids, mask = random_prompts(8, cfg["vocab"], dev)
    per_row = dict(temperature=torch.full((8,), 0.8, device=dev), top_k=torch.full((8,), 50, device=dev),
                   top_p=torch.full((8,), 0.9, device=dev), min_p=0.02)
    runs = {"fused (per-row tensors, repetition penalty)": dict(processors=[RepetitionPenalty(1.1)], **per_row),
            "warpers (typical)": dict(temperature=0.8, top_k=50, warpers=[TypicalFilter(0.9)])}
    seeds = torch.arange(8, device=dev)
    for kwargs in runs.values():  # warm-up: kernels compiled and loaded, caches allocated
        sample_decode(model, ids, mask, max_new_tokens=2, seed=seeds, **kwargs)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    report.add("syncs", "Profiled: `sample_decode` B = 8, 4 steps, for each configuration below; events inside the "
               "`sampling:*` ranges (one per step's token choice) are listed by innermost range.\n")
    notes = []
    for label, kwargs in runs.items():
        caught: list[str] = []
        with traced_sampling(caught if cuda else None), torch.profiler.profile(activities=activities) as prof:
            sample_decode(model, ids, mask, max_new_tokens=4, seed=seeds, **kwargs)
        inside, outside, steps = syncs_in_ranges(prof.events())
        report.log(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))
        found = "; ".join(f"{r}: " + ", ".join(f"{n} x{c}" for n, c in ev.items()) for r, ev in inside.items())
        other = ", ".join(f"{n} x{c}" for n, c in outside.items()) or "none"
        if steps != 4:  # without the ranges every count below would be a vacuous zero
            report.check("syncs", f"{label}: sampling ranges", "FAIL", f"{steps} traced steps, expected 4")
        elif cuda:
            report.check("syncs", f"{label}: syncs inside sampling ({steps} steps)", "FAIL" if inside else "ok",
                         found or "none")
            report.check("syncs", f"{label}: set_sync_debug_mode warnings", "FAIL" if caught else "ok",
                         "; ".join(sorted(set(caught)))[:300] or "none")
        else:
            # a CPU tensor's .item() is no sync, but the same call on a CUDA tensor is: worth knowing here
            report.check("syncs", f"{label}: host reads inside sampling ({steps} steps)",
                         "skipped: CPU has no device syncs", found or "no aten::item/_local_scalar_dense/nonzero")
        notes.append(f"- {label}: syncs outside the sampling ranges (decode loop, model): {other}")
    report.add("syncs", "")
    for note in notes:
        report.add("syncs", note)


# ------------------------------------------------------------------------------------------ 3. CUDA graph
def graph_loop(model, cfg: dict, backend: str, capture: bool, batch: int = 8, steps: int = 6) -> int:
    """A decode loop: eager model forward, logits copied into a static buffer, offset tensor = step, then
    ``fastsample.sample`` (per-row parameter, seed and offset tensors on the device) replayed from a CUDA graph
    captured once (``capture``) or called eagerly; returns how many steps' tokens equal an eager call with
    ``offset=step``."""
    from fastsample import sample
    from fastsample.decoding import Session

    dev = next(model.parameters()).device
    params = dict(temperature=torch.linspace(0.0, 1.2, batch, device=dev),  # row 0 greedy
                  top_k=torch.tensor([0, 1, 20, 50, 0, 100, 5, 0], device=dev)[torch.arange(batch) % 8],
                  top_p=torch.linspace(0.5, 1.0, batch, device=dev), min_p=0.02)
    seed = torch.arange(batch, device=dev) + 100
    offset = torch.zeros(batch, dtype=torch.int64, device=dev)
    session = Session(model)
    static = session(*random_prompts(batch, cfg["vocab"], dev))[:, -1].clone()

    def draw():
        return sample(static, **params, seed=seed, offset=offset, backend=backend)

    if capture:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graphs asks
            for _ in range(3):
                draw()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = draw()
    equal = 0
    for step in range(steps):
        offset.fill_(step)
        if capture:
            graph.replay()
            tokens = captured
        else:
            tokens = draw()
        eager = sample(static.clone(), **params, seed=seed, offset=step, backend=backend)
        equal += bool(torch.equal(tokens, eager))
        static.copy_(session(tokens[:, None].clone())[:, -1])
    return equal


def part_graph(report: Report, model, cfg: dict) -> None:
    from fastsample import _ops
    from fastsample.backends import resolve_backend

    dev, steps = next(model.parameters()).device, 6
    if dev.type != "cuda":
        report.check("graph", "capture + replay == eager", "skipped: needs a CUDA device (CPU rehearsal)")
        equal = graph_loop(model, cfg, resolve_backend(torch.empty(1)), capture=False, steps=steps)
        report.check("graph", "the same loop without a graph: offset tensor == int offset",
                     "ok" if equal == steps else "FAIL", f"{equal}/{steps} steps equal")
        return
    for backend in (["cuda"] if _ops.cuda_built() else []) + ["triton"]:
        try:
            equal = graph_loop(model, cfg, backend, capture=True, steps=steps)
        except Exception as exc:  # noqa: BLE001  (the other backend is still tried)
            report.log(traceback.format_exc())
            report.check("graph", f"{backend}: capture + replay", "FAIL", f"{type(exc).__name__}: {str(exc)[:200]}")
            continue
        report.check("graph", f"{backend}: capture + {steps} replays in a decode loop == eager",
                     "ok" if equal == steps else "FAIL", f"{equal}/{steps} steps equal, B = 8")


# ------------------------------------------------------------------------------------------ 4. timing
def timer(dev):
    """``measure(fn) -> (result, milliseconds)``: CUDA events around ``fn`` after a sync (so its launches are
    counted too) on a GPU, perf_counter on the CPU."""
    if dev.type != "cuda":
        def measure(fn):
            start = time.perf_counter()
            out = fn()
            return out, (time.perf_counter() - start) * 1e3
        return measure

    def measure(fn):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        begin.record()
        out = fn()
        end.record()
        torch.cuda.synchronize()
        return out, begin.elapsed_time(end)
    return measure


def part_timing(report: Report, model, cfg: dict, batches, steps: int, hf: bool) -> None:
    """Each decode step: the model forward, then both samplers on the same logits (repetition penalty 1.1,
    temperature 0.8, top-k 50, top-p 0.9), fastsample's token fed back. Means over ``steps`` after 2 warm-ups."""
    from fastsample import sample
    from fastsample.decoding import Session
    from fastsample.processors import RepetitionPenalty

    dev = next(model.parameters()).device
    measure = timer(dev)
    penalty = RepetitionPenalty(1.1)
    if hf:
        from transformers.generation.logits_process import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor,
                                                            TemperatureLogitsWarper, TopKLogitsWarper,
                                                            TopPLogitsWarper)

        hf_chain = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.1), TemperatureLogitsWarper(0.8),
                                        TopKLogitsWarper(50), TopPLogitsWarper(0.9)])

    def hf_sample(seqs, logits):  # HF generate's sampling step
        probs = torch.softmax(hf_chain(seqs, logits), dim=-1)
        return torch.multinomial(probs, 1)[:, 0]

    lines = ["| B | forward ms | fastsample ms | HF ms | share of step: fastsample | share: HF | step speed-up |",
             "|---|---|---|---|---|---|---|"]
    for batch in batches:
        ids = torch.randint(3, cfg["vocab"], (batch, 16), device=dev)
        session, seeds = Session(model), torch.arange(batch, device=dev)
        logits, seqs = session(ids)[:, -1], ids
        totals = {"forward": 0.0, "fastsample": 0.0, "hf": 0.0}
        for step in range(steps + 2):
            tokens, t_fs = measure(lambda: sample(penalty(seqs, logits), temperature=0.8, top_k=50, top_p=0.9,
                                                  seed=seeds, offset=step))
            t_hf = measure(lambda: hf_sample(seqs, logits))[1] if hf else float("nan")
            seqs = torch.cat([seqs, tokens[:, None]], 1)
            logits, t_fwd = measure(lambda: session(tokens[:, None])[:, -1])
            if step >= 2:
                for key, value in (("forward", t_fwd), ("fastsample", t_fs), ("hf", t_hf)):
                    totals[key] += value / steps
        fwd, fs, hf_ms = totals["forward"], totals["fastsample"], totals["hf"]
        lines.append(f"| {batch} | {fwd:.3f} | {fs:.3f} | {hf_ms:.3f} | {fs / (fwd + fs):.1%} | "
                     f"{hf_ms / (fwd + hf_ms):.1%} | {(fwd + hf_ms) / (fwd + fs):.2f}x |")
        report.log(lines[-1])
    report.add("timing", f"V = {cfg['vocab']}, {'CUDA events' if dev.type == 'cuda' else 'perf_counter'}, mean "
               f"of {steps} steps; a step = the model forward + one sampler. HF = `RepetitionPenaltyLogitsProcessor`"
               " + temperature, top-k, top-p warpers + softmax + `torch.multinomial`; fastsample = "
               "`RepetitionPenalty` + `fastsample.sample`."
               + ("" if hf else " HF columns: transformers is not installed (NaN).") + "\n")
    for line in lines:
        report.add("timing", line)


# ------------------------------------------------------------------------------------------ main
def environment(device: torch.device, hf: bool) -> dict:
    from fastsample import _ops
    from fastsample.backends import resolve_backend

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "torch CUDA": torch.version.cuda or "none"}
    for module in ("triton", "transformers"):
        found = importlib.util.find_spec(module) is not None
        info[module] = importlib.metadata.version(module) if found else "NOT INSTALLED"
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability()
        info["gpu"] = f"{torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]})"
        info["fastsample._C CUDA kernels"] = "yes" if _ops.cuda_built() else \
            "NO (build with `make gpu-check` or --build; the triton backend runs instead)"
    info["fastsample backend here"] = resolve_backend(torch.empty(1, device=device))
    if not hf:
        info["note"] = "transformers is missing: a stand-in model (ToyLM) runs the decoders, HF comparisons skipped"
    return info


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (summary, log)")
    parser.add_argument("--config", choices=sorted(CONFIGS), default=None,
                        help="model size (default: full on a GPU, small on the CPU)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="model dtype (default: bfloat16 on a GPU, float32 on the CPU)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 128], help="batch sizes to time")
    parser.add_argument("--steps", type=int, default=None, help="timed decode steps per batch (GPU 20, CPU 2)")
    parser.add_argument("--parts", nargs="+", choices=list(LIMITS), default=list(LIMITS), help="parts to run")
    parser.add_argument("--build", action="store_true", help="build the extension first (gpu_check's build step)")
    parser.add_argument("--limit", type=float, default=600, help="seconds for the whole run after the build")
    return parser.parse_args(argv)


def build(out: Path, gpu: str | None) -> bool:
    """tools/gpu_check.py's build step (present GPU only, all cores), log in out/build.log; True when it built."""
    sys.path.insert(0, str(ROOT / "tools"))
    import gpu_check

    run = gpu_check.Run(argparse.Namespace(quick=False, logs=out))
    gpu_check.build(run, gpu)
    return not run.failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else None
    built = build(args.out, gpu) if args.build else None  # before fastsample is imported
    build_secs = time.monotonic() - start
    sys.path.insert(0, str(ROOT))
    from bench.common import device_slug

    hf = importlib.util.find_spec("transformers") is not None
    cfg_name = args.config or ("full" if gpu else "small")
    cfg, dtype = CONFIGS[cfg_name], getattr(torch, args.dtype or ("bfloat16" if gpu else "float32"))
    report = Report(args.out, device_slug(device), f"{gpu or 'NO GPU (CPU rehearsal)'}, config {cfg_name}, {dtype}")
    if not gpu:
        report.log("NO GPU PRESENT: torch.cuda.is_available() is False. Running on the CPU (a rehearsal); the "
                   "CUDA-graph check is skipped and syncs cannot be observed.")
    if not hf:
        report.log("TRANSFORMERS IS NOT INSTALLED: the decoders run on a stand-in model and every HF comparison "
                   "is skipped.")
    # A hard stop for what the per-part limits cannot interrupt (a hang inside C++ or CUDA).
    watchdog = threading.Timer(args.limit, lambda: (report.log(f"whole run over --limit {args.limit:.0f} s"),
                                                    report.write(stopped="--limit"), os._exit(124)))
    watchdog.daemon = True
    watchdog.start()
    try:
        report.env = environment(device, hf)
        report.env["model"] = ", ".join(f"{k} {v}" for k, v in cfg.items() if k != "chi_rows") + f", {dtype}"
        if built is not None:
            report.env["build"] = "ok (build.log)" if built else "FAILED (build.log)"
            report.times["build"] = build_secs
            if not built:
                report.failed.append("build")
        try:
            target, draft = make_models(cfg, device, dtype, hf)
        except Exception as exc:  # noqa: BLE001  (said in the summary, which is still written)
            report.log(traceback.format_exc())
            report.check("setup", "make the models", "FAIL", f"{type(exc).__name__}: {str(exc)[:200]}")
            args.parts = []
        steps = args.steps or (20 if gpu else 2)
        parts = {"decoders": (part_decoders, target, draft, cfg, dtype, hf), "syncs": (part_syncs, target, cfg),
                 "graph": (part_graph, target, cfg), "timing": (part_timing, target, cfg, args.batches, steps, hf)}
        for name in args.parts:
            run_part(report, name, *parts[name])
        report.times["total"] = time.monotonic() - start
        print("\n" + report.write())
        report.log(f"wrote {report.path}")
    finally:
        watchdog.cancel()
        report.log_file.close()
    return 0 if not report.failed else 1


if __name__ == "__main__":
    sys.exit(main())
