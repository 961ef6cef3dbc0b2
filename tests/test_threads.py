"""The CPU ops under concurrency: 8 Python threads calling them at once (on different and on the same input
tensors) give exactly the sequential results; the kernels run without the GIL; calls after
torch.set_num_threads changes and inside a forked child (no OpenMP hang) give the same results too.

Every op is deterministic given its seed, so "the same result" means bit-identical tensors.
"""
import os
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import fastsample

THREADS = 8
BATCH, VOCAB = 6, 40000  # above the row-splitting threshold (32768) so 1-row calls take the split path


def _inputs(seed: int):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(BATCH, VOCAB, generator=gen) * 3
    probs = torch.softmax(logits, dim=1)
    draft = torch.softmax(torch.randn(BATCH, 3, VOCAB, generator=gen), dim=-1)
    target = torch.softmax(torch.randn(BATCH, 4, VOCAB, generator=gen), dim=-1)
    ids = torch.randint(0, VOCAB, (BATCH, 3), generator=gen)
    return logits, probs, draft, ids, target


def _run_all(inputs, seed: int):
    """Every CPU op family on one set of inputs; a flat list of result tensors."""
    logits, probs, draft, ids, target = inputs
    out = [
        fastsample.softmax(logits, 0.7, backend="cpu"),
        *fastsample.top_k(logits, 50, backend="cpu"),
        fastsample.top_k_mask_logits(logits, 20, backend="cpu"),
        fastsample.top_p_renorm_probs(probs, 0.8, backend="cpu"),
        fastsample.top_k_renorm_probs(probs, 100, backend="cpu"),
        fastsample.min_p_renorm_probs(probs, 0.05, backend="cpu"),
        fastsample.sampling_from_probs(probs, seed=seed, backend="cpu"),
        fastsample.top_k_top_p_sampling_from_logits(logits, 40, 0.9, seed=seed, backend="cpu"),
        *fastsample.sample(logits, 0.8, 0, 0.9, 0.02, return_logprobs=True, seed=seed, backend="cpu"),
        fastsample.sample(logits[:1], 1.1, top_p=0.95, seed=seed, backend="cpu"),  # one row: split across threads
        fastsample.greedy(logits, backend="cpu"),
        *fastsample.chain_speculative_sampling(draft, ids, target, seed=seed, backend="cpu"),
    ]
    return out


def _assert_same(got, want, what):
    assert len(got) == len(want)
    for j, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: output {j}"
        assert torch.equal(a, b) or torch.allclose(a, b, rtol=0, atol=0, equal_nan=True), f"{what}: output {j}"


@pytest.mark.parametrize("same_input", [False, True], ids=["different_inputs", "same_input"])
def test_cpu_ops_from_eight_threads_equal_sequential(same_input):
    inputs = [_inputs(0 if same_input else t) for t in range(THREADS)]
    snapshots = [[t.clone() for t in inp] for inp in inputs]
    want = [_run_all(inputs[t], seed=100 + t) for t in range(THREADS)]
    barrier = threading.Barrier(THREADS)

    def worker(t):
        barrier.wait()  # start together so the calls overlap
        return [_run_all(inputs[t], seed=100 + t) for _ in range(3)]

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(worker, range(THREADS)))
    for t, rounds in enumerate(results):
        for r, got in enumerate(rounds):
            _assert_same(got, want[t], f"thread {t} round {r}")
    for inp, snap in zip(inputs, snapshots):  # concurrent readers must not write their inputs
        for a, b in zip(inp, snap):
            assert torch.equal(a, b)


def test_cpu_kernels_release_the_gil():
    """While one thread runs a long kernel, a pure-Python loop in this thread keeps making progress: the
    longest pause between its iterations is far below the kernel's duration (it would span the whole call if
    the kernel held the GIL)."""
    # 192 rows: ~55 ms on one idle Zen 3 core (64 rows took 19 ms there, below the 20 ms this test needs).
    logits = torch.randn(192, 262144, generator=torch.Generator().manual_seed(1))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # one core for the kernel, the other for this loop
    try:
        start = time.perf_counter()
        fastsample.sample(logits, 0.9, top_p=0.9, seed=1, backend="cpu")
        duration = time.perf_counter() - start
        done = threading.Event()

        def kernel():
            torch.set_num_threads(1)
            for _ in range(3):
                fastsample.sample(logits, 0.9, top_p=0.9, seed=1, backend="cpu")
            done.set()

        worker = threading.Thread(target=kernel)
        last = time.perf_counter()
        worker.start()
        longest = 0.0
        while not done.is_set():
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now
        worker.join()
    finally:
        torch.set_num_threads(previous)
    assert duration > 0.02, f"the kernel ran {duration * 1e3:.1f} ms: too short to tell"
    assert longest < duration / 2, (f"a Python thread stalled {longest * 1e3:.1f} ms while a {duration * 1e3:.1f} ms "
                                    "kernel ran: the kernel holds the GIL")


