"""The stack sampler (issue 18): an inference stack's whole sampling step at the issue's settings: a grammar
mask allowing half the vocabulary, 16 biased ids, repetition/frequency/presence penalties over a 1024-token
prompt and a 256-token output, T=0.8, top-k 50, top-p 0.9, min-p 0.05 and top-5 processed logprobs.

Providers: fastsample (cpu, and reference = fastsample/stack/reference.py through backend="torch") and `torch`,
the same step written as vLLM v1's sampler does it (masked_fill, scatter_add counts, division by T, softmax min-p,
sort-based top-k/top-p, exponential race, log_softmax + topk). Plain `sample(T=0.8,k=50,p=0.9)` on the same
logits is the sampling family's op of that name (targets.py compares the two)."""
from __future__ import annotations

import torch

import fastsample

from .common import BenchOp
from .providers import fastsample_impls

NAME = "sample_stack(mask,bias,penalties,T=0.8,k=50,p=0.9,min_p=0.05,top5)"
SETTINGS = dict(temperature=0.8, top_k=50, top_p=0.9, min_p=0.05)
PENALTIES = dict(repetition_penalty=1.1, frequency_penalty=0.2, presence_penalty=0.1)
PROMPT_LEN, OUTPUT_LEN, BIASED = 1024, 256, 16


def _prepare(logits: torch.Tensor) -> dict:
    batch, vocab = logits.shape
    gen = torch.Generator().manual_seed(18)
    allowed = torch.rand(batch, vocab, generator=gen) < 0.5
    words = (vocab + 31) // 32
    padded = torch.zeros(batch, words * 32, dtype=torch.int64)
    padded[:, :vocab] = allowed.long()
    bits = (padded.view(batch, words, 32) << torch.arange(32)).sum(-1)
    mask = torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32)
    device = logits.device
    return {"logits": logits, "allowed_mask": mask.to(device),
            "bias_ids": torch.randint(0, vocab, (batch, BIASED), generator=gen).to(device),
            "bias_values": torch.randn(batch, BIASED, generator=gen).to(device),
            "prompt_ids": torch.randint(0, vocab, (batch, PROMPT_LEN), generator=gen).to(device),
            "output_ids": torch.randint(0, vocab, (batch, OUTPUT_LEN), generator=gen).to(device)}


def _fastsample(d: dict, backend: str):
    return fastsample.sample_stack(d["logits"], allowed_mask=d["allowed_mask"], bias_ids=d["bias_ids"],
                                   bias_values=d["bias_values"], prompt_ids=d["prompt_ids"],
                                   output_ids=d["output_ids"], **PENALTIES, **SETTINGS, logprobs="processed",
                                   top_logprobs=5, backend=backend)


def torch_stack_sampler(d: dict):
    """The step as vLLM v1's torch sampler runs it: one full-vocabulary kernel per piece."""
    logits = d["logits"].float()
    batch, vocab = logits.shape
    ids = torch.arange(vocab, device=logits.device)
    allowed = ((d["allowed_mask"][:, ids // 32] >> (ids % 32)) & 1).bool()
    logits = logits.masked_fill(~allowed, float("-inf"))
    logits = logits.scatter_add(1, d["bias_ids"], d["bias_values"])
    prompt_mask = torch.zeros(batch, vocab, dtype=torch.bool, device=logits.device).scatter_(1, d["prompt_ids"], True)
    counts = torch.zeros_like(logits).scatter_add_(1, d["output_ids"], torch.ones_like(d["output_ids"],
                                                                                        dtype=logits.dtype))
    seen = prompt_mask | (counts > 0)
    r = PENALTIES["repetition_penalty"]
    logits = torch.where(seen, torch.where(logits > 0, logits / r, logits * r), logits)
    logits = logits - PENALTIES["frequency_penalty"] * counts - PENALTIES["presence_penalty"] * (counts > 0)
    logits = logits / SETTINGS["temperature"]
    probs = logits.softmax(dim=-1)
    logits = logits.masked_fill(probs < SETTINGS["min_p"] * probs.amax(dim=-1, keepdim=True), float("-inf"))
    logits_sort, order = logits.sort(dim=-1, descending=False)
    kth = logits_sort.gather(1, torch.full((batch, 1), vocab - SETTINGS["top_k"], device=logits.device))
    logits_sort = logits_sort.masked_fill(logits_sort < kth, float("-inf"))
    cum = logits_sort.softmax(dim=-1).cumsum(dim=-1)
    drop = cum <= 1 - SETTINGS["top_p"]
    drop[:, -1] = False
    logits_sort = logits_sort.masked_fill(drop, float("-inf"))
    logits = logits_sort.scatter(-1, order, logits_sort)
    probs = logits.softmax(dim=-1)
    tokens = probs.div(torch.empty_like(probs).exponential_()).argmax(dim=-1)
    logprobs = logits.log_softmax(dim=-1)
    top_values, top_ids = logprobs.topk(5, dim=-1)
    token_lp = logprobs.gather(1, tokens.unsqueeze(1))
    ranks = (logprobs >= token_lp).sum(dim=-1)
    return tokens, token_lp, ranks, top_ids, top_values


OPS = [BenchOp(NAME, "stack_sampler", _prepare, {
    **fastsample_impls(_fastsample),
    "torch": lambda d: lambda: torch_stack_sampler(d),
})]
