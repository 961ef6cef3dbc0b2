"""chain_speculative_sampling: accepting N = 4 draft tokens per row against the target's probabilities.

The inputs are (2N + 1) probability rows per batch row, but an exact kernel reads only the N probability
pairs at the draft ids plus two full rows (q and p at the first rejection), so about 2x the single pass over a
[B, V] row is its floor."""
from __future__ import annotations

import torch

import fastsample

from .common import BenchOp
from .providers import fastsample_impls, flashinfer_impl

N = 4
DRAFT_NOISE = 0.5  # the draft's logits = the target's + this much Gaussian noise: most drafts get accepted


def _prepare(logits: torch.Tensor) -> dict:
    gen = torch.Generator(device=logits.device).manual_seed(1)
    x = logits.float()
    batch, vocab = x.shape
    target = torch.softmax(x, dim=-1).unsqueeze(1).expand(batch, N + 1, vocab).contiguous()
    noise = torch.randn((batch, N, vocab), generator=gen, device=x.device)
    draft = torch.softmax(x.unsqueeze(1) + DRAFT_NOISE * noise, dim=-1)
    draft_ids = torch.multinomial(draft.view(batch * N, vocab), 1, generator=gen).view(batch, N)
    # FlashInfer takes int32 ids: converted here, outside its timing.
    return {"draft": draft, "draft_ids": draft_ids, "draft_ids_i32": draft_ids.int(), "target": target}


OPS = [
    BenchOp(f"chain_speculative_sampling(n={N})", "speculative", _prepare, {
        **fastsample_impls(lambda d, backend: fastsample.chain_speculative_sampling(
            d["draft"], d["draft_ids"], d["target"], backend=backend)),
        **flashinfer_impl("chain_speculative_sampling",
                          lambda fn, d: fn(d["draft"], d["draft_ids_i32"], d["target"])),
    }, probs_only=True),
]


if __name__ == "__main__":  # `python -m bench.speculative`: the decoders end to end (bench/speculative_decode.py)
    from .speculative_decode import main

    raise SystemExit(main())
