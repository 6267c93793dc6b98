"""L³ row allocations (arXiv 2601.21461, Algorithm 1): how many of the v table rows each token
owns, at least 1 and at most k. ``LZWAllocation`` is the paper's; ``UniformAllocation`` and
``FrequencyAllocation`` are its ablations. Rows are laid out in CSR order: token t owns rows
``offsets[t]..offsets[t+1]-1``, and ``lookup`` gives a position its token's first row.

The classes share code through ``Allocated`` (held, not inherited), the method functions
below and the functions of ``rows`` and ``store``.

Legend: V = token ids, L = positions, C = codewords.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from embedkit.interfaces import VocabExtension
from embedkit_l3 import rows, store
from embedkit_l3.lzw import codeword_order, lzw_scan


class Allocated:
    """Settings and fitted rows of one allocation (what every allocation class holds)."""

    def __init__(self, name: str, num_rows: int, max_rows_per_token: int, vocab_size: int | None):
        for field, value in (("num_rows", num_rows), ("max_rows_per_token", max_rows_per_token)):
            if value < 1:
                raise ValueError(f"{name} {field}={value} is invalid; valid: at least 1")
        self.name = name
        self.settings = {"num_rows": num_rows, "max_rows_per_token": max_rows_per_token}
        self.vocab_size = vocab_size
        self.fit_stats: store.FitStats | None = None
        self.set_rows(np.empty(0, dtype=np.int64))

    def fit(self, shards: Sequence[np.ndarray], make_rows: Callable) -> None:
        """Check the sizes and ids, then set the rows ``make_rows(shards, counts_V)`` returns
        with the number of codewords and walked codewords."""
        started = time.perf_counter()
        rows.check_sizes(self.name, vocab_size=self.vocab_size, **self.settings)
        counts_V = store.count_tokens(self.name, shards, self.vocab_size)
        rows_V, num_codewords, num_walked = make_rows(shards, counts_V)
        assert rows_V.sum() == self.settings["num_rows"] and rows_V.min() >= 1
        assert rows_V.max() <= self.settings["max_rows_per_token"]
        self.set_rows(rows_V)
        seconds = time.perf_counter() - started
        self.fit_stats = store.FitStats(
            num_tokens=int(counts_V.sum()),
            seconds=seconds,
            tokens_per_second=int(counts_V.sum()) / max(seconds, 1e-9),
            num_codewords=num_codewords,
            num_walked=num_walked,
            max_rows=int(rows_V.max()),
            num_at_cap=int((rows_V == self.settings["max_rows_per_token"]).sum()),
        )

    def set_rows(self, rows_V: np.ndarray) -> None:
        rows_V.flags.writeable = False
        self.rows_V, self.offsets_V1 = rows_V, store.offsets_of(rows_V)
        self.hash = store.content_hash(self.all_settings(), rows_V) if len(rows_V) else None

    def all_settings(self) -> dict:
        return {**self.settings, "vocab_size": self.vocab_size}

    def save(self, path: str | Path, fmt: str) -> None:
        if self.hash is None:
            raise ValueError(f"{self.name} is not fitted; nothing to save")
        store.save_npz(path, fmt, self.all_settings(), self.rows_V, self.fit_stats, self.hash)

    @staticmethod
    def load(cls, path: str | Path):
        settings, rows_V, stats = store.load_npz(path, f"embedkit.{cls.__name__}")
        allocation = cls(**settings)
        allocation._state.set_rows(rows_V)
        allocation._state.fit_stats = stats
        return allocation


# The methods every allocation class has; each class binds them (functions, not a base class).


def _lookup(self, ids_L: np.ndarray) -> np.ndarray:
    """First row of the token at every position (``offsets()[ids_L]``); never -1."""
    return store.first_rows(self._state.name, self._state.offsets_V1, ids_L)


def _num_entries(self) -> int:
    """Rows in total, v (0 before ``fit``)."""
    return int(self._state.offsets_V1[-1])


def _content_hash(self) -> str | None:
    """SHA-256 of v, k, V and the rows of every token (None before ``fit``)."""
    return self._state.hash


def _fit_stats(self) -> store.FitStats | None:
    """What the last ``fit`` read and what it cost (None when loaded without them)."""
    return self._state.fit_stats


def _rows_per_token(self) -> np.ndarray:
    """Rows of every token id, int64 ``[V]`` (read-only)."""
    return self._state.rows_V


def _offsets(self) -> np.ndarray:
    """CSR offsets, int64 ``[V + 1]``: token t owns rows ``offsets[t]..offsets[t+1]-1``."""
    return self._state.offsets_V1


def _save(self, path: str | Path) -> None:
    """Write rows, settings, hash and fit statistics to a compressed ``.npz``, atomically."""
    self._state.save(path, f"embedkit.{type(self).__name__}")


def _load(cls, path: str | Path):
    """Read a file written by ``save`` of this class (``ValueError`` if it is not one)."""
    return Allocated.load(cls, path)


class LZWAllocation(VocabExtension):
    """L³'s allocation: an LZW-style scan of the corpus, then +1 row to the last token of each
    codeword, most frequent codewords first, until v rows are given (``rows.lzw_rows``)."""

    def __init__(
        self, *, num_rows: int, max_rows_per_token: int = 512, vocab_size: int | None = None
    ) -> None:
        """
        Args:
            num_rows: Rows in total, v (the paper uses 710K per L³ layer); V <= v <= V * k.
            max_rows_per_token: Most rows of one token, k (the paper uses 512).
            vocab_size: Number of token ids V (the tokenizer's vocabulary size); every id
                0..V-1 gets at least one row, seen in the corpus or not. Required by ``fit``.
        """
        self._state = Allocated("LZWAllocation", num_rows, max_rows_per_token, vocab_size)

    def fit(self, shards: Sequence[np.ndarray]) -> None:
        """Scan ``shards`` (1-D token id arrays, streamed) and allocate the rows."""
        state = self._state

        def make_rows(shards, counts_V):
            book = lzw_scan(shards, vocab_size=state.vocab_size)
            last_C = book.last_C[codeword_order(book)]
            rows_V, walked = rows.lzw_rows(last_C, vocab_size=state.vocab_size, **state.settings)
            return rows_V, len(last_C), walked

        state.fit(shards, make_rows)

    lookup = _lookup
    num_entries = property(_num_entries)
    content_hash = property(_content_hash)
    fit_stats = property(_fit_stats)
    rows_per_token = _rows_per_token
    offsets = _offsets
    save = _save
    load = classmethod(_load)


class UniformAllocation(VocabExtension):
    """Ablation (the paper's Fig. 7C): v / V rows per token, the remainder one each to the
    lowest ids; the corpus is only checked."""

    def __init__(
        self, *, num_rows: int, max_rows_per_token: int = 512, vocab_size: int | None = None
    ) -> None:
        """
        Args:
            num_rows: Rows in total, v; V <= v <= V * k.
            max_rows_per_token: Most rows of one token, k.
            vocab_size: Number of token ids V; every id gets at least one row. Required by
                ``fit``.
        """
        self._state = Allocated("UniformAllocation", num_rows, max_rows_per_token, vocab_size)

    def fit(self, shards: Sequence[np.ndarray]) -> None:
        """Check ``shards`` (ids below V) and spread the rows evenly."""
        num_rows = self._state.settings["num_rows"]
        self._state.fit(
            shards,
            lambda _, counts_V: (
                rows.uniform_rows(num_rows=num_rows, vocab_size=len(counts_V)),
                0,
                0,
            ),
        )

    lookup = _lookup
    num_entries = property(_num_entries)
    content_hash = property(_content_hash)
    fit_stats = property(_fit_stats)
    rows_per_token = _rows_per_token
    offsets = _offsets
    save = _save
    load = classmethod(_load)


class FrequencyAllocation(VocabExtension):
    """Ablation: 1 row per token plus the other v - V in proportion to its count in the corpus,
    capped at k, largest remainders (``rows.frequency_rows``)."""

    def __init__(
        self, *, num_rows: int, max_rows_per_token: int = 512, vocab_size: int | None = None
    ) -> None:
        """
        Args:
            num_rows: Rows in total, v; V <= v <= V * k.
            max_rows_per_token: Most rows of one token, k.
            vocab_size: Number of token ids V; every id gets at least one row. Required by
                ``fit``.
        """
        self._state = Allocated("FrequencyAllocation", num_rows, max_rows_per_token, vocab_size)

    def fit(self, shards: Sequence[np.ndarray]) -> None:
        """Count the tokens of ``shards`` and share the rows by count."""
        settings = self._state.settings
        self._state.fit(
            shards, lambda _, counts_V: (rows.frequency_rows(counts_V, **settings), 0, 0)
        )

    lookup = _lookup
    num_entries = property(_num_entries)
    content_hash = property(_content_hash)
    fit_stats = property(_fit_stats)
    rows_per_token = _rows_per_token
    offsets = _offsets
    save = _save
    load = classmethod(_load)
