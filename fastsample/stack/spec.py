"""The one definition of the stack sampler's op arguments (docs/ops.md "sample_stack").

Every layer that passes the op's arguments on (the public API, fastsample/_ops.py and its fake kernel, the
torch reference, the device composition, the Triton op and the CUDA glue) takes them as one `StackOpArgs`,
the NamedTuple built below from `OP_PARAMS`, and the schema strings of the C++ ops (csrc/ops.cpp, where C++
needs them as literals) are checked against `schema()` by tests/test_stack_sampler.py. Adding a step means
adding its parameters here, once.

Per-row parameters come as a pair ``<name>_arr`` (a tensor [B] or None) and ``<name>_val`` (the scalar that
holds for every row when the tensor is None), like every other fastsample op.
"""
from __future__ import annotations

import inspect
from collections import namedtuple
from typing import NamedTuple, Optional

import torch

from ..reference import _per_row_tensor

Tensor = torch.Tensor
_PY_TYPES = {"Tensor": Tensor, "Tensor?": Optional[Tensor], "float": float, "int": int, "bool": bool}


def _row(name: str, scalar: str, *default) -> tuple[tuple, tuple]:
    """The (tensor or None, scalar) pair of a per-row parameter; with a default (the value that turns the step
    off) for the steps appended after the first release of the op, so that older positional calls still work."""
    return (f"{name}_arr", "Tensor?", *((None,) if default else ())), (f"{name}_val", scalar, *default)


# Steps 1-3 (mask -> bias -> penalties): also the arguments of the op `stack_processed_logits`.
STEPS_1_3: tuple[tuple[str, str], ...] = (
    ("logits", "Tensor"), ("allowed_mask", "Tensor?"), ("bias_ids", "Tensor?"), ("bias_values", "Tensor?"),
    ("prompt_ids", "Tensor?"), ("output_ids", "Tensor?"),
    *_row("repetition", "float"), *_row("frequency", "float"), *_row("presence", "float"),
)
# (name, schema type[, default]) in the op's positional order.
OP_PARAMS: tuple[tuple, ...] = (
    *STEPS_1_3,
    *_row("temperature", "float"), *_row("top_k", "int"), *_row("top_p", "float"), *_row("min_p", "float"),
    ("vllm_order", "bool"), ("num_samples", "int"), ("seed", "Tensor"), ("offset", "Tensor"),
    ("logprobs_mode", "int"), ("top_n", "int"),
    *_row("top_n_sigma", "float", -1.0),
)
RESULTS = ("tokens", "logprobs", "ranks", "top_ids", "top_logprobs")
PROCESSED_RESULTS = ("processed", "bad")
# Per-row parameters and the dtype of their [B] tensors.
ROW_DTYPES = {"repetition": torch.float32, "frequency": torch.float32, "presence": torch.float32,
              "temperature": torch.float32, "top_k": torch.int64, "top_p": torch.float32, "min_p": torch.float32,
              "top_n_sigma": torch.float32}
# logprobs_mode's values (the public `logprobs` argument's names).
LOGPROBS_MODES = {None: 0, "processed": 1, "raw": 2}


def _schema_default(value) -> str:
    return "None" if value is None else repr(value).rstrip("0")  # -1.0 -> "-1.", as torch prints it


def schema(name: str, params=OP_PARAMS, results=RESULTS) -> str:
    """The op's schema string, as csrc/ops.cpp declares it."""
    args = ", ".join(f"{kind} {param}" + (f"={_schema_default(rest[0])}" if rest else "")
                     for param, kind, *rest in params)
    return f"{name}({args}) -> ({', '.join(f'Tensor {r}' for r in results)})"


def op_signature() -> inspect.Signature:
    """A Python signature of the op (for torch.library.triton_op, which infers the schema from it)."""
    params = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=_PY_TYPES[kind],
                                default=rest[0] if rest else inspect.Parameter.empty)
              for name, kind, *rest in OP_PARAMS]
    return inspect.Signature(params, return_annotation=tuple[(Tensor,) * len(RESULTS)])


class StackOpArgs(namedtuple("_StackOpArgs", [name for name, *_ in OP_PARAMS],
                             defaults=[rest[0] for _, _, *rest in OP_PARAMS if rest])):
    """The op's arguments in positional order: ``torch.ops.fastsample.sample_stack(*args)``."""

    __slots__ = ()

    def row(self, name: str) -> Tensor:
        """Per-row parameter `name` as a [B] tensor on the logits' device (a scalar rounded to its dtype, as
        the kernels do)."""
        x = self.logits
        return _per_row_tensor(getattr(self, f"{name}_arr"), getattr(self, f"{name}_val"), x.shape[0],
                               ROW_DTYPES[name], x.device).contiguous()

    def fused_filters_only(self) -> bool:
        """No step beyond the `sample` op's filters is on (checked on the host without reading a tensor: a
        per-row tensor counts as on)."""
        return self.top_n_sigma_arr is None and not self.top_n_sigma_val > 0

    def steps_1_3(self) -> tuple:
        """The arguments of the op `stack_processed_logits`."""
        return tuple(self)[:len(STEPS_1_3)]


