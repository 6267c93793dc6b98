"""Text operations the pipeline shares: the train/validation split of a document, chunking.

Both are pure functions of the text, so every part of the pipeline (BPE training, shard
writing) sees exactly the same split and the same chunks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator

# Bump when ``split_document`` changes: it is part of every fingerprint of a split corpus.
SPLIT_VERSION = 1

# Characters per chunk handed to a tokenizer at once; large enough to amortise call overhead,
# small enough that a batch of chunks spreads over every core.
CHUNK_CHARS = 1 << 16


def split_document(text: str, *, val_fraction: float) -> tuple[str, str]:
    """Split ``text`` into a (train head, validation tail).

    The cut starts at character ``round((1 - val_fraction) * len(text))`` and moves forward to
    just after the next newline (so the validation tail starts a line) unless it already starts
    one; in a text without a later newline the cut stays where it started.
    """
    cut = round((1.0 - val_fraction) * len(text))
    if 0 < cut < len(text) and text[cut - 1] != "\n":
        newline = text.find("\n", cut)
        if newline != -1:
            cut = newline + 1
    return text[:cut], text[cut:]


def train_heads(
    documents: Callable[[], Iterator[str]], *, val_fraction: float
) -> Callable[[], Iterator[str]]:
    """A callable yielding the non-empty train heads of ``documents()`` (what BPE trains on)."""

    def heads() -> Iterator[str]:
        for text in documents():
            head, _ = split_document(text, val_fraction=val_fraction)
            if head:
                yield head

    return heads


def split_fingerprint(corpus_fingerprint: str, *, val_fraction: float) -> str:
    """Fingerprint of the train heads of a corpus split at ``val_fraction``."""
    return digest(
        {"corpus": corpus_fingerprint, "val_fraction": val_fraction, "split": SPLIT_VERSION}
    )


def chunk_text(text: str, *, max_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """Cut ``text`` into pieces of about ``max_chars`` characters that byte-level BPE encodes
    exactly as it encodes the whole text.

    A piece ends after a newline that follows a non-space character and precedes one: no
    pre-token of the GPT-2 split pattern crosses such a point, nor does a special token. A text
    without such points stays whole, however long.
    """
    start = 0
    while len(text) - start > max_chars:
        cut = _safe_cut(text, start + max_chars)
        if cut == -1:
            break
        yield text[start:cut]
        start = cut
    if start < len(text):
        yield text[start:]


def _safe_cut(text: str, position: int) -> int:
    """The first safe cut at or after ``position`` (see ``chunk_text``), -1 if there is none."""
    newline = text.find("\n", max(position - 1, 1))
    while newline != -1 and newline + 1 < len(text):
        if not text[newline - 1].isspace() and not text[newline + 1].isspace():
            return newline + 1
        newline = text.find("\n", newline + 1)
    return -1


def chunked(texts: Iterable[str], *, max_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """``chunk_text`` over every text of ``texts``."""
    for text in texts:
        yield from chunk_text(text, max_chars=max_chars)


def digest(value: object) -> str:
    """SHA-256 hex digest of ``value`` as canonical JSON (sorted keys)."""
    payload = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()
