"""Backend "torch": pure-torch implementations of the six op-level functions (docs/ops.md).

Same signatures as fastsample/_ops.py, same semantics and the same random numbers as the compiled kernels,
so this module is both the fallback that works on any device and the baseline of the benchmarks. It is
written the way vLLM and Hugging Face sample in torch: a descending sort + cumsum finds the top-k and top-p
thresholds, and a cumsum in ascending id order + searchsorted inverts the CDF. Everything is vectorised over
rows; nothing reads a tensor value on the host, so the functions are safe under torch.compile and CUDA
graphs.

Math is float32, except the prefix sums (top-p mass, the sampling CDF), which are accumulated in float64 so
that tokens agree with the float64 oracle (tests/oracle.py) everywhere but within rounding of a CDF step.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # fastsample/stack/ builds on this module
    from .stack.spec import StackOpArgs

Tensor = torch.Tensor
OptTensor = torch.Tensor | None

_MASK32 = 0xFFFFFFFF
_INF = float("inf")


# ------------------------------------------------------------------------------------------------ Philox
def _mulhilo32(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """High and low 32-bit words of the 64-bit product ``a * b`` (a a constant, b int64 in [0, 2^32)).

    The full product does not fit in int64, so b is split into 16-bit halves: a * b_lo and a * b_hi are
    below 2^48, and the middle term is split once more before it is shifted into place.
    """
    low_part = a * (b & 0xFFFF)
    high_part = a * (b >> 16)
    s = low_part + ((high_part & 0xFFFF) << 16)
    return ((high_part >> 16) + (s >> 32)) & _MASK32, s & _MASK32


def philox4x32_10(c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, k0: Tensor,
                  k1: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox4x32-10 (Random123), elementwise over broadcastable int64 tensors holding uint32 values.

    Parameters
    ----------
    c0, c1, c2, c3 : Tensor, int64 in [0, 2^32), the counter words.
    k0, k1 : Tensor, int64 in [0, 2^32), the key words.

    Returns
    -------
    The four output words, int64 tensors in [0, 2^32).
    """
    for _ in range(10):
        hi0, lo0 = _mulhilo32(0xD2511F53, c0)
        hi1, lo1 = _mulhilo32(0xCD9E8D57, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + 0x9E3779B9) & _MASK32
        k1 = (k1 + 0xBB67AE85) & _MASK32
    return c0, c1, c2, c3


def philox_uniform(seed: Tensor, offset: Tensor, draw: Tensor | int) -> Tensor:
    """The uniform of docs/design.md section 4: ``(word0 >> 8) * 2^-24`` for key = seed, counter = (offset, draw, 0).

    Parameters
    ----------
    seed, offset : Tensor, int64 (any sign: their two's-complement bits are used).
    draw : Tensor or int, the draw index j (broadcast against seed and offset).

    Returns
    -------
    float32 Tensor in [0, 1) of the broadcast shape.
    """
    # torch.full fills on the device; torch.as_tensor(int) would copy from the host (bad in a CUDA graph).
    if not isinstance(draw, torch.Tensor):
        draw = torch.full((), draw, dtype=torch.int64, device=seed.device)
    zero = torch.zeros((), dtype=torch.int64, device=seed.device)
    # & and arithmetic >> on int64 give the two's-complement words of negative seeds/offsets too.
    word0, _, _, _ = philox4x32_10(offset & _MASK32, (offset >> 32) & _MASK32, draw & _MASK32, zero,
                                   seed & _MASK32, (seed >> 32) & _MASK32)
    return (word0 >> 8).to(torch.float32) * (1.0 / 16777216.0)


