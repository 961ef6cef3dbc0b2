"""The README plot from a results CSV: time vs V per provider, one panel per op, for the latest run.

    python -m bench.plot [bench/results/cpu.csv] [--out PNG] [--batch B] [--dist flat] [--dtype float32]
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

from .providers import ALL
from .report import PASS_OP


def _latest_run(rows: list[dict]) -> list[dict]:
    """The rows of the newest run (one run shares its date and commit)."""
    last = max((r["date"], r["commit"]) for r in rows)
    return [r for r in rows if (r["date"], r["commit"]) == last]


def _pick_batch(rows: list[dict]) -> int:
    """The batch size with the most distinct V values, so the lines have points; the larger one on ties."""
    vocabs = defaultdict(set)
    for r in rows:
        vocabs[int(r["B"])].add(int(r["V"]))
    return max(vocabs, key=lambda b: (len(vocabs[b]), b))


def plot_csv(csv_path: Path, png_path: Path, batch: int | None = None, dist: str | None = None,
             dtype: str = "float32") -> Path | None:
    """Draw the latest run of `csv_path` into `png_path` (flat logits unless only others were measured);
    None when the CSV has no matching rows."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on CI or benchmark machines
    import matplotlib.pyplot as plt

    with Path(csv_path).open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["dtype"] == dtype]
    if not rows:
        return None
    rows = _latest_run(rows)
    dists = {r["dist"] for r in rows}
    dist = dist or ("flat" if "flat" in dists else min(dists))
    rows = [r for r in rows if r["dist"] == dist]
    batch = batch if batch is not None else _pick_batch(rows)
    rows = [r for r in rows if int(r["B"]) == batch]
    if not rows:
        return None
    ops = [op for op in dict.fromkeys(r["op"] for r in rows) if op != PASS_OP]
    providers = list(dict.fromkeys(r["provider"] for r in rows if r["op"] != PASS_OP))
    # Colours follow the provider list, so each provider keeps its colour from one plot to the next.
    known = [*ALL, *(p for p in providers if p not in ALL)]
    colors = {p: plt.get_cmap("tab10")(known.index(p) % 10) for p in providers}
    limit = sorted({(int(r["V"]), float(r["limit_ms"])) for r in rows})
    vocabs = sorted({v for v, _ in limit})

    ncols = min(3, max(len(ops), 1))
    nrows = math.ceil(len(ops) / ncols) if ops else 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    for ax, op in zip(axes.flat, ops):
        for provider in providers:
            points = sorted((int(r["V"]), float(r["median_ms"])) for r in rows
                            if r["op"] == op and r["provider"] == provider)
            if points:
                ax.plot(*zip(*points), "o-", color=colors[provider], label=provider, markersize=4)
        ax.plot(*zip(*limit), "--", color="black", linewidth=1, label="single-pass limit")
        # Linear V (the work grows linearly with it, and 128k and 152k stay apart), log time.
        ax.set(title=op, yscale="log", xlabel="V (vocabulary)", ylabel="median ms")
        ax.set_xticks(vocabs, [f"{v / 1000:.0f}k" if v >= 1000 else str(v) for v in vocabs], fontsize=8)
        ax.title.set_fontsize(9)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(ops):]:
        ax.set_visible(False)
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_lines()}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(len(handles), 7), fontsize=8)
    fig.suptitle(f"{rows[0]['device']}: B={batch}, {dist} logits, {dtype}, commit {rows[0]['commit']}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", nargs="?", type=Path, default=Path(__file__).parent / "results" / "cpu.csv")
    p.add_argument("--out", type=Path, help="PNG path (default: the CSV's path with .png)")
    p.add_argument("--batch", type=int, help="default: the B measured at the most V values")
    p.add_argument("--dist", choices=("flat", "peaked"), help="default: flat when measured")
    p.add_argument("--dtype", default="float32")
    args = p.parse_args(argv)
    if not args.csv.exists():
        print(f"bench.plot: no such file {args.csv}", file=sys.stderr)
        return 2
    png = plot_csv(args.csv, args.out or args.csv.with_suffix(".png"), args.batch, args.dist, args.dtype)
    if png is None:
        print(f"bench.plot: the latest run in {args.csv} has no rows for dist={args.dist} dtype={args.dtype}",
              file=sys.stderr)
        return 1
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
