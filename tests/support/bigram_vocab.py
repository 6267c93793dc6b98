"""A small exact bigram vocabulary: the reference that checks the VocabExtension suite itself.

Registered plugins are the real subjects of the suite; this one keeps it exercised while no
vocabulary plugin is installed, and documents the contract by example.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embedkit.interfaces import VocabExtension


class BigramVocab(VocabExtension):
    """Bigrams seen at least ``min_count`` times; position i maps to the bigram ending at i."""

    def __init__(self, *, min_count: int = 2) -> None:
        self.min_count = min_count
        self._ids: dict[tuple[int, int], int] = {}

    def fit(self, shards: Sequence[np.ndarray]) -> None:
        counts: Counter = Counter()
        for shard in shards:
            ids = np.asarray(shard, dtype=np.int64)
            counts.update(zip(ids[:-1].tolist(), ids[1:].tolist(), strict=True))
        kept = sorted((-c, pair) for pair, c in counts.items() if c >= self.min_count)
        self._ids = {pair: i for i, (_, pair) in enumerate(kept)}

    def lookup(self, ids_L: np.ndarray) -> np.ndarray:
        out = np.full(ids_L.shape, -1, dtype=np.int64)
        for i in range(1, len(ids_L)):
            out[i] = self._ids.get((int(ids_L[i - 1]), int(ids_L[i])), -1)
        return out

    @property
    def num_entries(self) -> int:
        return len(self._ids)

    def save(self, path: str | Path) -> None:
        tmp = f"{path}.tmp"
        Path(tmp).write_text(json.dumps({"min_count": self.min_count, "pairs": list(self._ids)}))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> BigramVocab:
        data = json.loads(Path(path).read_text())
        vocab = cls(min_count=data["min_count"])
        vocab._ids = {tuple(pair): i for i, pair in enumerate(data["pairs"])}
        return vocab

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(json.dumps(list(self._ids)).encode()).hexdigest()
