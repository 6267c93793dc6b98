"""Rows per token: L³'s LZW allocation and the uniform and frequency ablations.

Every function returns int64 ``rows_V`` with ``rows_V.sum() == num_rows`` (v), every token at
least 1 row and none above ``max_rows_per_token`` (k); ``check_sizes`` guarantees that such an
allocation exists (V <= v <= V * k).

Legend: V = token ids, C = codewords.
"""

from __future__ import annotations

import numpy as np


def check_sizes(name: str, *, num_rows: int, max_rows_per_token: int, vocab_size: int | None):
    """``ValueError`` naming the field when no allocation of v rows over V tokens exists."""
    if vocab_size is None:
        raise ValueError(
            f"{name} vocab_size=None; valid: the number of token ids V (the tokenizer's "
            "vocabulary size), so that every id, seen or not, gets a row"
        )
    if vocab_size < 1:
        raise ValueError(f"{name} vocab_size={vocab_size} is invalid; valid: at least 1")
    if not vocab_size <= num_rows <= vocab_size * max_rows_per_token:
        raise ValueError(
            f"{name} num_rows={num_rows} is invalid for vocab_size={vocab_size} and "
            f"max_rows_per_token={max_rows_per_token}; valid: {vocab_size}.."
            f"{vocab_size * max_rows_per_token} (every token gets 1..k rows)"
        )


def spread_evenly(rows_V: np.ndarray, extra: int, cap: int) -> np.ndarray:
    """Add ``extra`` rows one per token in rounds, lowest ids first, skipping tokens at ``cap``."""
    rows_V = rows_V.copy()
    while extra > 0:
        open_V = np.flatnonzero(rows_V < cap)
        assert len(open_V), "more rows than V * k"
        rounds = min(extra // len(open_V), int(cap - rows_V[open_V].max()))
        if rounds > 0:
            rows_V[open_V] += rounds
            extra -= rounds * len(open_V)
        else:
            rows_V[open_V[:extra]] += 1
            extra = 0
    return rows_V


def uniform_rows(*, num_rows: int, vocab_size: int) -> np.ndarray:
    """v / V rows each; the remainder goes one row each to the lowest ids."""
    rows_V = np.full(vocab_size, num_rows // vocab_size, dtype=np.int64)
    rows_V[: num_rows % vocab_size] += 1
    return rows_V


def frequency_rows(counts_V: np.ndarray, *, num_rows: int, max_rows_per_token: int) -> np.ndarray:
    """1 row each plus the other v - V rows in proportion to ``counts_V``, capped at k.

    Quotas at or above the cap are clamped to it and the rest re-shared among the others until
    none is; the floors are kept and the leftover rows go to the largest fractional parts (equal
    parts: lower id first). Exact integer arithmetic. With no counts left to share by (an empty
    corpus), the leftover is spread evenly (``spread_evenly``).
    """
    num_v, cap = len(counts_V), max_rows_per_token - 1  # extra rows per token
    counts = [int(c) for c in counts_V]
    extra_V = np.zeros(num_v, dtype=np.int64)
    free = [t for t in range(num_v) if counts[t] > 0]
    remaining = num_rows - num_v
    while remaining > 0 and free:
        total = sum(counts[t] for t in free)
        over = [t for t in free if remaining * counts[t] >= cap * total]
        if not over:
            shares = {t: divmod(remaining * counts[t], total) for t in free}
            for t in free:
                extra_V[t] = shares[t][0]
            left = remaining - sum(q for q, _ in shares.values())
            for t in sorted(free, key=lambda t: (-shares[t][1], t))[:left]:
                extra_V[t] += 1
            remaining = 0
            break
        extra_V[over] = cap
        remaining -= cap * len(over)
        free = [t for t in free if extra_V[t] < cap]
    return spread_evenly(extra_V + 1, remaining, max_rows_per_token)


def lzw_rows(
    last_C: np.ndarray, *, vocab_size: int, num_rows: int, max_rows_per_token: int
) -> tuple[np.ndarray, int]:
    """The paper's walk: 1 row each, then +1 to the last token of each codeword in ``last_C``
    (the sorted codewords' last tokens), skipping tokens at k, until the total is v.

    When one walk ends short of v, it repeats over the same list (each pass again +1 per
    codeword to tokens below k); once a pass gives nothing (every token ending a codeword is at
    k), the rest is spread evenly (``spread_evenly``). Returns ``rows_V`` and the number of
    codewords walked (all passes).
    """
    rows_V = np.ones(vocab_size, dtype=np.int64)
    remaining, walked = num_rows - vocab_size, 0
    order_C = np.argsort(last_C, kind="stable")
    sorted_C = last_C[order_C]
    starts_C = np.searchsorted(sorted_C, sorted_C)  # first index of each token's run
    occurrence_C = np.empty(len(last_C), dtype=np.int64)  # earlier codewords with that token
    occurrence_C[order_C] = np.arange(len(last_C)) - starts_C
    while remaining > 0:
        grants_C = occurrence_C < (max_rows_per_token - rows_V[last_C])
        total_C = np.cumsum(grants_C)
        if len(total_C) == 0 or total_C[-1] == 0:
            return spread_evenly(rows_V, remaining, max_rows_per_token), walked
        enough = total_C[-1] >= remaining
        stop = int(np.searchsorted(total_C, remaining)) + 1 if enough else len(last_C)
        rows_V += np.bincount(last_C[:stop][grants_C[:stop]], minlength=vocab_size)
        remaining -= int(total_C[stop - 1])
        walked += stop
    return rows_V, walked
