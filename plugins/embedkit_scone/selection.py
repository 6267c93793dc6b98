"""The f-grams proper: survivors of all lengths pooled, the S most frequent kept.

Ranking: count (descending), then length (ascending), then token tuple (lexicographic, which is
the dense-id order within one length), so ties are broken the same way on every run. A
sub-gram of a kept n-gram occurs at least as often and is shorter, so it ranks before it: the
kept set is closed under prefixes and suffixes, which the longest-suffix lookup relies on.

Legend: P = pooled survivors, C = candidates, S = entries kept, K = longest n, M = entries of
one length, N = tokens of an n-gram.
"""

from __future__ import annotations

import numpy as np

from embedkit_scone.counting import Level, NGramCounts


def top_entries(
    counts: NGramCounts, *, num_entries: int, max_n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``num_entries`` best-ranked survivors: tokens ``[S, max_n]`` padded with -1,
    lengths ``[S]`` and counts ``[S]``, in rank order (entry ids)."""
    levels = counts.levels
    counts_P = np.concatenate([np.empty(0, np.int64), *(lv.counts_M for lv in levels)])
    lengths_P = np.concatenate(
        [np.empty(0, np.int64), *(np.full(len(lv.keys_M), lv.n) for lv in levels)]
    )
    ids_P = np.concatenate([np.empty(0, np.int64), *(np.arange(len(lv.keys_M)) for lv in levels)])
    cand_C = np.arange(len(counts_P))
    if len(counts_P) > num_entries:  # only counts at or above the S-th largest can be kept
        kth = len(counts_P) - num_entries
        cand_C = np.flatnonzero(counts_P >= np.partition(counts_P, kth)[kth])
    order_C = np.lexsort((ids_P[cand_C], lengths_P[cand_C], -counts_P[cand_C]))
    chosen_S = cand_C[order_C[:num_entries]]
    tokens_SK = np.full((len(chosen_S), max_n), -1, dtype=np.int64)
    for level in levels:
        rows_M = np.flatnonzero(lengths_P[chosen_S] == level.n)
        ids_M = ids_P[chosen_S[rows_M]]
        tokens_SK[rows_M, : level.n] = level_tokens(levels, level.n, ids_M, counts.vocab_size)
    return tokens_SK, lengths_P[chosen_S], counts_P[chosen_S]


def level_tokens(levels: list[Level], n: int, ids_M: np.ndarray, vocab_size: int) -> np.ndarray:
    """Tokens ``[M, n]`` of the n-grams with dense ids ``ids_M``, unrolled through the keys."""
    tokens_MN = np.empty((len(ids_M), n), dtype=np.int64)
    for m in range(n, 1, -1):
        keys_M = levels[m - 2].keys_M[ids_M]
        tokens_MN[:, m - 1] = keys_M % vocab_size
        ids_M = keys_M // vocab_size
    tokens_MN[:, 0] = ids_M
    return tokens_MN
