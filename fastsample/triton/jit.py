"""``helper``: the decorator of every Triton device function (jit function called from a kernel).

On a GPU it is ``triton.jit``. Under ``TRITON_INTERPRET=1`` each call of a jit function from a kernel
re-patches the whole ``triton.language`` module (milliseconds per call), although the calling kernel has
already patched it for its whole run; helpers called per block then dominate the interpreter's run time.
There, ``helper`` calls the interpreter's rewritten function directly, which runs the same code.
"""
from __future__ import annotations

import os

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
