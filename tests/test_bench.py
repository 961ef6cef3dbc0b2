"""Smoke run of the benchmark harness (bench/) on one tiny shape: the CLI runs, every CSV row has the
docs/design.md section 7 schema, the markdown table prints and the plot redraws. No timing is asserted."""
import contextlib
import csv
import io
import math
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # bench/ sits at the repository root (not in the package): `python -m bench` from there

from bench.report import CSV_FIELDS, PASS_OP  # noqa: E402
from bench.run import OPS  # noqa: E402
from bench.run import main as bench_main  # noqa: E402

SHAPE = ["--shapes", "2x300", "--dists", "peaked"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    stdout, threads = io.StringIO(), torch.get_num_threads()
    # One thread: on a busy CI machine a multi-threaded op can wait whole scheduler slices per call.
    with contextlib.redirect_stdout(stdout):
        rc = bench_main([*SHAPE, "--min-time", "0", "--threads", "1", "--out", str(out)])
    assert torch.get_num_threads() == threads  # the run gives the process its thread count back
    with (out / "cpu.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    return rc, stdout.getvalue(), out, header, rows


def test_cli_returns_zero(smoke):
    assert smoke[0] == 0


def test_csv_rows_have_the_schema(smoke):
    _, _, _, header, rows = smoke
    assert tuple(header) == CSV_FIELDS
    assert rows
    for row in rows:
        assert (row["B"], row["V"], row["dist"], row["dtype"]) == ("2", "300", "peaked", "float32")
        assert row["op"] == PASS_OP or row["op"] in {op.name for op in OPS}
        for key in ("median_ms", "p20_ms", "p80_ms", "limit_ms", "limit_ratio"):
            assert math.isfinite(float(row[key])) and float(row[key]) > 0, key
        assert float(row["p20_ms"]) <= float(row["median_ms"]) <= float(row["p80_ms"])
        assert int(row["reps"]) >= 3
        assert row["speedup_vs_reference"] == "" or float(row["speedup_vs_reference"]) > 0
        assert row["device"] and row["commit"] and row["limit_kind"]
        datetime.fromisoformat(row["date"])
    providers = {row["provider"] for row in rows}
    assert {"torch", "hf", "torch.softmax"} <= providers


def test_the_limit_is_pooled_from_before_and_after(smoke):
    """Each limit is timed before a shape's cases and again after them, and the two sets of calls pooled: its
    row holds both sets, and every row's ratio is taken against the pooled median of the limit it names. A CPU
    whose default path is AVX-512 also has rows forced onto the AVX2 path: those name and use the AVX2 path's
    own limit, so there is one limit per path that ran."""
    rows = smoke[4]
    limits = {r["limit_kind"]: [] for r in rows}
    for r in rows:
        if r["op"] == PASS_OP and r["provider"] == r["limit_kind"]:
            limits[r["limit_kind"]].append(r)
    assert all(len(found) == 1 for found in limits.values()), {k: len(v) for k, v in limits.items()}
    paths = {r["isa"] for r in rows if r["provider"].startswith("fastsample:cpu")}
    assert len(limits) == len(paths), (sorted(limits), sorted(paths))  # one limit per CPU path
    for kind, (limit,) in limits.items():
        assert int(limit["reps"]) >= 10, kind  # at least min_reps (5) each time
        assert limit["isa"] in paths, kind
        assert all(r["limit_ms"] == limit["median_ms"] for r in rows if r["limit_kind"] == kind), kind
        assert all(r["isa"] == limit["isa"] for r in rows if r["limit_kind"] == kind
                   and r["provider"].startswith("fastsample:cpu")), kind


def test_pooled_timing_takes_the_quantiles_of_all_calls():
    from bench.common import pooled, timing_of

    both = pooled(timing_of([3.0, 1.0, 2.0]), timing_of([20.0, 10.0]))
    assert both.times_ms == [1.0, 2.0, 3.0, 10.0, 20.0] and both.reps == 5
    assert both.median_ms == 3.0 and both.p20_ms == pytest.approx(1.8) and both.p80_ms == pytest.approx(12.0)


def test_reference_is_the_speedup_baseline(smoke):
    rows = [r for r in smoke[4] if r["provider"] == "reference"]
    assert rows
    assert all(float(r["speedup_vs_reference"]) == 1.0 for r in rows)


@pytest.mark.parametrize("module", ["fastsample.reference", "transformers.generation.logits_process"])
def test_a_broken_required_provider_fails_the_run(module, monkeypatch):
    """The reference and hf providers come with `make install`: an import error of theirs stops the benchmark
    (it is a broken repository), where an optional provider (FlashInfer) would only be listed as skipped."""
    import importlib

    from bench.providers import availability

    real = importlib.import_module

    def broken(name, *args, **kwargs):
        if name == module:
            raise ImportError(f"{module} is broken")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(ImportError, match="is broken"):
        availability(torch.device("cpu"))


def test_table_prints_and_is_written(smoke):
    _, text, out, _, rows = smoke
    table = [line for line in text.splitlines() if line.startswith("| ") and " | " in line]
    assert table[0].startswith("| op | B | V | dist | dtype | provider | median ms |")
    assert len(table) == 1 + len(rows)  # the header, then one line per CSV row
    assert (out / "cpu.md").read_text().strip() in text


def test_harness_providers_never_fail(smoke):
    """torch and hf calls are the harness's own code; fastsample's backends are tested elsewhere."""
    failed = [line for line in smoke[1].splitlines() if line.startswith("- ") and (" / torch / " in line
                                                                                   or " / hf / " in line)]
    assert not failed


def test_plot_from_csv(smoke, tmp_path):
    from bench.plot import main as plot_main

    out = smoke[2]
    assert (out / "cpu.png").stat().st_size > 0  # drawn by the run itself
    assert plot_main([str(out / "cpu.csv"), "--out", str(tmp_path / "p.png"), "--dist", "peaked"]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0
