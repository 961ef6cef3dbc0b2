"""tools/gpu_decoders.py (make gpu-decoders) without a GPU: its sync finder, its token comparison, and the whole
CPU rehearsal on a tiny model, with and without transformers, so that the GPU run cannot rot unseen."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tools")]

import gpu_decoders  # noqa: E402
from fastsample.decoding import sample_decode  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model's ops are far too small to gain from threads, and on a busy machine OpenMP's waits make the
    rehearsal several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def profile(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return gpu_decoders.syncs_in_ranges(prof.events())


def test_host_reads_are_attributed_to_the_innermost_sampling_range():
    x = torch.tensor([1.0, 2.0])

    def run():
        x.sum().item()  # outside every sampling range
        with torch.profiler.record_function("sampling:next_token"):
            with torch.profiler.record_function("sampling:fastsample.sample"):
                x.max().item()
            torch.nonzero(x)

    inside, outside, steps = profile(run)
    assert inside == {"sampling:fastsample.sample": {"aten::item": 1, "aten::_local_scalar_dense": 1},
                      "sampling:next_token": {"aten::nonzero": 1}}
    assert outside == {"aten::item": 1, "aten::_local_scalar_dense": 1}
    assert steps == 1


def test_traced_sampling_wraps_each_step_of_sample_decode():
    """A processor that reads a value on the host is caught inside the ranges sample_decode's steps get."""
    model = gpu_decoders.ToyLM(vocab=50, hidden=8).eval()

    def reads_host(ids, scores):
        scores[0, 0].item()
        return scores

    ids = torch.tensor([[3, 4, 5], [6, 7, 8]])
    with torch.no_grad(), gpu_decoders.traced_sampling(None):
        inside, _, steps = profile(lambda: sample_decode(model, ids, max_new_tokens=3, processors=[reads_host],
                                                         top_k=5, seed=1))
    assert steps == 3
    assert inside["sampling:next_token"]["aten::item"] == 3
    assert "sampling:fastsample.sample" not in inside  # the fused call itself reads nothing on the host
    from fastsample import processors, sampling
    from fastsample.decoding import model as model_module, sample as sample_module

    assert (sample_module.sample, sample_module.filter_logits, sample_module.decode_loop) == (
        sampling.sample, processors.filter_logits, model_module.decode_loop)  # unpatched again


def test_compare_tokens_tells_near_ties_from_failures(tmp_path):
    report = gpu_decoders.Report(tmp_path, "cpu", "test")
    mask = torch.ones(1, 2, dtype=torch.int64)
    ref = torch.tensor([[5, 6, 1, 2]])
    scores = torch.zeros(10)
    scores[2], scores[3] = 4.0, 4.0 - 1e-6  # token 3 trails token 2 by far less than float32's tolerance
    check = lambda ours, name, dtype=torch.float32: gpu_decoders.compare_tokens(  # noqa: E731
        report, name, ours, ref, 2, mask, lambda i, m: scores, dtype)
    check(ref.clone(), "equal")
    check(torch.tensor([[5, 6, 1, 3]]), "tie")
    scores[3] = 3.0
    check(torch.tensor([[5, 6, 1, 3]]), "gap")
    check(torch.tensor([[5, 6, 1, 3]]), "gap in bfloat16", torch.bfloat16)  # 1.0 > bfloat16's 3e-2 * 4
    check(ref[:, :3], "shorter")
    table = "\n".join(report.sections["decoders"])
    assert "| equal | ok |" in table and "| tie | near-tie | row 0 step 1: 3 vs 2" in table
    assert report.failed == ["decoders/gap", "decoders/gap in bfloat16", "decoders/shorter"]
    report.log_file.close()


def test_cpu_rehearsal_on_a_tiny_model(tmp_path):
    """bfloat16 as on the GPU: the half-precision branches (near-ties, the float32 beam copy) run too."""
    argv = ["--out", str(tmp_path), "--config", "tiny", "--dtype", "bfloat16", "--batches", "1", "3", "--steps", "1"]
    assert gpu_decoders.main(argv) == 0
    summary = (tmp_path / "gpu-decoders-cpu.md").read_text()
    assert summary.splitlines()[2].startswith("PASSED")
    decoders = summary.split("## decoders")[1].split("## syncs")[0]
    assert decoders.count("| ok |") + decoders.count("| near-tie |") == 16
    for name in ("greedy == HF generate", "beam, float32 copy of the model, == HF generate",
                 "sample: first token of 500 rows vs HF warpers (chi-square)", "speculative greedy (gamma 3)",
                 "speculative greedy (tree 3x2)", "speculative greedy (ngram)"):
        assert f"| {name}" in decoders
    assert "| 3 |" in summary.split("## timing")[1] and "skipped: needs a CUDA device" in summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu-decoders-cpu.log", "gpu-decoders-cpu.md"]


def test_rehearsal_without_transformers(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "transformers" else real(name, *args))
    assert gpu_decoders.main(["--out", str(tmp_path), "--config", "tiny", "--parts", "decoders", "timing",
                              "--batches", "2", "--steps", "1"]) == 0
    summary = (tmp_path / "gpu-decoders-cpu.md").read_text()
    assert "transformers: NOT INSTALLED" in summary and "skipped: transformers is not installed" in summary
    assert "| speculative greedy (gamma 3) == target greedy | ok |" in summary
    assert "| speculative greedy (tree 3x2) == target greedy | skipped: the stand-in model takes no 4-D" in summary
    assert "| 2 |" in summary.split("## timing")[1]


def test_build_reuses_gpu_check_build_step(tmp_path, monkeypatch):
    """--build runs tools/gpu_check.py's build step (nothing is built here: its runner is replaced)."""
    import gpu_check

    calls = []
    monkeypatch.setattr(gpu_check.Run, "step", lambda self, name, cmd, log, env=None, **kw: calls.append(
        (name, cmd, log, self.logs)) or 0)
    assert gpu_decoders.build(tmp_path, None) is True
    (name, cmd, log, logs), = calls
    assert name == "build" and cmd[1:3] == ["setup.py", "build_ext"] and (logs, log) == (tmp_path, "build.log")
    monkeypatch.setattr(gpu_check.Run, "step", lambda self, *args, **kw: 1)
    assert gpu_decoders.build(tmp_path, None) is False
