"""Speculative decoding (Leviathan et al. 2023, Chen et al. 2023): a small draft model proposes ``gamma`` tokens,
one target forward scores them all, ``chain_speculative_sampling`` keeps the longest acceptable prefix plus one
token from the target, so the output has exactly the target's distribution (or its greedy tokens).

Tree mode (``tree=(depth, branching)`` or ``proposer="ngram"``): a proposer (``proposers.py``) builds a token tree
per row, the target scores every node in one forward under a tree attention mask (``tree_attention.py``), and
``tree_speculative_sampling`` / ``tree_greedy_verify`` pick the accepted root path plus one target token; the
target's cache keeps only that path.

Rows accept different numbers of tokens, yet the batch keeps one cache length per model: the draft tokens a row
rejected stay in the caches as masked holes (see ``model.Session``), and only the columns no row needs are
cropped away. Each step starts from one pending token per row (the last token emitted, not yet in any cache).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..sampling import greedy, sampling_from_probs, softmax, top_k_renorm_probs, top_p_renorm_probs
from ..speculative import chain_speculative_sampling, tree_greedy_verify, tree_speculative_sampling
from .model import Session, prepare, decode_seeds
from .proposers import DraftTreeProposer, NgramProposer
from .tree_attention import ancestors, keep_path, tree_call

Tensor = torch.Tensor


@dataclass
class SpeculativeOutput:
    """``sequences`` int64 [B, P + n] as in ``greedy_decode``, plus statistics over the rows still running:
    ``acceptance_rate`` = draft tokens passing the acceptance test / draft tokens proposed (trees: accepted path
    length / tree depth);
    ``tokens_per_target_forward`` = tokens emitted per verification forward of the target (mean accepted prefix
    + 1, counted before the cut at max_new_tokens; the prefill forward is not counted);
    ``target_forwards`` / ``draft_forwards`` = model calls after the prefill."""

    sequences: Tensor
    acceptance_rate: float
    tokens_per_target_forward: float
    target_forwards: int
    draft_forwards: int


class _Output:
    """The output buffer and statistics shared by the chain and tree loops."""

    def __init__(self, input_ids: Tensor, max_new_tokens: int, width: int, eos: Tensor | None, fill: int):
        batch, dev = input_ids.shape[0], input_ids.device
        self.input_ids, self.max_new_tokens, self.eos, self.fill = input_ids, max_new_tokens, eos, fill
        self.out = input_ids.new_full((batch, max_new_tokens + width), fill)
        self.n_out = torch.zeros(batch, dtype=torch.int64, device=dev)
        self.running = torch.ones(batch, dtype=torch.bool, device=dev)
        self.accepted_sum = self.emitted_sum = self.row_steps = torch.zeros((), dtype=torch.int64, device=dev)
        self.cols = torch.arange(width, device=dev)
        self.steps = 0

    def write(self, tokens: Tensor, accepted: Tensor, emitted: Tensor) -> None:
        """Each running row's new tokens: the accepted prefix and one target token, cut after an EOS."""
        cols = self.cols[:tokens.shape[1]]
        count = emitted + 1
        if self.eos is not None:
            is_eos = torch.isin(tokens, self.eos) & (cols < count[:, None])
            count = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, count)
            running_after = self.running & ~is_eos.any(1)
        else:
            running_after = self.running.clone()
        # past a row's end the buffer holds padding; a stopped row writes padding beyond max_new_tokens
        write = self.running[:, None] & (cols < count[:, None])
        start = self.n_out.clamp(max=self.max_new_tokens)[:, None]
        self.out.scatter_(1, start + cols, torch.where(write, tokens, self.fill))
        self.accepted_sum = self.accepted_sum + (accepted * self.running).sum()
        self.emitted_sum = self.emitted_sum + ((emitted + 1) * self.running).sum()
        self.row_steps = self.row_steps + self.running.sum()
        self.n_out = self.n_out + count * self.running
        self.running = running_after & (self.n_out < self.max_new_tokens)
        self.steps += 1

    def result(self, per_step: int, draft_calls: int) -> SpeculativeOutput:
        n_gen = int(torch.clamp(self.n_out, max=self.max_new_tokens).max())
        rows = max(int(self.row_steps), 1)
        return SpeculativeOutput(torch.cat([self.input_ids, self.out[:, :n_gen]], 1),
                                 int(self.accepted_sum) / (per_step * rows), int(self.emitted_sum) / rows,
                                 self.steps, draft_calls)


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def speculative_decode(target, draft, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                       max_new_tokens: int, gamma: int = 4, proposer: str = "draft",
                       tree: tuple[int, int] | None = None, tree_mode: str = "topk", max_nodes: int | None = None,
                       do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       seed: int | Tensor | None = None, generator: torch.Generator | None = None,
                       eos_token_id: int | Sequence[int] | None = None,
                       pad_token_id: int | None = None) -> SpeculativeOutput:
    """Generate with ``target``'s distribution (or its greedy tokens), several tokens per target forward.

    Parameters
    ----------
    target, draft : models of the protocol in ``fastsample.decoding.model`` sharing one vocabulary; ``draft``
        is None with ``proposer="ngram"``.
    proposer : "draft" (a draft model: a chain of ``gamma`` tokens, or a tree with ``tree``) or "ngram" (prompt
        lookup in the row's prompt and output: no draft model).
    gamma : chain mode: draft tokens proposed per step (>= 1); "ngram" without ``tree``: tokens per continuation.
    tree : (depth, branching). "draft": ``depth`` levels; ``tree_mode="topk"`` expands the top-``branching``
        tokens of the ``branching`` best nodes per level and keeps the ``max_nodes`` best nodes by cumulative
        draft log-prob (default depth * branching; verified as deterministic children); ``tree_mode="sample"``
        draws ``branching`` children i.i.d. from the draft at the best node of each level (needs do_sample,
        verified with the draft probabilities). "ngram": continuations of up to ``depth`` tokens, up to
        ``branching`` distinct ones merged into a trie of at most ``max_nodes`` nodes (default (gamma, 4)).
    do_sample : False: greedy (the output equals ``greedy_decode(target)``). True: softmax(logits /
        temperature) filtered by top-k then top-p, and the output follows the target's filtered distribution.
    seed, generator : per-row seeds as in ``sample_decode``. Chain: step t of row b uses Philox offsets
        t * (gamma + 1) + i for the draft's i-th token and t * (gamma + 1) + gamma for the acceptance test.
        Tree: stride S = depth * branching + 1; offset t * S + i draws sampled node i, t * S + S - 1 verifies.
    Other arguments as in ``greedy_decode``.
    """
    attention_mask, eos, pad = prepare(input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id)
    _positive("gamma", gamma)
    if proposer not in ("draft", "ngram"):
        raise ValueError(f"proposer must be 'draft' or 'ngram', got {proposer!r}")
    if tree_mode not in ("topk", "sample"):
        raise ValueError(f"tree_mode must be 'topk' or 'sample', got {tree_mode!r}")
    if proposer == "draft" and draft is None:
        raise ValueError("proposer='draft' needs a draft model (pass proposer='ngram' to decode without one)")
    if tree is not None:
        if not isinstance(tree, (tuple, list)) or len(tree) != 2:
            raise ValueError(f"tree must be a (depth, branching) pair, got {tree!r}")
        _positive("tree depth", tree[0]), _positive("tree branching", tree[1])
    if max_nodes is not None:
        _positive("max_nodes", max_nodes)
    seeds = decode_seeds(input_ids.shape[0], seed, generator, input_ids.device)

    def probs(logits: Tensor) -> Tensor:
        flat = logits.reshape(-1, logits.shape[-1])
        if not do_sample:
            p = torch.zeros_like(flat).scatter_(1, greedy(flat)[:, None], 1.0)
        else:
            p = softmax(flat, temperature)
            p = top_k_renorm_probs(p, top_k) if top_k > 0 else p
            p = top_p_renorm_probs(p, top_p) if top_p < 1 else p
        return p.view(logits.shape)

    fill = -1 if pad is None else pad
    if proposer == "draft" and tree is None:
        output = _Output(input_ids, max_new_tokens, gamma + 1, eos, fill)
        return _chain(target, draft, input_ids, attention_mask, gamma, do_sample, probs, seeds, output)
    if proposer == "ngram":
        depth, branches = tree if tree is not None else (gamma, 4)
        nodes = max_nodes or depth * branches
        source = NgramProposer(input_ids, attention_mask, depth, branches, nodes)
    else:
        depth, branches = tree
        nodes = max_nodes or depth * branches
        if tree_mode == "sample" and not do_sample:
            raise ValueError("tree_mode='sample' draws the tree from the draft: it needs do_sample=True")
        source = DraftTreeProposer(draft, input_ids, attention_mask, depth, branches, nodes, tree_mode, probs,
                                   do_sample, seeds)
    stride = depth * branches + 1
    output = _Output(input_ids, max_new_tokens, depth * branches + 1, eos, fill)
    return _tree(target, source, input_ids, attention_mask, depth, stride, do_sample, probs, seeds, output)


