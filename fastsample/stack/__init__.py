"""The stack sampler (docs/ops.md "sample_stack"): an inference stack's whole sampling step in one call.

- api.py: `sample_stack` and `StackSample`, the public API (argument checks on the host, backend dispatch).
- spec.py: the one definition of the op's arguments (`StackOpArgs`) and of the penalty-validity rule.
- reference.py: backend "torch", the obviously correct version (also steps 4-7 of the device routes).
- compose.py: steps 4-7 of the CUDA and Triton routes, after their kernels for steps 1-3.
- cuda.py: the CUDA C++ route (op `stack_processed_logits`, then compose.py).
- tail.py: the long-tail route (DRY, typical-p, epsilon, eta, XTC, dynamic temperature, mirostat v2,
  order="llama.cpp"): the backend's steps 1-3, then DRY and the filter chain (CPU: op `stack_tail_filters`,
  csrc/cpu/stack_tail.cpp; elsewhere device torch ops), then the draws.
The kernels: csrc/cpu/stack_*.cpp (CPU), csrc/include/fastsample/cuda/stack_sampler.cuh (CUDA),
fastsample/triton/stack_sampler.py (Triton).
"""
from .api import StackSample, sample_stack

__all__ = ["StackSample", "sample_stack"]
