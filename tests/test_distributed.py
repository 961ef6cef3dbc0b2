"""fastsample.distributed on gloo process groups spawned by the test (CPU): every rank returns the same tokens,
equal to single-device fastsample on the full logits; bad input raises on every rank, without hanging.

One spawn of 4 processes serves every case: sub-groups of 2, 3 and 4 ranks, each with an uneven split of the
vocabulary, run the same cases (so results are also compared across splits), then the world group runs the
bad-input cases. The workers rebuild each case's full logits from its seed and keep only their slice; the
parent compares what they saved with `fastsample.sample` and the float64 oracle.
"""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import assert_rare, check_tokens, f32, make_logits, np64, oracle_seed_offset

import fastsample
import fastsample.distributed as fsd
import oracle

WORLD = 4
GROUP_SIZES = (2, 3, 4)
TIMEOUT_S = 240  # group timeout: a hang fails the test instead of blocking CI
LOGPROB_TOL = (2e-5, 1e-5)  # as tests/test_sampling.py


# ------------------------------------------------------------------------------------------------ cases
@dataclass(frozen=True)
class Case:
    """One collective call: logits rebuilt from (batch, vocab, seed), the function and its keyword arguments."""

    name: str
    fn: str  # "sample", "sampling_from_logits", "greedy" or "top_k"
    batch: int
    vocab: int
    data_seed: int
    kwargs: dict = field(default_factory=dict, hash=False)
    worlds: tuple = GROUP_SIZES
    edit: str = ""  # a named edit of the logits (edge rows)


