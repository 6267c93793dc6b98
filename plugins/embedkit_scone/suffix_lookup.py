"""Longest-suffix lookup: the id of the longest f-gram ending at every position.

The entries are indexed per length n with the collision-free keys of counting: the entries of
length n get *level ids* 0..M-1 in sorted key order, and the key of an n-gram is
``level_id(its (n-1)-prefix) * V + its last token`` (a 2-gram's prefix id is its first token;
V bounds the token ids). An entry's prefix and suffix are entries too (a sub-gram is counted at
least as often and ranks first, see ``counting.top_entries``), so the n-gram ending at i can be
an entry only if the (n-1)-gram ending at i-1 is one: the lookup walks lengths 2..K with one
probe (``searchsorted`` over the level's sorted keys) per length and position, at most K-1,
and the last length that matches is the longest.

Legend: S = entries, K = longest entry, M = entries of one length, N = keys, L = positions,
B = batch rows.
"""

from __future__ import annotations

import numpy as np
import torch


def find_sorted(sorted_M: np.ndarray, keys_N: np.ndarray) -> np.ndarray:
    """Index of every key in the sorted, duplicate-free ``sorted_M``; -1 where it is absent."""
    if len(sorted_M) == 0:
        return np.full(len(keys_N), -1, dtype=np.int64)
    idx_N = np.searchsorted(sorted_M, keys_N)
    np.minimum(idx_N, len(sorted_M) - 1, out=idx_N)
    return np.where(sorted_M[idx_N] == keys_N, idx_N, -1)


