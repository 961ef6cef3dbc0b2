"""chain_speculative_sampling on every backend: exact agreement with tests/oracle.py, the distribution of the
emitted tokens (chi-square with fixed seeds), the acceptance rule's edge cases and argument checking."""
import numpy as np
import pytest
import torch
from conftest import assert_rare, chi_square_pvalue, np64, sizes

import fastsample
import oracle

ALPHA = 1e-3  # chi-square significance; every seed is fixed, so a pass or a failure is reproducible


def _distributions(gen: torch.Generator, batch: int, rows: int, vocab: int, scale: float = 2.0) -> torch.Tensor:
    """float32 [batch, rows, vocab] probability rows, from softmax of scaled Gaussian logits."""
    logits = torch.randn(batch, rows, vocab, generator=gen) * scale
    return torch.softmax(logits, dim=-1)


def _draft_from(q: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """int64 [B, n] draft ids, each drawn from its own row of q [B, n, V] (as a real draft model does)."""
    batch, n, vocab = q.shape
    if n == 0:
        return torch.zeros(batch, 0, dtype=torch.int64)
    return torch.multinomial(q.reshape(batch * n, vocab), 1, generator=gen).reshape(batch, n)


def _run(backend, q, ids, p, seed, offset=None):
    return fastsample.chain_speculative_sampling(q, ids, p, seed=seed, offset=offset, backend=backend)


def _check_layout(out, accepted, emitted, ids, vocab):
    """Invariants of every result: prefix = draft ids, a valid final token, -1 padding after it."""
    batch, n = ids.shape
    assert out.dtype == accepted.dtype == emitted.dtype == torch.int64
    assert out.shape == (batch, n + 1) and accepted.shape == emitted.shape == (batch,)
    assert ((0 <= emitted) & (emitted <= n) & (emitted <= accepted) & (accepted <= n)).all()
    position = torch.arange(n + 1).unsqueeze(0)
    before = position < emitted.unsqueeze(1)
    assert torch.equal(out[:, :n][before[:, :n]], ids[before[:, :n]])
    final = out.gather(1, emitted.unsqueeze(1)).squeeze(1)
    assert ((final >= -1) & (final < vocab)).all()
    assert (out[position > emitted.unsqueeze(1)] == -1).all()


# ------------------------------------------------------------------------------------------ vs the oracle
def _inputs(gen: torch.Generator, batch: int, n: int, vocab: int, scale: float):
    """(q, ids, p): draft ids drawn from q, and a target close to the draft (plus one extra row for the bonus
    position), so that rows both accept and reject, at varied positions."""
    q = _distributions(gen, batch, n, vocab, scale)
    q_ext = torch.cat([q, _distributions(gen, batch, 1, vocab, scale)], dim=1)
    mixed = 0.3 * torch.log(_distributions(gen, batch, n + 1, vocab, scale)) + 0.7 * torch.log(q_ext)
    return q, _draft_from(q, gen), torch.softmax(mixed, dim=-1)


@pytest.mark.parametrize("kind", ["flat", "peaked"])
def test_matches_oracle(backend, kind):
    """Every row equals the oracle, except rows the oracle flags as within rounding of a decision (an
    acceptance test u * q ~ p, or the final draw near a CDF step); those may differ, but only rarely."""
    flips = rows_total = 0
    for vocab in sizes(backend).vocabs:
        batch = sizes(backend).rows(vocab)
        for n in (0, 1, 4):
            what = f"{backend} {kind} V={vocab} n={n}"
            gen = torch.Generator().manual_seed(1000 * n + vocab)
            q, ids, p = _inputs(gen, batch, n, vocab, 1.0 if kind == "flat" else 5.0)
            seed = torch.randint(0, 2**63 - 1, (batch,), generator=gen)
            offset = torch.randint(-2**40, 2**40, (batch,), generator=gen)
            out, accepted, emitted = _run(backend, q, ids, p, seed, offset)
            _check_layout(out, accepted, emitted, ids, vocab)

            want_out, want_acc, want_emit, ambiguous = oracle.chain_speculative_sampling(
                np64(q), np64(ids), np64(p), np64(seed), np64(offset))
            differs = ((out.numpy() != want_out).any(axis=1) | (accepted.numpy() != want_acc)
                       | (emitted.numpy() != want_emit))
            bad = np.flatnonzero(differs & ~ambiguous)
            assert bad.size == 0, (f"{what}: rows {bad[:5].tolist()} differ from the oracle: got "
                                   f"{out.numpy()[bad[:5]].tolist()}, want {want_out[bad[:5]].tolist()}")
            flips += int(differs.sum())
            rows_total += batch
    assert_rare(flips, rows_total, f"{backend} {kind}")


def test_seed_as_int_is_reproducible_and_rows_differ(backend):
    gen = torch.Generator().manual_seed(3)
    batch, n, vocab = 32, 3, 50
    q = _distributions(gen, 1, n, vocab, scale=0.5).expand(batch, n, vocab).contiguous()
    p = _distributions(gen, 1, n + 1, vocab, scale=0.5).expand(batch, n + 1, vocab).contiguous()
    ids = _draft_from(q, gen)
    first = _run(backend, q, ids, p, seed=123)
    for a, b in zip(first, _run(backend, q, ids, p, seed=123)):
        assert torch.equal(a, b)
    # An int seed gives row b offset b, so identical rows still draw different uniforms.
    assert len(set(first[0][:, -1].tolist() + first[0][:, 0].tolist())) > 1


def test_per_row_seeds_are_batch_invariant(backend):
    gen = torch.Generator().manual_seed(4)
    batch, n, vocab = 12, 4, 40
    q = _distributions(gen, batch, n, vocab)
    p = _distributions(gen, batch, n + 1, vocab)
    ids = _draft_from(q, gen)
    seed = torch.randint(0, 2**62, (batch,), generator=gen)
    whole = _run(backend, q, ids, p, seed)
    for row in (0, 5, 11):
        alone = _run(backend, q[row:row + 1], ids[row:row + 1], p[row:row + 1], seed[row:row + 1])
        for a, b in zip(whole, alone):
            assert torch.equal(a[row:row + 1], b)


# ------------------------------------------------------------------------------------------ distributions
@pytest.mark.parametrize("case", range(3))
def test_emitted_tokens_follow_the_target(backend, case):
    """Speculative sampling is exact: whatever the draft q, the token at each emitted position i follows the
    target's p_i (over rows that emit position i), including the residual and bonus tokens."""
    gen = torch.Generator().manual_seed(77 + case)
    batch, n, vocab = sizes(backend).draws // 2, 2, 8
    q = _distributions(gen, 1, n, vocab, scale=1.5).expand(batch, n, vocab).contiguous()
    # Half draft, half something else: the overlap sum_x min(p, q) is >= 1/2, so later positions are reached.
    p = _distributions(gen, 1, n + 1, vocab, scale=1.5)
    p[:, :n] = 0.5 * (p[:, :n] + q[:1])
    if case == 2:
        p[0, 0, 3] = 0.0  # a target zero: that token must never be emitted at position 0
        p[0, 0] /= p[0, 0].sum()
    p = p.expand(batch, n + 1, vocab).contiguous()
    ids = _draft_from(q, gen)
    out, accepted, emitted = _run(backend, q, ids, p, seed=9000 + case, offset=case * batch)
    _check_layout(out, accepted, emitted, ids, vocab)
    for i in range(n + 1):
        reached = emitted >= i
        assert reached.sum() >= batch // 10
        pvalue = chi_square_pvalue(out[reached, i], np64(p[0, i]))
        assert pvalue > ALPHA, f"position {i}: chi-square p-value {pvalue:.2e}"


def test_bonus_token_follows_last_target_after_full_acceptance(backend):
    gen = torch.Generator().manual_seed(5)
    batch, n, vocab = sizes(backend).draws // 2, 3, 12
    p = _distributions(gen, 1, n + 1, vocab, scale=1.0).expand(batch, n + 1, vocab).contiguous()
    q = p[:, :n].contiguous()  # q == p: every draft token is accepted
    ids = _draft_from(q, gen)
    out, accepted, emitted = _run(backend, q, ids, p, seed=31)
    assert (emitted == n).all() and (accepted == n).all()
    assert torch.equal(out[:, :n], ids)
    pvalue = chi_square_pvalue(out[:, n], np64(p[0, n]))
    assert pvalue > ALPHA, f"bonus token: chi-square p-value {pvalue:.2e}"


def test_acceptance_rate_matches_theory(backend):
    """P(accept position i) = sum_x min(p_i(x), q_i(x)) when x ~ q_i."""
    gen = torch.Generator().manual_seed(6)
    batch, n, vocab = sizes(backend).draws // 2, 2, 10
    q = _distributions(gen, 1, n, vocab).expand(batch, n, vocab).contiguous()
    p = _distributions(gen, 1, n + 1, vocab).expand(batch, n + 1, vocab).contiguous()
    ids = _draft_from(q, gen)
    _, accepted, _ = _run(backend, q, ids, p, seed=2024)
    rate = torch.minimum(p[0, :n], q[0]).double().sum(dim=-1)  # [n]
    expected = (rate.sum() * batch).item()
    var = (rate * (1 - rate)).sum().item() * batch
    assert abs(accepted.sum().item() - expected) < 4 * var**0.5


# ------------------------------------------------------------------------------------------ edge cases
def _single_row(q_rows, p_rows, ids_row):
    q = torch.tensor([q_rows], dtype=torch.float32)
    p = torch.tensor([p_rows], dtype=torch.float32)
    return q, torch.tensor([ids_row], dtype=torch.int64), p


def test_target_zero_rejects_and_draft_zero_accepts(backend):
    """u * q(x) < p(x): p(x) = 0 always rejects; q(x) = 0 < p(x) always accepts; p = q = 0 rejects."""
    q, ids, p = _single_row([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.0, 0.5, 0.5]],
                            [[0.0, 0.5, 0.5], [0.2, 0.4, 0.4], [0.0, 0.5, 0.5], [0.1, 0.2, 0.7]],
                            [0, 0, 0])
    for seed in range(50):
        out, accepted, emitted = _run(backend, q, ids, p, seed=seed)
        assert emitted.tolist() == [0] and accepted.tolist() == [1]  # position 1 passes alone
        # Residual max(0, p_0 - q_0) = [0, 0, 0.5]: the final token is 2.
        assert out.tolist() == [[2, -1, -1, -1]]


