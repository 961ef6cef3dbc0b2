"""The uniform of docs/design.md section 4 inside Triton kernels.

``tl.philox(seed, c0, c1, c2, c3)`` is Philox4x32-10 with key (lo32(seed), hi32(seed)) and counter (c0..c3),
bit-exact with Random123 and csrc/include/fastsample/philox.h (tests/test_triton.py checks the known answers).
"""
import triton
import triton.language as tl

from .jit import helper


@helper
def philox_words(seed, offset, draw):
    """The four Philox4x32-10 output words for key ``seed`` and counter (lo32(offset), hi32(offset), draw, 0)."""
    c0 = (offset & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c2 = (tl.zeros_like(offset) + draw).to(tl.uint32)
    c3 = tl.zeros_like(offset).to(tl.uint32)
    return tl.philox(seed.to(tl.int64), c0, c1, c2, c3)


@helper
def philox_uniform(seed, offset, draw):
    """float32 u in [0, 1): the top 24 bits of word 0, times 2^-24 (exact in float32)."""
    w0, _, _, _ = philox_words(seed, offset, draw)
    return (w0 >> 8).to(tl.float32) * (1.0 / 16777216.0)
