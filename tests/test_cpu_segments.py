"""The CPU kernels split a row across threads when the batch is smaller than the thread count and the
vocabulary is large (csrc/cpu/row_plan.h). That path must give exactly what the whole-row path gives: the
same row, sampled alone (split) and inside a batch of rows (not split), with per-row seeds."""
import pytest
import torch

import fastsample

pytestmark = pytest.mark.skipif(torch.get_num_threads() < 2, reason="the split-row path needs >= 2 threads")

VOCAB = 131072
CASES = {
    "full": dict(temperature=1.0),
    "top_k_top_p": dict(temperature=0.8, top_k=50, top_p=0.9),
    "top_p": dict(temperature=0.8, top_p=0.9),
    "top_p_min_p": dict(temperature=1.3, top_p=0.95, min_p=0.05),
    "min_p": dict(temperature=0.7, min_p=0.1),
    "greedy": dict(temperature=0.0),
}


def _rows(batch):
    gen = torch.Generator().manual_seed(7)
    flat = torch.randn(batch // 2, VOCAB, generator=gen)
    peaked = torch.randn(batch - batch // 2, VOCAB, generator=gen) * 4
    return torch.cat([flat, peaked])


@pytest.mark.parametrize("case", sorted(CASES))
def test_split_row_equals_whole_row(case):
    params = CASES[case]
    logits = _rows(4)
    seeds = torch.arange(100, 104, dtype=torch.int64)
    batched, batched_lp = fastsample.sample(logits, **params, seed=seeds, return_logprobs=True, backend="cpu")
    for b in range(logits.shape[0]):
        alone, alone_lp = fastsample.sample(logits[b:b + 1], **params, seed=seeds[b:b + 1], return_logprobs=True,
                                            backend="cpu")
        assert alone.item() == batched[b].item(), f"row {b}"
        torch.testing.assert_close(alone_lp[0], batched_lp[b], rtol=1e-5, atol=1e-6)


def test_split_row_renorm_softmax_topk():
    logits = _rows(2)
    probs = torch.softmax(logits, -1)
    for op in (lambda x: fastsample.top_p_renorm_probs(x, 0.9, backend="cpu"),
               lambda x: fastsample.min_p_renorm_probs(x, 0.05, backend="cpu"),
               lambda x: fastsample.top_k_renorm_probs(x, 20, backend="cpu")):
        whole = op(probs)
        for b in range(2):
            torch.testing.assert_close(op(probs[b:b + 1])[0], whole[b], rtol=1e-6, atol=1e-9)
    whole = fastsample.softmax(logits, 0.7, backend="cpu")
    values, indices = fastsample.top_k(logits, 64, backend="cpu")
    lse = torch.ops.fastsample.logsumexp(logits)
    for b in range(2):
        torch.testing.assert_close(fastsample.softmax(logits[b:b + 1], 0.7, backend="cpu")[0], whole[b])
        v, i = fastsample.top_k(logits[b:b + 1], 64, backend="cpu")
        assert torch.equal(i[0], indices[b]) and torch.equal(v[0], values[b])
        torch.testing.assert_close(torch.ops.fastsample.logsumexp(logits[b:b + 1])[0], lse[b])
    torch.testing.assert_close(lse, torch.logsumexp(logits.double(), -1).float())


def test_leading_masked_blocks():
    """Rows whose first blocks are all -inf (logits already masked) weigh those tokens 0, on every path."""
    logits = _rows(2)
    masked = fastsample.top_k_mask_logits(logits, 300, backend="cpu")
    masked[:, :5000] = float("-inf")
    seeds = torch.tensor([3, 4])
    for params in ({}, dict(top_p=0.9), dict(min_p=0.2), dict(top_p=0.8, min_p=0.01)):
        ours = fastsample.sample(masked, **params, seed=seeds, backend="cpu")
        ref = fastsample.sample(masked, **params, seed=seeds, backend="torch")
        assert torch.equal(ours, ref), params
        assert bool((masked.gather(1, ours[:, None]) > float("-inf")).all())
