"""Exact, streaming counts of token n-grams of length 2..K: one pass over the shards per length.

Keys are collision-free. The *survivors* of length n (n-grams counted at least ``min_count``
times) get dense ids 0..M-1 in sorted key order, and the key of an n-gram is
``dense_id(its (n-1)-prefix) * V + its last token`` (a 2-gram's prefix id is its first token;
V = largest token id + 1). Keys of one length sort like the token tuples, so a dense id is also
the n-gram's rank in lexicographic order.

A pass reads the tokens and, per position, the dense id of the (n-1)-gram ending there (-1 if it
did not survive), which the previous pass left in a scratch file. The n-gram ending at i is
counted only when its (n-1)-prefix (ending at i-1) and its (n-1)-suffix (ending at i) both
survived; the others cannot reach ``min_count`` either, since a sub-gram occurs at least as
often. Chunks split the end positions of a shard and read one position of context before them,
so n-grams spanning chunks are counted once and none spans two shards. Each chunk is counted by
one sort; its unique keys merge into the pass's sorted table, and each position's index among
its chunk's unique keys goes to a scratch file, turned into dense ids once the pass's totals are
known. Memory: the count tables plus a few arrays of ``chunk_tokens``.

Legend: N = positions or keys of a chunk, U = unique keys, M = survivors of one length,
P = pooled survivors, S = entries kept, K = longest n.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from embedkit_scone.suffix_lookup import find_sorted

Tick = Callable[[int, int], None]  # (n, tokens done)


@dataclass(frozen=True)
class Level:
    """The survivors of one length n, in dense-id order."""

    n: int
    keys_M: np.ndarray  # int64, sorted: the collision-free keys
    counts_M: np.ndarray  # int64
    num_counted: int  # distinct n-grams counted (those whose prefix and suffix survived)


@dataclass(frozen=True)
class NGramCounts:
    """Survivors of every length and what counting them cost."""

    vocab_size: int
    levels: list[Level]
    num_tokens: int
    seconds: float
    peak_table_bytes: int  # most bytes held by count tables (survivors kept so far included)


def count_ngrams(
    shards: Sequence[np.ndarray], *, max_n: int, min_count: int, chunk_tokens: int
) -> NGramCounts:
    """Count the n-grams (2 <= n <= ``max_n``) of ``shards`` seen at least ``min_count`` times."""
    started = time.perf_counter()
    shards = [_as_tokens(shard, i) for i, shard in enumerate(shards)]
    num_tokens = sum(len(shard) for shard in shards)
    vocab_size = max((int(shard.max()) + 1 for shard in shards if len(shard)), default=0)
    id_dtype = np.int32 if max(num_tokens, chunk_tokens) < 1 << 31 else np.int64
    levels: list[Level] = []
    peak_bytes = kept_bytes = 0
    with (
        tempfile.TemporaryDirectory(prefix="embedkit-fgrams-") as scratch,
        _progress((max_n - 1) * num_tokens) as tick,
    ):
        prev = None  # per shard: dense id of the (n-1)-gram ending at each position
        for n in range(2, max_n + 1):
            if levels and len(levels[-1].keys_M) * vocab_size >= 1 << 63:
                raise ValueError(f"keys of the {n}-grams overflow int64 (vocab {vocab_size})")
            out = None if n == max_n else _scratch(Path(scratch), n, shards, id_dtype)
            table, chunks, uniques = _count_pass(
                shards,
                prev,
                out,
                n=n,
                vocab_size=vocab_size,
                chunk_tokens=chunk_tokens,
                scratch=Path(scratch),
                tick=tick,
            )
            keep_U = table.counts_U >= min_count
            level = Level(n, table.keys_U[keep_U], table.counts_U[keep_U], len(table.keys_U))
            level_bytes = level.keys_M.nbytes + level.counts_M.nbytes
            table_bytes = max(table.peak_bytes, table.nbytes + level_bytes)
            peak_bytes = max(peak_bytes, kept_bytes + table_bytes)
            kept_bytes += level_bytes
            levels.append(level)
            del table
            if out is not None:
                _finalize(out, chunks, uniques, level.keys_M)
            _remove(prev)
            prev = out
            if len(level.keys_M) == 0:
                break
    return NGramCounts(vocab_size, levels, num_tokens, time.perf_counter() - started, peak_bytes)


class CountTable:
    """Sorted unique keys with their counts, merged chunk by chunk."""

    def __init__(self) -> None:
        self.keys_U = np.empty(0, dtype=np.int64)
        self.counts_U = np.empty(0, dtype=np.int64)
        self.peak_bytes = 0

    @property
    def nbytes(self) -> int:
        return self.keys_U.nbytes + self.counts_U.nbytes

    def add(self, keys_U: np.ndarray, counts_U: np.ndarray) -> None:
        """Add the counts of the sorted unique ``keys_U``."""
        chunk_bytes = keys_U.nbytes + counts_U.nbytes
        before = self.nbytes
        idx_U = np.searchsorted(self.keys_U, keys_U)
        seen_U = idx_U < len(self.keys_U)
        seen_U[seen_U] = self.keys_U[idx_U[seen_U]] == keys_U[seen_U]
        self.counts_U[idx_U[seen_U]] += counts_U[seen_U]
        new_U = ~seen_U
        if new_U.any():
            self.keys_U = np.insert(self.keys_U, idx_U[new_U], keys_U[new_U])
            self.counts_U = np.insert(self.counts_U, idx_U[new_U], counts_U[new_U])
            before += self.nbytes  # the old and the merged arrays coexist while merging
        self.peak_bytes = max(self.peak_bytes, before + chunk_bytes)


def count_chunk(
    keys_N: np.ndarray, *, with_inverse: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Sorted unique keys of ``keys_N`` (int64, >= 0), their counts and, if asked, the index of
    every key among them. One sort: positions ride in the low bits of the keys when they fit."""
    num = len(keys_N)
    if num == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty if with_inverse else None
    perm_N = None
    if not with_inverse:
        sorted_N = np.sort(keys_N)
    else:
        bits = max(1, (num - 1).bit_length())
        if int(keys_N.max()) < 1 << (63 - bits):
            packed_N = (keys_N << bits) | np.arange(num, dtype=np.int64)
            packed_N.sort()
            perm_N = packed_N & ((1 << bits) - 1)
            packed_N >>= bits
            sorted_N = packed_N
        else:
            perm_N = np.argsort(keys_N)
            sorted_N = keys_N[perm_N]
    first_N = np.empty(num, dtype=bool)
    first_N[0] = True
    np.not_equal(sorted_N[1:], sorted_N[:-1], out=first_N[1:])
    starts_U = np.flatnonzero(first_N)
    counts_U = np.diff(starts_U, append=num)
    if perm_N is None:
        return sorted_N[starts_U], counts_U, None
    inverse_N = np.empty(num, dtype=np.int32 if num < 1 << 31 else np.int64)
    inverse_N[perm_N] = np.repeat(np.arange(len(starts_U), dtype=inverse_N.dtype), counts_U)
    return sorted_N[starts_U], counts_U, inverse_N


