"""Triton backend of the stack sampler (docs/ops.md "sample_stack"): steps 1-3 in two kernels, 4-7 on device.

Exactness invariant: the processed logit of a token is computed in float64 from its float32 logit, exactly
as docs/ops.md states (x + the sum of its bias values, then the repetition penalty by the sign of that sum,
then ``f * c + q`` for an output count c > 0), rounded to float32 once, then -inf where the bitmask clears
the token. Only float64 rounding may differ from the reference (the order in which the atomics add repeated
bias values of one token; the compiler may contract ``f * c + q`` into an FMA on a GPU), which changes the
float32 result only when the float64 value lies within a float64 ulp of a float32 rounding boundary.

- ``scatter_overrides_kernel`` (one program per row, O(L) work): reads the -1-padded id lists once and scatters
  them into per-token buffers with atomics: bias sums (float64) and an int32 state (output count, plus a
  bit for "in the prompt"), and flags the row when an id lies outside [-1, V).
- ``apply_overrides_kernel`` (a program per row and block of V): one read of the logits and the buffers, the
  bitmask bit of each token, one float32 write of the processed logits.
- Steps 4-7: fastsample/stack/compose.py ``finish``, as for the CUDA backend, with the Triton kernels of the
  ``sample`` op (sampling.py) for one draw in HF order without logprobs. The op reads no value on the host and
  is graph-safe.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ..stack import compose
from ..stack.spec import StackOpArgs, op_signature
from . import sampling as _sampling
from .jit import helper

Tensor = torch.Tensor
OptTensor = torch.Tensor | None

BLOCK_L = 128
BLOCK_V = 1024
INTERPRETER_BLOCK_V = 16384  # the interpreter pays per operation, not per element: big tiles
# A token's int32 state: bit 30 = in the prompt, the bits below = its count in the output (L < 2^30).
SEEN = tl.constexpr(1 << 30)


@helper
def _scatter_ids(ids_ptr, row, length, vocab, target_ptr, value_ptr, BLOCK: tl.constexpr, KIND: tl.constexpr):
    """Scatter one row's id list; returns 1 when an id lies outside [-1, V). KIND 0: bias (add value_ptr's
    values in float64), 1: prompt (set the SEEN bit), 2: output (add 1 to the count)."""
    bad = tl.zeros([BLOCK], dtype=tl.int32)
    row_off = row.to(tl.int64) * vocab
    for start in range(0, length, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < length
        ids = tl.load(ids_ptr + row.to(tl.int64) * length + offs, mask=inside, other=-1)
        bad |= (inside & ((ids < -1) | (ids >= vocab))).to(tl.int32)
        use = inside & (ids >= 0) & (ids < vocab)
        where = row_off + tl.where(use, ids, 0)
        if KIND == 0:
            values = tl.load(value_ptr + row.to(tl.int64) * length + offs, mask=inside, other=0.0)
            tl.atomic_add(target_ptr + where, values.to(tl.float64), mask=use)
        elif KIND == 1:
            tl.atomic_or(target_ptr + where, tl.full([BLOCK], SEEN, tl.int32), mask=use)
        else:
            tl.atomic_add(target_ptr + where, tl.full([BLOCK], 1, tl.int32), mask=use)
    return tl.max(bad, axis=0)


@triton.jit
def scatter_overrides_kernel(bias_ids_ptr, bias_values_ptr, bias_len, prompt_ptr, prompt_len, output_ptr, output_len,
                       bias_sum_ptr, counts_ptr, bad_ptr, vocab, HAS_BIAS: tl.constexpr,
                       HAS_PROMPT: tl.constexpr, HAS_OUTPUT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    bad = 0
    if HAS_BIAS:
        bad |= _scatter_ids(bias_ids_ptr, row, bias_len, vocab, bias_sum_ptr, bias_values_ptr, BLOCK, 0)
    if HAS_PROMPT:
        bad |= _scatter_ids(prompt_ptr, row, prompt_len, vocab, counts_ptr, bias_values_ptr, BLOCK, 1)
    if HAS_OUTPUT:
        bad |= _scatter_ids(output_ptr, row, output_len, vocab, counts_ptr, bias_values_ptr, BLOCK, 2)
    tl.store(bad_ptr + row, bad)


@triton.jit
def apply_overrides_kernel(x_ptr, y_ptr, mask_ptr, words, bias_sum_ptr, counts_ptr, rep_ptr, freq_ptr, pres_ptr,
                     vocab, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_PENALTY: tl.constexpr,
                     BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < vocab
    at = row.to(tl.int64) * vocab + offs
    z = tl.load(x_ptr + at, mask=inside, other=0.0).to(tl.float32).to(tl.float64)
    if HAS_BIAS:
        z += tl.load(bias_sum_ptr + at, mask=inside, other=0.0)
    if HAS_PENALTY:
        state = tl.load(counts_ptr + at, mask=inside, other=0)
        seen = state != 0  # in the prompt (SEEN bit) or the output (count > 0)
        count = state & (SEEN - 1)
        r = tl.load(rep_ptr + row).to(tl.float64)
        z = tl.where(seen, tl.where(z > 0, z / r, z * r), z)
        penalty = tl.load(freq_ptr + row).to(tl.float64) * count.to(tl.float64) + tl.load(pres_ptr + row).to(tl.float64)
        z = tl.where(count > 0, z - penalty, z)
    y = z.to(tl.float32)
    if HAS_MASK:
        word = tl.load(mask_ptr + row.to(tl.int64) * words + offs // 32, mask=inside, other=0)
        y = tl.where(((word >> (offs % 32)) & 1) != 0, y, float("-inf"))
    tl.store(y_ptr + at, y, mask=inside)


def _given(ids: OptTensor) -> bool:
    return ids is not None and ids.shape[1] > 0


def processed_logits(x: Tensor, allowed_mask: OptTensor, bias_ids: OptTensor, bias_values: OptTensor,
                     prompt_ids: OptTensor, output_ids: OptTensor, rep: Tensor, freq: Tensor,
                     pres: Tensor) -> tuple[Tensor, Tensor]:
    """Steps 1-3 in the two kernels: (y float32 [B, V], bad bool [B]: rows with an out-of-range id)."""
    batch, vocab = x.shape
    device = x.device
    has_bias, has_prompt, has_output = _given(bias_ids), _given(prompt_ids), _given(output_ids)
    has_penalty = has_prompt or has_output
    bias_sum = torch.zeros(batch, vocab if has_bias else 1, dtype=torch.float64, device=device)
    counts = torch.zeros(batch, vocab if has_penalty else 1, dtype=torch.int32, device=device)
    bad = torch.zeros(batch, dtype=torch.int32, device=device)
    y = torch.empty(batch, vocab, dtype=torch.float32, device=device)
    if batch == 0:
        return y, bad.bool()
    dummy = bad  # a valid pointer for lists that are not given (never read: their flag is off)
    pick = lambda t, on: t.contiguous() if on else dummy  # noqa: E731
    if has_bias or has_penalty:
        wrap_triton(scatter_overrides_kernel)[(batch,)](
            pick(bias_ids, has_bias), pick(bias_values, has_bias), bias_ids.shape[1] if has_bias else 0,
            pick(prompt_ids, has_prompt), prompt_ids.shape[1] if has_prompt else 0,
            pick(output_ids, has_output), output_ids.shape[1] if has_output else 0,
            bias_sum, counts, bad, vocab, HAS_BIAS=has_bias, HAS_PROMPT=has_prompt, HAS_OUTPUT=has_output,
            BLOCK=BLOCK_L)
    block = INTERPRETER_BLOCK_V if device.type == "cpu" else BLOCK_V
    block = min(block, max(16, triton.next_power_of_2(vocab)))
    has_mask = allowed_mask is not None
    wrap_triton(apply_overrides_kernel)[(batch, triton.cdiv(vocab, block))](
        x, y, allowed_mask.contiguous() if has_mask else dummy, allowed_mask.shape[1] if has_mask else 0, bias_sum,
        counts, rep, freq, pres, vocab, HAS_MASK=has_mask, HAS_BIAS=has_bias, HAS_PENALTY=has_penalty,
        BLOCK=block)
    return y, bad.bool()


def _sample_stack_op(*op_args) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    args = StackOpArgs(*op_args)
    args = args._replace(logits=args.logits.contiguous())
    y, id_bad = processed_logits(args.logits, args.allowed_mask, args.bias_ids, args.bias_values, args.prompt_ids,
                                 args.output_ids, args.row("repetition"), args.row("frequency"),
                                 args.row("presence"))
    return compose.finish(_sampling.sample, args, y, compose.invalid_rows(args, id_bad))


_sample_stack_op.__signature__ = op_signature()  # the op's parameters, from the one definition (spec.py)
_sample_stack_op = triton_op("fastsample_triton::sample_stack", mutates_args=())(_sample_stack_op)


def sample_stack(args: StackOpArgs) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The op-level stack sampler (fastsample.backends.Ops.sample_stack)."""
    return torch.ops.fastsample_triton.sample_stack(*args)