def _tree(target, source, input_ids: Tensor, attention_mask: Tensor, depth: int, stride: int, do_sample: bool,
          probs, seeds: Tensor, output: _Output) -> SpeculativeOutput:
    """The tree loop: propose, score every node in one target forward, verify, keep the accepted path."""
    tgt = Session(target)
    if input_ids.shape[1] > 1:  # the last prompt token is the first pending token
        tgt(input_ids[:, :-1], attention_mask[:, :-1])
    pending = input_ids[:, -1:]
    while True:
        base = output.steps * stride
        tokens, parents, draft_probs = source.propose(torch.full_like(seeds, base))
        anc = ancestors(parents)
        depths = anc.sum(-1) - 1
        used = torch.cat([torch.ones_like(pending), (tokens >= 0).to(torch.int64)], 1)
        feed = torch.cat([pending, tokens.clamp(min=0)], 1)
        start = tgt.length
        before = 0 if tgt.mask is None else tgt.mask.sum(1, keepdim=True)
        logits = tree_call(tgt, feed, anc, before + depths, used)
        if do_sample:
            out, path, emitted = tree_speculative_sampling(tokens, parents, probs(logits), draft_probs,
                                                           seed=seeds, offset=base + stride - 1)
        else:
            out, path, emitted = tree_greedy_verify(tokens, parents, logits)
        output.write(out[:, :depth + 1], emitted, emitted)
        longest, stop = torch.stack([emitted.max(), (~output.running.any()).long()]).tolist()  # one host sync
        if stop:
            break
        keep_path(tgt, start, path, emitted, longest)
        source.advance(out, emitted)
        pending = out.gather(1, emitted[:, None])
    return output.result(depth, source.forwards)


