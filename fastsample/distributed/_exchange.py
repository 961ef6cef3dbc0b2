"""The collectives of vocab-parallel sampling: the header that makes ranks agree (or fail together), the
vocabulary layout, and thin all-gather / all-reduce wrappers.

Every public function starts with `agree`: one all-gather of a fixed-size int64 header, so that ranks that
disagree on the batch size (and would otherwise block in collectives of different sizes) see the same
gathered headers and raise the same error. Local argument errors travel in the header too: the rank with
the bad argument raises its own TypeError/ValueError, every other rank a ValueError naming that rank.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import torch.distributed as dist

Tensor = torch.Tensor

# Header fields (int64). "same" fields must be equal on every rank; the others are merged or per rank.
OP, ERROR, BATCH, LOCAL_VOCAB, K, FLAGS, WIDTH, ROUNDS = range(8)
HEADER_SIZE = 8
_SAME = {OP: "the function called", BATCH: "the batch size", K: "k", FLAGS: "return_logprobs / sorted / seed"}
_ERRORS = {1: TypeError, 2: ValueError}
_OP_NAMES = {1: "sample", 2: "greedy", 3: "top_k", 4: "sample_stack"}

_HOST_READS = [0]


@contextlib.contextmanager
def host_reads():
    """Marks the host reads that are part of the contract: the header (step 1), the parameter check after
    step 2 and the max of a ``top_k`` tensor argument. Everything else in a call reads nothing on the host
    (tests/test_distributed.py makes every other read raise)."""
    _HOST_READS[0] += 1
    try:
        yield
    finally:
        _HOST_READS[0] -= 1


def host_reads_allowed() -> bool:
    return _HOST_READS[0] > 0


_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@dataclass(frozen=True)
class Layout:
    """Where each rank's slice sits: rank r holds global ids [starts[r], starts[r] + sizes[r])."""

    sizes: tuple[int, ...]
    starts: tuple[int, ...]
    vocab: int


@functools.lru_cache(maxsize=64)
def layout(sizes: tuple[int, ...]) -> Layout:
    """The layout of contiguous slices of the given sizes, in rank order (cached: it changes rarely)."""
    starts, total = [], 0
    for size in sizes:
        starts.append(total)
        total += size
    return Layout(sizes, tuple(starts), total)


@dataclass(frozen=True)
class Group:
    """A process group with this process's rank in it and the device its collectives use."""

    handle: object
    rank: int
    world: int
    device: torch.device


def resolve_group(group, x) -> Group:
    """The group (default: the world), its rank and size, and the device for collective buffers: the input's
    device when it is a tensor, else CUDA for NCCL groups and CPU otherwise."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("fastsample.distributed needs torch.distributed initialised (init_process_group)")
    handle = group if group is not None else dist.group.WORLD
    if isinstance(x, torch.Tensor):
        device = x.device
    elif dist.get_backend(handle) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    return Group(handle, dist.get_rank(handle), dist.get_world_size(handle), device)


def all_gather(group: Group, t: Tensor) -> Tensor:
    """Every rank's ``t`` (same shape on all ranks), stacked in rank order: [world, *t.shape]."""
    t = t.contiguous()
    out = torch.empty((group.world * t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
    _all_gather_single(out, t, group=group.handle)
    return out.view(group.world, *t.shape)


def all_reduce_sum(group: Group, t: Tensor) -> Tensor:
    """The elementwise sum over ranks (in place)."""
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group.handle)
    return t


def header(op: int, error: BaseException | None, batch: int = 0, local_vocab: int = 0, k: int = 0, flags: int = 0,
           width: int = 0, rounds: int = 0) -> list[int]:
    """The header fields of one rank (see the field names above)."""
    code = 0 if error is None else 1 if isinstance(error, TypeError) else 2
    return [op, code, batch, local_vocab, k, flags, width, rounds]


def agree(group: Group, fields: list[int], error: BaseException | None) -> tuple[Tensor, Layout | None]:
    """All-gather the headers; raise the same error on every rank if any rank failed or ranks disagree.

    Returns
    -------
    (headers int64 [world, HEADER_SIZE], the vocabulary layout).
    """
    mine = torch.tensor(fields, dtype=torch.int64, device=group.device)
    with host_reads():
        headers = all_gather(group, mine).cpu()
        rows = headers.tolist()
    name = f"fastsample.distributed.{_OP_NAMES.get(fields[OP], '?')}"
    failed = [r for r, row in enumerate(rows) if row[ERROR] != 0]
    if failed:
        if error is not None:
            raise error
        kinds = sorted({_ERRORS[rows[r][ERROR]].__name__ for r in failed})
        raise ValueError(f"{name}: rank(s) {failed} of the group rejected their arguments ({', '.join(kinds)}); "
                         f"the message is raised on those ranks")
    for field, what in _SAME.items():
        column = [row[field] for row in rows]
        if len(set(column)) > 1:
            if field == OP:
                column = [_OP_NAMES.get(c, "?") for c in column]
            raise ValueError(f"{name}: ranks disagree on {what}: {column} (by rank)")
    return headers, layout(tuple(row[LOCAL_VOCAB] for row in rows))


def check_columns_agree(name: str, gathered: Tensor, columns: dict[str, int]) -> None:
    """Raise on every rank if any rank's per-row parameter columns differ from rank 0's (bitwise).

    ``gathered`` is [world, B, F] int64; ``columns`` maps a parameter name to its column.
    """
    with host_reads():
        for what, col in columns.items():
            differ = (gathered[:, :, col] != gathered[:1, :, col]).any(dim=0)
            if bool(differ.any()):
                rows = differ.nonzero().flatten()[:5].tolist()
                raise ValueError(f"fastsample.distributed.{name}: ranks disagree on {what} (rows {rows}, by value "
                                 f"{gathered[:, rows[0], col].tolist()} as int64 bits by rank)")
