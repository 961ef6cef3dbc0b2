"""Typed wrappers over torch.ops.fastsample.* (the C++ CPU and CUDA kernels) and every register_fake.

The schemas live in csrc/ops.cpp. Each backend module (this one, reference.py, triton/ops.py) exposes the
same op-level functions with the same signatures (backends.Ops); fastsample/sampling.py validates arguments and
picks one. Fake kernels give output shapes and dtypes so torch.compile and CUDA-graph capture can trace.
"""
from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # a runtime import would be circular (fastsample.stack imports the backends)
    from .stack.spec import StackOpArgs

try:
    from . import _C  # noqa: F401  (loading the library registers the ops)

    AVAILABLE = True
except ImportError as exc:  # the package imports without its extension; only backend "torch" works then
    AVAILABLE = False
    IMPORT_ERROR = exc


def _say_which_cpu_path_runs() -> None:
    """FASTSAMPLE_ISA asks for a CPU vector path; the kernels never take one the CPU lacks (they fall back to
    the best it has, csrc/cpu/isa.cpp). Say so when that happens, rather than time or test another path."""
    want = os.environ.get("FASTSAMPLE_ISA")
    got = torch.ops.fastsample_cpu.isa()
    if want and want != got:
        warnings.warn(f"FASTSAMPLE_ISA={want}: this CPU has no such path (or the name is unknown; the paths are "
                      f"avx512, avx2, neon and generic, never more than the CPU has); the CPU kernels run the "
                      f"{got} path", RuntimeWarning)


if AVAILABLE:
    _say_which_cpu_path_runs()


def cuda_built() -> bool:
    """True when the extension was compiled with its CUDA kernels."""
    return AVAILABLE and torch._C._dispatch_has_kernel_for_dispatch_key("fastsample::sample", "CUDA")


Tensor = torch.Tensor
OptTensor = torch.Tensor | None


def softmax(logits: Tensor, temperature_arr: OptTensor, temperature_val: float) -> Tensor:
    return torch.ops.fastsample.softmax(logits, temperature_arr, temperature_val)


def top_k(x: Tensor, k: int, sorted: bool) -> tuple[Tensor, Tensor]:
    return torch.ops.fastsample.top_k(x, k, sorted)


def top_k_mask_logits(logits: Tensor, top_k_arr: OptTensor, top_k_val: int) -> Tensor:
    return torch.ops.fastsample.top_k_mask_logits(logits, top_k_arr, top_k_val)


def renorm_probs(probs: Tensor, top_k_arr: OptTensor, top_k_val: int, top_p_arr: OptTensor, top_p_val: float,
                 min_p_arr: OptTensor, min_p_val: float) -> Tensor:
    return torch.ops.fastsample.renorm_probs(probs, top_k_arr, top_k_val, top_p_arr, top_p_val, min_p_arr,
                                             min_p_val)


def sample(x: Tensor, is_logits: bool, temperature_arr: OptTensor, temperature_val: float, top_k_arr: OptTensor,
           top_k_val: int, top_p_arr: OptTensor, top_p_val: float, min_p_arr: OptTensor, min_p_val: float,
           seed: Tensor, offset: Tensor, return_logprobs: bool) -> tuple[Tensor, Tensor]:
    return torch.ops.fastsample.sample(x, is_logits, temperature_arr, temperature_val, top_k_arr, top_k_val,
                                       top_p_arr, top_p_val, min_p_arr, min_p_val, seed, offset, return_logprobs)


