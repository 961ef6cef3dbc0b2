"""Speculative decoding end to end (run by ``python -m bench.speculative`` and ``make bench``): tokens per target
forward and tokens/s of fastsample's ``speculative_decode`` (chain, deterministic top-k tree, sampled tree,
n-gram prompt lookup) next to Hugging Face ``generate`` with ``assistant_model=`` (assisted generation) and
with ``prompt_lookup_num_tokens=`` on the same models and prompts, batch 1, exactly ``--new-tokens`` tokens, two
prompts per row; greedy, and sampling at temperature 0.7 (no top-k / top-p).

Random models agree on nothing, so both pairs are built to agree by a controlled amount:

* Draft pair. The target is an 8-layer Llama (hidden 256, vocab 4096, init 0.15) whose layers 2-8 write into
  the residual stream through ``o_proj`` / ``down_proj`` scaled by ``TAIL_SCALE``; the draft is a 1-layer
  Llama holding the target's embeddings, first layer, final norm and head, with Gaussian noise of
  ``DRAFT_NOISE`` times each weight's std added. So the draft costs about a fifth of a target forward, and
  the two scales set how often it agrees with the target (the acceptance column reports it).
* Copying target (prompt lookup). A 4-layer Llama that computes a word-bigram model fitted on this
  repository's README and docs: one-hot embeddings (hidden = vocab = 512 words), attention and MLP outputs
  zeroed (they still run, so a forward costs what a 4-layer model costs) and the head holding the bigram's
  log-probabilities. Its prompts are doc passages written out twice, and greedy bigram text falls into
  cycles, so earlier text keeps reappearing, as in code editing or summarisation with quotes.

Tokens per target forward = new tokens / target forwards after the prefill (hooks count HF's calls).
Prints a markdown table and appends rows to bench/results/<device>-speculative-decode.csv; timings are
recorded, never asserted. On a shared CPU, tokens/s moves with the load; tokens per forward does not.
"""
from __future__ import annotations

import argparse
import csv
import math
import re
import statistics
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import torch

from .common import REPO, device_description, device_slug, git_commit

TAIL_SCALE = 0.1
DRAFT_NOISE = 0.05
FIELDS = ("case", "provider", "mode", "proposal", "new_tokens", "tokens_per_target_forward", "acceptance",
          "tokens_per_s", "median_s", "device", "commit", "date")


def draft_pair(vocab: int = 4096, hidden: int = 256, layers: int = 8):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      initializer_range=0.15, bos_token_id=0, eos_token_id=None, pad_token_id=0)
    target = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in target.model.layers[1:]:
            layer.self_attn.o_proj.weight.mul_(TAIL_SCALE)
            layer.mlp.down_proj.weight.mul_(TAIL_SCALE)
    draft = LlamaForCausalLM(LlamaConfig(**{**cfg.to_dict(), "num_hidden_layers": 1})).eval()
    draft.load_state_dict(target.state_dict(), strict=False)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * DRAFT_NOISE * p.std())
    return target, draft


def doc_words() -> list[str]:
    text = " ".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    return re.findall(r"[A-Za-z_]+|[0-9]+|[^\sA-Za-z_0-9]", text.lower())


