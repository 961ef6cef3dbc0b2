"""fastsample: fused LLM-sampling kernels (CPU C++, Triton, CUDA C++) and the decoders built on them."""
from .backends import BACKENDS, resolve_backend
from .sampling import (
    greedy,
    min_p_renorm_probs,
    min_p_sampling_from_probs,
    sample,
    sampling_from_logits,
    sampling_from_probs,
    softmax,
    top_k,
    top_k_mask_logits,
    top_k_renorm_probs,
    top_k_sampling_from_probs,
    top_k_top_p_sampling_from_logits,
    top_k_top_p_sampling_from_probs,
    top_p_renorm_probs,
    top_p_sampling_from_probs,
)
from .speculative import chain_speculative_sampling, tree_greedy_verify, tree_speculative_sampling

__version__ = "0.1.0"
from .stack import StackSample, sample_stack
