"""The LZW-style scan of L³'s Algorithm 1 (``train_lzw``, arXiv 2601.21461) and its codeword order.

The dictionary starts with every single token at count 0. From the start of a phrase the scan
extends the longest known codeword w; when the next token x makes ``w + x`` unknown, w's count
goes up by 1, ``w + x`` is inserted with count 1 and the next phrase starts after x. A phrase
cut by the end of a shard is a known codeword and gets +1 (the paper's quoted Python, which
scans line by line, instead skips a lone last token and resets such a final codeword to 1; those
end-of-line artefacts are not reproduced). Phrases never span shards.

A codeword is ``(parent, last)``: its prefix's id (-1 for a single token) and its last token.
Ids 0..V-1 are the single tokens; longer codewords get ids V, V+1, ... in insertion order, and
the dictionary is a Python dict keyed by the int ``parent * V + last`` (the scan is sequential).

Legend: V = token ids, C = codewords, N = tokens of a chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

CHUNK_TOKENS = 1 << 20  # tokens turned into a Python list at a time while streaming a shard


@dataclass(frozen=True)
class Codebook:
    """The codewords of a scan, in id order (singles first)."""

    parent_C: np.ndarray  # int64: prefix codeword id, -1 for a single token
    last_C: np.ndarray  # int64: last token
    length_C: np.ndarray  # int64: number of tokens
    count_C: np.ndarray  # int64: how often the scan ended a phrase on (or inserted) it
    num_tokens: int


def lzw_scan(shards: Sequence[np.ndarray], *, vocab_size: int) -> Codebook:
    """Scan ``shards`` (1-D int arrays with ids below ``vocab_size``), streaming in chunks."""
    num_v = vocab_size
    code: dict[int, int] = {}
    counts = [0] * num_v
    parents = [-1] * num_v
    lasts = list(range(num_v))
    lengths = [1] * num_v
    num_tokens = sum(len(shard) for shard in shards)
    with _progress(num_tokens) as tick:
        for shard in shards:
            cur = -1  # codeword of the open phrase; -1 at a phrase start
            for start in range(0, len(shard), CHUNK_TOKENS):
                tokens = np.asarray(shard[start : start + CHUNK_TOKENS], dtype=np.int64).tolist()
                cur = _scan_chunk(tokens, cur, code, counts, parents, lasts, lengths, num_v)
                tick(len(tokens))
            if cur >= 0:
                counts[cur] += 1
    return Codebook(
        parent_C=np.array(parents, dtype=np.int64),
        last_C=np.array(lasts, dtype=np.int64),
        length_C=np.array(lengths, dtype=np.int64),
        count_C=np.array(counts, dtype=np.int64),
        num_tokens=num_tokens,
    )


def _scan_chunk(tokens, cur, code, counts, parents, lasts, lengths, num_v) -> int:
    """The scan's inner loop over one chunk; returns the codeword of the phrase left open."""
    get = code.get
    for token in tokens:
        if cur < 0:
            cur = token
            continue
        key = cur * num_v + token
        nxt = get(key)
        if nxt is not None:
            cur = nxt
            continue
        counts[cur] += 1
        code[key] = len(counts)
        counts.append(1)
        parents.append(cur)
        lasts.append(token)
        lengths.append(lengths[cur] + 1)
        cur = -1
    return cur


def codeword_order(book: Codebook) -> np.ndarray:
    """Codeword ids by count descending; ties by length, then token tuple (lexicographic)."""
    lex_C = _lexicographic_ranks(book)
    return np.lexsort((lex_C, book.length_C, -book.count_C))


def _lexicographic_ranks(book: Codebook) -> np.ndarray:
    """Rank of each codeword's token tuple among the codewords of its length."""
    lex_C = np.empty(len(book.last_C), dtype=np.int64)
    singles = book.parent_C < 0
    lex_C[singles] = book.last_C[singles]
    by_length = np.argsort(book.length_C, kind="stable")
    bounds = np.searchsorted(book.length_C[by_length], np.arange(2, book.length_C.max() + 2))
    for lo, hi in pairwise(bounds):
        ids = by_length[lo:hi]
        order = np.lexsort((book.last_C[ids], lex_C[book.parent_C[ids]]))
        lex_C[ids[order]] = np.arange(len(ids))
    return lex_C


def tuple_of(book: Codebook, c: int) -> tuple[int, ...]:
    """The tokens of codeword ``c``."""
    out = []
    while c >= 0:
        out.append(int(book.last_C[c]))
        c = int(book.parent_C[c])
    return tuple(reversed(out))


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr when it is a terminal; a no-op tick otherwise."""
    console = Console(stderr=True)
    if not console.is_terminal or total == 0:
        yield lambda num: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("LZW scan", total=total)
        yield lambda num: bar.update(task, advance=num)