def chain_speculative_sampling(draft_probs: Tensor, draft_token_ids: Tensor, target_probs: Tensor, seed: Tensor,
                               offset: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return torch.ops.fastsample.chain_speculative_sampling(draft_probs, draft_token_ids, target_probs, seed, offset)


def tree_speculative_sampling(draft_token_ids: Tensor, parents: Tensor, target_probs: Tensor,
                              draft_probs: OptTensor, seed: Tensor, offset: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return torch.ops.fastsample.tree_speculative_sampling(draft_token_ids, parents, target_probs, draft_probs, seed,
                                                          offset)


def draw_from_cdfs(cdf: Tensor, group: Tensor, seed: Tensor, offset: Tensor, offset_step: int) -> Tensor:
    """Output i inverts CDF row ``group[i]`` with Philox draw 0 of (seed, offset + offset_step * i) (CPU only;
    fastsample/indexed.py)."""
    return torch.ops.fastsample.draw_from_cdfs(cdf, group, seed, offset, offset_step)


def logsumexp(logits: Tensor) -> Tensor:
    """log(sum(exp(logits))) per row in one read of the logits (C++ backends only): the single-pass limit
    that benchmarks compare every op with."""
    return torch.ops.fastsample.logsumexp(logits)


if AVAILABLE:

    @torch.library.register_fake("fastsample::logsumexp")
    def _logsumexp_fake(logits):
        return logits.new_empty((logits.shape[0],), dtype=torch.float32)

    @torch.library.register_fake("fastsample::draw_from_cdfs")
    def _draw_from_cdfs_fake(cdf, group, seed, offset, offset_step):
        return group.new_empty(group.shape, dtype=torch.int64)

    @torch.library.register_fake("fastsample::softmax")
    def _softmax_fake(logits, temperature_arr, temperature_val):
        return logits.new_empty(logits.shape, dtype=torch.float32)

    @torch.library.register_fake("fastsample::top_k")
    def _top_k_fake(x, k, sorted):
        shape = (x.shape[0], k)
        return x.new_empty(shape), x.new_empty(shape, dtype=torch.int64)

    @torch.library.register_fake("fastsample::top_k_mask_logits")
    def _top_k_mask_logits_fake(logits, top_k_arr, top_k_val):
        return torch.empty_like(logits)

    @torch.library.register_fake("fastsample::renorm_probs")
    def _renorm_probs_fake(probs, top_k_arr, top_k_val, top_p_arr, top_p_val, min_p_arr, min_p_val):
        # float32 for every probs dtype: half-precision probs are widened and the result stays float32.
        return torch.empty(probs.shape, dtype=torch.float32, device=probs.device)

    @torch.library.register_fake("fastsample::sample")
    def _sample_fake(x, is_logits, temperature_arr, temperature_val, top_k_arr, top_k_val, top_p_arr, top_p_val,
                     min_p_arr, min_p_val, seed, offset, return_logprobs):
        batch = x.shape[0]
        logprobs = x.new_empty((batch if return_logprobs else 0,), dtype=torch.float32)
        return x.new_empty((batch,), dtype=torch.int64), logprobs

    @torch.library.register_fake("fastsample::chain_speculative_sampling")
    def _chain_speculative_sampling_fake(draft_probs, draft_token_ids, target_probs, seed, offset):
        batch, n = draft_token_ids.shape
        ids = draft_token_ids.new_empty((batch, n + 1), dtype=torch.int64)
        return ids, ids.new_empty((batch,)), ids.new_empty((batch,))

    @torch.library.register_fake("fastsample::tree_speculative_sampling")
    def _tree_speculative_sampling_fake(draft_token_ids, parents, target_probs, draft_probs, seed, offset):
        batch, n = draft_token_ids.shape
        ids = draft_token_ids.new_empty((batch, n + 1), dtype=torch.int64)
        return ids, ids.new_empty((batch, n)), ids.new_empty((batch,))


def sample_stack(args: StackOpArgs) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The stack sampler (docs/ops.md "sample_stack"): the fused C++ op on CPU; on CUDA the route of
    fastsample/stack/cuda.py (the CUDA kernels of steps 1-3, then the `sample` kernels or device torch ops)."""
    if args.logits.device.type == "cuda":
        from .stack import cuda

        return cuda.sample_stack(args)
    return torch.ops.fastsample.sample_stack(*args)


if AVAILABLE:

    @torch.library.register_fake("fastsample::sample_stack")
    def _sample_stack_fake(*op_args):
        from .stack.spec import StackOpArgs

        args = StackOpArgs(*op_args)
        batch = args.logits.shape[0]
        lp_rows = batch if args.logprobs_mode else 0
        new = args.logits.new_empty
        return (new((batch, args.num_samples), dtype=torch.int64),
                new((lp_rows, args.num_samples), dtype=torch.float32),
                new((lp_rows, args.num_samples), dtype=torch.int64),
                new((batch, args.top_n), dtype=torch.int64), new((batch, args.top_n), dtype=torch.float32))

    if hasattr(torch.ops.fastsample, "stack_tail_filters"):

        @torch.library.register_fake("fastsample::stack_tail_filters")
        def _stack_tail_filters_fake(y, *rest, u=None, dense=True, dry_ids=None, dry_penalty=None, seed=None,
                                     offset=None, num_draws=0):
            named = dict(u=u, dense=dense, seed=seed, num_draws=num_draws)
            for i, name in ((15, "u"), (16, "dense"), (19, "seed"), (21, "num_draws")):
                if len(rest) > i:
                    named[name] = rest[i]
            u, dense, seed, num_draws = named["u"], named["dense"], named["seed"], named["num_draws"]
            batch = y.shape[0]
            n = u.shape[1] if u is not None else num_draws if seed is not None else 0
            u = u if u is not None else seed
            return (y.new_empty((batch if dense else 0, y.shape[1]), dtype=torch.float64),
                    y.new_empty((batch,), dtype=torch.bool),
                    y.new_empty((batch if u is not None else 0, n), dtype=torch.int64),
                    y.new_empty((batch if u is not None else 0,), dtype=torch.float64),
                    y.new_empty((batch,), dtype=torch.bool))

    if hasattr(torch.ops.fastsample, "stack_tail_dry"):

        @torch.library.register_fake("fastsample::stack_tail_dry")
        def _stack_tail_dry_fake(h, *rest):
            return h.new_empty(h.shape, dtype=torch.int64), h.new_empty(h.shape, dtype=torch.float32)

    @torch.library.register_fake("fastsample::stack_processed_logits")
    def _stack_processed_logits_fake(logits, *steps_2_3):
        return (logits.new_empty(logits.shape, dtype=torch.float32),
                logits.new_empty((logits.shape[0],), dtype=torch.bool))


# Per-rank passes of vocab-parallel sampling (fastsample/distributed/_local.py picks these or its torch twins;
# an extension built before they existed lacks them, and _local then runs the twins).
DIST_OPS = AVAILABLE and hasattr(torch.ops.fastsample, "dist_weigh")
if DIST_OPS:

    @torch.library.register_fake("fastsample::dist_row_stats")
    def _dist_row_stats_fake(x, tie_value):
        return x.new_empty((x.shape[0], 5), dtype=torch.int64)

    @torch.library.register_fake("fastsample::dist_weigh")
    def _dist_weigh_fake(x, m, t, mode, theta, log_min_p, per_nat, scale, store_q):
        batch = x.shape[0]
        q = x.new_empty((batch, x.shape[1] if store_q else 0), dtype=torch.int64)
        return q, x.new_empty((batch, 256), dtype=torch.int64), x.new_empty((batch,), dtype=torch.int64)

    @torch.library.register_fake("fastsample::dist_digit_hist")
    def _dist_digit_hist_fake(x, q, m, per_nat, chosen, prefix, shift):
        return x.new_empty((x.shape[0], 256), dtype=torch.int64)

    @torch.library.register_fake("fastsample::dist_kept")
    def _dist_kept_fake(x, q, theta):
        return x.new_empty((x.shape[0],), dtype=torch.int64)

    @torch.library.register_fake("fastsample::dist_walk")
    def _dist_walk_fake(x, q, m, t, mode, theta, log_min_p, target, scale):
        return x.new_empty((x.shape[0],), dtype=torch.int64)
