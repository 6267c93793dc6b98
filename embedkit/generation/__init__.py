"""Decoding with a KV cache: the cache, the samplers, the decode loop and streamed text
(``embedkit generate``; see docs/generate.md)."""

from embedkit.generation.generate import generate
from embedkit.generation.kv_cache import KVCache
from embedkit.generation.sampling import Sampler
from embedkit.generation.step_graphs import DecodeSteps
from embedkit.generation.text_stream import TextStream

__all__ = ["DecodeSteps", "KVCache", "Sampler", "TextStream", "generate"]
