"""``DataConnected``: a model part that needs something from the data module before training.

``LanguageModel.setup`` calls ``connect(datamodule)`` on every part of the decoder that has it,
once, before the data loaders are built — the one path by which data-derived values (such as
the per-position f-gram tags SCONE needs) reach the model, and model requirements reach the
data.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class DataConnected(Protocol):
    """A part with a ``connect`` hook."""

    def connect(self, data: Any) -> None:
        """Check the data against the part and request per-position features from it."""
