"""generator / seed / offset -> the per-row (seed, offset) int64 tensors of docs/design.md, section 4.

Rules (each row b of a batch of B):

- ``seed`` given as an int s: seed_b = s.  Given as an int64 tensor [B]: seed_b = seed[b].
- neither ``seed`` nor ``offset`` given, or only ``offset``: one 63-bit seed S is drawn from ``generator``
  (or torch's default generator of the input's device) per call, seed_b = S.
- ``offset`` given as an int64 tensor [B]: offset_b = offset[b].  Given as an int o (default 0):
  offset_b = o + b when the seed is one number for the whole batch (so rows draw different uniforms), and
  offset_b = o when seeds are per row (so a row's token depends only on its own seed: batch invariance).

Nothing here reads a tensor's value on the host, so the result may stay on the device (CUDA graphs).
"""
from __future__ import annotations

import torch

_SEED_HIGH = 2**63 - 1


def _check_int(name: str, value: int) -> int:
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"{name} must fit in int64, got {value}")
    return value


def _check_row_tensor(name: str, value: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    if value.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an int64 tensor of shape [{batch}], got dtype {value.dtype}")
    if value.shape != (batch,):
        raise ValueError(f"{name} must have shape [{batch}], got {list(value.shape)}")
    if value.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on a CPU or CUDA device, got a tensor on {value.device}")
    return value.to(device=device, dtype=torch.int64)


def per_row_seed_offset(
    batch: int,
    device: torch.device,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    offset: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(seed, offset)``, two int64 tensors of shape [batch] on ``device``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    per_row_seed = isinstance(seed, torch.Tensor)
    if per_row_seed:
        seed_t = _check_row_tensor("seed", seed, batch, device)
    elif seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int or an int64 tensor, got {type(seed).__name__}")
        seed_t = torch.full((batch,), _check_int("seed", seed), dtype=torch.int64, device=device)
    else:
        gen_device = generator.device if generator is not None else device
        drawn = torch.randint(0, _SEED_HIGH, (1,), generator=generator, device=gen_device, dtype=torch.int64)
        seed_t = drawn.to(device).expand(batch).contiguous()  # kernels may index it per row

    if isinstance(offset, torch.Tensor):
        return seed_t, _check_row_tensor("offset", offset, batch, device)
    if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int)):
        raise TypeError(f"offset must be an int or an int64 tensor, got {type(offset).__name__}")
    base = _check_int("offset", offset or 0)
    if per_row_seed:
        return seed_t, torch.full((batch,), base, dtype=torch.int64, device=device)
    return seed_t, torch.arange(base, base + batch, dtype=torch.int64, device=device)
