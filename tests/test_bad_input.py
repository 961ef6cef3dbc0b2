"""Bad input, end to end: every public function of fastsample given wrong types, shapes, dtypes, devices,
out-of-range scalars and tensor parameters raises TypeError/ValueError naming the argument, or returns the
documented invalid rows (-1 tokens, all-zero renormalised rows, NaN softmax rows).

CASES is the single list of cases; `python tests/test_bad_input.py` prints it as the table in docs/ops.md
("Bad input"), and test_docs_table_lists_every_case keeps the two in step.
"""
import math
from dataclasses import dataclass

import pytest
import torch
from test_api import FUNCTIONS, _input

import fastsample

BATCH, VOCAB = 4, 50
NAN, INF = float("nan"), float("inf")
SPECULATIVE = "chain_speculative_sampling"
STACK = "sample_stack"  # called with every filter and logprobs on (STACK_KWARGS)
STACK_KWARGS = {"temperature": 0.8, "top_k": 5, "top_p": 0.7, "min_p": 0.05, "logprobs": "processed"}
ALL = tuple(FUNCTIONS) + (SPECULATIVE, STACK)
SAMPLERS = tuple(n for n, (_, _, draws) in FUNCTIONS.items() if draws) + ("greedy",)
RENORMS = ("top_k_renorm_probs", "top_p_renorm_probs", "min_p_renorm_probs")
PROBS_FNS = tuple(n for n, (kind, _, _) in FUNCTIONS.items() if kind == "probs")
LOGITS_FNS = tuple(n for n, (kind, _, _) in FUNCTIONS.items() if kind == "logits")
# Functions taking each parameter (as a keyword), with a valid value of it.
PARAMS = {
    "temperature": ("softmax", "sample", STACK),
    "top_k": ("top_k_mask_logits", "top_k_renorm_probs", "top_k_sampling_from_probs",
              "top_k_top_p_sampling_from_probs", "top_k_top_p_sampling_from_logits", "sample", STACK),
    "top_p": ("top_p_renorm_probs", "top_p_sampling_from_probs", "top_k_top_p_sampling_from_probs",
              "top_k_top_p_sampling_from_logits", "sample", STACK),
    "min_p": ("min_p_renorm_probs", "min_p_sampling_from_probs", "sample", STACK),
}
RANDOM = tuple(n for n, (_, _, draws) in FUNCTIONS.items() if draws) + (SPECULATIVE, STACK)


def _spec_inputs(batch=BATCH, n=2, vocab=VOCAB):
    gen = torch.Generator().manual_seed(0)
    q = torch.softmax(torch.randn(batch, n, vocab, generator=gen), -1)
    p = torch.softmax(torch.randn(batch, n + 1, vocab, generator=gen), -1)
    return q, torch.randint(0, vocab, (batch, n), generator=gen), p


def _call(name, backend, x=None, **override):
    """Call ``name`` with valid arguments (a fixed seed where it draws), ``x`` replacing its main input and
    ``override`` replacing or adding keywords."""
    if name == SPECULATIVE:
        q, ids, p = _spec_inputs()
        args = dict(draft_probs=q, draft_token_ids=ids, target_probs=p, seed=7)
        if x is not None:
            args["draft_probs"] = x
        args.update(override)
        return fastsample.chain_speculative_sampling(**args, backend=backend)
    if name == STACK:
        x = _input("logits", BATCH, VOCAB) if x is None else x
        return fastsample.sample_stack(x, **{**STACK_KWARGS, "seed": 7, **override}, backend=backend)
    kind, kwargs, draws = FUNCTIONS[name]
    kwargs = {**kwargs, **({"seed": 7} if draws else {}), **override}
    return getattr(fastsample, name)(_input(kind, BATCH, VOCAB) if x is None else x, **kwargs, backend=backend)


def _main_arg(name):
    return "draft_probs" if name == SPECULATIVE else "x" if name == "top_k" else "logits" if name == STACK \
        else FUNCTIONS[name][0]


@dataclass(frozen=True)
class Case:
    """One kind of bad input: what it is, the functions it applies to, the outcome, and how to build it.

    outcome: "TypeError" or "ValueError" (the message must name ``arg``), or "rows" (the call succeeds and
    ``check(result)`` verifies the documented invalid rows).
    """

    what: str
    functions: tuple
    outcome: str
    arg: str  # the argument the message names ("<input>" = the function's main tensor argument)
    make: object  # (name) -> dict(x=..., **override) for _call
    check: object = None


