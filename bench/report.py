"""Results: the row record, speed-ups, the markdown table and the CSV rows (docs/design.md section 7's schema)."""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

from .common import Shape, Timing
from .providers import REFERENCE

PASS_OP = "single pass"  # the rows of the one-pass baselines (the limit and a plain torch.softmax)
CSV_FIELDS = ("op", "provider", "B", "V", "dist", "dtype", "median_ms", "p20_ms", "p80_ms", "reps",
              "speedup_vs_reference", "limit_ratio", "limit_ms", "limit_kind", "bw_limit_ratio",
              "device", "commit", "date", "isa")


@dataclass
class Result:
    op: str
    provider: str
    shape: Shape
    timing: Timing
    limit_ms: float
    limit_kind: str
    bw_limit_ms: float | None = None  # GPU only: bytes of the logits / copy bandwidth
    speedup: float | None = None  # the reference's median / this median, same op and shape
    isa: str = ""  # CPU rows: the instruction set the row ran (fastsample's vector path, or torch's)

    @property
    def limit_ratio(self) -> float:
        return self.timing.median_ms / self.limit_ms

    @property
    def bw_limit_ratio(self) -> float | None:
        return None if self.bw_limit_ms is None else self.timing.median_ms / self.bw_limit_ms


def fill_speedups(results: list[Result]) -> None:
    reference = {(r.op, r.shape): r.timing.median_ms for r in results if r.provider == REFERENCE}
    for r in results:
        ref = reference.get((r.op, r.shape))
        r.speedup = None if ref is None else ref / r.timing.median_ms


def fmt_ms(ms: float) -> str:
    return f"{ms:.0f}" if ms >= 1000 else f"{ms:.3g}"


def _fmt_ratio(x: float | None) -> str:
    return "—" if x is None else (f"{x:.0f}×" if x >= 100 else f"{x:.3g}×")


def markdown_table(results: list[Result], op_order: list[str]) -> str:
    """One row per result: ops in suite order, then shapes in run order, then providers fastest first."""
    gpu = any(r.bw_limit_ms is not None for r in results)
    head = ["op", "B", "V", "dist", "dtype", "provider", "median ms", "p20–p80 ms", "vs reference", "× limit"]
    head += ["× bw limit"] if gpu else []
    shape_order = {s: i for i, s in enumerate(dict.fromkeys(r.shape for r in results))}
    op_rank = {name: i for i, name in enumerate([PASS_OP, *op_order])}
    rows = sorted(results, key=lambda r: (op_rank.get(r.op, len(op_rank)), shape_order[r.shape], r.timing.median_ms))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        t, s = r.timing, r.shape
        cells = [r.op, str(s.batch), str(s.vocab), s.dist, s.dtype_name, r.provider, fmt_ms(t.median_ms),
                 f"{fmt_ms(t.p20_ms)}–{fmt_ms(t.p80_ms)}", _fmt_ratio(r.speedup), _fmt_ratio(r.limit_ratio)]
        cells += [_fmt_ratio(r.bw_limit_ratio)] if gpu else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_rows(results: list[Result], device: str, commit: str, date: str) -> list[dict]:
    def num(x: float | None, digits: int = 6) -> str:
        return "" if x is None else f"{x:.{digits}g}"

    return [{
        "op": r.op, "provider": r.provider, "B": r.shape.batch, "V": r.shape.vocab, "dist": r.shape.dist,
        "dtype": r.shape.dtype_name, "median_ms": num(r.timing.median_ms), "p20_ms": num(r.timing.p20_ms),
        "p80_ms": num(r.timing.p80_ms), "reps": r.timing.reps, "speedup_vs_reference": num(r.speedup, 4),
        "limit_ratio": num(r.limit_ratio, 4), "limit_ms": num(r.limit_ms), "limit_kind": r.limit_kind,
        "bw_limit_ratio": num(r.bw_limit_ratio, 4), "device": device, "commit": commit, "date": date,
        "isa": r.isa,
    } for r in results]


def append_csv(path: Path, rows: list[dict]) -> None:
    """Append rows, writing the header for a new file. An existing file with another header keeps its
    columns (unknown fields dropped, missing ones blank) so that old rows stay readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(CSV_FIELDS)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with path.open(newline="") as f:
            fields = next(csv.reader(f), fields)
        if fields != list(CSV_FIELDS) and fields == list(CSV_FIELDS[:len(fields)]):
            _extend_header(path, list(CSV_FIELDS))  # only columns added at the end: old rows leave them blank
            fields = list(CSV_FIELDS)
        elif fields != list(CSV_FIELDS):
            print(f"bench: {path} has an older header; writing only its columns", file=sys.stderr)
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _extend_header(path: Path, fields: list[str]) -> None:
    """Rewrites the first line of `path` as `fields` (whose first columns are the old header's)."""
    lines = path.read_text().splitlines(keepends=True)
    lines[0] = ",".join(fields) + "\n"
    path.write_text("".join(lines))
