"""Helpers around a Hugging Face ``tokenizers.Tokenizer``, shared by the tokenizers that wrap one.

Legend: N = number of token ids.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tokenizers as hf
from tokenizers import decoders, models, pre_tokenizers, trainers

from embedkit.data.text import chunk_text, chunked


def encode_batch_fast(tokenizer: hf.Tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
    """Ids (``uint32``, no added special tokens) of every text of ``texts``, encoded in parallel
    as chunks (``chunk_text``) so that one long text spreads over every core too."""
    chunks_of_texts = [list(chunk_text(text)) for text in texts]
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # older: no _fast
    encodings = iter(
        encode([c for chunks in chunks_of_texts for c in chunks], add_special_tokens=False)
    )
    ids = []
    for chunks in chunks_of_texts:
        parts = [np.asarray(next(encodings).ids, dtype=np.uint32) for _ in chunks]
        ids.append(np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32))
    return ids


def hf_fingerprint(tokenizer: hf.Tokenizer) -> str:
    """SHA-256 of the tokenizer's canonical serialisation (equal after a save and reload)."""
    return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()


def save_atomic(tokenizer: hf.Tokenizer, path: Path) -> None:
    """Write ``tokenizer`` to ``path`` as JSON through a temporary file beside it and a rename,
    so that a reader never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(tokenizer.to_str(pretty=True))
        os.chmod(tmp, 0o644)  # mkstemp's 0o600 would hide a shared cache from other users
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def train_byte_level_bpe(
    documents: Iterator[str], *, vocab_size: int, min_frequency: int, special_tokens: list[str]
) -> hf.Tokenizer:
    """A GPT-2 style byte-level BPE trained on ``documents`` (every byte is in the vocabulary,
    after ``special_tokens``, which take the first ids)."""
    tokenizer = hf.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(chunked(documents), trainer=trainer)
    return tokenizer


def byte_identity_tokenizer() -> hf.Tokenizer:
    """A Hugging Face tokenizer whose id of every byte is the byte itself."""
    vocab = {char: byte for byte, char in enumerate(_bytes_to_unicode())}
    tokenizer = hf.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _bytes_to_unicode() -> list[str]:
    """GPT-2's printable character of every byte, indexed by byte (what ByteLevel uses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = {}
    extra = 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[byte] for byte in range(256)]
