"""The CPU performance targets of issues 2 and 6, read off a run's results: printed as met / missed with the
numbers (benchmarks never assert), plus the headline medians issue 2's closing note asks for."""
from __future__ import annotations

import operator
from typing import Callable

import torch

from .report import PASS_OP, Result, fmt_ms

FAST = "fastsample:cpu"
V_TARGET = 128256
SAMPLE = "sample(T=0.8,k=50,p=0.9)"
TOP_P_ONLY = "sample(T=0.8,k=0,p=0.9)"
FULL = "sample(T=0.8,k=0,p=1.0)"
Find = Callable[[str, str, Result], "Result | None"]


def _vs(op: str, provider: str, inverse: bool = False):
    """Ratio of this row's median to another row's at the same shape (or its inverse: a speed-up)."""
    def value(r: Result, find: Find) -> float | None:
        other = find(op, provider, r)
        if other is None:
            return None
        return other.timing.median_ms / r.timing.median_ms if inverse else r.timing.median_ms / other.timing.median_ms
    return value


def _speedup(r: Result, find: Find) -> float | None:
    return r.speedup


def _limit(r: Result, find: Find) -> float:
    return r.limit_ratio


def _ms(r: Result, find: Find) -> float:
    return r.timing.median_ms


# (source, op, B or None for every measured B, text, value, comparison, bound, unit); V is always 128256
# except for the top-k and softmax targets, which hold at every measured shape.
TARGETS = [
    ("issue 2", SAMPLE, 32, "≥ 30× reference.py", _speedup, operator.ge, 30, "×"),
    ("issue 2", SAMPLE, 32, "≤ 3× one torch.softmax pass", _vs(PASS_OP, "torch.softmax"), operator.le, 3, "×"),
    ("issue 6", SAMPLE, 32, "≥ 50× reference.py", _speedup, operator.ge, 50, "×"),
    ("issue 6", SAMPLE, 32, "≤ 2× the single-pass limit", _limit, operator.le, 2, "×"),
    ("issue 6", TOP_P_ONLY, 32, "≥ 50× reference.py", _speedup, operator.ge, 50, "×"),
    ("issue 6", TOP_P_ONLY, 32, "≤ 2.5× the single-pass limit", _limit, operator.le, 2.5, "×"),
    ("issue 6", FULL, 32, "≥ 50× reference.py", _speedup, operator.ge, 50, "×"),
    ("issue 6", FULL, 32, "≤ 2.5× the single-pass limit", _limit, operator.le, 2.5, "×"),
    ("issue 6", "top_k(k=50)", None, "≥ 2× faster than torch.topk", _vs("top_k(k=50)", "torch", True),
     operator.ge, 2, "×"),
    ("issue 6", "softmax(T=0.8)", None, "≤ 1.1× torch.softmax(x / T)", _vs("softmax(T=0.8)", "torch"),
     operator.le, 1.1, "×"),
    ("issue 6", SAMPLE, 1, "under 0.2 ms", _ms, operator.lt, 0.2, " ms"),
]
STACK = "sample_stack(mask,bias,penalties,T=0.8,k=50,p=0.9,min_p=0.05,top5)"
TARGETS += [
    ("issue 18", STACK, 32, "≥ 50× the vLLM-v1-style torch sampler", _vs(STACK, "torch", True), operator.ge, 50, "×"),
    ("issue 18", STACK, 32, "≤ 1.5× plain sample(T=0.8,k=50,p=0.9)", _vs(SAMPLE, FAST), operator.le, 1.5, "×"),
]


def _fp32(results: list[Result]) -> list[Result]:
    return [r for r in results if r.shape.dtype == torch.float32]


def _finder(results: list[Result]) -> Find:
    index = {(r.op, r.provider, r.shape): r for r in results}
    return lambda op, provider, like: index.get((op, provider, like.shape))


def target_lines(results: list[Result]) -> list[str]:
    """Markdown bullets, one per target and measured shape."""
    results = _fp32(results)
    find = _finder(results)
    lines = []
    for source, op, batch, text, value, cmp, bound, unit in TARGETS:
        rows = [r for r in results if r.op == op and r.provider == FAST
                and (batch is None or r.shape.batch == batch) and (batch is None or r.shape.vocab == V_TARGET)]
        where = f"B={batch}, V={V_TARGET}" if batch is not None else "each shape"
        if not rows:
            lines.append(f"- {source}: `{op}` {text} ({where}): not measured")
            continue
        for r in rows:
            v = value(r, find)
            verdict = "n/a (baseline not measured)" if v is None else \
                f"{v:.3g}{unit}: {'met' if cmp(v, bound) else 'MISSED'}"
            lines.append(f"- {source}: `{op}` {text} (B={r.shape.batch}, V={r.shape.vocab}, {r.shape.dist}): "
                         f"{verdict}")
    return lines


def headline_table(results: list[Result]) -> str:
    """Issue 2's closing-note numbers: `sample(T=0.8, k=50, p=0.9)` at V=128256, B=1 and B=32."""
    results = _fp32(results)
    find = _finder(results)
    lines = ["| B | dist | fastsample:cpu ms | reference.py ms | torch.softmax ms | single-pass limit ms "
             "| vs reference | × softmax | × limit |", "|" + "---|" * 9]
    for r in results:
        if r.op != SAMPLE or r.provider != FAST or r.shape.vocab != V_TARGET or r.shape.batch not in (1, 32):
            continue
        ref, soft = find(SAMPLE, "reference", r), find(PASS_OP, "torch.softmax", r)
        med = r.timing.median_ms
        cells = [str(r.shape.batch), r.shape.dist, fmt_ms(med), fmt_ms(ref.timing.median_ms) if ref else "—",
                 fmt_ms(soft.timing.median_ms) if soft else "—", fmt_ms(r.limit_ms),
                 f"{ref.timing.median_ms / med:.3g}×" if ref else "—",
                 f"{med / soft.timing.median_ms:.3g}×" if soft else "—", f"{r.limit_ratio:.3g}×"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""