def _final_token_minus_one(rows):
    """chain_speculative_sampling: the final token (at position emitted_num) is -1 exactly on ``rows``."""
    def check(result):
        out, _, emitted = result
        final = out.gather(1, emitted.unsqueeze(1)).squeeze(1)
        assert (final[rows] == -1).all() and (final[[r for r in range(BATCH) if r not in rows]] >= 0).all()
    return check


def _bad_rows(rows):
    """-1 tokens, all-zero renormalised rows or NaN softmax rows on ``rows``; valid output elsewhere."""
    def check(result):
        out = result[0] if isinstance(result, tuple) else result
        good = [r for r in range(out.shape[0]) if r not in rows]
        if out.dtype == torch.int64:
            assert (out[rows] == -1).all() and (out[good] >= 0).all()
        elif out.dtype == torch.float32 and torch.isnan(out[rows]).all():
            assert not torch.isnan(out[good]).any()
        else:
            assert (out[rows] == 0).all() and torch.allclose(out[good].sum(1), torch.ones(len(good)))
    return check


def _param_tensor(bad_value, dtype=torch.float32):
    return torch.tensor([0.5, bad_value, 0.5, 0.5], dtype=dtype)


def _nan_target():
    p = _spec_inputs()[2]
    p[1, :, 3] = NAN  # every position of row 1: whichever position the final token comes from is invalid
    return p


def _nan_input(name):
    x = _input("logits" if name == STACK else FUNCTIONS[name][0], BATCH, VOCAB)
    x[1, 3] = NAN
    return dict(x=x)