def test_target_at_least_draft_always_accepts(backend):
    gen = torch.Generator().manual_seed(8)
    batch, n, vocab = 200, 5, 20
    q = _distributions(gen, batch, n, vocab)
    p = torch.cat([q * 1.5, _distributions(gen, batch, 1, vocab)], dim=1)  # need not sum to 1
    ids = _draft_from(q, gen)
    out, accepted, emitted = _run(backend, q, ids, p, seed=17)
    assert (accepted == n).all() and (emitted == n).all()
    _check_layout(out, accepted, emitted, ids, vocab)
    assert (out[:, n] >= 0).all()


def test_accepted_num_counts_positions_independently(backend):
    vocab, n = 4, 5
    # Position 1 has p(x) = 0 (fails); every other position has p == q > 0 (passes).
    q = torch.full((1, n, vocab), 0.25)
    p = torch.full((1, n + 1, vocab), 0.25)
    p[0, 1] = torch.tensor([0.0, 1 / 3, 1 / 3, 1 / 3])
    ids = torch.tensor([[1, 0, 2, 3, 1]])
    out, accepted, emitted = _run(backend, q, ids, p, seed=5)
    assert emitted.tolist() == [1] and accepted.tolist() == [n - 1]
    assert out[0, 0].item() == 1 and out[0, 1].item() in (1, 2, 3) and (out[0, 2:] == -1).all()


