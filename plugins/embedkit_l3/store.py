"""What the three allocations share, as functions: token checks, CSR offsets, lookup, fit
statistics, the content hash and the atomic ``.npz`` file.

Legend: V = token ids, L = positions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
CHUNK_TOKENS = 1 << 24


@dataclass(frozen=True)
class FitStats:
    """What one allocation ``fit`` read and what it cost."""

    num_tokens: int  # tokens of the shards
    seconds: float  # wall time of the fit
    tokens_per_second: float
    num_codewords: int  # LZW dictionary size, single tokens included (0 when not LZW)
    num_walked: int  # sorted codewords walked to reach v, over all passes (0 when not LZW)
    max_rows: int  # most rows of one token
    num_at_cap: int  # tokens holding k rows

    def summary(self) -> str:
        """One line for people."""
        return (
            f"read {self.num_tokens:,} tokens in {self.seconds:.2f} s "
            f"({self.tokens_per_second / 1e6:.2f} M tokens/s); {self.num_codewords:,} codewords, "
            f"{self.num_walked:,} walked; most rows per token {self.max_rows}, "
            f"{self.num_at_cap:,} tokens at the cap"
        )


def count_tokens(name: str, shards: Sequence[np.ndarray], vocab_size: int) -> np.ndarray:
    """Occurrences of every id in ``shards`` (streamed); ``ValueError`` on a bad shard or id."""
    counts_V = np.zeros(vocab_size, dtype=np.int64)
    for index, shard in enumerate(shards):
        array = shard if isinstance(shard, np.ndarray) else np.asarray(shard)
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                f"shard {index} has shape {array.shape} and dtype {array.dtype}; "
                "valid: a 1-D array of integer token ids"
            )
        for start in range(0, len(array), CHUNK_TOKENS):
            chunk = np.asarray(array[start : start + CHUNK_TOKENS], dtype=np.int64)
            if len(chunk) and (chunk.min() < 0 or chunk.max() >= vocab_size):
                bad = int(chunk.min()) if chunk.min() < 0 else int(chunk.max())
                raise ValueError(
                    f"shard {index} holds token id {bad} but {name} vocab_size={vocab_size}; "
                    f"valid: ids 0..{vocab_size - 1} (raise vocab_size to the tokenizer's)"
                )
            counts_V += np.bincount(chunk, minlength=vocab_size)
    return counts_V


def offsets_of(rows_V: np.ndarray) -> np.ndarray:
    """CSR offsets ``[V + 1]``: token t owns rows ``offsets[t]..offsets[t+1]-1``."""
    offsets_V1 = np.zeros(len(rows_V) + 1, dtype=np.int64)
    np.cumsum(rows_V, out=offsets_V1[1:])
    offsets_V1.flags.writeable = False
    return offsets_V1


def first_rows(name: str, offsets_V1: np.ndarray, ids_L: np.ndarray) -> np.ndarray:
    """``offsets[ids]``: the first row of every position's token."""
    if len(offsets_V1) < 2:
        raise ValueError(f"{name} is not fitted; call fit(shards) or load(path) first")
    ids_L = np.asarray(ids_L)
    num_v = len(offsets_V1) - 1
    if ids_L.size and (ids_L.min() < 0 or ids_L.max() >= num_v):
        raise ValueError(f"{name}.lookup got ids outside 0..{num_v - 1}")
    return offsets_V1[ids_L.astype(np.int64)]


def content_hash(settings: dict[str, object], rows_V: np.ndarray) -> str:
    """SHA-256 of the settings (v, k, V, strategy) and the rows of every token in id order."""
    sha = hashlib.sha256(f"l3-allocation-v1 {json.dumps(settings, sort_keys=True)}\n".encode())
    sha.update(np.ascontiguousarray(rows_V, dtype="<i8").tobytes())
    return sha.hexdigest()


def save_npz(
    path: str | Path,
    fmt: str,
    settings: dict,
    rows_V: np.ndarray,
    stats,
    digest: str,
    tokenizer_fingerprint: str | None = None,
):
    """Write rows, settings, hash, fit statistics and the fingerprint of the tokenizer whose
    ids were counted to a compressed ``.npz``, atomically."""
    path = Path(path)
    meta = {
        "format": fmt,
        "format_version": FORMAT_VERSION,
        "settings": settings,
        "content_hash": digest,
        "fit_stats": dataclasses.asdict(stats) if stats is not None else None,
        "tokenizer_fingerprint": tokenizer_fingerprint,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as stream:
            np.savez_compressed(
                stream, rows=rows_V.astype(np.int32), meta=np.array(json.dumps(meta))
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_npz(
    path: str | Path, fmt: str
) -> tuple[dict[str, Any], np.ndarray, FitStats | None, str | None]:
    """Settings, rows, fit statistics and tokenizer fingerprint of a file written by
    ``save_npz``; ``ValueError`` naming the file when it is not one of ``fmt`` or its rows do
    not match its hash."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {fmt} file at {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"][()]))
            rows_V = data["rows"].astype(np.int64)
        if meta.get("format") != fmt or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"format {meta.get('format')!r} version {meta.get('format_version')!r}; "
                f"expected {fmt!r} version {FORMAT_VERSION}"
            )
        stats = FitStats(**meta["fit_stats"]) if meta["fit_stats"] is not None else None
        settings = meta["settings"]
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
    ) as e:
        raise ValueError(f"{path} is not a valid {fmt} file ({type(e).__name__}: {e})") from e
    if content_hash(settings, rows_V) != meta["content_hash"]:
        raise ValueError(f"{path} is corrupt: its rows do not match its recorded content hash")
    return settings, rows_V, stats, meta.get("tokenizer_fingerprint")