CASES = [
    # ---------------------------------------------------------------- the main tensor argument
    Case("input not a tensor (nested list)", ALL, "TypeError", "<input>", lambda n: dict(x=[[0.1] * VOCAB] * BATCH)),
    Case("input dtype int64", ALL, "TypeError", "<input>",
         lambda n: dict(x=torch.zeros((BATCH, 2, VOCAB) if n == SPECULATIVE else (BATCH, VOCAB), dtype=torch.int64))),
    Case("input dtype float64", ALL, "TypeError", "<input>",
         lambda n: dict(x=torch.full((BATCH, 2, VOCAB) if n == SPECULATIVE else (BATCH, VOCAB), 0.02,
                                     dtype=torch.float64))),
    Case("input 1-D [V]", ALL, "ValueError", "<input>", lambda n: dict(x=torch.full((VOCAB,), 0.02))),
    Case("input 3-D (2-D for draft_probs)", ALL, "ValueError", "<input>",
         lambda n: dict(x=torch.full((BATCH, VOCAB) if n == SPECULATIVE else (2, BATCH, VOCAB), 0.02))),
    Case("vocabulary of 0", ALL, "ValueError", "<input>",
         lambda n: dict(x=torch.zeros((BATCH, 2, 0) if n == SPECULATIVE else (BATCH, 0)),
                        **({"target_probs": torch.zeros(BATCH, 3, 0), "draft_token_ids":
                            torch.zeros(BATCH, 2, dtype=torch.int64)} if n == SPECULATIVE else {}))),
    Case("input on the meta device (neither CPU nor CUDA)", ALL, "ValueError", "<input>",
         lambda n: dict(x=torch.empty((BATCH, 2, VOCAB) if n == SPECULATIVE else (BATCH, VOCAB), device="meta"))),
    Case("a NaN in a row (speculative: in row 1 of target_probs)", ALL, "rows", "",
         lambda n: _nan_input(n) if n != SPECULATIVE else dict(target_probs=_nan_target())),
    # ---------------------------------------------------------------- per-row parameters
    *[Case(f"{p}: wrong Python type (str)", PARAMS[p], "TypeError", p, lambda n, p=p: {p: "0.5"}) for p in PARAMS],
    *[Case(f"{p}: bool", PARAMS[p], "TypeError", p, lambda n, p=p: {p: True}) for p in PARAMS],
    Case("top_k: float scalar", PARAMS["top_k"], "TypeError", "top_k", lambda n: {"top_k": 2.0}),
    Case("temperature: scalar -1", PARAMS["temperature"], "ValueError",
         "temperature", lambda n: {"temperature": -1.0}),
    Case("temperature: scalar 1e300 (inf in float32)", PARAMS["temperature"], "ValueError", "temperature",
         lambda n: {"temperature": 1e300}),
    Case("top_p: scalar 1.5", PARAMS["top_p"], "ValueError", "top_p", lambda n: {"top_p": 1.5}),
    Case("min_p: scalar NaN", PARAMS["min_p"], "ValueError", "min_p", lambda n: {"min_p": NAN}),
    *[Case(f"{p}: tensor of shape [B + 1]", PARAMS[p], "ValueError", p,
           lambda n, p=p: {p: torch.ones(BATCH + 1, dtype=torch.int64 if p == "top_k" else torch.float32)})
      for p in PARAMS],
    *[Case(f"{p}: tensor of shape [B, 1]", PARAMS[p], "ValueError", p,
           lambda n, p=p: {p: torch.ones(BATCH, 1, dtype=torch.int64 if p == "top_k" else torch.float32)})
      for p in PARAMS],
    Case("top_k: float tensor", PARAMS["top_k"], "TypeError", "top_k",
         lambda n: {"top_k": torch.ones(BATCH)}),
    Case("top_k: complex tensor", PARAMS["top_k"], "TypeError", "top_k",
         lambda n: {"top_k": torch.ones(BATCH, dtype=torch.complex64)}),
    *[Case(f"{p}: integer tensor", PARAMS[p], "TypeError", p, lambda n, p=p: {p: torch.ones(BATCH, dtype=torch.int64)})
      for p in ("temperature", "top_p", "min_p")],
    *[Case(f"{p}: tensor on the meta device", PARAMS[p], "ValueError", p,
           lambda n, p=p: {p: torch.ones(BATCH, dtype=torch.int64 if p == "top_k" else torch.float32, device="meta")})
      for p in PARAMS],
    Case("temperature: tensor entry -1", PARAMS["temperature"], "rows", "",
         lambda n: {"temperature": _param_tensor(-1.0)}, check=_bad_rows([1])),
    Case("top_p: tensor entry 1.5", PARAMS["top_p"], "rows", "",
         lambda n: {"top_p": _param_tensor(1.5)}, check=_bad_rows([1])),
    Case("min_p: tensor entry NaN", PARAMS["min_p"], "rows", "",
         lambda n: {"min_p": _param_tensor(NAN)}, check=_bad_rows([1])),
    Case("top_k: tensor entries -5, 0, V + 7 (no filter on those rows)", PARAMS["top_k"], "rows", "",
         lambda n: {"top_k": torch.tensor([3, -5, VOCAB + 7, 0])}, check=_bad_rows([])),
    Case("k (top_k's count): V + 1", ("top_k",), "ValueError", "k", lambda n: {"k": VOCAB + 1}),
    Case("k (top_k's count): float", ("top_k",), "TypeError", "k", lambda n: {"k": 2.0}),
    # ---------------------------------------------------------------- random-number control
    Case("seed: float", RANDOM, "TypeError", "seed", lambda n: {"seed": 1.5}),
    Case("seed: outside int64", RANDOM, "ValueError", "seed", lambda n: {"seed": 2**64}),
    Case("seed: float tensor", RANDOM, "TypeError", "seed", lambda n: {"seed": torch.zeros(BATCH)}),
    Case("seed: tensor of shape [B + 1]", RANDOM, "ValueError", "seed",
         lambda n: {"seed": torch.zeros(BATCH + 1, dtype=torch.int64)}),
    Case("offset: str", RANDOM, "TypeError", "offset", lambda n: {"offset": "3"}),
    Case("offset: outside int64", RANDOM, "ValueError", "offset", lambda n: {"offset": -2**63 - 1}),
    Case("offset: tensor of shape [B, 2]", RANDOM, "ValueError", "offset",
         lambda n: {"offset": torch.zeros(BATCH, 2, dtype=torch.int64)}),
    Case("generator: not a torch.Generator", RANDOM, "TypeError", "generator", lambda n: {"generator": 1234}),
    Case("top_k: scalar 2**70 (no filter)", PARAMS["top_k"], "rows", "", lambda n: {"top_k": 2**70},
         check=_bad_rows([])),
    # ---------------------------------------------------------------- backend
    Case("backend: unknown name", ALL, "ValueError", "backend", lambda n: {"backend_": "gpu"}),
    Case("backend: 'cuda' with CPU tensors", ALL, "ValueError", "backend", lambda n: {"backend_": "cuda"}),
    # ---------------------------------------------------------------- chain_speculative_sampling
    Case("draft_token_ids: float dtype", (SPECULATIVE,), "TypeError", "draft_token_ids",
         lambda n: {"draft_token_ids": torch.zeros(BATCH, 2)}),
    Case("draft_token_ids: shape not [B, n]", (SPECULATIVE,), "ValueError", "draft_token_ids",
         lambda n: {"draft_token_ids": torch.zeros(BATCH, 3, dtype=torch.int64)}),
    Case("target_probs: shape not [B, n + 1, V]", (SPECULATIVE,), "ValueError", "target_probs",
         lambda n: {"target_probs": torch.zeros(BATCH, 2, VOCAB)}),
    Case("target_probs: float64", (SPECULATIVE,), "TypeError", "target_probs",
         lambda n: {"target_probs": _spec_inputs()[2].double()}),
    Case("draft_token_ids: not a tensor", (SPECULATIVE,), "TypeError", "draft_token_ids",
         lambda n: {"draft_token_ids": [[0, 1]] * BATCH}),
    Case("draft_token_ids: entry outside [0, V) (rejected at its position)", (SPECULATIVE,), "rows", "",
         lambda n: {"draft_token_ids": torch.tensor([[0, 1], [-1, 1], [VOCAB, 2], [3, 4]])},
         check=lambda r: (r[2][1] == 0 and r[2][2] == 0) or pytest.fail(f"emitted {r[2].tolist()}")),
    # ---------------------------------------------------------------- sample_stack's long-tail steps
    Case("dry_allowed_length: scalar -1", (STACK,), "ValueError", "dry_allowed_length",
         lambda n: {"dry_allowed_length": -1, "dry_multiplier": 0.8}),
    Case("dry_penalty_last_n: scalar -2", (STACK,), "ValueError", "dry_penalty_last_n",
         lambda n: {"dry_penalty_last_n": -2, "dry_multiplier": 0.8}),
    Case("dry_multiplier: scalar NaN", (STACK,), "ValueError", "dry_multiplier", lambda n: {"dry_multiplier": NAN}),
    Case("dry_base: scalar inf", (STACK,), "ValueError", "dry_base", lambda n: {"dry_base": INF}),
    Case("dry_sequence_breakers: list id outside [0, V)", (STACK,), "ValueError", "dry_sequence_breakers",
         lambda n: {"dry_sequence_breakers": [3, VOCAB], "dry_multiplier": 0.8}),
    Case("dry_sequence_breakers: float tensor", (STACK,), "TypeError", "dry_sequence_breakers",
         lambda n: {"dry_sequence_breakers": torch.zeros(BATCH, 2), "dry_multiplier": 0.8}),
    Case("dry_sequence_breakers: tensor entry V (that row)", (STACK,), "rows", "",
         lambda n: {"dry_sequence_breakers": torch.tensor([[1, -1], [VOCAB, 2], [-1, -1], [4, 5]]),
                    "dry_multiplier": 0.8}, check=_bad_rows([1])),
    Case("dry_allowed_length: tensor entry -3", (STACK,), "rows", "",
         lambda n: {"dry_allowed_length": torch.tensor([2, -3, 2, 2]), "dry_multiplier": 0.8},
         check=_bad_rows([1])),
    Case("dry_multiplier: tensor entry NaN", (STACK,), "rows", "",
         lambda n: {"dry_multiplier": _param_tensor(NAN)}, check=_bad_rows([1])),
    *[Case(f"{p}: scalar 1.5", (STACK,), "ValueError", p, lambda n, p=p: {p: 1.5})
      for p in ("typical_p", "epsilon", "eta", "xtc_probability", "xtc_threshold")],
    *[Case(f"{p}: scalar -0.5", (STACK,), "ValueError", p, lambda n, p=p: {p: -0.5})
      for p in ("dynatemp_range", "dynatemp_exponent", "mirostat_tau", "mirostat_eta")],
    *[Case(f"{p}: tensor entry NaN", (STACK,), "rows", "", lambda n, p=p: {p: _param_tensor(NAN)},
           check=_bad_rows([1])) for p in ("typical_p", "epsilon", "xtc_threshold", "dynatemp_range")],
    Case("mirostat_mu: shape [B + 1]", (STACK,), "ValueError", "mirostat_mu",
         lambda n: {"mirostat_mu": torch.full((BATCH + 1,), 10.0)}),
    Case("mirostat_mu: float64", (STACK,), "TypeError", "mirostat_mu",
         lambda n: {"mirostat_mu": torch.full((BATCH,), 10.0, dtype=torch.float64)}),
    Case("mirostat_mu: a float, not a tensor", (STACK,), "TypeError", "mirostat_mu", lambda n: {"mirostat_mu": 10.0}),
    Case("mirostat_mu: with num_samples = 2", (STACK,), "ValueError", "mirostat_mu",
         lambda n: {"mirostat_mu": torch.full((BATCH,), 10.0), "num_samples": 2}),
    Case("mirostat_mu: entry NaN (that row; mu returned unchanged)", (STACK,), "rows", "",
         lambda n: {"mirostat_mu": _param_tensor(NAN)}, check=_bad_rows([1])),
    Case("order: unknown name", (STACK,), "ValueError", "order", lambda n: {"order": "kobold"}),
]


