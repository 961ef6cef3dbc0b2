"""Triton backend: every fastsample op as Triton kernels (docs/design.md section 2).

``ops.py`` exposes the six op-level functions with the signatures of ``fastsample/_ops.py``; one module per
family holds the kernels and launchers. Under ``TRITON_INTERPRET=1`` the same kernels run on CPU tensors.
"""