@pytest.mark.parametrize("bad_id", [-1, -7, 4, 1000])
def test_out_of_range_draft_id_is_rejected(backend, bad_id):
    vocab, n = 4, 3
    q = torch.full((2, n, vocab), 0.25)
    p = torch.full((2, n + 1, vocab), 0.25)
    ids = torch.tensor([[0, bad_id, 2], [bad_id, 1, 2]])
    out, accepted, emitted = _run(backend, q, ids, p, seed=torch.tensor([1, 2]))
    assert emitted.tolist() == [1, 0] and accepted.tolist() == [n - 1, n - 1]
    # p == q at the failing position: the residual is 0, so the final token comes from p there.
    assert ((out[:, :1] >= 0) & (out[:, :1] < vocab)).all()
    assert out[0, 0].item() == 0 and 0 <= out[0, 1].item() < vocab
    assert (out[0, 2:] == -1).all() and (out[1, 1:] == -1).all()


def test_int32_draft_ids_match_int64(backend):
    gen = torch.Generator().manual_seed(10)
    q = _distributions(gen, 8, 3, 30)
    p = _distributions(gen, 8, 4, 30)
    ids = _draft_from(q, gen)
    for a, b in zip(_run(backend, q, ids, p, seed=4), _run(backend, q, ids.to(torch.int32), p, seed=4)):
        assert torch.equal(a, b)


def test_invalid_final_weights_give_minus_one(backend):
    vocab, n = 3, 2
    q = torch.full((3, n, vocab), 1 / 3)
    p = torch.full((3, n + 1, vocab), 1 / 3)
    p[0, n] = 0.0  # all accepted, bonus distribution all zero
    p[1, n, 1] = float("nan")  # all accepted, bonus distribution with a NaN
    p[2, 0] = torch.tensor([0.0, float("nan"), 0.5])  # position 0 fails (p(x) = 0), residual has a NaN
    ids = torch.tensor([[0, 1], [0, 1], [0, 1]])
    out, accepted, emitted = _run(backend, q, ids, p, seed=torch.tensor([1, 2, 3]))
    assert emitted.tolist() == [2, 2, 0]
    assert out.tolist() == [[0, 1, -1], [0, 1, -1], [-1, -1, -1]]