def copy_target(vocab: int = 512, layers: int = 4):
    """(Llama computing a doc-bigram model, word -> id function, the word list)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    words = doc_words()
    names = ["<unk>"] + [w for w, _ in Counter(words).most_common(vocab - 1)]
    index = {w: i for i, w in enumerate(names)}
    ids = [index.get(w, 0) for w in words]
    counts = torch.full((vocab, vocab), 0.01)
    counts.index_put_((torch.tensor(ids[:-1]), torch.tensor(ids[1:])), torch.ones(len(ids) - 1), accumulate=True)
    logp = (counts / counts.sum(1, keepdim=True)).log()
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=vocab, intermediate_size=2 * vocab, num_hidden_layers=layers,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024,
                      bos_token_id=0, eos_token_id=None, pad_token_id=0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(vocab))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.copy_(logp.T / math.sqrt(vocab))  # the final RMSNorm maps e_v to sqrt(H) e_v
    return model, [index.get(w, 0) for w in words]


class ForwardCounter:
    def __init__(self, model):
        self.calls = 0
        model.register_forward_pre_hook(lambda *_: setattr(self, "calls", self.calls + 1))


def hf_run(model, counter, ids, new_tokens, **kwargs):
    counter.calls = 0
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, pad_token_id=0, **kwargs)
    n = out.shape[1] - ids.shape[1]
    return n, max(counter.calls - 1, 1), float("nan")


def fs_run(target, counter, draft, ids, new_tokens, **kwargs):
    from fastsample.decoding import speculative_decode

    out = speculative_decode(target, draft, ids, max_new_tokens=new_tokens, **kwargs)
    return out.sequences.shape[1] - ids.shape[1], out.target_forwards, out.acceptance_rate


def cases(target, draft, copier, doc_ids, prompt_len: int):
    """(case, provider, mode, proposal, runner(ids, new_tokens), prompts) rows."""
    gen = torch.Generator().manual_seed(3)
    rand_prompts = [torch.randint(1, target.config.vocab_size, (1, prompt_len), generator=gen) for _ in range(2)]
    starts = [len(doc_ids) // 5, len(doc_ids) // 2]
    copy_prompts = [torch.tensor([doc_ids[s:s + prompt_len // 2] * 2]) for s in starts]
    tc, cc = ForwardCounter(target), ForwardCounter(copier)
    asst = dict(assistant_model=draft, num_assistant_tokens=4, num_assistant_tokens_schedule="constant")
    rows = []
    for mode, sample in (("greedy", dict(do_sample=False)), ("sample", dict(do_sample=True, temperature=0.7))):
        hf_sample = dict(sample, top_k=0) if sample["do_sample"] else sample
        rows += [
            ("draft pair", "hf generate", mode, "none", lambda i, n, s=hf_sample: hf_run(target, tc, i, n, **s)),
            ("draft pair", "hf assisted", mode, "chain 4",
             lambda i, n, s=hf_sample: hf_run(target, tc, i, n, **asst, **s)),
            ("draft pair", "fastsample", mode, "chain 4",
             lambda i, n, s=sample: fs_run(target, tc, draft, i, n, gamma=4, seed=0, **s)),
            ("draft pair", "fastsample", mode, "chain 8",
             lambda i, n, s=sample: fs_run(target, tc, draft, i, n, gamma=8, seed=0, **s)),
            ("draft pair", "fastsample", mode, "top-k tree 4x2 (8 nodes)",
             lambda i, n, s=sample: fs_run(target, tc, draft, i, n, tree=(4, 2), seed=0, **s)),
        ]
        if sample["do_sample"]:
            rows.append(("draft pair", "fastsample", mode, "sampled tree 4x2 (8 nodes)",
                         lambda i, n, s=sample: fs_run(target, tc, draft, i, n, tree=(4, 2), tree_mode="sample",
                                                       seed=0, **s)))
        rows += [
            ("copying target", "hf generate", mode, "none", lambda i, n, s=hf_sample: hf_run(copier, cc, i, n, **s)),
            ("copying target", "hf prompt lookup", mode, "ngram 4",
             lambda i, n, s=hf_sample: hf_run(copier, cc, i, n, prompt_lookup_num_tokens=4, **s)),
            ("copying target", "fastsample", mode, "ngram chain 4",
             lambda i, n, s=sample: fs_run(copier, cc, None, i, n, proposer="ngram", tree=(4, 1), seed=0, **s)),
            ("copying target", "fastsample", mode, "ngram tree 4x4",
             lambda i, n, s=sample: fs_run(copier, cc, None, i, n, proposer="ngram", tree=(4, 4), seed=0, **s)),
        ]
    return [(case, prov, mode, prop, fn, rand_prompts if case == "draft pair" else copy_prompts)
            for case, prov, mode, prop, fn in rows]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.speculative", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="results folder")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    target, draft = draft_pair()
    copier, doc_ids = copy_target()
    device = torch.device("cpu")
    date, commit, description = datetime.now(timezone.utc).isoformat(timespec="seconds"), git_commit(), \
        device_description(device)
    rows = []
    for case, provider, mode, proposal, run, prompts in cases(target, draft, copier, doc_ids, args.prompt_len):
        run(prompts[0][:, :8], 4)  # warm-up
        tokens = forwards = 0
        times, accept = [], []
        for ids in prompts:
            start = time.perf_counter()
            n, f, a = run(ids, args.new_tokens)
            times.append(time.perf_counter() - start)
            tokens, forwards = tokens + n, forwards + f
            accept.append(a)
        row = {"case": case, "provider": provider, "mode": mode, "proposal": proposal,
               "new_tokens": args.new_tokens, "tokens_per_target_forward": f"{tokens / forwards:.2f}",
               "acceptance": "" if math.isnan(accept[0]) else f"{statistics.mean(accept):.2f}",
               "tokens_per_s": f"{tokens / sum(times):.1f}", "median_s": f"{statistics.median(times):.3f}",
               "device": description, "commit": commit, "date": date}
        rows.append(row)
        print(f"{case:15s} {mode:6s} {provider:17s} {proposal:27s} {row['tokens_per_target_forward']:>6s} tok/fwd "
              f"{row['tokens_per_s']:>7s} tok/s  acceptance {row['acceptance'] or '-'}", flush=True)
    print("\n| pair | mode | provider | proposal | tokens / target forward | tokens/s | acceptance |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['mode']} | {r['provider']} | {r['proposal']} | {r['tokens_per_target_forward']} | "
              f"{r['tokens_per_s']} | {r['acceptance'] or '—'} |")
    path = args.out / f"{device_slug(device)}-speculative-decode.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)
    print(f"appended {len(rows)} rows to {path}")
    return 0
