"""``VocabExtension``: the extra entries (f-grams, lookup rows) a token sequence has."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embedkit.registry import PluginInterface


class VocabExtension(metaclass=PluginInterface):
    """A vocabulary built from a tokenized corpus, saved, loaded, and looked up per position."""

    __plugin_interface__ = True

    @abstractmethod
    def fit(self, shards: Sequence[np.ndarray]) -> None:
        """Build the entries from token shards (1-D integer arrays, e.g. ``np.memmap``)."""

    @abstractmethod
    def lookup(self, ids_L: np.ndarray) -> np.ndarray:
        """Entry id of every position of ``ids_L`` (int64, same shape), -1 where there is none."""

    @property
    @abstractmethod
    def num_entries(self) -> int:
        """Number of entries after ``fit`` (or ``load``)."""

    @abstractmethod
    def save(self, path: str | Path) -> None:
        """Write the fitted vocabulary to ``path`` (atomically)."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path) -> VocabExtension:
        """Read a vocabulary written by ``save``."""

    @property
    @abstractmethod
    def content_hash(self) -> str:
        """Hex digest of the entries; tables built from another vocabulary are refused by it."""