Chunk = tuple[int, int, int, int, int]  # shard, end positions start..stop, uniques offset, size


def _count_pass(
    shards: list[np.ndarray],
    prev: list | None,
    out: list | None,
    *,
    n: int,
    vocab_size: int,
    chunk_tokens: int,
    scratch: Path,
    tick: Tick,
) -> tuple[CountTable, list[Chunk], Path]:
    """Count the n-grams whose prefix and suffix survived (``prev``; every 2-gram when it is
    None). If ``out`` is given, write each position's index among its chunk's unique keys
    there, and the chunks' unique keys, one after the other, to the returned file."""
    table, chunks, offset = CountTable(), [], 0
    uniques = scratch / f"uniques-{n}.bin"
    with open(uniques, "wb") as stream:
        for s, start, stop in _chunks(shards, chunk_tokens):
            last_N = np.asarray(shards[s][start:stop], dtype=np.int64)
            if prev is None:  # 2-grams: the prefix id is the token
                keys_N = shards[s][start - 1 : stop - 1].astype(np.int64)
                valid_N = None
            else:
                ids_N = np.asarray(prev[s][start - 1 : stop], dtype=np.int64)
                valid_N = (ids_N[:-1] >= 0) & (ids_N[1:] >= 0)
                keys_N, last_N = ids_N[:-1][valid_N], last_N[valid_N]
            keys_N *= vocab_size
            keys_N += last_N
            uniq_U, counts_U, inverse_N = count_chunk(keys_N, with_inverse=out is not None)
            table.add(uniq_U, counts_U)
            if out is not None:
                if valid_N is None:
                    out[s][start:stop] = inverse_N
                else:
                    out[s][start:stop] = -1
                    out[s][start:stop][valid_N] = inverse_N
                uniq_U.tofile(stream)
                chunks.append((s, start, stop, offset, len(uniq_U)))
                offset += len(uniq_U)
            tick(n, stop - start + (start == 1))
    return table, chunks, uniques


