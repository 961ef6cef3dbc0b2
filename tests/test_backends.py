"""fastsample/backends.py: every backend module implements the op protocol with its exact signatures, and the
dispatch picks the backend the design names for each device and request."""
import inspect

import pytest
import torch

from fastsample import _ops, backends, reference
from fastsample.triton import ops as triton_ops


def _params(fn):
    """Parameter names, kinds and annotations, without ``self`` (the protocol's methods have it)."""
    return [(p.name, p.kind, p.annotation) for p in inspect.signature(fn).parameters.values() if p.name != "self"]


@pytest.mark.parametrize("module", [_ops, triton_ops, reference], ids=["_ops", "triton", "reference"])
@pytest.mark.parametrize("op", backends.OP_NAMES)
def test_backend_implements_the_op_with_its_signature(module, op):
    want = getattr(backends.Ops, op)
    got = getattr(module, op)
    assert _params(got) == _params(want), f"{module.__name__}.{op}"
    assert inspect.signature(got).return_annotation == inspect.signature(want).return_annotation


def test_the_protocol_has_the_seven_ops():
    assert backends.OP_NAMES == ("softmax", "top_k", "top_k_mask_logits", "renorm_probs", "sample",
                                 "chain_speculative_sampling", "sample_stack")


def test_dispatch_by_device_and_request(monkeypatch):
    monkeypatch.delenv("FASTSAMPLE_BACKEND", raising=False)
    x = torch.zeros(2, 3)
    assert backends.resolve_backend(x) == ("cpu" if _ops.AVAILABLE else "torch")
    assert backends.ops_for(x, "torch") is reference
    monkeypatch.setenv("FASTSAMPLE_BACKEND", "torch")
    assert backends.resolve_backend(x) == "torch"
    assert backends.resolve_backend(x, "cpu") == "cpu"  # the argument wins over the environment
    with pytest.raises(ValueError, match="backend 'cuda' needs CUDA tensors"):
        backends.resolve_backend(x, "cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.resolve_backend(x, "tpu")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        backends.resolve_backend(torch.zeros(1, 1), "triton")
