"""``FGramVocab``: SCONE's f-gram vocabulary (arXiv 2502.01637, §3 and Algorithms 1 and 3).

f-grams are token n-grams of length 2..K over the unchanged tokenizer. ``fit`` counts them with
one pass over the corpus per length, requiring ``min_count`` occurrences at every length and
skipping an (n+1)-gram whose n-prefix or n-suffix fell short; the survivors of all lengths are
pooled and the ``num_entries`` most frequent kept (``selection.top_entries`` breaks ties). The
counts are exact: keys are collision-free (``counting``). ``lookup`` maps a position to the
longest f-gram ending at it (``suffix_lookup``), -1 when none does.

Legend: S = entries, K = max_n, L = positions, B = batch rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from embedkit.interfaces import VocabExtension
from embedkit_scone.counting import count_ngrams
from embedkit_scone.fit_stats import FitStats
from embedkit_scone.selection import top_entries
from embedkit_scone.suffix_lookup import SuffixIndex

FORMAT = "embedkit.FGramVocab"
FORMAT_VERSION = 1


class FGram(NamedTuple):
    """One f-gram: its tokens and how often the fitted corpus holds it."""

    tokens: tuple[int, ...]
    count: int


class FGramVocab(VocabExtension):
    """SCONE's f-grams: the S most frequent token n-grams of length 2..K of a corpus.

    A position maps to the longest f-gram ending at it (-1 when none does).
    """

    def __init__(
        self,
        *,
        max_n: int = 5,
        min_count: int = 5,
        num_entries: int = 100_000,
        chunk_tokens: int = 1 << 24,
    ) -> None:
        """
        Args:
            max_n: Longest f-gram, K (the paper's default is 5); f-grams have 2..K tokens and a
                lookup probes at most K-1 lengths per position.
            min_count: Fewest occurrences for an n-gram of any length to be a candidate (the
                paper uses 5).
            num_entries: Most f-grams to keep, S: the most frequent candidates of all lengths
                (equal counts: shorter first, then lexicographic token order). Fewer are kept
                when fewer n-grams reach ``min_count``.
            chunk_tokens: Tokens processed per step when streaming shards (counting and
                lookup); memory beyond the count tables is about 70 bytes per chunk token.
        """
        for field, value, low in (
            ("max_n", max_n, 2),
            ("min_count", min_count, 1),
            ("num_entries", num_entries, 1),
            ("chunk_tokens", chunk_tokens, 1),
        ):
            if value < low:
                raise ValueError(f"FGramVocab {field}={value} is invalid; valid: at least {low}")
        if chunk_tokens >= 1 << 31:
            raise ValueError(f"FGramVocab chunk_tokens={chunk_tokens} is invalid; valid: < 2**31")
        self.max_n = max_n
        self.min_count = min_count
        self.max_entries = num_entries  # the cap S; ``num_entries`` is the number kept
        self.chunk_tokens = chunk_tokens
        self.tokenizer_fingerprint: str | None = None  # of the tokens fitted, when known
        self.fit_stats: FitStats | None = None
        empty = np.empty(0, dtype=np.int64)
        self._set_entries(np.full((0, max_n), -1, dtype=np.int64), empty, empty, vocab_size=0)

    def fit(self, shards: Sequence[np.ndarray]) -> None:
        started = time.perf_counter()
        counts = count_ngrams(
            shards, max_n=self.max_n, min_count=self.min_count, chunk_tokens=self.chunk_tokens
        )
        tokens_SK, lengths_S, counts_S = top_entries(
            counts, num_entries=self.max_entries, max_n=self.max_n
        )
        self._set_entries(tokens_SK, lengths_S, counts_S, vocab_size=counts.vocab_size)
        self.tokenizer_fingerprint = None
        self.fit_stats = FitStats.of(
            counts, lengths_S, counts_S, seconds=time.perf_counter() - started
        )

    def _set_entries(
        self, tokens_SK: np.ndarray, lengths_S: np.ndarray, counts_S: np.ndarray, *, vocab_size: int
    ) -> None:
        self._index = SuffixIndex(tokens_SK, lengths_S, vocab_size=vocab_size)
        if counts_S.shape != lengths_S.shape:
            raise ValueError(f"{len(counts_S)} counts for {len(lengths_S)} entries")
        for array in (tokens_SK, lengths_S, counts_S):
            array.flags.writeable = False
        self._tokens_SK, self._lengths_S, self._counts_S = tokens_SK, lengths_S, counts_S
        self._hash: str | None = None

    @property
    def vocab_size(self) -> int:
        """Bound of the token ids fitted (largest id + 1); larger ids never match."""
        return self._index.vocab_size

    def lookup(self, ids_L: np.ndarray) -> np.ndarray:
        """Id of the longest f-gram ending at each position of 1-D ``ids_L`` (token ids, e.g. a
        memmap, streamed in chunks), -1 where none does; at most K-1 probes per position."""
        ids_L = np.asarray(ids_L)
        if ids_L.ndim != 1:
            raise ValueError(f"lookup takes 1-D token ids; got shape {ids_L.shape}")
        out_L = np.empty(len(ids_L), dtype=np.int64)
        for start in range(0, len(ids_L), self.chunk_tokens):
            stop = min(start + self.chunk_tokens, len(ids_L))
            context = max(0, start - (self.max_n - 1))
            out_L[start:stop] = self._index.lookup(ids_L[context:stop])[start - context :]
        return out_L

    def lookup_torch(self, ids_BL: torch.Tensor) -> torch.Tensor:
        """``lookup`` of every row of ``ids_BL`` (last dimension: positions) on its device, with
        ``torch.searchsorted``; a match uses only tokens of its own row. Equals ``lookup``."""
        return self._index.lookup_torch(ids_BL)

    @property
    def num_entries(self) -> int:
        return len(self._lengths_S)

    def entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All f-grams in id order: tokens ``[S, K]`` (padded with -1), lengths ``[S]``, counts
        ``[S]`` (read-only)."""
        return self._tokens_SK, self._lengths_S, self._counts_S

    def entry(self, i: int) -> FGram:
        """The f-gram with id ``i``."""
        if not 0 <= i < self.num_entries:
            raise IndexError(f"f-gram id {i} is out of range; valid: 0..{self.num_entries - 1}")
        tokens = self._tokens_SK[i, : self._lengths_S[i]]
        return FGram(tuple(int(t) for t in tokens), int(self._counts_S[i]))

    @property
    def content_hash(self) -> str:
        """SHA-256 of the entries in id order (their tokens and lengths) and ``max_n``.

        Counts, ``min_count``, the cap, the token bound and the tokenizer fingerprint are left
        out: two vocabularies with the same entries map every position alike, so tables built
        on one serve the other (the tokenizer is checked on its own, by its fingerprint).
        """
        if self._hash is None:
            sha = hashlib.sha256(f"fgram-entries-v1 max_n={self.max_n}\n".encode())
            sha.update(np.ascontiguousarray(self._tokens_SK, dtype="<i8").tobytes())
            sha.update(np.ascontiguousarray(self._lengths_S, dtype="<i8").tobytes())
            self._hash = sha.hexdigest()
        return self._hash

    def save(self, path: str | Path) -> None:
        """Write a compressed ``.npz`` (entries, settings, hash, fit statistics) atomically."""
        path = Path(path)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "settings": self._settings(),
            "vocab_size": self.vocab_size,
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "content_hash": self.content_hash,
            "fit_stats": self.fit_stats.to_json() if self.fit_stats is not None else None,
        }
        token_dtype = np.int32 if self.vocab_size < 1 << 31 else np.int64
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as stream:
                np.savez_compressed(
                    stream,
                    tokens=self._tokens_SK.astype(token_dtype),
                    lengths=self._lengths_S.astype(np.uint8),
                    counts=self._counts_S,
                    meta=np.array(json.dumps(meta)),
                )
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _settings(self) -> dict[str, int]:
        return {
            "max_n": self.max_n,
            "min_count": self.min_count,
            "num_entries": self.max_entries,
            "chunk_tokens": self.chunk_tokens,
        }

    @classmethod
    def load(cls, path: str | Path) -> FGramVocab:
        """Read a file written by ``save``; ``ValueError`` naming the file if it is not one or
        its entries do not match its recorded hash."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no FGramVocab file at {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"][()]))
                arrays = [data[name].astype(np.int64) for name in ("tokens", "lengths", "counts")]
            if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(
                    f"format {meta.get('format')!r} version {meta.get('format_version')!r}; "
                    f"this embedkit reads {FORMAT!r} version {FORMAT_VERSION}"
                )
            vocab = cls(**meta["settings"])
            vocab._set_entries(*arrays, vocab_size=int(meta["vocab_size"]))
            vocab.tokenizer_fingerprint = meta["tokenizer_fingerprint"]
            stats = meta["fit_stats"]
            vocab.fit_stats = FitStats.from_json(stats) if stats is not None else None
        except (
            OSError,
            ValueError,
            KeyError,
            TypeError,
            EOFError,
            zipfile.BadZipFile,
            zlib.error,
        ) as err:
            raise ValueError(
                f"{path} is not a valid FGramVocab file ({type(err).__name__}: {err}); "
                "rebuild it with `embedkit vocab build`"
            ) from err
        if vocab.content_hash != meta["content_hash"]:
            raise ValueError(
                f"{path} is corrupt: its entries hash to {vocab.content_hash[:16]}… but the file "
                f"records {str(meta['content_hash'])[:16]}…; rebuild it with `embedkit vocab build`"
            )
        return vocab
