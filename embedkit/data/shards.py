"""Token shards: a corpus tokenized once into ``train.bin`` and ``val.bin`` plus a manifest.

The ``.bin`` files are flat little-endian arrays of token ids (``uint16`` when the vocabulary
fits, else ``uint32``) read back as ``np.memmap``; ``manifest.json`` records what they hold and
what made them. A folder of shards is written beside its final place and renamed into it, so
it is either complete or absent.

Legend: N = number of tokens.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from embedkit.data.corpus import Corpus
from embedkit.data.text import CHUNK_CHARS, chunk_text, split_document
from embedkit.data.tokenizers import Tokenizer

FORMAT_VERSION = 1
TRAIN_FILE = "train.bin"
VAL_FILE = "val.bin"
MANIFEST_FILE = "manifest.json"

# Characters of text encoded per call of ``Tokenizer.encode_batch``.
BATCH_CHARS = 1 << 22


@dataclass(frozen=True)
class ShardManifest:
    """What a folder of token shards holds (``manifest.json``)."""

    format_version: int
    tokenizer_fingerprint: str
    vocab_size: int
    dtype: str
    num_train_tokens: int
    num_val_tokens: int
    corpus_fingerprint: str
    val_fraction: float

    @classmethod
    def read(cls, path: Path) -> ShardManifest:
        """The manifest stored at ``path``."""
        fields = json.loads(path.read_text(encoding="utf-8"))
        if fields.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"token shards {path.parent} have format_version="
                f"{fields.get('format_version')!r}; this embedkit reads {FORMAT_VERSION}: "
                "delete the folder to rebuild it"
            )
        return cls(**fields)


def token_dtype(vocab_size: int) -> str:
    """Name of the smallest unsigned dtype holding ids below ``vocab_size``."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def write_shards(
    directory: str | Path, *, corpus: Corpus, tokenizer: Tokenizer, val_fraction: float
) -> ShardManifest:
    """Tokenize ``corpus`` with the (prepared) ``tokenizer`` into token shards at ``directory``.

    Every document is split by ``split_document``; its head goes to ``train.bin`` and its tail
    to ``val.bin``. Consecutive documents of a split are separated by the tokenizer's
    end-of-text token, or by the tokens of ``"\\n"`` when it has none. Documents are streamed
    and encoded in batches: memory holds one document and one batch of tokens at a time.
    """
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise FileExistsError(
            f"cannot write token shards to {directory}: it exists and is not an empty folder"
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    try:
        dtype = token_dtype(tokenizer.vocab_size)
        with open(tmp / TRAIN_FILE, "wb") as train_file, open(tmp / VAL_FILE, "wb") as val_file:
            train = _SplitWriter(train_file, tokenizer=tokenizer, dtype=dtype)
            val = _SplitWriter(val_file, tokenizer=tokenizer, dtype=dtype)
            for text in corpus.documents():
                head, tail = split_document(text, val_fraction=val_fraction)
                train.add(head)
                val.add(tail)
            train.flush()
            val.flush()
        for name, split in (("training", train), ("validation", val)):
            if split.num_tokens == 0:
                raise ValueError(
                    f"the {name} split of the corpus is empty (corpus fingerprint "
                    f"{corpus.fingerprint[:12]}, data.val_fraction={val_fraction}): give a "
                    "larger corpus or a data.val_fraction further from 0 and 1"
                )
        manifest = ShardManifest(
            format_version=FORMAT_VERSION,
            tokenizer_fingerprint=tokenizer.fingerprint,
            vocab_size=tokenizer.vocab_size,
            dtype=dtype,
            num_train_tokens=train.num_tokens,
            num_val_tokens=val.num_tokens,
            corpus_fingerprint=corpus.fingerprint,
            val_fraction=val_fraction,
        )
        manifest_text = json.dumps(dataclasses.asdict(manifest), indent=2) + "\n"
        (tmp / MANIFEST_FILE).write_text(manifest_text, encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp's 0o700 would hide a shared cache from other users
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


class _SplitWriter:
    """Appends documents of one split to its ``.bin`` file, encoding them in batches."""

    def __init__(self, stream: BinaryIO, *, tokenizer: Tokenizer, dtype: str) -> None:
        self.stream = stream
        self.tokenizer = tokenizer
        self.dtype = np.dtype(dtype).newbyteorder("<")
        eot = tokenizer.eot_id
        self.separator_N = np.array([eot]) if eot is not None else tokenizer.encode("\n")
        self.num_tokens = 0
        self.num_documents = 0
        self._pending: list[str | None] = []  # texts to encode, None for a separator
        self._pending_chars = 0

    def add(self, text: str) -> None:
        if not text:
            return
        if self.num_documents > 0:
            self._pending.append(None)
        self.num_documents += 1
        for piece in chunk_text(text, max_chars=CHUNK_CHARS):
            self._pending.append(piece)
            self._pending_chars += len(piece)
            if self._pending_chars >= BATCH_CHARS:
                self.flush()

    def flush(self) -> None:
        encoded = iter(self.tokenizer.encode_batch([p for p in self._pending if p is not None]))
        parts = [self.separator_N if p is None else next(encoded) for p in self._pending]
        self._pending, self._pending_chars = [], 0
        if not parts:
            return
        ids_N = np.concatenate(parts)
        if ids_N.size and int(ids_N.max()) >= self.tokenizer.vocab_size:
            raise ValueError(
                f"tokenizer {self.tokenizer.fingerprint[:12]} produced id {int(ids_N.max())}, "
                f"outside its vocab_size={self.tokenizer.vocab_size}"
            )
        ids_N.astype(self.dtype).tofile(self.stream)
        self.num_tokens += ids_N.size


@dataclass(frozen=True)
class TokenShards:
    """Token shards opened for reading: the two splits as read-only memmaps and the manifest."""

    directory: Path
    manifest: ShardManifest
    train_N: np.memmap
    val_N: np.memmap

    @classmethod
    def open(cls, directory: str | Path) -> TokenShards:
        """Open the shards that ``write_shards`` wrote at ``directory``."""
        directory = Path(directory)
        if not (directory / MANIFEST_FILE).is_file():
            raise FileNotFoundError(
                f"no token shards at {directory} ({MANIFEST_FILE} is missing); "
                "TextDataModule.prepare_data() writes them"
            )
        manifest = ShardManifest.read(directory / MANIFEST_FILE)
        return cls(
            directory=directory,
            manifest=manifest,
            train_N=_open_bin(directory / TRAIN_FILE, manifest.dtype, manifest.num_train_tokens),
            val_N=_open_bin(directory / VAL_FILE, manifest.dtype, manifest.num_val_tokens),
        )


def _open_bin(path: Path, dtype: str, num_tokens: int) -> np.memmap:
    little_endian = np.dtype(dtype).newbyteorder("<")
    expected = num_tokens * little_endian.itemsize
    if not path.is_file() or path.stat().st_size != expected:
        size = path.stat().st_size if path.is_file() else "missing"
        raise ValueError(
            f"token shard {path} is incomplete ({size} bytes; its manifest says {num_tokens} "
            f"{dtype} tokens, {expected} bytes): delete {path.parent} to rebuild it"
        )
    return np.memmap(path, dtype=little_endian, mode="r", shape=(num_tokens,))
