"""The interfaces every embedkit component implements (see docs/architecture.md)."""

from embedkit.interfaces.auxiliary import AuxiliaryLosses, TrainingCost, TrainingMetrics
from embedkit.interfaces.backend import (
    EmbeddingBackend,
    ReadyRows,
    RowsHandle,
    StreamRows,
    TableFactory,
)
from embedkit.interfaces.data_connected import DataConnected
from embedkit.interfaces.feed_forward import FeedForward
from embedkit.interfaces.input_embedding import InputEmbedding
from embedkit.interfaces.planned_lookups import PlannedLookups
from embedkit.interfaces.router import Router, Routes
from embedkit.interfaces.sublayer import Sublayer
from embedkit.interfaces.vocab import VocabExtension

__all__ = [
    "AuxiliaryLosses",
    "DataConnected",
    "EmbeddingBackend",
    "FeedForward",
    "InputEmbedding",
    "PlannedLookups",
    "ReadyRows",
    "Router",
    "Routes",
    "RowsHandle",
    "StreamRows",
    "Sublayer",
    "TableFactory",
    "TrainingCost",
    "TrainingMetrics",
    "VocabExtension",
]