def test_nan_draft_probability_fails_the_test(backend):
    q = torch.full((1, 2, 3), 1 / 3)
    q[0, 0, 2] = float("nan")
    p = torch.full((1, 3, 3), 1 / 3)
    ids = torch.tensor([[2, 0]])
    out, accepted, emitted = _run(backend, q, ids, p, seed=0)
    assert emitted.tolist() == [0] and accepted.tolist() == [1]
    assert out[0, 0].item() == -1  # the residual max(0, p - q) holds the NaN: no valid token


def test_empty_batch(backend):
    q = torch.empty(0, 3, 7)
    out, accepted, emitted = _run(backend, q, torch.empty(0, 3, dtype=torch.int64), torch.empty(0, 4, 7), seed=1)
    assert out.shape == (0, 4) and accepted.shape == emitted.shape == (0,)
    assert out.dtype == accepted.dtype == emitted.dtype == torch.int64


# ------------------------------------------------------------------------------------------ argument checks
def _good():
    return torch.full((2, 3, 5), 0.2), torch.zeros(2, 3, dtype=torch.int64), torch.full((2, 4, 5), 0.2)


@pytest.mark.parametrize("arg,bad,error", [
    ("draft_probs", torch.full((2, 5), 0.2), ValueError),
    ("draft_probs", torch.full((2, 3, 5), 0.2, dtype=torch.float64), TypeError),
    ("draft_probs", torch.full((2, 3, 5), 1, dtype=torch.int32), TypeError),
    ("draft_probs", [[[0.2] * 5] * 3] * 2, TypeError),
    ("draft_token_ids", torch.zeros(2, 4, dtype=torch.int64), ValueError),
    ("draft_token_ids", torch.zeros(3, 3, dtype=torch.int64), ValueError),
    ("draft_token_ids", torch.zeros(2, 3, 1, dtype=torch.int64), ValueError),
    ("draft_token_ids", torch.zeros(2, 3), TypeError),
    ("draft_token_ids", torch.zeros(2, 3, dtype=torch.bool), TypeError),
    ("target_probs", torch.full((2, 3, 5), 0.2), ValueError),
    ("target_probs", torch.full((2, 4, 6), 0.2), ValueError),
    ("target_probs", torch.full((1, 4, 5), 0.2), ValueError),
    ("target_probs", torch.full((2, 4, 5), 0.2, dtype=torch.float64), TypeError),
])
def test_bad_arguments_raise_naming_the_argument(backend, arg, bad, error):
    q, ids, p = _good()
    args = {"draft_probs": q, "draft_token_ids": ids, "target_probs": p}
    args[arg] = bad
    with pytest.raises(error, match=arg):
        fastsample.chain_speculative_sampling(**args, seed=0, backend=backend)


def test_empty_vocabulary_raises(backend):
    with pytest.raises(ValueError, match="draft_probs"):
        fastsample.chain_speculative_sampling(torch.empty(2, 3, 0), torch.zeros(2, 3, dtype=torch.int64),
                                              torch.empty(2, 4, 0), seed=0, backend=backend)


@pytest.mark.parametrize("arg,bad,error", [
    ("seed", torch.zeros(3, dtype=torch.int64), ValueError),
    ("seed", torch.zeros(2), TypeError),
    ("seed", 1.5, TypeError),
    ("offset", torch.zeros(2, 1, dtype=torch.int64), ValueError),
    ("offset", "0", TypeError),
])
def test_bad_seed_or_offset_raises(backend, arg, bad, error):
    q, ids, p = _good()
    kwargs = {"seed": 0, arg: bad}
    with pytest.raises(error, match=arg):
        fastsample.chain_speculative_sampling(q, ids, p, **kwargs, backend=backend)


def test_negative_entries_in_the_sampled_rows_give_minus_one(backend):
    """A negative entry in p_e or q_e is invalid input even where max(0, p - q) would look like a
    distribution (docs/ops.md): the final token is -1 on every backend, as in the oracle."""
    q = torch.tensor([[[-0.5, 0.0]], [[0.5, 0.5]]])
    p = torch.tensor([[[-0.5, 1.0], [0.2, 0.8]], [[-0.1, 1.1], [0.5, 0.5]]])
    ids = torch.tensor([[-1], [0]])
    out, _, emitted = _run(backend, q, ids, p, seed=torch.tensor([1, 2]))
    expected = oracle.chain_speculative_sampling(q.numpy(), ids.numpy(), p.numpy(), np.array([1, 2]),
                                                 np.array([0, 0]))
    assert emitted.tolist() == [0, 0] == expected[2].tolist()
    assert out.tolist() == [[-1, -1], [-1, -1]] == expected[0].tolist()