def _nan_row_check(name):
    if name == "top_k":  # NaN ranks first, as in torch.topk
        return lambda r: None if r[1][1, 0].item() == 3 else pytest.fail(f"indices {r[1][1].tolist()}")
    if name == "top_k_mask_logits":  # a NaN row comes back unchanged
        return lambda r: None if torch.isnan(r[1, 3]) and torch.isfinite(r[1, :3]).all() else pytest.fail("masked")
    if name == SPECULATIVE:
        return _final_token_minus_one([1])
    return _bad_rows([1])


def _cases():
    for case in CASES:
        for name in case.functions:
            yield pytest.param(case, name, id=f"{name}-{case.what}")


@pytest.mark.parametrize("backend", ["cpu", "torch", "triton"])
@pytest.mark.parametrize("case,name", list(_cases()))
def test_bad_input(case, name, backend):
    args = case.make(name)
    backend = args.pop("backend_", backend)
    arg = _main_arg(name) if case.arg == "<input>" else case.arg
    if case.outcome == "rows":
        result = _call(name, backend, **args)
        check = case.check or _nan_row_check(name)
        check(result)
        return
    error = {"TypeError": TypeError, "ValueError": ValueError}[case.outcome]
    with pytest.raises(error, match=arg) as info:
        _call(name, backend, **args)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"


