"""``helper``: the decorator of every Triton device function (jit function called from a kernel).

On a GPU it is ``triton.jit``. Under ``TRITON_INTERPRET=1`` each call of a jit function from a kernel
re-patches the whole ``triton.language`` module (milliseconds per call), although the calling kernel has
already patched it for its whole run; helpers called per block then dominate the interpreter's run time.
There, ``helper`` calls the interpreter's rewritten function directly, which runs the same code.

``wrap_triton``: how every launcher launches a kernel (torch.library.wrap_triton, which works with torch 2.11
too under the interpreter).
"""
from __future__ import annotations

import os

import torch
import triton


class _InterpretedHelper:
    def __init__(self, fn):
        self.fn = fn
        self.__name__ = fn.__name__

    def __call__(self, *args, **kwargs):
        return self.fn.rewrite()(*args, **kwargs)


def helper(fn):
    """``triton.jit(fn)``, called without the per-call re-patching under the interpreter."""
    jitted = triton.jit(fn)
    if os.environ.get("TRITON_INTERPRET") == "1" and hasattr(jitted, "rewrite"):
        return _InterpretedHelper(jitted)
    return jitted


def wrap_triton(kernel):
    """``torch.library.wrap_triton(kernel)``; under the interpreter the kernel itself, which launches eagerly.

    torch >= 2.13 does the same itself; torch 2.11 and 2.12 reject the interpreter's kernel objects.
    """
    if os.environ.get("TRITON_INTERPRET") == "1" and not isinstance(kernel, triton.runtime.jit.JITFunction):
        return kernel
    return torch.library.wrap_triton(kernel)
