"""L³ row allocation (arXiv 2601.21461, Algorithm 1): how many of the v table rows each token
owns, at least 1 and at most k. The paper's allocation is an LZW-style scan of the corpus;
``strategy`` selects its ablations (uniform, by frequency). Rows are laid out in CSR order:
token t owns rows ``offsets[t]..offsets[t+1]-1``, and ``lookup`` gives a position its token's
first row.

Legend: V = token ids, L = positions, C = codewords.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from embedkit.interfaces import VocabExtension
from embedkit_l3 import rows, store
from embedkit_l3.lzw import codeword_order, lzw_scan

Strategy = Literal["lzw", "uniform", "frequency"]
FORMAT = "embedkit.LZWAllocation"


class LZWAllocation(VocabExtension):
    """L³'s allocation: an LZW-style scan of the corpus, then +1 row to the last token of each
    codeword, most frequent codewords first, until v rows are given (``rows.lzw_rows``)."""

    def __init__(
        self,
        *,
        num_rows: int,
        max_rows_per_token: int = 512,
        vocab_size: int | None = None,
        strategy: Strategy = "lzw",
    ) -> None:
        """
        Args:
            num_rows: Rows in total, v (the paper uses 710K per L³ layer); V <= v <= V * k.
            max_rows_per_token: Most rows of one token, k (the paper uses 512).
            vocab_size: Number of token ids V (the tokenizer's vocabulary size); every id
                0..V-1 gets at least one row, seen in the corpus or not. Required by ``fit``.
            strategy: "lzw" (the paper's); for its ablations (Fig. 7C) "uniform" (v / V rows
                each, the remainder one each to the lowest ids) or "frequency" (1 row each
                plus the other v - V in proportion to the token's count, capped at k, largest
                remainders).
        """
        for field, value in (("num_rows", num_rows), ("max_rows_per_token", max_rows_per_token)):
            if value < 1:
                raise ValueError(f"LZWAllocation {field}={value} is invalid; valid: at least 1")
        if strategy not in ("lzw", "uniform", "frequency"):
            raise ValueError(
                f"LZWAllocation strategy={strategy!r} is invalid; valid: lzw, uniform, frequency"
            )
        self.settings = {"num_rows": num_rows, "max_rows_per_token": max_rows_per_token}
        self.vocab_size = vocab_size
        self.strategy = strategy
        self.fit_stats: store.FitStats | None = None
        self.tokenizer_fingerprint: str | None = None  # of the tokenizer whose ids were fitted
        self._set_rows(np.empty(0, dtype=np.int64))

    def fit(self, shards: Sequence[np.ndarray]) -> None:
        """Count the tokens of ``shards`` (1-D id arrays, streamed), then allocate the rows."""
        started = time.perf_counter()
        rows.check_sizes("LZWAllocation", vocab_size=self.vocab_size, **self.settings)
        counts_V = store.count_tokens("LZWAllocation", shards, self.vocab_size)
        num_codewords = num_walked = 0
        if self.strategy == "lzw":
            book = lzw_scan(shards, vocab_size=self.vocab_size)
            last_C = book.last_C[codeword_order(book)]
            rows_V, num_walked = rows.lzw_rows(last_C, vocab_size=self.vocab_size, **self.settings)
            num_codewords = len(last_C)
        elif self.strategy == "uniform":
            rows_V = rows.uniform_rows(num_rows=self.settings["num_rows"], vocab_size=len(counts_V))
        else:
            rows_V = rows.frequency_rows(counts_V, **self.settings)
        assert rows_V.sum() == self.settings["num_rows"] and rows_V.min() >= 1
        assert rows_V.max() <= self.settings["max_rows_per_token"]
        self._set_rows(rows_V)
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

    def _set_rows(self, rows_V: np.ndarray) -> None:
        rows_V.flags.writeable = False
        self._rows_V, self._offsets_V1 = rows_V, store.offsets_of(rows_V)
        self._hash = store.content_hash(self._all_settings(), rows_V) if len(rows_V) else None

    def _all_settings(self) -> dict:
        return {**self.settings, "vocab_size": self.vocab_size, "strategy": self.strategy}

    def lookup(self, ids_L: np.ndarray) -> np.ndarray:
        """First row of the token at every position (``offsets()[ids_L]``); never -1."""
        return store.first_rows("LZWAllocation", self._offsets_V1, ids_L)

    @property
    def num_entries(self) -> int:
        """Rows in total, v (0 before ``fit``)."""
        return int(self._offsets_V1[-1])

    @property
    def content_hash(self) -> str | None:
        """SHA-256 of v, k, V, the strategy and the rows of every token (None before ``fit``)."""
        return self._hash

    def rows_per_token(self) -> np.ndarray:
        """Rows of every token id, int64 ``[V]`` (read-only)."""
        return self._rows_V

    def offsets(self) -> np.ndarray:
        """CSR offsets, int64 ``[V + 1]``: token t owns rows ``offsets[t]..offsets[t+1]-1``."""
        return self._offsets_V1

    def save(self, path: str | Path) -> None:
        """Write rows, settings, hash and fit statistics to a compressed ``.npz``, atomically."""
        if self._hash is None:
            raise ValueError("LZWAllocation is not fitted; nothing to save")
        store.save_npz(
            path,
            FORMAT,
            self._all_settings(),
            self._rows_V,
            self.fit_stats,
            self._hash,
            self.tokenizer_fingerprint,
        )

    @classmethod
    def load(cls, path: str | Path) -> LZWAllocation:
        """Read a file written by ``save`` (``ValueError`` naming the file if it is not one)."""
        settings, rows_V, stats, fingerprint = store.load_npz(path, FORMAT)
        allocation = cls(**settings)
        allocation._set_rows(rows_V)
        allocation.fit_stats = stats
        allocation.tokenizer_fingerprint = fingerprint
        return allocation


def load_matching_allocation(path: str | Path, configured: LZWAllocation) -> LZWAllocation:
    """The allocation saved at ``path``, refused when its v, k, V or strategy differ from
    ``configured``'s."""
    loaded = LZWAllocation.load(path)
    have, wanted = loaded._all_settings(), configured._all_settings()
    for field, value in wanted.items():
        if have[field] != value:
            raise ValueError(
                f"allocation_path={str(path)!r} holds an allocation with {field}={have[field]} "
                f"but the recipe asks for {value}; give another allocation_path (it is fitted "
                "there) or matching settings"
            )
    return loaded
