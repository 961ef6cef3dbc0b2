"""Exact arithmetic behind vocab-parallel sampling: order keys of float32 values, fixed-point weights, and
integer comparisons of masses against ``p * W`` and ``u * W``.

Invariant (what makes the decisions independent of the split): every quantity that is summed across tokens
or ranks is an int64 multiple of 2^-scale (`fixed_point_weights`), so sums are exact in any order, and every
comparison of such a sum with a float32 fraction of another (`floor_scaled`) is done in exact integer
arithmetic. Only elementwise float64 operations (subtract, divide, exp) happen before the rounding to
fixed point, and those do not depend on where a token sits in the vocabulary or on which rank.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor

_LOW31 = (1 << 31) - 1
#: Key of every NaN: above the key of +inf (NaN counts as the largest value, as in torch.sort and top_k).
KEY_NAN = (1 << 32) - 1


def keys(x: Tensor) -> Tensor:
    """Order-preserving int64 keys in [0, 2^32) of float32 values.

    ``a < b`` iff ``keys(a) < keys(b)`` for non-NaN values; -0.0 and +0.0 share one key; every NaN maps to
    `KEY_NAN`. Sorting or comparing keys is therefore exact integer work that agrees with float comparisons.
    """
    bits = (x + 0.0).view(torch.int32).to(torch.int64)  # x + 0.0 turns -0.0 into +0.0
    k = torch.where(bits >= 0, bits + (1 << 31), -1 - bits)
    return k.masked_fill_(torch.isnan(x), KEY_NAN)


def values(k: Tensor) -> Tensor:
    """The float32 values of keys made by `keys` (any key in [0, 2^32) decodes to some float32)."""
    bits = torch.where(k >= (1 << 31), k - (1 << 31), -1 - k)
    return bits.to(torch.int32).view(torch.float32)


def scale_bits(vocab: int) -> int:
    """Fixed-point bits for a vocabulary of ``vocab`` tokens: weights <= 1, so any sum of them stays < 2^61."""
    return 61 - vocab.bit_length()


def fixed_point_weights(d: Tensor, scale: int) -> Tensor:
    """``round(exp(d) * 2^scale)`` as int64, computed in place in ``d`` (float64, d <= 0)."""
    return d.exp_().mul_(float(2**scale)).round_().to(torch.int64)


def floor_scaled(f: Tensor, total: Tensor) -> tuple[Tensor, Tensor]:
    """``floor(f * total)`` and whether ``f * total`` is not an integer, both exact.

    Parameters
    ----------
    f : Tensor [B] float32 in [0, 1] (anything else is treated as 0: callers mask those rows).
    total : Tensor [B] int64 in [0, 2^61).

    Returns
    -------
    (floor int64 [B], inexact bool [B]). Then ``a < f * total`` iff ``a < floor + inexact`` and
    ``a > f * total`` iff ``a > floor`` for any integer a.
    """
    f = torch.where((f >= 0) & (f <= 1), f, torch.zeros_like(f)).to(torch.float64)
    mantissa, exponent = torch.frexp(f)  # f = mantissa * 2^exponent, mantissa in [0.5, 1) or 0
    m = (mantissa * (1 << 24)).to(torch.int64)  # exact: float32 has a 24-bit significand
    e = 24 - exponent.to(torch.int64)  # f = m * 2^-e, and e >= 23 because f <= 1
    # m * total = hi * 2^31 + lo without overflow: m < 2^24 and each half of total < 2^31.
    p0 = m * (total & _LOW31)
    hi = m * (total >> 31) + (p0 >> 31)  # < 2^54
    lo = p0 & _LOW31
    one = torch.ones_like(total)
    # e <= 31: floor = hi * 2^(31-e) + lo >> e (hi << 8 < 2^62 at most).
    up, down = (31 - e).clamp(0, 31), e.clamp(0, 31)
    floor_small = torch.bitwise_left_shift(hi, up) + torch.bitwise_right_shift(lo, down)
    rem_small = (lo & (torch.bitwise_left_shift(one, down) - 1)) != 0
    # e > 31: floor = hi >> (e - 31); a shift clamped at 62 already clears hi (< 2^54) entirely.
    shift = (e - 31).clamp(0, 62)
    floor_big = torch.bitwise_right_shift(hi, shift)
    rem_big = ((hi & (torch.bitwise_left_shift(one, shift) - 1)) != 0) | (lo != 0)
    small = e <= 31
    return torch.where(small, floor_small, floor_big), torch.where(small, rem_small, rem_big)


def radix_digit(prefix: Tensor, above: Tensor, hist: Tensor, limit: Tensor) -> tuple[Tensor, Tensor]:
    """One step of the top-p threshold search over 8-bit digits of the keys.

    The threshold is the smallest key t with ``mass(keys > t) < limit``. Given the mass strictly above the
    current key range (``above``) and the mass of each digit of the next 8 bits inside it (``hist``
    [B, 256]), the threshold's digit is the first d with ``above + mass(digits > d) < limit``.

    Returns
    -------
    (prefix extended by the digit, mass strictly above the new range).
    """
    after = hist.sum(dim=1, keepdim=True) - hist.cumsum(dim=1)  # mass of the digits above each digit
    passes = above.unsqueeze(1) + after < limit.unsqueeze(1)  # false, then true (non-increasing mass)
    digit = (~passes).sum(dim=1).clamp(max=hist.shape[1] - 1)
    above = above + after.gather(1, digit.unsqueeze(1)).squeeze(1)
    return prefix * hist.shape[1] + digit, above
