"""Decoders over any Hugging Face causal LM, built on the fastsample kernels (docs/design.md section 6)."""
from .beam import BeamOutput, beam_search
from .contrastive import contrastive_decode
from .greedy import greedy_decode
from .model import Session, left_pad
from .sample import sample_decode
from .speculative import SpeculativeOutput, speculative_decode

__all__ = ["BeamOutput", "Session", "SpeculativeOutput", "beam_search", "contrastive_decode", "greedy_decode",
           "left_pad", "sample_decode", "speculative_decode"]