def _chunks(shards: list[np.ndarray], chunk_tokens: int) -> Iterator[tuple[int, int, int]]:
    """(shard, start, stop) of every chunk of end positions; position 0 ends no n-gram."""
    for s, shard in enumerate(shards):
        for start in range(1, len(shard), chunk_tokens):
            yield s, start, min(start + chunk_tokens, len(shard))


def _finalize(out: list, chunks: list[Chunk], uniques: Path, survivors_M: np.ndarray) -> None:
    """Turn every position's index among its chunk's unique keys into a dense id (or -1)."""
    if uniques.stat().st_size:  # else no position ends a counted n-gram: all are -1 already
        uniques_U = np.memmap(uniques, dtype=np.int64, mode="r")
        for s, start, stop, offset, size in chunks:
            found_U = find_sorted(survivors_M, uniques_U[offset : offset + size])
            remap_U = np.append(found_U, -1)
            out[s][start:stop] = remap_U[out[s][start:stop]]
        del uniques_U
    uniques.unlink()


def _scratch(scratch: Path, n: int, shards: list[np.ndarray], dtype) -> list:
    """One id array per shard on disk; position 0 ends no n-gram."""
    arrays = []
    for s, shard in enumerate(shards):
        if len(shard) < 2:
            arrays.append(None)
            continue
        array = np.memmap(scratch / f"ids-{n}-{s}.bin", dtype=dtype, mode="w+", shape=len(shard))
        array[0] = -1
        arrays.append(array)
    return arrays


def _remove(arrays: list | None) -> None:
    """Delete the files of scratch arrays no longer read (the space returns once unmapped)."""
    for array in arrays or ():
        if array is not None:
            Path(array.filename).unlink()


def _as_tokens(shard: np.ndarray, index: int) -> np.ndarray:
    array = shard if isinstance(shard, np.ndarray) else np.asarray(shard)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"shard {index} has shape {array.shape} and dtype {array.dtype}; "
            "valid: a 1-D array of integer token ids"
        )
    if len(array) and np.issubdtype(array.dtype, np.signedinteger) and array.min() < 0:
        raise ValueError(f"shard {index} holds negative token ids; valid: ids >= 0")
    return array


@contextmanager
def _progress(total: int) -> Iterator[Tick]:
    """A rich progress bar on stderr when it is a terminal; a no-op tick otherwise."""
    console = Console(stderr=True)
    if not console.is_terminal or total == 0:
        yield lambda n, num: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("counting", total=total)
        yield lambda n, num: bar.update(task, advance=num, description=f"counting {n}-grams")
