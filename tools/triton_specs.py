"""Every Triton kernel specialisation the launchers of fastsample/triton/ pick on a GPU, found without a GPU.

The launchers (softmax, top_k, top_k_mask_logits, renorm_probs, sample, chain_speculative_sampling,
tree_speculative_sampling and the stack
sampler's processed_logits) are called
on ``meta`` tensors with ``launch.split`` told that the device is a GPU with a given number of SMs, and
``wrap_triton`` replaced by a recorder: each launch yields the kernel, the argument types (Triton signature
strings), the constexprs (block sizes, chunk padding, flags, levels) and num_warps, exactly as the launcher
chose them. ``specs()`` sweeps vocabularies, dtypes, batch sizes and the per-row/scalar parameter variants and
returns the distinct specialisations.

Integer arguments get Triton's one value specialisation, divisibility by 16 ("D", as the JIT does); pointers
are taken as 16-byte aligned (fresh torch allocations are).
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
from dataclasses import dataclass

import torch

VOCABS = (32000, 128256, 151936, 262144)
# Spans every chunk count split() picks on A100 (108 SMs) and H100 (132): B = 1 gives the most chunks,
# B >= 1024 one chunk per row.
BATCHES = (1, 8, 16, 32, 64, 128, 256, 1024)
SM_COUNTS = {80: 108, 90: 132}  # A100, H100/H200
LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DRAFT_POSITIONS = 4
# top_k's sort kernel is specialised on K_PAD = pow2(k) for k <= SORT_MAX; these k reach every K_PAD.
TOPK_KS = tuple(1 << i for i in range(1, 13)) + (50,)
_TYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
         torch.int64: "i64", torch.int32: "i32", torch.bool: "i1"}
_MODULES = ("softmax", "topk", "sampling", "renorm", "speculative", "rowstats", "filters", "radix", "stack_sampler",
            "speculative_tree")
# The stack sampler's id lists in the bench's shape: 16 biased ids, 1024 prompt and 256 output tokens.
STACK_LENGTHS = {"bias": 16, "prompt": 1024, "output": 256}


@dataclass(frozen=True)
class Spec:
    """One compilation: kernel (module.name), signature, constexprs, divisible args, warps and an example."""

    kernel: str
    signature: tuple[tuple[str, str], ...]  # (arg name, type) in argument order; constexprs typed "constexpr"
    constexprs: tuple[tuple[str, object], ...]
    divisible: tuple[int, ...]  # argument indices known to be multiples of 16 (values) or 16-aligned (pointers)
    num_warps: int

    def label(self) -> str:
        return ",".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in self.constexprs)


def _arg_type(value) -> tuple[str, bool]:
    """(Triton signature type, divisible by 16) of a launch argument."""
    if isinstance(value, torch.Tensor):
        return "*" + _TYPE[value.dtype], True
    if isinstance(value, bool):
        return "i1", False
    if isinstance(value, int):
        return ("i32" if -2**31 <= value < 2**31 else "i64"), value % 16 == 0
    if isinstance(value, float):
        return "fp32", False
    raise TypeError(f"unexpected kernel argument {value!r}")


def _is_constexpr(annotation) -> bool:
    """Whether a kernel parameter is a tl.constexpr (the annotation is a string under postponed evaluation)."""
    if isinstance(annotation, str):
        return annotation.rsplit(".", 1)[-1] == "constexpr"
    return getattr(annotation, "__name__", "") == "constexpr"


class _Recorder:
    """Stands in for torch.library.wrap_triton: records each launch instead of running it."""

    def __init__(self):
        self.specs: set[Spec] = set()

    def __call__(self, kernel):
        recorder = self

        class Launcher:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: recorder.record(kernel, args, kwargs)

        return Launcher()

    def record(self, kernel, args, kwargs):
        warps = kwargs.pop("num_warps", 4)
        kwargs.pop("num_stages", None)
        params = inspect.signature(kernel.fn).parameters
        bound = dict(zip(params, args), **kwargs)
        sig, const, div = [], [], []
        for i, (name, param) in enumerate(params.items()):
            value = bound[name]
            if _is_constexpr(param.annotation):
                sig.append((name, "constexpr"))
                const.append((name, value))
                continue
            typ, aligned = _arg_type(value)
            sig.append((name, typ))
            if aligned:
                div.append(i)
        name = f"{kernel.fn.__module__.rsplit('.', 1)[-1]}.{kernel.fn.__name__}"
        self.specs.add(Spec(name, tuple(sig), tuple(const), tuple(div), warps))


@contextlib.contextmanager
def _gpu_launches(sm_count: int, recorder: _Recorder):
    """Makes the launchers plan for a GPU with ``sm_count`` SMs and record instead of launching."""
    from fastsample.triton import launch

    modules = [importlib.import_module(f"fastsample.triton.{m}") for m in _MODULES]
    real_split, real_sms = launch.split, launch._sm_count
    saved = {m: m.wrap_triton for m in modules if hasattr(m, "wrap_triton")}

    class _Gpu:
        type = "cuda"

    launch._sm_count = lambda device: sm_count
    launch.split = lambda batch, vocab, device: real_split(batch, vocab, _Gpu())
    for m in saved:
        m.wrap_triton = recorder
    try:
        yield
    finally:
        launch.split, launch._sm_count = real_split, real_sms
        for m, fn in saved.items():
            m.wrap_triton = fn


def _filter_variants(batch: int):
    """(top_k, top_p, min_p) variants, scalar and per-row, that switch every constexpr flag on and off."""
    k_arr = torch.full((batch,), 50, dtype=torch.int64, device="meta")
    p_arr = torch.full((batch,), 0.9, dtype=torch.float32, device="meta")
    mp_arr = torch.full((batch,), 0.1, dtype=torch.float32, device="meta")
    return [((None, 0), (None, 1.0), (None, 0.0)), ((None, 50), (None, 0.9), (None, 0.1)),
            ((None, 50), (None, 1.0), (None, 0.0)), ((None, 0), (None, 0.9), (None, 0.0)),
            ((k_arr, 0), (p_arr, float("nan")), (mp_arr, float("nan")))]


def _launch_all(vocab: int, batch: int) -> None:
    from fastsample.triton import renorm, sampling, softmax, speculative, speculative_tree, topk

    meta = dict(device="meta")
    t_arr = torch.full((batch,), 0.8, dtype=torch.float32, **meta)
    seed = torch.zeros(batch, dtype=torch.int64, **meta)
    probs = torch.empty((batch, vocab), dtype=torch.float32, **meta)
    for dtype in LOGIT_DTYPES:
        logits = torch.empty((batch, vocab), dtype=dtype, **meta)
        for t in ((None, 1.0), (t_arr, float("nan"))):
            softmax.softmax(logits, *t)
        # The sort kernel's dtype only types one gather; its big tiles (K_PAD up to 4096) compile for minutes,
        # so every K_PAD is compiled for float32 and the other dtypes at k = 50.
        for k in TOPK_KS if dtype == torch.float32 else (50,):
            topk.top_k(logits, k, True)
        topk.top_k_mask_logits(logits, None, 50)
        topk.top_k_mask_logits(logits, torch.full((batch,), 50, dtype=torch.int64, **meta), 0)
        for k, p, mp in _filter_variants(batch):
            for t in ((None, 0.8), (t_arr, float("nan"))):
                for logprobs in (False, True):
                    sampling.sample(logits, True, *t, *k, *p, *mp, seed, seed, logprobs)
    for k, p, mp in _filter_variants(batch):
        renorm.renorm_probs(probs, *k, *p, *mp)
        sampling.sample(probs, False, None, 1.0, *k, *p, *mp, seed, seed, False)
    draft = torch.empty((batch, DRAFT_POSITIONS, vocab), dtype=torch.float32, **meta)
    target = torch.empty((batch, DRAFT_POSITIONS + 1, vocab), dtype=torch.float32, **meta)
    ids = torch.zeros((batch, DRAFT_POSITIONS), dtype=torch.int64, **meta)
    speculative.chain_speculative_sampling(draft, ids, target, seed, seed)
    # The tree kernel in both modes and every probability dtype (it reads them as they come).
    for dtype in LOGIT_DTYPES:
        tree_target = target.to(dtype)
        for tree_draft in (None, draft.to(dtype)):
            speculative_tree.tree_speculative_sampling(ids, ids, tree_target, tree_draft, seed, seed)
    _launch_stack(vocab, batch)


def _launch_stack(vocab: int, batch: int) -> None:
    """The stack sampler's two override kernels with each step (mask, bias, prompt, output) on and off; its
    draws run the sampling kernels swept above."""
    from fastsample.triton import stack_sampler

    meta = dict(device="meta")
    ids = {name: torch.zeros((batch, n), dtype=torch.int64, **meta) for name, n in STACK_LENGTHS.items()}
    values = torch.zeros((batch, STACK_LENGTHS["bias"]), dtype=torch.float32, **meta)
    mask = torch.zeros((batch, -(-vocab // 32)), dtype=torch.int32, **meta)
    per_row = [torch.ones(batch, dtype=torch.float32, **meta) for _ in range(3)]
    for dtype in LOGIT_DTYPES:
        logits = torch.empty((batch, vocab), dtype=dtype, **meta)
        for on in range(16):  # bit 0: mask, 1: bias, 2: prompt, 3: output
            pick = lambda bit, t: t if on >> bit & 1 else None  # noqa: E731
            stack_sampler.processed_logits(logits, pick(0, mask), pick(1, ids["bias"]), pick(1, values),
                                           pick(2, ids["prompt"]), pick(3, ids["output"]), *per_row)


def specs(capability: int, vocabs=VOCABS, batches=BATCHES) -> list[Spec]:
    """The distinct kernel specialisations the launchers pick on a GPU of this compute capability."""
    recorder = _Recorder()
    with _gpu_launches(SM_COUNTS[capability], recorder):
        for vocab in vocabs:
            for batch in batches:
                _launch_all(vocab, batch)
    return sorted(recorder.specs, key=lambda s: (s.kernel, s.label(), s.signature, s.divisible))