def _chain(target, draft, input_ids: Tensor, attention_mask: Tensor, gamma: int, do_sample: bool, probs,
           seeds: Tensor, output: _Output) -> SpeculativeOutput:
    """The chain loop: ``gamma`` draft tokens, one target forward, ``chain_speculative_sampling``."""
    batch, prompt_len = input_ids.shape
    tgt, drf = Session(target), Session(draft)
    if prompt_len > 1:  # the last prompt token is the first pending token
        tgt(input_ids[:, :-1], attention_mask[:, :-1])
        drf(input_ids[:, :-1], attention_mask[:, :-1])
    pending = input_ids[:, -1:]
    extra = None  # the last draft token of a step where some row accepted everything: the draft has not read it
    cols = output.cols
    draft_calls = 0
    while True:
        base = output.steps * (gamma + 1)
        # 1. the draft proposes gamma tokens
        if extra is None:
            q_logits = drf(pending)[:, -1]
        else:
            q_logits = drf(torch.cat([extra[0], pending], 1), torch.cat([extra[1], torch.ones_like(pending)], 1))[:, -1]
        drafted, q = [], []
        for i in range(gamma):
            q.append(probs(q_logits))
            drafted.append(sampling_from_probs(q[-1], seed=seeds, offset=base + i) if do_sample else greedy(q_logits))
            if i + 1 < gamma:
                q_logits = drf(drafted[-1][:, None])[:, -1]
        draft_calls += gamma
        d, q = torch.stack(drafted, 1), torch.stack(q, 1)

        # 2. one target forward scores the pending token and every draft token
        tgt_start = tgt.length
        p = probs(tgt(torch.cat([pending, d], 1)))
        tokens, accepted, emitted = chain_speculative_sampling(q, d, p, seed=seeds, offset=base + gamma)
        output.write(tokens, accepted, emitted)

        # 3. roll both caches back: rejected draft columns become holes, columns no row needs are cropped
        longest, stop = torch.stack([emitted.max(), (~output.running.any()).long()]).tolist()  # one host sync
        if stop:
            break
        tgt.mask[:, tgt_start + 1:] *= cols[:gamma] < emitted[:, None]
        tgt.crop(tgt_start + 1 + longest)
        drf_start = drf.length - gamma  # the pending token's column
        drf.mask[:, drf_start + 1:] *= cols[:gamma - 1] < emitted[:, None]
        drf.crop(drf_start + 1 + min(longest, gamma - 1))
        extra = (d[:, -1:], (emitted == gamma)[:, None].to(torch.int64)) if longest == gamma else None
        pending = tokens.gather(1, emitted[:, None])
    return output.result(gamma, draft_calls)