def table() -> str:
    """CASES as the markdown table of docs/ops.md ("Bad input")."""
    lines = ["| input | functions | outcome |", "|---|---|---|"]
    for case in CASES:
        groups = {ALL: "every function", RANDOM: "every function that draws random numbers",
                  PROBS_FNS + (SPECULATIVE,): "every function taking probabilities",
                  **{fns: f"every function taking `{p}`" for p, fns in PARAMS.items()}}
        fns = groups.get(case.functions) or ", ".join(f"`{f}`" for f in case.functions)
        if case.outcome == "rows":
            outcome = "documented invalid rows: -1 tokens, all-zero renormalised rows, NaN softmax rows"
            if "no filter" in case.what:
                outcome = "no filter on those rows (valid)"
            elif "a NaN" in case.what:
                outcome = "invalid row (-1 / zeros / NaN); `top_k`: NaN ranks first; `top_k_mask_logits`: row unchanged"
            elif "draft_token_ids" in case.what:
                outcome = "that position fails the acceptance test"
        else:
            name = "the input's name (`logits`, `probs`, `x`, `draft_probs`)" if case.arg == "<input>" else f"`{case.arg}`"
            outcome = f"{case.outcome} naming {name}"
        lines.append(f"| {case.what} | {fns} | {outcome} |")
    return "\n".join(lines) + "\n"


def test_docs_table_lists_every_case():
    import pathlib

    docs = (pathlib.Path(__file__).parent.parent / "docs" / "ops.md").read_text()
    assert table() in docs, "docs/ops.md's bad-input table is out of date: paste `python tests/test_bad_input.py`"


if __name__ == "__main__":
    print(table(), end="")