def split(vocab: int, world: int) -> list[int]:
    """Uneven contiguous slice sizes (rank r gets a share proportional to r + 2), each at least 1."""
    weights = [r + 2 for r in range(world)]
    sizes = [max(1, vocab * w // sum(weights)) for w in weights]
    sizes[-1] = vocab - sum(sizes[:-1])
    return sizes


def logits_of(case: Case) -> torch.Tensor:
    half = case.batch // 2  # flat rows, then peaked rows
    x = torch.cat([make_logits(half, case.vocab, "flat", case.data_seed),
                   make_logits(case.batch - half, case.vocab, "peaked", case.data_seed + 1)])
    if case.edit == "edge":
        x[0, 3] = math.nan                            # NaN -> -1
        x[1] = -math.inf                              # all -inf -> -1
        x[2, [5, case.vocab // 2, case.vocab - 1]] = math.inf  # +inf tokens share the mass (on several ranks)
        x[3, : case.vocab - 2] = -math.inf            # only the last rank has finite logits
        x[4, [1, case.vocab - 3]] = x[4].max() + 1    # tied maxima on the first and last rank
        x[5] = 2.0                                    # every token tied
    elif case.edit == "ties":
        x = torch.randint(-3, 3, x.shape, generator=torch.Generator().manual_seed(case.data_seed)).float()
        x[0, -1] = math.nan
        x[1, ::2] = math.nan
    return x


def _row_params(batch: int, vocab: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    temps = torch.rand(batch, generator=gen) * 1.5 + 0.1
    temps[::3] = 0.0  # greedy rows mixed with sampled ones
    return {"temperature": temps, "top_k": torch.randint(-1, min(vocab, 100) + 1, (batch,), generator=gen),
            "top_p": torch.rand(batch, generator=gen) * 0.6 + 0.4, "min_p": torch.rand(batch, generator=gen) * 0.2}


def _filter_grid(vocab: int) -> list[dict]:
    """Every combination of top-k / top-p / min-p on and off, T = 0, per-row tensors, p = 0."""
    grid = []
    for k in (0, 20):
        for p in (1.0, 0.9):
            for mp_ in (0.0, 0.05):
                grid.append({"temperature": 0.8, "top_k": k, "top_p": p, "min_p": mp_})
    grid.append({"temperature": 0.0, "top_k": 20, "top_p": 0.9, "min_p": 0.05})
    grid.append({"temperature": 1.3, "top_p": 0.0})
    grid.append({"temperature": 1.0, "top_k": vocab, "top_p": 0.5})
    grid.append({"temperature": 30.0, "top_p": 0.99999, "min_p": 0.999})  # the lightest bins; min-p near 1
    return grid


def build_cases() -> list[Case]:
    cases = []
    for vocab, batch in ((1000, 24), (32000, 8)):
        for i, kw in enumerate(_filter_grid(vocab)):
            cases.append(Case(f"grid{i}-V{vocab}", "sample", batch, vocab, vocab + i,
                              dict(kw, seed=vocab + i, offset=3, return_logprobs=True)))
        cases.append(Case(f"rows-V{vocab}", "sample", batch, vocab, vocab + 50,
                          dict(_row_params(batch, vocab, vocab), seed=9, return_logprobs=True)))
    big = 128256
    for i, kw in enumerate([{}, {"temperature": 0.7, "top_k": 50, "top_p": 0.9, "min_p": 0.02},
                            {"temperature": 1.1, "top_p": 0.95}, _row_params(4, big, 7)]):
        cases.append(Case(f"big{i}", "sample", 4, big, 500 + i, dict(kw, seed=123, return_logprobs=True),
                          worlds=(4,)))
    edge_t = torch.tensor([1.0, 1.0, 0.5, 1.0, 0.0, 0.7, -1.0, math.nan, 1.0, 1.0])
    edge_p = torch.tensor([1.0, 1.0, 1.0, 0.9, 1.0, 0.5, 1.0, 1.0, 1.5, 0.0])
    cases += [
        Case("edge", "sample", 10, 40, 60, {"temperature": edge_t, "top_k": 3, "top_p": edge_p, "seed": 5,
                                            "return_logprobs": True}, edit="edge"),
        Case("vocab7", "sample", 6, 7, 61, {"temperature": 0.9, "top_k": 2, "top_p": 0.8, "seed": 1}),
        Case("empty", "sample", 0, 50, 62, {"seed": 1}),
        Case("from_logits", "sampling_from_logits", 16, 1000, 63, {"seed": 2**40 + 7, "offset": 11}),
        Case("generator", "sampling_from_logits", 8, 1000, 64, {}),
        Case("seed_rows", "sample", 8, 1000, 65, {"top_p": 0.9, "seed": torch.arange(8) * 7919,
                                                  "offset": torch.arange(8) + 100}),
        Case("greedy", "greedy", 12, 1000, 66, edit="ties"),
        Case("greedy-edge", "greedy", 10, 40, 67, edit="edge"),
        Case("top_k", "top_k", 12, 1000, 68, {"k": 50}, edit="ties"),
        Case("top_k-all", "top_k", 6, 40, 69, {"k": 40}, edit="edge"),
        Case("top_k-flat", "top_k", 6, 32000, 70, {"k": 300}),
    ]
    # sample_stack: mask words and ids in global ids (kwargs built by stack_kwargs from the case's seed).
    cases += [
        Case("stack-processed", "sample_stack", 12, 1000, 80, {"logprobs": "processed", "top_logprobs": 5}),
        Case("stack-raw", "sample_stack", 12, 1000, 81, {"logprobs": "raw", "top_logprobs": 3, "top_k": 20}),
        Case("stack-plain", "sample_stack", 4, 32000, 82, {"top_k": 0, "top_p": 0.95}),
        Case("stack-edge", "sample_stack", 10, 40, 83, {"logprobs": "processed", "top_logprobs": 4, "top_k": 3,
                                                        "num_samples": 1}, edit="edge"),
    ]
    return cases


def stack_kwargs(case: Case) -> dict:
    """The full arguments of a sample_stack case: a grammar mask, bias, histories and per-row parameters,
    rebuilt from the case's seed (the same on every rank and in the parent)."""
    batch, vocab = case.batch, case.vocab
    gen = torch.Generator().manual_seed(case.data_seed)
    words = (vocab + 31) // 32
    mask = torch.randint(-2**31, 2**31 - 1, (batch, words), generator=gen, dtype=torch.int64).to(torch.int32)
    mask[0] = -1  # everything allowed
    mask[1, :] = 0
    mask[1, words // 2] = 1 << 3  # one token allowed
    temperature = torch.rand(batch, generator=gen) + 0.3
    temperature[2] = 0.0
    kwargs = {
        "allowed_mask": mask,
        "bias_ids": torch.randint(-1, vocab, (batch, 6), generator=gen),
        "bias_values": torch.randn(batch, 6, generator=gen) * 3,
        "prompt_ids": torch.randint(-1, vocab, (batch, 8), generator=gen),
        "output_ids": torch.randint(-1, vocab, (batch, 12), generator=gen),
        "repetition_penalty": 1.2, "frequency_penalty": torch.rand(batch, generator=gen) * 0.5,
        "presence_penalty": 0.3, "temperature": temperature,
        "top_k": torch.randint(0, min(vocab, 60), (batch,), generator=gen), "top_p": 0.9, "min_p": 0.03,
        "seed": case.data_seed,
    }
    kwargs["output_ids"][3, 0] = vocab  # an id out of range: row 3 is invalid
    if case.edit == "edge":
        kwargs.pop("allowed_mask")
        kwargs["temperature"] = 0.9
    kwargs.update(case.kwargs)
    return kwargs


CASES = build_cases()


def _call(case: Case, x: torch.Tensor, group, rank: int):
    kwargs = stack_kwargs(case) if case.fn == "sample_stack" else dict(case.kwargs)
    if case.name == "generator":  # each rank draws its own seed; all use rank 0's
        kwargs["generator"] = torch.Generator().manual_seed(100 + rank)
    out = getattr(fsd, case.fn)(x, **kwargs, group=group)
    return tuple(out) if case.fn == "sample_stack" else out  # a plain tuple pickles for torch.load


# ----------------------------------------------------------------------------------------- bad input
def _bad_calls(rank: int):
    """(name, thunk) pairs run by all 4 ranks on the world group; each must raise on every rank."""
    x = make_logits(4, 100, "flat", 7)[:, rank * 25:(rank + 1) * 25]
    rows = torch.full((4,), 0.7)
    if rank == 2:
        rows[1] = 0.71
    return [
        ("batch", lambda: fsd.sample(x[: 3 if rank == 0 else 4], seed=1)),
        ("top_p", lambda: fsd.sample(x, top_p=0.8 if rank == 1 else 0.9, seed=1)),
        ("temperature_rows", lambda: fsd.sample(x, temperature=rows, seed=1)),
        ("bad_top_p", lambda: fsd.sample(x, top_p=1.5 if rank == 3 else 0.9, seed=1)),
        ("dtype", lambda: fsd.sample(x.long() if rank == 1 else x, seed=1)),
        ("seed", lambda: fsd.sample(x, seed=rank)),
        ("function", lambda: fsd.greedy(x) if rank == 0 else fsd.sample(x, seed=1)),
        ("k_too_big", lambda: fsd.top_k(x, 101)),
        ("k_differs", lambda: fsd.top_k(x, 5 + (rank == 3))),
    ]


# ----------------------------------------------------------------------------------------- host reads
_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "cpu", "numpy")
GUARDED = ("grid0-V1000", "grid3-V1000", "grid5-V1000", "grid7-V1000", "rows-V1000", "edge", "vocab7", "seed_rows",
           "greedy", "top_k", "stack-processed", "stack-raw")


@contextlib.contextmanager
def no_host_reads():
    """Every Python-level read of a tensor's value on the host (item, tolist, bool, int, nonzero, cpu, ...)
    raises, except inside `_exchange.host_reads()` (the header, the parameter check, a top_k tensor's max)."""
    from fastsample.distributed import _exchange

    saved = {name: getattr(torch.Tensor, name) for name in _READS}
    saved_nonzero = torch.nonzero

    def guard(name, fn):
        def wrapped(*args, **kwargs):
            if not _exchange.host_reads_allowed():
                raise AssertionError(f"host read inside a fastsample.distributed call: {name}")
            return fn(*args, **kwargs)
        return wrapped

    for name, fn in saved.items():
        setattr(torch.Tensor, name, guard(name, fn))
    torch.nonzero = guard("torch.nonzero", saved_nonzero)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
        torch.nonzero = saved_nonzero


def _count_collectives(group) -> dict:
    """How many collectives `sample` makes for the same arguments on logits that need different work: random
    logits, every token tied (each rank's top-k list cut inside the ties: the counted extra entry and a
    walk), a row of NaN and -inf rows. Keyed by the arguments' name."""
    from fastsample.distributed import _exchange

    rank = dist.get_rank(group)
    made = [0]
    gather, reduce = _exchange.all_gather, _exchange.all_reduce_sum

    def counted(fn):
        def wrapped(*args):
            made[0] += 1
            return fn(*args)
        return wrapped

    _exchange.all_gather, _exchange.all_reduce_sum = counted(gather), counted(reduce)
    try:
        full = make_logits(6, 200, "flat", 5)
        tied = torch.full((6, 200), 1.5)
        odd = full.clone()
        odd[0, 3], odd[1], odd[2, :150] = math.nan, -math.inf, -math.inf
        out = {}
        for label, kwargs in (("top_k", {"top_k": 3, "top_p": 0.8, "min_p": 0.1}), ("top_p", {"top_p": 0.7}),
                              ("full", {}), ("rows", {"top_k": torch.tensor([0, 3, 5, 0, 2, 9])})):
            counts = []
            for x in (full, tied, odd):
                made[0] = 0
                fsd.sample(x[:, rank * 100:(rank + 1) * 100], **kwargs, seed=3, group=group)
                counts.append(made[0])
            out[label] = counts
        return out
    finally:
        _exchange.all_gather, _exchange.all_reduce_sum = gather, reduce


# -------------------------------------------------------------------------------------------- worker
def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=TIMEOUT_S))
    groups = {w: dist.new_group(list(range(w))) for w in GROUP_SIZES}
    results = {}
    for world in GROUP_SIZES:
        if rank >= world:
            continue
        for case in CASES:
            if world not in case.worlds:
                continue
            sizes = split(case.vocab, world)
            start = sum(sizes[:rank])
            x = logits_of(case)[:, start:start + sizes[rank]].contiguous()
            results[(world, case.name)] = _call(case, x, groups[world], rank)
            if world == 2 and case.name in GUARDED:  # again, with every host read outside the contract raising
                try:
                    with no_host_reads():
                        results[("guarded", case.name)] = _call(case, x, groups[world], rank)
                except AssertionError as exc:
                    results[("guarded", case.name)] = str(exc)
    results[("collectives", rank)] = _count_collectives(groups[2]) if rank < 2 else None
    for name, thunk in _bad_calls(rank):
        try:
            results[("bad", name)] = ("no error", thunk())
        except (TypeError, ValueError) as exc:
            results[("bad", name)] = (type(exc).__name__, str(exc))
    # Ranks are still in step after the errors: a valid call goes through.
    x = make_logits(4, 100, "flat", 7)[:, rank * 25:(rank + 1) * 25]
    results[("bad", "after")] = fsd.sample(x, top_p=0.9, seed=1)
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    """Spawn the 4 ranks once; return what each saved."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.start_processes(_worker, args=(init_file, tmp), nprocs=WORLD, join=True, start_method="spawn")
        return [torch.load(Path(tmp) / f"rank{r}.pt") for r in range(WORLD)]


# ------------------------------------------------------------------------------------------ checks
def _results(ranks, world: int, name: str):
    """The result of (world, name), after checking every rank of that group returned exactly the same."""
    got = [ranks[r][(world, name)] for r in range(world)]
    for other in got[1:]:
        for a, b in zip(got[0] if isinstance(got[0], tuple) else (got[0],),
                        other if isinstance(other, tuple) else (other,)):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=f"{name} W={world}: ranks differ")
    return got[0]


def _param(value):
    return np64(value) if isinstance(value, torch.Tensor) else f32(value) if isinstance(value, float) else value


def _oracle_rows(case: Case, x: torch.Tensor):
    kw = case.kwargs
    seed, offset = kw.get("seed", 0), kw.get("offset", 0)
    if isinstance(seed, torch.Tensor):
        seeds, offsets = np64(seed), np64(offset)
    else:
        seeds, offsets = oracle_seed_offset(case.batch, seed, offset)
    return oracle.sample_with_candidates(np64(x), True, _param(kw.get("temperature", 1.0)),
                                         _param(kw.get("top_k", 0)), _param(kw.get("top_p", 1.0)),
                                         _param(kw.get("min_p", 0.0)), seeds, offsets)


def test_sample_equals_single_device(ranks):
    """Every sampling case on every group size: the same tokens on every rank and as `fastsample.sample` on the
    full logits; where they differ, both lie within rounding of a step (the oracle's candidates), and such
    rows are rare. Logprobs agree within float32 tolerance."""
    flips = rows = 0
    for case in CASES:
        if case.fn not in ("sample", "sampling_from_logits"):
            continue
        x = logits_of(case)
        kwargs = dict(case.kwargs)
        if case.name == "generator":
            kwargs["generator"] = torch.Generator().manual_seed(100)  # rank 0's generator
        want = getattr(fastsample, case.fn)(x, **kwargs)
        want_tokens = want[0] if isinstance(want, tuple) else want
        known = case.name != "generator" and case.batch > 0  # the oracle needs the seed and a row
        candidates = _oracle_rows(case, x)[2] if known else None
        for world in case.worlds:
            got = _results(ranks, world, case.name)
            got_tokens = got[0] if isinstance(got, tuple) else got
            assert got_tokens.shape == want_tokens.shape and got_tokens.dtype == torch.int64
            differ = np.flatnonzero(np64(got_tokens) != np64(want_tokens))
            what = f"{case.name} W={world}"
            if differ.size:
                assert candidates is not None, f"{what}: rows {differ.tolist()} differ from one device"
                check_tokens(got_tokens, np64(want_tokens), candidates, what=what)  # both must be candidates
                for b in differ:
                    assert len(candidates[b]) > 1 and int(got_tokens[b]) in candidates[b], what
            flips += differ.size
            rows += case.batch
            if isinstance(got, tuple):
                same = np64(got_tokens) == np64(want_tokens)
                np.testing.assert_allclose(np64(got[1])[same], np64(want[1])[same], *LOGPROB_TOL[::-1],
                                           equal_nan=True, err_msg=f"{what}: logprobs")
    assert rows > 1000
    print(f"distributed vs one device: {flips} of {rows} rows on the other side of a boundary")
    assert_rare(flips, rows, "distributed sample vs one device")


def test_sample_equals_oracle_and_split_invariant(ranks):
    """Tokens equal the float64 oracle's decision on every unambiguous row, and are identical for every group
    size (the split never changes a decision: masses are exact fixed-point sums)."""
    for case in CASES:
        if case.fn != "sample" or case.batch == 0:
            continue
        want, _, candidates = _oracle_rows(case, logits_of(case))
        results = [_results(ranks, w, case.name) for w in case.worlds]
        for world, got in zip(case.worlds, results):
            check_tokens(got[0] if isinstance(got, tuple) else got, want, candidates, what=f"{case.name} W={world}")
        first = results[0][0] if isinstance(results[0], tuple) else results[0]
        for got in results[1:]:
            assert torch.equal(got[0] if isinstance(got, tuple) else got, first), case.name


def test_edge_rows(ranks):
    """NaN, all -inf, +inf tokens spread over ranks, finite logits on one rank only, ties across ranks, invalid
    per-row T and p; V = 7 with one-token slices; B = 0: tokens and logprobs as the float64 oracle's."""
    case = next(c for c in CASES if c.name == "edge")
    x = logits_of(case)
    want, want_lp, candidates = _oracle_rows(case, x)
    assert (want[[0, 1, 6, 7, 8]] == -1).all() and want[4] == 1  # the planted rows are what they claim
    for world in case.worlds:
        tokens, logprobs = _results(ranks, world, "edge")
        assert check_tokens(tokens, want, candidates, what=f"edge W={world}") == 0
        np.testing.assert_allclose(np64(logprobs), want_lp, *LOGPROB_TOL[::-1], equal_nan=True,
                                   err_msg=f"edge W={world}: logprobs")
        assert _results(ranks, world, "empty").shape == (0,)
    vocab7 = next(c for c in CASES if c.name == "vocab7")
    assert split(7, 3)[0] == 1 and split(7, 4)[:2] == [1, 1]  # one-token slices
    want, _, candidates = _oracle_rows(vocab7, logits_of(vocab7))
    for world in GROUP_SIZES:
        assert check_tokens(_results(ranks, world, "vocab7"), want, candidates, what=f"vocab7 W={world}") == 0


def test_greedy(ranks):
    for name in ("greedy", "greedy-edge"):
        case = next(c for c in CASES if c.name == name)
        want = oracle.greedy(np64(logits_of(case)))
        assert (want == -1).any() and (want >= 0).any()
        for world in GROUP_SIZES:
            np.testing.assert_array_equal(np64(_results(ranks, world, name)), want, err_msg=f"{name} W={world}")


def test_top_k(ranks):
    """Values and global indices exactly as the oracle's top-k (ties to the lower id, NaN first)."""
    for name in ("top_k", "top_k-all", "top_k-flat"):
        case = next(c for c in CASES if c.name == name)
        want_values, want_ids = oracle.top_k(np64(logits_of(case)), case.kwargs["k"])
        for world in GROUP_SIZES:
            values, ids = _results(ranks, world, name)
            np.testing.assert_array_equal(np64(values), want_values, err_msg=f"{name} W={world}")
            np.testing.assert_array_equal(np64(ids), want_ids, err_msg=f"{name} W={world}")


@pytest.mark.parametrize("name, message", [
    ("batch", "batch size"), ("top_p", "top_p"), ("temperature_rows", "temperature"), ("seed", "seed"),
    ("function", "function"), ("k_too_big", "k must be in"), ("k_differs", "disagree on k")])
def test_bad_input_raises_on_every_rank(ranks, name, message):
    for r in range(WORLD):
        kind, text = ranks[r][("bad", name)]
        assert kind == "ValueError" and message in text, f"rank {r}: {kind}: {text}"


def test_local_argument_error_reaches_every_rank(ranks):
    """The rank with the bad argument raises its own error; the others a ValueError naming that rank."""
    for name, bad_rank, kind, word in (("bad_top_p", 3, "ValueError", "top_p"), ("dtype", 1, "TypeError",
                                                                               "local_logits")):
        for r in range(WORLD):
            got_kind, text = ranks[r][("bad", name)]
            if r == bad_rank:
                assert got_kind == kind and word in text, text
            else:
                assert got_kind == "ValueError" and f"rank(s) [{bad_rank}]" in text, text
    after = [ranks[r][("bad", "after")] for r in range(WORLD)]
    assert all(torch.equal(a, after[0]) for a in after) and (after[0] >= 0).all()


def test_sample_stack_equals_single_device(ranks):
    """sample_stack on every group size (uneven splits): tokens, ranks and top-N ids equal to
    `fastsample.sample_stack` on the full logits; logprobs within float32 tolerance; every rank the same."""
    for case in CASES:
        if case.fn != "sample_stack":
            continue
        want = fastsample.sample_stack(logits_of(case), **stack_kwargs(case))
        assert (want.tokens == -1).any() and (want.tokens >= 0).any()  # the invalid row is there
        for world in case.worlds:
            got = [ranks[r][(world, case.name)] for r in range(world)]
            for other in got[1:]:
                for a, b in zip(got[0], other):
                    if a is not None:
                        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
            got, what = got[0], f"{case.name} W={world}"
            for i, name in enumerate(StackFields):
                a, b = got[i], getattr(want, name)
                assert (a is None) == (b is None), f"{what}: {name}"
                if a is None:
                    continue
                assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: {name} {a.shape} {b.shape}"
                tol = LOGPROB_TOL if a.is_floating_point() else (0, 0)
                torch.testing.assert_close(a, b, rtol=tol[0], atol=tol[1], equal_nan=True, msg=f"{what}: {name}")


StackFields = ("tokens", "logprobs", "ranks", "top_ids", "top_logprobs")


def test_no_host_reads_in_a_call(ranks):
    """With every Python-level host read made to raise (outside the header, the parameter check and a
    top_k tensor's max), the calls run through and return the same results: full distribution, top-p, top-k
    with ties cut off by the lists (edge), per-row tensors, greedy and top_k."""
    for name in GUARDED:
        for r in range(2):
            got, want = ranks[r][("guarded", name)], ranks[r][(2, name)]
            assert not isinstance(got, str), f"{name} rank {r}: {got}"
            for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
                if a is not None:
                    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_collectives_fixed_by_the_arguments(ranks):
    """The same arguments make the same collectives whatever the logits (random, all tied, NaN / -inf rows):
    3 with a scalar top-k, 9 with top-p, 4 for the full distribution and for a per-row top_k tensor."""
    want = {"top_k": 3, "top_p": 9, "full": 4, "rows": 4}
    for r in range(2):
        got = ranks[r][("collectives", r)]
        for label, counts in got.items():
            assert counts == [want[label]] * 3, f"rank {r} {label}: {counts}"


def test_guard_catches_host_reads():
    """The guard of test_no_host_reads_in_a_call does catch reads (so that test can fail)."""
    t = torch.tensor([1, 2])
    for read in (lambda: t.sum().item(), lambda: bool(t.any()), lambda: t.nonzero(), lambda: t.tolist(),
                 lambda: int(t[0]), lambda: torch.nonzero(t)):
        with no_host_reads(), pytest.raises(AssertionError, match="host read"):
            read()


def _local_case(batch=6, n=3000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, generator=gen) * 3
    x[1, ::7] = x[1].max()  # ties at the top
    x[2, :n // 2] = -math.inf
    m = x.amax(dim=1) + torch.rand(batch, generator=gen)  # the global max may sit on another rank
    t = torch.tensor([1.0, 0.7, 2.0, 0.3, 1.0, 1.5])[:batch]
    mode = torch.tensor([1, 1, 1, 0, 2, 1])[:batch]
    x[4, [3, 100]] = math.inf
    m[4] = math.inf
    theta = torch.tensor([-math.inf, 0.5, -math.inf, 0.0, -math.inf, 1.0])[:batch]
    log_min_p = torch.tensor([-math.inf, math.log(0.01), -math.inf, -math.inf, math.log(0.5), -2.0],
                             dtype=torch.float64)[:batch]
    per_nat = torch.where(mode == 1, 8.0 / t, 0.0)
    per_nat[0] = 0.0
    return x, m, t, mode, theta, log_min_p, per_nat


@pytest.mark.skipif(not fastsample._ops.DIST_OPS, reason="the extension has no dist_* ops")
def test_local_ops_match_torch_twins():
    """The C++ per-rank passes against their torch twins (fastsample/distributed/_local.py): stats exactly;
    weights within one unit of the fixed point (float64 exp may differ by an ulp between libm and torch),
    so masses within the token count; digit histograms, kept masses and walks on the C++ weights exactly."""
    from fastsample.distributed import _local

    x, m, t, mode, theta, lmp, per_nat = _local_case()
    scale = 44
    tie = x[:, 5].clone()
    torch.testing.assert_close(torch.ops.fastsample.dist_row_stats(x, tie), _local._row_stats_torch(x, tie))
    q, hist, kept = torch.ops.fastsample.dist_weigh(x, m, t, mode, theta, lmp, per_nat, scale, True)
    q2, hist2, kept2 = _local._weigh_torch(x, m, t, mode, theta, lmp, per_nat, scale, True)
    assert (q - q2).abs().max() <= 1 and (q != q2).float().mean() < 0.01
    assert ((q > 0) == (q2 > 0)).all() and ((q < 0) == (q2 < 0)).all()
    assert (hist - hist2).abs().max() <= x.shape[1] and (kept - kept2).abs().max() <= x.shape[1]
    assert (q[3] == 0).all() and (q[4] == (x[4] == math.inf).long() << scale).all() and (q[1] < 0).any()
    assert (hist[0] == 0).all() and (hist[1] > 0).any()
    # The rest on the C++ weights, exactly.
    _, hist_c, _ = _local._weigh_torch(x, m, t, mode, theta, lmp, per_nat, scale, False)
    chosen, prefix = torch.tensor([5, 2, 0, 1, 0, 3]), _exact_keys(x[:, 0]) >> 16
    for shift in (24, 16):
        pre = prefix >> (24 - shift) if shift == 16 else torch.zeros_like(prefix)
        torch.testing.assert_close(torch.ops.fastsample.dist_digit_hist(x, q, m, per_nat, chosen, pre, shift),
                                   _local._digit_hist_torch(x, q, m, per_nat, chosen, pre, shift))
    theta2 = torch.tensor([0.0, 1.0, -math.inf, 0.0, -math.inf, 2.0])
    got_kept = torch.ops.fastsample.dist_kept(x, q, theta2)
    torch.testing.assert_close(got_kept, _local._kept_torch(x, q, theta2))
    target = (got_kept.double() * torch.tensor([0.3, 0.9, 0.0, 0.5, 0.99, 0.5], dtype=torch.float64)).long()
    target[3] = -1
    for qq in (q, None):
        got = torch.ops.fastsample.dist_walk(x, qq, m, t, mode, theta2 if qq is not None else theta, lmp, target,
                                             scale)
        want = _local._walk_torch(x, qq if qq is not None else q, m, t, mode,
                                  theta2 if qq is not None else theta, lmp, target, scale)
        torch.testing.assert_close(got, want)


def _exact_keys(v):
    from fastsample.distributed import _exact

    return _exact.keys(v)


@pytest.mark.skipif(not fastsample._ops.DIST_OPS, reason="the extension has no dist_* ops")
def test_local_ops_compile_fullgraph():
    """The per-rank passes trace under torch.compile(fullgraph=True) (fake kernels, no host read, no graph
    break) and give the eager results."""
    from fastsample.distributed import _local

    x, m, t, mode, theta, lmp, per_nat = _local_case()

    def passes(x, m, t, mode, theta, lmp, per_nat):
        stats = _local.row_stats(x, x[:, 0])
        q, hist, kept = _local.weigh(x, m, t, mode, theta, lmp, per_nat, 44, True)
        chosen = hist.argmax(dim=1)
        digits = _local.digit_hist(x, q, m, per_nat, chosen, torch.zeros_like(chosen), 24)
        mass = _local.kept(x, q, theta)
        index = _local.walk(x, q, m, t, mode, theta, lmp, mass // 2, 44)
        return stats, q, hist, kept, digits, mass, index

    want = passes(x, m, t, mode, theta, lmp, per_nat)
    got = torch.compile(passes, fullgraph=True, backend="eager")(x, m, t, mode, theta, lmp, per_nat)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------- exact integer helpers
def test_floor_scaled_is_exact():
    """floor(f * W) and its remainder flag against Python fractions, for float32 f in [0, 1] (down to
    subnormals) and W up to 2^61 - 1: the comparisons with p * W and u * W rest on it."""
    from fractions import Fraction

    from fastsample.distributed import _exact

    gen = torch.Generator().manual_seed(3)
    edges = torch.tensor([0.0, 1.0, 0.5, 2**-24, 1 - 2**-24, 1e-30, 1e-45, 0.9])
    f = torch.cat([edges, torch.rand(500, generator=gen)])
    total = torch.randint(0, 2**61, (f.numel(),), generator=gen)
    total[:8] = torch.tensor([0, 2**61 - 1, 3, 2**44, 2**61 - 1, 7, 2**61 - 1, 10])
    total[8::5] = torch.randint(0, 1000, (total[8::5].numel(),), generator=gen)
    floor, inexact = _exact.floor_scaled(f, total)
    for a, w, got_floor, got_inexact in zip(f.tolist(), total.tolist(), floor.tolist(), inexact.tolist()):
        exact = Fraction(a) * w
        assert got_floor == exact.numerator // exact.denominator, (a, w)
        assert got_inexact == (exact.denominator != 1), (a, w)


def test_keys_order_like_floats():
    from fastsample.distributed import _exact

    x = torch.tensor([-math.inf, -3.0, -1e-40, -0.0, 0.0, 1e-45, 1.0, 3e38, math.inf])
    k = _exact.keys(x)
    assert (k[1:] >= k[:-1]).all() and k[3] == k[4] and (k[[0, 1, 2, 5, 6, 7, 8]].diff() > 0).all()
    assert _exact.keys(torch.tensor([math.nan, -math.nan])).tolist() == [_exact.KEY_NAN] * 2
    torch.testing.assert_close(_exact.values(k), x + 0.0, rtol=0, atol=0)


def test_bench_runs(tmp_path):
    """Smoke run of `python -m bench.distributed` on a tiny shape: it prints the table and records CSV rows
    (no timing is asserted)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "bench.distributed", "--vocab", "1000", "--batches", "2", "--dists", "flat",
           "--reps", "1", "--out", str(tmp_path)]
    out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "fastsample.distributed" in out.stdout and "tokens differ" not in out.stdout
    lines = (tmp_path / "distributed-cpu.csv").read_text().splitlines()
    assert lines[0].startswith("op,provider,W,B,V") and len(lines) == 1 + 4 * 3  # 4 ops x 3 providers
