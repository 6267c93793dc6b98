"""Per-position features of the token shards (such as SCONE's f-gram ids), computed once by a
``VocabExtension`` and stored beside the shards.

A feature of split ``s`` lives in ``<data_dir>/features/<name>-<vocab hash>.<s>.bin`` as int32
(-1 where the position has no entry), so a model with another vocabulary never reads it.
Legend: N = number of tokens of a split.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from embedkit.interfaces import VocabExtension

FEATURE_DTYPE = np.int32


def feature_path(data_dir: Path, name: str, vocab: VocabExtension, split: str) -> Path:
    """Where feature ``name`` of ``split`` computed by ``vocab`` is stored."""
    return data_dir / "features" / f"{name}-{vocab.content_hash[:16]}.{split}.bin"


def tag_split(tokens_N: np.ndarray, vocab: VocabExtension, path: Path) -> np.ndarray:
    """The entry id of every position of ``tokens_N``, computed once and kept at ``path``."""
    if not path.is_file():
        entries_N = vocab.lookup(np.asarray(tokens_N, dtype=np.int64))
        if entries_N.shape != tokens_N.shape:
            raise ValueError(
                f"{type(vocab).__name__}.lookup returned shape {entries_N.shape} for "
                f"{tokens_N.shape[0]} tokens"
            )
        if entries_N.size and entries_N.max() >= np.iinfo(FEATURE_DTYPE).max:
            raise ValueError(f"{type(vocab).__name__} has too many entries for int32 features")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(entries_N.astype(FEATURE_DTYPE).tobytes())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    feature_N = np.memmap(path, dtype=FEATURE_DTYPE, mode="r")
    if feature_N.shape != tokens_N.shape:
        raise ValueError(
            f"{path} holds {feature_N.shape[0]} positions but the split has {tokens_N.shape[0]} "
            "tokens (truncated or from other shards); delete it to recompute"
        )
    return feature_N
