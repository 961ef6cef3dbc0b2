"""Token-tree proposers for tree speculative decoding (docs/decoding.md).

A proposer returns one tree per row: ``tokens`` int64 [B, N] (-1 = unused node), ``parents`` int64 [B, N] (-1 =
child of the root, parent < child) and the draft distributions the nodes were drawn from ([B, N, V]) or None
for deterministic proposals. The root is the row's pending token (the last token emitted). After the target's
verification, ``advance(tokens, emitted)`` tells the proposer what each row emitted.

* :class:`NgramProposer` (prompt lookup): the last n = 3, 2, 1 tokens are looked up in the row's prompt and
  output so far, most recent match first; the continuations found are merged into a trie. No model.
* :class:`DraftTreeProposer`: a draft model expands the tree level by level, scoring all the nodes of a level in
  one forward (a tree attention mask). ``mode="topk"``: each expanded node gets its top-``branching`` tokens,
  the ``branching`` best nodes by cumulative draft log-prob are expanded next, and the ``max_nodes`` best nodes
  of the whole tree are kept (EAGLE-2's expansion and reranking); verified with ``draft_probs=None``.
  ``mode="sample"``: the best node of each level gets ``branching`` children drawn i.i.d. from the draft,
  nothing is pruned afterwards (pruning sampled children by value would bias them); verified with draft_probs.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..sampling import sampling_from_probs
from .model import Session
from .tree_attention import tree_call

Tensor = torch.Tensor


def ngram_continuations(seq: list[int], depth: int, branches: int, max_ngram: int = 3) -> list[list[int]]:
    """Up to ``branches`` distinct continuations of ``depth`` tokens that followed earlier occurrences of the
    last n tokens of ``seq``, longest n first, then the most recent occurrence first. A continuation that runs
    into the end of ``seq`` goes on copying from the same distance (a period: "a b a b" continues "a b a b")."""
    found: list[list[int]] = []
    length = len(seq)
    for n in range(min(max_ngram, length - 1), 0, -1):
        suffix = seq[-n:]
        for start in range(length - n - 1, -1, -1):
            if seq[start:start + n] == suffix:
                cont: list[int] = []
                for src in range(start + n, start + n + depth):
                    cont.append(seq[src] if src < length else cont[src - length])
                if cont not in found:
                    found.append(cont)
                    if len(found) == branches:
                        return found
    return found


def trie(continuations: list[list[int]], max_nodes: int) -> tuple[list[int], list[int]]:
    """Merge token lists into a tree: (tokens, parents) in insertion order (parent < child), <= max_nodes."""
    tokens: list[int] = []
    parents: list[int] = []
    index: dict[tuple[int, int], int] = {}
    for cont in continuations:
        parent = -1
        for tok in cont:
            node = index.get((parent, tok))
            if node is None:
                if len(tokens) == max_nodes:
                    return tokens, parents
                node = index[(parent, tok)] = len(tokens)
                tokens.append(tok)
                parents.append(parent)
            parent = node
    return tokens, parents


class NgramProposer:
    """Prompt lookup: ``depth`` tokens per continuation, up to ``branches`` continuations, ``max_nodes`` nodes."""

    forwards = 0  # no model

    def __init__(self, input_ids: Tensor, attention_mask: Tensor, depth: int, branches: int, max_nodes: int):
        self.seqs = [row[m.bool()].tolist() for row, m in zip(input_ids.cpu(), attention_mask.cpu())]
        self.depth, self.branches, self.max_nodes = depth, branches, max_nodes
        self.device = input_ids.device

    def propose(self, offset: Tensor | int) -> tuple[Tensor, Tensor, None]:
        trees = [trie(ngram_continuations(s, self.depth, self.branches), self.max_nodes) for s in self.seqs]
        width = max(1, max(len(t) for t, _ in trees))
        tokens = torch.full((len(trees), width), -1, dtype=torch.int64)
        parents = torch.full((len(trees), width), -1, dtype=torch.int64)
        for row, (tok, par) in enumerate(trees):
            tokens[row, :len(tok)] = torch.tensor(tok, dtype=torch.int64)
            parents[row, :len(par)] = torch.tensor(par, dtype=torch.int64)
        return tokens.to(self.device), parents.to(self.device), None

    def advance(self, tokens: Tensor, emitted: Tensor) -> None:
        for seq, row, n in zip(self.seqs, tokens.tolist(), emitted.tolist()):
            seq.extend(row[:n + 1])


def right_align(tokens: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """The first counts[b] tokens of each row, right-aligned in [B, max count]; returns (tokens, valid)."""
    width = int(counts.max())
    src = torch.arange(width, device=tokens.device)[None] - (width - counts)[:, None]
    return tokens.gather(1, src.clamp(min=0)), (src >= 0).to(torch.int64)


class DraftTreeProposer:
    """A draft model's tree: ``depth`` levels, ``branching`` children per expanded node (see the module doc).

    The draft's cache holds every emitted token but the ones emitted by the last step (the backlog, read at
    the start of the next step in one forward); a step's tree columns are cropped again after the expansion.
    """

    def __init__(self, draft, input_ids: Tensor, attention_mask: Tensor, depth: int, branching: int,
                 max_nodes: int, mode: str, probs: Callable[[Tensor], Tensor], do_sample: bool, seeds: Tensor):
        self.session = Session(draft)
        if input_ids.shape[1] > 1:
            self.session(input_ids[:, :-1], attention_mask[:, :-1])
        self.backlog, self.backlog_valid = input_ids[:, -1:], torch.ones_like(input_ids[:, -1:])
        self.depth, self.branching, self.max_nodes, self.mode = depth, branching, max_nodes, mode
        self.probs, self.do_sample, self.seeds = probs, do_sample, seeds
        self.forwards = 0

    def _scores(self, logits: Tensor) -> tuple[Tensor, Tensor | None]:
        """(log q for ranking, q for sampling/verification or None in greedy mode)."""
        if not self.do_sample:
            return torch.log_softmax(logits, -1), None
        q = self.probs(logits)
        return q.log(), q

    def _children(self, logq: Tensor, q: Tensor | None, base: Tensor, offset: Tensor, first: int):
        """Children of the expanded nodes: logq [B, F, V] -> (tokens, local parent f, log q of the child)
        each [B, F * branching] (topk), or [B, branching] of the best node (sample, F == 1)."""
        b, (batch, fan, vocab) = self.branching, logq.shape
        if self.mode == "topk":
            vals, ids = logq.topk(b, dim=-1)
            local = torch.arange(fan, device=logq.device).repeat_interleave(b)
            return ids.reshape(batch, -1), local.expand(batch, -1), (base[:, :, None] + vals).reshape(batch, -1)
        rows = q[:, 0].repeat_interleave(b, 0)
        draws = offset[:, None] + first + torch.arange(b, device=q.device)
        ids = sampling_from_probs(rows, seed=self.seeds.repeat_interleave(b), offset=draws.reshape(-1)).view(batch, b)
        return ids, torch.zeros_like(ids), base + logq[:, 0].gather(1, ids.clamp(min=0))

    def propose(self, offset: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        s, b = self.session, self.branching
        root_logits = s(self.backlog, self.backlog_valid)[:, -1]
        self.forwards += 1
        fixed, batch = s.length, root_logits.shape[0]
        root_pos = s.mask.sum(1, keepdim=True) - 1
        logq, q = self._scores(root_logits[:, None])
        zero = torch.zeros(batch, 1, device=logq.device)
        tok, _, score = self._children(logq, q, zero, offset, 0)
        par = torch.full_like(tok, -1)
        sampled = self.mode == "sample"
        qrows = q.expand(-1, tok.shape[1], -1) if sampled else None
        self._fed, last = None, tok.shape[1]  # the last level's nodes are tok[:, -last:]
        for depth in range(2, self.depth + 1):
            lo = tok.shape[1] - last
            expand = lo + (score[:, lo:].topk(b if self.mode == "topk" else 1, dim=1).indices)
            logits = self._expand(tok, par, expand, fixed, root_pos + depth - 1)
            logq, q = self._scores(logits)
            new_tok, new_local, new_score = self._children(logq, q, score.gather(1, expand), offset, tok.shape[1])
            last = new_tok.shape[1]
            tok, score = torch.cat([tok, new_tok], 1), torch.cat([score, new_score], 1)
            par = torch.cat([par, expand.gather(1, new_local)], 1)
            if sampled:
                qrows = torch.cat([qrows, q.gather(1, new_local[:, :, None].expand(-1, -1, q.shape[2]))], 1)
        s.crop(fixed)
        if not sampled and tok.shape[1] > self.max_nodes:
            return (*self._best(tok, par, score), None)
        return tok, par, qrows

    def _expand(self, tok: Tensor, par: Tensor, expand: Tensor, fixed: int, positions: Tensor) -> Tensor:
        """One draft forward over the nodes ``expand`` [B, F]; they see the cache up to ``fixed``, and of this
        step's tree columns only their ancestors. Returns their logits [B, F, V]."""
        s = self.session
        anc = _node_ancestors(par)
        fed = expand if self._fed is None or self._fed.shape[1] == 0 else torch.cat([self._fed, expand], 1)
        seen = anc.gather(1, expand[:, :, None].expand(-1, -1, anc.shape[2])).gather(
            2, fed[:, None, :].expand(-1, expand.shape[1], -1))
        width = expand.shape[1]
        cache_allowed = torch.cat([s.mask[:, None, :fixed].bool().expand(-1, width, -1), seen[:, :, :-width]], 2)
        logits = tree_call(s, tok.gather(1, expand), seen[:, :, -width:], positions.expand(-1, width),
                           torch.ones_like(expand), cache_allowed=cache_allowed)
        self._fed = fed
        self.forwards += 1
        return logits

    def _best(self, tok: Tensor, par: Tensor, score: Tensor) -> tuple[Tensor, Tensor]:
        """The max_nodes best nodes by cumulative log-prob (a node never scores above its parent, and a stable
        sort puts the parent first on ties, so the kept set contains every kept node's ancestors), renumbered
        in their original order so that parent < child still holds."""
        order = torch.sort(-score, dim=1, stable=True).indices[:, :self.max_nodes]
        keep = order.sort(dim=1).values
        new_index = torch.full_like(tok, -1).scatter_(1, keep, torch.arange(keep.shape[1], device=tok.device)
                                                      .expand(tok.shape[0], -1))
        kept_par = par.gather(1, keep)
        return tok.gather(1, keep), torch.where(kept_par < 0, -1, new_index.gather(1, kept_par.clamp(min=0)))

    def advance(self, tokens: Tensor, emitted: Tensor) -> None:
        self.backlog, self.backlog_valid = right_align(tokens, emitted + 1)


def _node_ancestors(par: Tensor) -> Tensor:
    """bool [B, M, M]: (i, j) True when node j is node i or an ancestor of node i (the root excluded)."""
    batch, nodes = par.shape
    anc = torch.eye(nodes, dtype=torch.bool, device=par.device).repeat(batch, 1, 1)
    rows = torch.arange(batch, device=par.device)
    for i in range(nodes):
        has = par[:, i] >= 0
        anc[:, i] |= anc[rows, par[:, i].clamp(min=0)] & has[:, None]
    return anc
