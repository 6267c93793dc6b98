"""``Tokenizer``: text to token ids and back, trained (or loaded) once per corpus.

Implementations: ``ByteTokenizer`` (UTF-8 bytes), ``BPETokenizer`` (byte-level BPE trained on
the training split, cached on disk) and ``TokenizerFile`` (an existing ``tokenizer.json``).
Every one saves a Hugging Face ``tokenizer.json`` that ``TokenizerFile`` reloads.

Legend: N = number of token ids.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tokenizers as hf

from embedkit.data.hf_tokenizer import (
    byte_identity_tokenizer,
    encode_batch_fast,
    hf_fingerprint,
    save_atomic,
    train_byte_level_bpe,
)
from embedkit.data.text import digest

END_OF_TEXT = "<|endoftext|>"


class Tokenizer(ABC):
    """Maps text to token ids (``0 <= id < vocab_size``) and back."""

    @abstractmethod
    def prepare(
        self,
        *,
        train_documents: Callable[[], Iterator[str]],
        corpus_fingerprint: str,
        cache_dir: Path,
    ) -> None:
        """Make the tokenizer usable: train it on ``train_documents()`` (a fresh iterator per
        call; its content is identified by ``corpus_fingerprint``) or load what an earlier call
        cached under ``cache_dir``. Calling it again with the same arguments does nothing."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included (valid after ``prepare``)."""

    @property
    @abstractmethod
    def eot_id(self) -> int | None:
        """Id of the end-of-text token that separates documents, ``None`` if there is none."""

    @abstractmethod
    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text`` as a 1-D ``uint32`` array ``ids_N``."""

    @abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """``[encode(text) for text in texts]``, but faster (parallel where the tokenizer can)."""

    @abstractmethod
    def decode(self, ids_N: np.ndarray | list[int]) -> str:
        """The text of token ids ``ids_N``."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """Hex digest identifying the exact mapping; token shards record it."""

    @abstractmethod
    def save(self, path: str | Path) -> None:
        """Write the tokenizer to ``path`` as a ``tokenizer.json`` (atomically)."""


class ByteTokenizer(Tokenizer):
    """The UTF-8 bytes of the text: 256 ids, nothing to train, no end-of-text token."""

    def prepare(
        self,
        *,
        train_documents: Callable[[], Iterator[str]],
        corpus_fingerprint: str,
        cache_dir: Path,
    ) -> None:
        pass

    @property
    def vocab_size(self) -> int:
        return 256

    @property
    def eot_id(self) -> int | None:
        return None

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode(text) for text in texts]

    def decode(self, ids_N: np.ndarray | list[int]) -> str:
        return np.asarray(ids_N).astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    @property
    def fingerprint(self) -> str:
        return "bytes-v1"

    def save(self, path: str | Path) -> None:
        save_atomic(byte_identity_tokenizer(), Path(path))


class HuggingFaceTokenizer(Tokenizer):
    """A ``Tokenizer`` that is a Hugging Face ``tokenizers.Tokenizer`` (``hf_tokenizer``):
    the ids, text, fingerprint and saved file all come from it."""

    @property
    @abstractmethod
    def hf_tokenizer(self) -> hf.Tokenizer:
        """The Hugging Face tokenizer."""

    @property
    def vocab_size(self) -> int:
        return self.hf_tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def eot_id(self) -> int | None:
        return self.hf_tokenizer.token_to_id(END_OF_TEXT)

    def encode(self, text: str) -> np.ndarray:
        return encode_batch_fast(self.hf_tokenizer, [text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return encode_batch_fast(self.hf_tokenizer, texts)

    def decode(self, ids_N: np.ndarray | list[int]) -> str:
        return self.hf_tokenizer.decode([int(i) for i in ids_N], skip_special_tokens=False)

    @property
    def fingerprint(self) -> str:
        return hf_fingerprint(self.hf_tokenizer)

    def save(self, path: str | Path) -> None:
        save_atomic(self.hf_tokenizer, Path(path))


class BPETokenizer(HuggingFaceTokenizer):
    """Byte-level BPE (GPT-2 style) trained with Hugging Face ``tokenizers`` on the training
    split, with an ``<|endoftext|>`` token (id 0) between documents.

    The trained tokenizer is cached as
    ``<cache_dir>/tokenizers/<key>/tokenizer.json``, where the key hashes the training split's
    fingerprint, ``vocab_size``, ``min_frequency`` and the ``tokenizers`` version.
    """

    def __init__(self, *, vocab_size: int = 4096, min_frequency: int = 2) -> None:
        """
        Args:
            vocab_size: Largest vocabulary to train, special token included; at least 257
                (the 256 bytes and ``<|endoftext|>``). The trained vocabulary is smaller when
                the corpus has too few pairs occurring ``min_frequency`` times.
            min_frequency: Fewest occurrences of a pair for it to be merged.
        """
        if vocab_size < 257:
            raise ValueError(
                f"data.tokenizer.vocab_size={vocab_size} is too small; valid: at least 257 "
                "(256 bytes and <|endoftext|>)"
            )
        if min_frequency < 1:
            raise ValueError(f"data.tokenizer.min_frequency={min_frequency} must be at least 1")
        self.requested_vocab_size = vocab_size
        self.min_frequency = min_frequency
        self._tokenizer: hf.Tokenizer | None = None
        self._key: str | None = None

    def cache_key(self, corpus_fingerprint: str) -> str:
        """Name of the cache folder of this tokenizer trained on that corpus."""
        return digest(
            {
                "corpus": corpus_fingerprint,
                "vocab_size": self.requested_vocab_size,
                "min_frequency": self.min_frequency,
                "tokenizers": hf.__version__,
            }
        )

    def cache_path(self, corpus_fingerprint: str, cache_dir: Path) -> Path:
        """The ``tokenizer.json`` of this tokenizer trained on that corpus, under ``cache_dir``."""
        return (
            Path(cache_dir) / "tokenizers" / self.cache_key(corpus_fingerprint) / "tokenizer.json"
        )

    def prepare(
        self,
        *,
        train_documents: Callable[[], Iterator[str]],
        corpus_fingerprint: str,
        cache_dir: Path,
    ) -> None:
        key = self.cache_key(corpus_fingerprint)
        if key == self._key:
            return
        path = self.cache_path(corpus_fingerprint, cache_dir)
        if not path.exists():
            trained = train_byte_level_bpe(
                train_documents(),
                vocab_size=self.requested_vocab_size,
                min_frequency=self.min_frequency,
                special_tokens=[END_OF_TEXT],
            )
            save_atomic(trained, path)
        self._tokenizer = hf.Tokenizer.from_file(str(path))
        self._key = key

    @property
    def hf_tokenizer(self) -> hf.Tokenizer:
        """The trained Hugging Face tokenizer."""
        if self._tokenizer is None:
            raise RuntimeError(
                "BPETokenizer is used before prepare(); TextDataModule prepares it on first use"
            )
        return self._tokenizer


class TokenizerFile(HuggingFaceTokenizer):
    """A Hugging Face ``tokenizer.json`` (e.g. one a run saved); ``<|endoftext|>``, if the
    vocabulary has it, separates documents."""

    def __init__(self, *, path: str) -> None:
        """
        Args:
            path: The ``tokenizer.json`` file to load.
        """
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise ValueError(
                f"data.tokenizer.path={path!r} does not exist; give a tokenizer.json file"
            )
        try:
            self._tokenizer = hf.Tokenizer.from_file(str(self.path))
        except Exception as err:  # tokenizers raises a bare Exception on malformed files
            raise ValueError(
                f"data.tokenizer.path={path!r} is not a valid tokenizer.json: {err}"
            ) from err

    def prepare(
        self,
        *,
        train_documents: Callable[[], Iterator[str]],
        corpus_fingerprint: str,
        cache_dir: Path,
    ) -> None:
        pass

    @property
    def hf_tokenizer(self) -> hf.Tokenizer:
        """The loaded Hugging Face tokenizer."""
        return self._tokenizer