def penalties_ok(rep: Tensor, freq: Tensor, pres: Tensor) -> Tensor:
    """bool [B]: the penalties of a row are in range (r > 0 and finite, f and q finite); a row where they are not
    returns -1. The rule of the compiled kernels is csrc/include/fastsample/stack_rules.h."""
    return (rep > 0) & rep.isfinite() & freq.isfinite() & pres.isfinite()


# The long-tail steps (docs/ops.md "sample_stack", "Long-tail steps"): typical-p, epsilon, eta, XTC, dynamic
# temperature, DRY and mirostat v2. They are not arguments of the compiled op (its schema is csrc/ops.cpp's):
# when any of them is on, or order="llama.cpp", the stack runs steps 1-3 in the backend's kernels and the
# filters in fastsample/stack/tail.py (device torch ops, float64). One row per parameter:
# (name, kind, value that turns the step off / llama.cpp's default, lo, hi); kind "float" or "int"; scalars
# outside [lo, hi] (or NaN) are a ValueError naming the argument, a per-row tensor's such rows return -1.
TAIL_PARAMS: tuple[tuple, ...] = (
    ("typical_p", "float", 1.0, 0.0, 1.0),
    ("epsilon", "float", 0.0, 0.0, 1.0),
    ("eta", "float", 0.0, 0.0, 1.0),
    ("xtc_probability", "float", 0.0, 0.0, 1.0),
    ("xtc_threshold", "float", 0.1, 0.0, 1.0),
    ("dynatemp_range", "float", 0.0, 0.0, float("inf")),
    ("dynatemp_exponent", "float", 1.0, 0.0, float("inf")),
    ("dry_multiplier", "float", 0.0, 0.0, float("inf")),
    ("dry_base", "float", 1.75, 0.0, float("inf")),
    ("dry_allowed_length", "int", 2, 0, 2**31 - 1),
    ("dry_penalty_last_n", "int", -1, -1, 2**31 - 1),
    ("mirostat_tau", "float", 5.0, 0.0, float("inf")),
    ("mirostat_eta", "float", 0.1, 0.0, float("inf")),
)
TAIL_DEFAULTS = {name: default for name, _, default, _, _ in TAIL_PARAMS}
ORDERS = ("hf", "vllm", "llama.cpp")
# Philox draw index of XTC's coin (docs/design.md section 4: counter (lo32(offset), hi32(offset), j, 0)); the
# token draws use j = 0 .. num_samples - 1, so XTC takes the last 32-bit index.
XTC_DRAW = 0xFFFFFFFF


class TailArgs(NamedTuple):
    """The long-tail steps' arguments, each per-row parameter a [B] tensor on the logits' device (float32, or
    int64 for the DRY lengths), plus the DRY breakers (int64 [B, L] or [1, L], -1 padding, or None), the
    mirostat state mu (float32 [B] or None = mirostat off) and the order."""

    typical_p: Tensor
    epsilon: Tensor
    eta: Tensor
    xtc_probability: Tensor
    xtc_threshold: Tensor
    dynatemp_range: Tensor
    dynatemp_exponent: Tensor
    dry_multiplier: Tensor
    dry_base: Tensor
    dry_allowed_length: Tensor
    dry_penalty_last_n: Tensor
    mirostat_tau: Tensor
    mirostat_eta: Tensor
    dry_sequence_breakers: Optional[Tensor]
    mirostat_mu: Optional[Tensor]
    order: str
    # The steps that can be on in some row (host-side, from which arguments are tensors or scalars away from
    # their off value): "top_n_sigma", "top_k", "top_p", "min_p", "typical_p", "epsilon", "eta", "xtc",
    # "dynatemp", "dry". The others are skipped without a pass over the logits.
    active: frozenset = frozenset({"top_n_sigma", "top_k", "top_p", "min_p", "typical_p", "epsilon", "eta", "xtc",
                                   "dynatemp", "dry"})


def tail_params_ok(t: TailArgs) -> Tensor:
    """bool [B]: every long-tail parameter of the row is in its range (TAIL_PARAMS); NaN fails."""
    ok = torch.ones_like(t.typical_p, dtype=torch.bool)
    for name, _, _, lo, hi in TAIL_PARAMS:
        v = getattr(t, name)
        ok = ok & (v >= lo) & (v <= hi)
        if v.dtype.is_floating_point:
            ok = ok & v.isfinite()
    if t.mirostat_mu is not None:
        ok = ok & ~t.mirostat_mu.isnan()
    return ok
