"""End-to-end benchmark: Hugging Face ``generate`` with and without ``custom_generate=fastsample.hf.generate``.

`python -m bench.generate [--batches 1,8,32] [--new-tokens 32] [--reps 3]` from the repository root (also run
by `make bench`). A small random Llama (2 layers, hidden 256) with V = 128256 (Llama 3's vocabulary), so that
sampling over the vocabulary weighs as much as it does in real decoding with a small model; ``do_sample=True,
top_p=0.9, temperature=0.8``, exactly ``--new-tokens`` new tokens (no EOS). Per batch size and provider: median
wall time of the whole generate call, tokens per second (B * new tokens / time), and the share of the time
spent outside the model's forward calls (token selection: processors, warpers, the draw, plus the loop's
bookkeeping, which is small next to them). Prints a markdown table and appends rows to
bench/results/<device>-generate.csv. Timings are recorded, never asserted.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from .common import REPO, device_description, device_slug, git_commit

VOCAB = 128256
PROMPT_LEN = 16
FIELDS = ("op", "provider", "batch", "vocab", "new_tokens", "median_s", "tokens_per_s", "outside_forward_share",
          "device", "commit", "date")


def tiny_llama(vocab: int = VOCAB):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=0, bos_token_id=1, eos_token_id=None)
    return LlamaForCausalLM(config).eval()


class ForwardClock:
    """Sums the wall time of the model's forward calls (forward pre/post hooks on the top module)."""

    def __init__(self, model):
        self.total, self._start = 0.0, 0.0
        model.register_forward_pre_hook(self._pre)
        model.register_forward_hook(self._post)

    def _pre(self, module, args):
        self._start = time.perf_counter()

    def _post(self, module, args, output):
        self.total += time.perf_counter() - self._start


def run_case(model, clock: ForwardClock, batch: int, new_tokens: int, reps: int, custom) -> tuple[float, float]:
    """Median seconds of one generate call and the median share of it outside forward."""
    gen = torch.Generator().manual_seed(batch)
    ids = torch.randint(2, VOCAB, (batch, PROMPT_LEN), generator=gen)
    kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=True, top_p=0.9, temperature=0.8,
                  max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    if custom is not None:
        kwargs["custom_generate"] = custom
    times, shares = [], []
    for rep in range(reps + 1):  # the first call warms up
        clock.total = 0.0
        start = time.perf_counter()
        out = model.generate(ids, **kwargs)
        elapsed = time.perf_counter() - start
        assert out.shape == (batch, PROMPT_LEN + new_tokens)
        if rep:
            times.append(elapsed)
            shares.append(1.0 - clock.total / elapsed)
    return statistics.median(times), statistics.median(shares)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="1,8,32", help="comma list of batch sizes (default 1,8,32)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=3, help="timed calls per case after one warm-up (default 3)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="results folder")
    args = p.parse_args(argv)
    from fastsample import hf

    device = torch.device("cpu")
    model = tiny_llama()
    clock = ForwardClock(model)
    providers = {"hf-generate": None, "hf-generate+fastsample": hf.generate}
    rows, date, commit, description = [], datetime.now(timezone.utc).isoformat(timespec="seconds"), \
        git_commit(), device_description(device)
    for batch in (int(b) for b in args.batches.split(",")):
        for name, custom in providers.items():
            median_s, share = run_case(model, clock, batch, args.new_tokens, args.reps, custom)
            rows.append({"op": "generate(top_p=0.9,T=0.8)", "provider": name, "batch": batch, "vocab": VOCAB,
                         "new_tokens": args.new_tokens, "median_s": f"{median_s:.4f}",
                         "tokens_per_s": f"{batch * args.new_tokens / median_s:.1f}",
                         "outside_forward_share": f"{share:.3f}", "device": description, "commit": commit,
                         "date": date})
            print(f"B={batch:3d} {name:24s} {median_s:8.3f} s  {batch * args.new_tokens / median_s:8.1f} tok/s  "
                  f"outside forward {share:6.1%}", flush=True)
    print("\n| B | provider | tokens/s | time outside forward | speed-up |\n|---|---|---|---|---|")
    for plain, ours in zip(rows[::2], rows[1::2]):
        for row in (plain, ours):
            speedup = float(row["tokens_per_s"]) / float(plain["tokens_per_s"])
            print(f"| {row['batch']} | {row['provider']} | {row['tokens_per_s']} | "
                  f"{float(row['outside_forward_share']):.0%} | {speedup:.2f}x |")
    path = args.out / f"{device_slug(device)}-generate.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)
    print(f"appended {len(rows)} rows to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