class SuffixIndex:
    """Per-length sorted keys of a set of f-grams, for exact longest-suffix lookups."""

    def __init__(self, tokens_SK: np.ndarray, lengths_S: np.ndarray, *, vocab_size: int) -> None:
        """Index ``tokens_SK`` (row i: entry i's tokens, padded with -1 after ``lengths_S[i]``).

        Raises ``ValueError`` when the entries are not a valid f-gram set: tokens outside
        ``[0, vocab_size)``, bad padding or lengths, duplicates, or an entry whose prefix or
        suffix is not an entry.
        """
        num_entries, max_n = tokens_SK.shape
        self.vocab_size = vocab_size
        self.max_n = max_n
        _check_entries(tokens_SK, lengths_S, vocab_size=vocab_size)
        if num_entries and (num_entries + vocab_size) * vocab_size >= 1 << 63:
            raise ValueError(f"keys of {num_entries} entries over {vocab_size} tokens overflow")
        self.level_keys: list[np.ndarray] = []  # [n - 2]: sorted keys of the n-grams
        self.level_entries: list[np.ndarray] = []  # [n - 2]: entry id of each level id
        for n in range(2, max_n + 1):
            sel_M = np.flatnonzero(lengths_S == n)
            if len(sel_M) == 0:
                if (lengths_S > n).any():
                    raise ValueError(f"entries longer than {n} exist but none of length {n}")
                break
            tokens_MN = tokens_SK[sel_M, :n].astype(np.int64)
            prefix_M = self._level_ids(tokens_MN[:, :-1])
            suffix_M = self._level_ids(tokens_MN[:, 1:])
            if (prefix_M < 0).any() or (suffix_M < 0).any():
                bad = int(sel_M[np.flatnonzero((prefix_M < 0) | (suffix_M < 0))[0]])
                raise ValueError(f"entry {bad} has a prefix or suffix that is not an entry")
            keys_M = prefix_M * vocab_size + tokens_MN[:, -1]
            order_M = np.argsort(keys_M, kind="stable")
            keys_M = keys_M[order_M]
            if (keys_M[1:] == keys_M[:-1]).any():
                raise ValueError(f"the entries of length {n} hold duplicates")
            self.level_keys.append(keys_M)
            self.level_entries.append(sel_M[order_M].astype(np.int64))
        self._torch_levels: dict[torch.device, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    def _level_ids(self, tokens_MN: np.ndarray) -> np.ndarray:
        """Level ids of the n-grams in the rows of ``tokens_MN`` (-1 where one is no entry)."""
        ids_M = tokens_MN[:, 0].copy()
        for m in range(2, tokens_MN.shape[1] + 1):
            keys_M = ids_M * self.vocab_size + tokens_MN[:, m - 1]
            ids_M = np.where(ids_M >= 0, find_sorted(self.level_keys[m - 2], keys_M), -1)
        return ids_M

    def lookup(self, ids_L: np.ndarray) -> np.ndarray:
        """Entry id of the longest entry ending at each position of 1-D ``ids_L``, else -1."""
        tokens_L = np.asarray(ids_L, dtype=np.int64)
        out_L = np.full(len(tokens_L), -1, dtype=np.int64)
        usable_L = (tokens_L >= 0) & (tokens_L < self.vocab_size)
        level_L = np.where(usable_L, tokens_L, -1)  # level ids of the grams ending here
        for keys_M, entries_M in zip(self.level_keys, self.level_entries, strict=True):
            pos_N = np.flatnonzero((level_L[:-1] >= 0) & usable_L[1:]) + 1
            found_N = find_sorted(keys_M, level_L[pos_N - 1] * self.vocab_size + tokens_L[pos_N])
            hit_N = found_N >= 0
            level_L = np.full(len(tokens_L), -1, dtype=np.int64)
            level_L[pos_N[hit_N]] = found_N[hit_N]
            out_L[pos_N[hit_N]] = entries_M[found_N[hit_N]]
            if not hit_N.any():
                break
        return out_L

    def lookup_torch(self, ids_BL: torch.Tensor) -> torch.Tensor:
        """``lookup`` over the last dimension of ``ids_BL``, rows apart, on the ids' device."""
        tokens_BL = ids_BL.long()
        out_BL = torch.full_like(tokens_BL, -1)
        if tokens_BL.shape[-1] == 0:
            return out_BL
        usable_BL = (tokens_BL >= 0) & (tokens_BL < self.vocab_size)
        level_BL = torch.where(usable_BL, tokens_BL, -1)
        for keys_M, entries_M in zip(*self._levels_on(tokens_BL.device), strict=True):
            before_BL = torch.nn.functional.pad(level_BL[..., :-1], (1, 0), value=-1)
            probe_BL = (before_BL >= 0) & usable_BL
            keys_BL = torch.where(probe_BL, before_BL * self.vocab_size + tokens_BL, 0)
            idx_BL = torch.searchsorted(keys_M, keys_BL).clamp_(max=len(keys_M) - 1)
            hit_BL = probe_BL & (keys_M[idx_BL] == keys_BL)
            level_BL = torch.where(hit_BL, idx_BL, -1)
            out_BL = torch.where(hit_BL, entries_M[idx_BL], out_BL)
        return out_BL

    def _levels_on(self, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if device not in self._torch_levels:
            self._torch_levels[device] = (
                [torch.from_numpy(k).to(device) for k in self.level_keys],
                [torch.from_numpy(e).to(device) for e in self.level_entries],
            )
        return self._torch_levels[device]


def _check_entries(tokens_SK: np.ndarray, lengths_S: np.ndarray, *, vocab_size: int) -> None:
    num_entries, max_n = tokens_SK.shape
    if lengths_S.shape != (num_entries,):
        raise ValueError(f"lengths of shape {lengths_S.shape} for {num_entries} entries")
    if num_entries == 0:
        return
    if lengths_S.min() < 2 or lengths_S.max() > max_n:
        raise ValueError(
            f"entry lengths span {lengths_S.min()}..{lengths_S.max()}; valid: 2..{max_n}"
        )
    inside_SK = np.arange(max_n) < lengths_S[:, None]
    if (tokens_SK[~inside_SK] != -1).any():
        raise ValueError("entry tokens past an entry's length are not -1 padding")
    if tokens_SK[inside_SK].min() < 0 or tokens_SK[inside_SK].max() >= vocab_size:
        raise ValueError(f"entry tokens fall outside [0, vocab_size={vocab_size})")
