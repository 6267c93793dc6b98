"""embedkit: language models that grow their capacity through lookups instead of FLOPs.

The public names below are imported on first use, so ``import embedkit`` stays cheap and
imports no plugin.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "EmbeddingBackend": "embedkit.interfaces",
    "FeedForward": "embedkit.interfaces",
    "InputEmbedding": "embedkit.interfaces",
    "Router": "embedkit.interfaces",
    "Routes": "embedkit.interfaces",
    "RowsHandle": "embedkit.interfaces",
    "Sublayer": "embedkit.interfaces",
    "VocabExtension": "embedkit.interfaces",
    "GPUBackend": "embedkit.backends.gpu",
    "Decoder": "embedkit.model.decoder",
    "LanguageModel": "embedkit.lm",
    "TextDataModule": "embedkit.data.datamodule",
}

__all__ = [
    "Decoder",
    "EmbeddingBackend",
    "FeedForward",
    "GPUBackend",
    "InputEmbedding",
    "LanguageModel",
    "Router",
    "Routes",
    "RowsHandle",
    "Sublayer",
    "TextDataModule",
    "VocabExtension",
    "__version__",
]

if TYPE_CHECKING:
    from embedkit.backends.gpu import GPUBackend
    from embedkit.data.datamodule import TextDataModule
    from embedkit.interfaces import (
        EmbeddingBackend,
        FeedForward,
        InputEmbedding,
        Router,
        Routes,
        RowsHandle,
        Sublayer,
        VocabExtension,
    )
    from embedkit.lm import LanguageModel
    from embedkit.model.decoder import Decoder


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'embedkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