def test_cpu_ops_across_set_num_threads_changes():
    inputs = _inputs(3)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        want = _run_all(inputs, seed=9)
        for n in (2, 1, 4, 3, 2):
            torch.set_num_threads(n)
            _assert_same(_run_all(inputs, seed=9), want, f"{n} threads")
    finally:
        torch.set_num_threads(previous)


def test_cpu_ops_alongside_torch_parallel_ops_equal_sequential():
    """8 Python threads, each the master of an OpenMP team of its own, call the ops while torch runs its own
    parallel ops in another thread: every result equals the sequential one."""
    inputs = _inputs(4)
    want = _run_all(inputs, seed=5)
    stop = threading.Event()

    def busy_torch():  # torch's own intra-op parallelism running alongside ours
        a = torch.randn(512, 512)
        while not stop.is_set():
            a = torch.tanh(a @ a.T / 512)

    background = threading.Thread(target=busy_torch)
    background.start()
    try:
        with ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(lambda _: _run_all(inputs, seed=5), range(THREADS)))
    finally:
        stop.set()
        background.join()
    for t, got in enumerate(results):
        _assert_same(got, want, f"thread {t}")


CHILD = textwrap.dedent("""
    import os, sys, torch
    sys.path.insert(0, {tests!r})
    import fastsample
    from test_threads import _inputs, _run_all, _assert_same
    torch.set_num_threads(2)
    inputs = _inputs(7)
    half = inputs[0].to(torch.bfloat16)

    def run():  # every op family, the widened bfloat16 rows and the stack sampler
        return [*_run_all(inputs, seed=11), fastsample.sample(half, 0.9, top_p=0.9, seed=3, backend="cpu"),
                fastsample.sample_stack(inputs[0], temperature=0.8, top_k=30, seed=4, backend="cpu").tokens]

    want = run()  # the parent has used the ops (and OpenMP's thread pool)
    pid = os.fork()
    if pid == 0:
        try:
            got = run()
            # The comparison uses torch's own parallel ops, which would hang here (GNU OpenMP after fork)
            # unless the child is single-threaded: only the ops under test run with torch's 2 threads.
            torch.set_num_threads(1)
            _assert_same(got, want, "forked child")
            os._exit(0)
        except BaseException as exc:
            print("child failed:", repr(exc), flush=True)
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    _assert_same(run(), want, "parent after fork")
    sys.exit(os.waitstatus_to_exitcode(status))
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_cpu_ops_work_in_a_forked_child():
    """A child forked after the parent used the ops gets the same results and does not hang (a process of
    its own, so that a hang shows as a timeout, a failure, instead of stopping the test run). Without the
    extension's fork handler (csrc/cpu/fork_guard.cpp) the child waits forever in its first OpenMP region."""
    script = CHILD.format(tests=os.path.dirname(os.path.abspath(__file__)))
    safe_path = ["-P"] if sys.flags.safe_path else []  # keep the sanitized build first (tools/asan_test.sh)
    run = subprocess.run([sys.executable, *safe_path, "-c", script], capture_output=True, text=True, timeout=90,
                         env=dict(os.environ))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def _nested_caller():
    """Build (once, cached under build/) and load tests/cpp/nested_omp_caller.cpp."""
    from torch.utils import cpp_extension

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    build = os.path.join(root, "build", "nested_omp_caller")
    os.makedirs(build, exist_ok=True)
    cpp_extension.load("fastsample_nested_test", [os.path.join(root, "tests", "cpp", "nested_omp_caller.cpp")],
                       extra_cflags=["-O1", "-fopenmp"], extra_ldflags=["-fopenmp"], build_directory=build,
                       is_python_module=False)
    return torch.ops.fastsample_nested_test.sample_rows_in_parallel


@pytest.mark.parametrize("torch_threads", [1, 2, 4])
def test_cpu_ops_called_inside_an_openmp_parallel_region(torch_threads):
    """A C++ caller already inside `omp parallel` samples one row per iteration (the kernels' regions nest);
    with torch.set_num_threads changed between calls the tokens equal one batched call."""
    caller = _nested_caller()
    gen = torch.Generator().manual_seed(8)
    logits = torch.cat([torch.randn(8, VOCAB, generator=gen), torch.randn(8, VOCAB, generator=gen) * 4])
    seed = torch.arange(16, dtype=torch.int64) * 977
    offset = torch.zeros(16, dtype=torch.int64)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(torch_threads)
        for top_p in (1.0, 0.9):
            want = fastsample.sample(logits, top_p=top_p, seed=seed, offset=offset, backend="cpu")
            for team in (2, 4):
                got = caller(logits, seed, offset, top_p, team)
                assert torch.equal(got, want), f"top_p={top_p}, team of {team}, torch threads {torch_threads}"
    finally:
        torch.set_num_threads(previous)