# ------------------------------------------------------------------------------------------ shared helpers
def _per_row_tensor(arr: OptTensor, val, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A per-row parameter as a tensor [B]: the tensor when given, else the scalar broadcast."""
    if arr is not None:
        return arr.to(device=device, dtype=dtype)
    return torch.full((batch,), val, dtype=dtype, device=device)


def _weights(x: Tensor, is_logits: bool, temperature: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sampling weights of docs/ops.md "Weights".

    Parameters
    ----------
    x : Tensor [B, V] float32, logits or probabilities.
    is_logits : whether x holds logits.
    temperature : Tensor [B] float32 (ignored for probabilities).

    Returns
    -------
    w : Tensor [B, V] float32 weights; with T == 0, 1 on the row's maxima and 0 elsewhere.
    valid : Tensor [B] bool, False for an invalid row (its weights are meaningless).
    greedy : Tensor [B] bool, rows with T == 0.
    """
    has_nan = x.isnan().any(dim=1)
    if not is_logits:
        valid = ~has_nan & (x >= 0).all(dim=1) & ~(x == _INF).any(dim=1) & (x > 0).any(dim=1)
        return x, valid, torch.zeros_like(valid)
    row_max = x.amax(dim=1, keepdim=True)
    # 0 <= T < inf; a NaN T fails both comparisons.
    valid = ~has_nan & (row_max.squeeze(1) > -_INF) & (temperature >= 0) & (temperature < _INF)
    greedy = temperature == 0
    positive_t = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    # T is finite here, so a -inf logit gives exp(-inf) = 0.
    w = torch.exp((x - row_max) / positive_t.unsqueeze(1))
    # A +inf logit, or T == 0, puts all the mass on the row's maxima, shared equally.
    at_max = (x == row_max).to(torch.float32)
    w = torch.where((greedy | (row_max.squeeze(1) == _INF)).unsqueeze(1), at_max, w)
    return w, valid, greedy


def _kth_largest(sorted_desc: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """(threshold [B, 1], enabled [B]) of top-k from the rows sorted in descending order."""
    vocab = sorted_desc.shape[1]
    enabled = (k > 0) & (k < vocab)
    index = torch.where(enabled, k - 1, torch.zeros_like(k)).unsqueeze(1)
    return sorted_desc.gather(1, index), enabled


def _kept(x: Tensor, w: Tensor, top_k_arr: OptTensor, top_k_val: int, top_p_arr: OptTensor, top_p_val: float,
          min_p_arr: OptTensor, min_p_val: float) -> tuple[Tensor, Tensor]:
    """The kept mask of top-k -> top-p -> min-p (docs/ops.md "Filters"): the one place filters live.

    Parameters
    ----------
    x : Tensor [B, V] float32, the values that order tokens (logits or probabilities).
    w : Tensor [B, V] float32, their weights.

    Returns
    -------
    kept : Tensor [B, V] bool.
    params_ok : Tensor [B] bool, False where a top-p or min-p tensor entry is out of range.
    """
    batch, vocab = x.shape
    device = x.device
    kept = torch.ones_like(x, dtype=torch.bool)
    top_k = _per_row_tensor(top_k_arr, top_k_val, batch, torch.int64, device)
    # Scalars are rounded to float32 like the tensor form, so both forms (and every backend) agree.
    top_p = _per_row_tensor(top_p_arr, top_p_val, batch, torch.float32, device).to(torch.float64)
    min_p = _per_row_tensor(min_p_arr, min_p_val, batch, torch.float32, device)
    params_ok = (top_p >= 0) & (top_p <= 1) & (min_p >= 0) & (min_p <= 1)  # NaN compares False

    # Skipping the sort when neither filter can be active is a host decision on the arguments' types
    # and scalar values only, never on tensor contents.
    k_active = top_k_arr is not None or 0 < top_k_val < vocab
    p_active = top_p_arr is not None or top_p_val < 1
    if k_active or p_active:
        sorted_x, order = torch.sort(x, dim=1, descending=True)
        k_threshold, k_enabled = _kth_largest(sorted_x, top_k)
        in_k = (sorted_x >= k_threshold) | ~k_enabled.unsqueeze(1)
        kept = (x >= k_threshold) | ~k_enabled.unsqueeze(1)
        if p_active:
            # Mass of the top-k survivors strictly before each sorted position. Kept positions are a prefix
            # of the sorted row; its last value is the top-p threshold, so ties with it are all kept and
            # the most probable token(s) always are (max(count, 1) handles p == 0).
            sorted_w = torch.where(in_k, w.gather(1, order), 0.0).to(torch.float64)
            mass = sorted_w.cumsum(dim=1)
            mass_before = mass - sorted_w
            below = in_k & (mass_before < top_p.unsqueeze(1) * mass[:, -1:])
            last = below.sum(dim=1, keepdim=True).clamp(min=1) - 1
            p_kept = (x >= sorted_x.gather(1, last)) | (top_p >= 1).unsqueeze(1)
            kept = kept & p_kept
    if min_p_arr is not None or min_p_val > 0:
        w_max = w.amax(dim=1, keepdim=True)
        kept = kept & ((w >= min_p.unsqueeze(1) * w_max) | (min_p <= 0).unsqueeze(1))
    return kept, params_ok


def _inverse_cdf(w: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """The smallest i with ``sum_{k <= i} w_k > u * sum_k w_k`` (ascending id order, float64 prefix sums).

    Parameters
    ----------
    w : Tensor [B, V], non-negative weights (0 on dropped tokens).
    u : Tensor [B] float32 uniforms in [0, 1).

    Returns
    -------
    token : Tensor [B] int64, clamped into [0, V) so that it can always be gathered (rows whose weights
        are invalid get an arbitrary id here; callers replace it with -1).
    total : Tensor [B] float64, the sum of w.
    """
    cdf = w.to(torch.float64).cumsum(dim=1)
    total = cdf[:, -1]
    target = (u.to(torch.float64) * total).unsqueeze(1)
    token = torch.searchsorted(cdf, target, right=True).squeeze(1)
    return token.clamp(max=w.shape[1] - 1), total


# ---------------------------------------------------------------------------------------------------- ops
def softmax(logits: Tensor, temperature_arr: OptTensor, temperature_val: float) -> Tensor:
    """float32 ``w / sum(w)`` with the logits weights; T == 0: uniform over the maxima; invalid rows NaN."""
    x = logits.to(torch.float32)
    temperature = _per_row_tensor(temperature_arr, temperature_val, x.shape[0], torch.float32, x.device)
    w, valid, _ = _weights(x, True, temperature)
    probs = w / w.sum(dim=1, keepdim=True)
    return probs.masked_fill(~valid.unsqueeze(1), float("nan"))


def top_k(x: Tensor, k: int, sorted: bool) -> tuple[Tensor, Tensor]:
    """``torch.topk(x, k, largest=True)`` with ties to the lower index and NaN largest.

    A stable descending sort gives exactly that order (torch.sort puts NaN above +inf), which
    ``torch.topk`` does not promise for ties. ``sorted=False`` returns the sorted order too.
    """
    values, indices = torch.sort(x, dim=1, descending=True, stable=True)
    return values[:, :k], indices[:, :k]


def top_k_mask_logits(logits: Tensor, top_k_arr: OptTensor, top_k_val: int) -> Tensor:
    """Logits below the row's k-th largest value set to -inf, dtype kept; a row with a NaN is unchanged."""
    batch, vocab = logits.shape
    if top_k_arr is None and not 0 < top_k_val < vocab:
        return logits.clone()
    x = logits.to(torch.float32)
    top_k_t = _per_row_tensor(top_k_arr, top_k_val, batch, torch.int64, logits.device)
    threshold, enabled = _kth_largest(torch.sort(x, dim=1, descending=True).values, top_k_t)
    drop = (x < threshold) & (enabled & ~x.isnan().any(dim=1)).unsqueeze(1)
    return logits.masked_fill(drop, -_INF)


def renorm_probs(probs: Tensor, top_k_arr: OptTensor, top_k_val: int, top_p_arr: OptTensor, top_p_val: float,
                 min_p_arr: OptTensor, min_p_val: float) -> Tensor:
    """``p_i / sum_{kept} p_j`` on the kept tokens, 0 elsewhere; an invalid row comes back all zeros."""
    x = probs.to(torch.float32)
    ones = torch.ones(x.shape[0], dtype=torch.float32, device=x.device)
    _, valid, _ = _weights(x, False, ones)
    kept, params_ok = _kept(x, x, top_k_arr, top_k_val, top_p_arr, top_p_val, min_p_arr, min_p_val)
    kept = kept & (valid & params_ok).unsqueeze(1)
    kept_probs = torch.where(kept, x, 0.0)
    total = kept_probs.sum(dim=1, keepdim=True, dtype=torch.float64)
    # Invalid rows have total 0 here: 0 / 0 would be NaN, so divide by 1 instead.
    total = torch.where(total > 0, total, torch.ones_like(total))
    return (kept_probs / total).to(torch.float32)


def sample(x: Tensor, is_logits: bool, temperature_arr: OptTensor, temperature_val: float, top_k_arr: OptTensor,
           top_k_val: int, top_p_arr: OptTensor, top_p_val: float, min_p_arr: OptTensor, min_p_val: float,
           seed: Tensor, offset: Tensor, return_logprobs: bool) -> tuple[Tensor, Tensor]:
    """One token per row: weights -> top-k -> top-p -> min-p -> inverse CDF with Philox draw 0.

    Greedy rows (T == 0, logits only) take the lowest index of the row max; filters do not change their
    token, but an out-of-range filter value still makes the row invalid. Invalid rows give token -1 and
    logprob NaN. logprobs is an empty float32 [0] unless return_logprobs.
    """
    batch, _ = x.shape
    xf = x.to(torch.float32)
    if is_logits:
        temperature = _per_row_tensor(temperature_arr, temperature_val, batch, torch.float32, x.device)
    else:
        temperature = torch.ones(batch, dtype=torch.float32, device=x.device)
    w, valid, greedy = _weights(xf, is_logits, temperature)
    kept, params_ok = _kept(xf, w, top_k_arr, top_k_val, top_p_arr, top_p_val, min_p_arr, min_p_val)
    valid = valid & params_ok
    kept_w = torch.where(kept | greedy.unsqueeze(1), w, 0.0)
    token, total = _inverse_cdf(kept_w, philox_uniform(seed, offset, 0))
    # torch.argmax returns the first maximal index, which is the lowest index on ties.
    token = torch.where(greedy, xf.argmax(dim=1), token)
    tokens = torch.where(valid, token, -1)
    if not return_logprobs:
        return tokens, torch.empty(0, dtype=torch.float32, device=x.device)
    # Greedy rows weigh 1 on each maximum, so this is -log(number of maxima) there.
    logprobs = torch.log(kept_w.gather(1, token.unsqueeze(1)).squeeze(1).to(torch.float64) / total)
    return tokens, torch.where(valid, logprobs, float("nan")).to(torch.float32)


def chain_speculative_sampling(draft_probs: Tensor, draft_token_ids: Tensor, target_probs: Tensor, seed: Tensor,
                               offset: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Speculative acceptance of docs/ops.md: test each draft position, then sample the final token.

    Position i passes iff its draft id x is in [0, V) and ``u_i * q_i(x) < p_i(x)`` (u_i = draw i; the
    product is exact in float64, as in the oracle). The final token uses draw n and is sampled from
    ``max(0, p_e - q_e)`` at the first failing position e (from p_e if that sums to 0), or from p_n when
    every position passes; -1 when those weights are invalid.
    """
    batch, n, vocab = draft_probs.shape
    device = draft_probs.device
    u = philox_uniform(seed.unsqueeze(1), offset.unsqueeze(1), torch.arange(n + 1, device=device))

    in_range = (draft_token_ids >= 0) & (draft_token_ids < vocab)
    safe_ids = draft_token_ids.clamp(0, vocab - 1).unsqueeze(2)
    q = draft_probs.gather(2, safe_ids).squeeze(2).to(torch.float64)
    p = target_probs[:, :n].gather(2, safe_ids).squeeze(2).to(torch.float64)
    passed = in_range & (u[:, :n].to(torch.float64) * q < p)  # a NaN compares False: fails
    accepted_num = passed.sum(dim=1)
    emitted_num = passed.to(torch.int64).cumprod(dim=1).sum(dim=1)

    row_index = emitted_num.view(batch, 1, 1).expand(batch, 1, vocab)
    p_e = target_probs.gather(1, row_index).squeeze(1).to(torch.float64)
    if n > 0:
        q_e = draft_probs.gather(1, row_index.clamp(max=n - 1)).squeeze(1).to(torch.float64)
    else:
        q_e = torch.zeros_like(p_e)
    residual = (p_e - q_e).clamp(min=0)  # clamp keeps NaN, so a NaN input stays an invalid row
    # A negative or infinite entry of p or q makes the residual invalid too (docs/ops.md).
    bad = (p_e < 0) | (q_e < 0) | (p_e == _INF) | (q_e == _INF)
    residual = torch.where(bad, float("nan"), residual)
    use_p = (emitted_num == n) | (residual.sum(dim=1) == 0)
    weights = torch.where(use_p.unsqueeze(1), p_e, residual)
    valid = (~weights.isnan().any(dim=1) & (weights >= 0).all(dim=1) & ~(weights == _INF).any(dim=1)
             & (weights > 0).any(dim=1))
    final, _ = _inverse_cdf(weights, u[:, n])
    final = torch.where(valid, final, -1)

    position = torch.arange(n + 1, device=device).unsqueeze(0)
    prefix = torch.cat([draft_token_ids.to(torch.int64), final.unsqueeze(1)], dim=1)
    emitted = emitted_num.unsqueeze(1)
    output = torch.where(position < emitted, prefix, torch.where(position == emitted, final.unsqueeze(1), -1))
    return output, accepted_num, emitted_num


def sample_stack(args: StackOpArgs) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The stack sampler, written out in fastsample/stack/reference.py."""
    from .stack import reference as stack_reference  # that module builds on this one

    return stack_reference.sample_stack(args)
