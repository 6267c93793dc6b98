"""``FGramVocab`` (SCONE f-grams) against brute-force references: exact counts with the paper's
pruning and ranking, chunking, ties, longest-suffix lookup (numpy and torch), files and hashes.

Legend: N = tokens, L = positions, B = batch rows, S = entries, K = max_n.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embedkit.data import BundledCorpus, ByteTokenizer
from embedkit_scone import FGramVocab


def reference_fgrams(shards, *, max_n: int, min_count: int, num_entries: int) -> list:
    """Counter over every n-gram of every shard, the paper's pruning, then the ranking."""
    survivors: dict[int, dict[tuple, int]] = {}
    for n in range(2, max_n + 1):
        counts: Counter = Counter()
        for shard in shards:
            tokens = [int(t) for t in shard]
            for i in range(len(tokens) - n + 1):
                gram = tuple(tokens[i : i + n])
                if n > 2 and not (gram[:-1] in survivors[n - 1] and gram[1:] in survivors[n - 1]):
                    continue
                counts[gram] += 1
        survivors[n] = {gram: c for gram, c in counts.items() if c >= min_count}
    pool = [(gram, c) for level in survivors.values() for gram, c in level.items()]
    pool.sort(key=lambda item: (-item[1], len(item[0]), item[0]))
    return pool[:num_entries]


def reference_lookup(ids_L, fgrams: dict[tuple, int], max_n: int) -> list[int]:
    """Id of the longest f-gram ending at each position, trying lengths max_n..2."""
    tokens = [int(t) for t in ids_L]
    out = []
    for i in range(len(tokens)):
        found = -1
        for n in range(min(max_n, i + 1), 1, -1):
            found = fgrams.get(tuple(tokens[i - n + 1 : i + 1]), -1)
            if found >= 0:
                break
        out.append(found)
    return out


def entries_of(vocab) -> list:
    return [tuple(vocab.entry(i)) for i in range(vocab.num_entries)]


shards_strategy = st.lists(
    st.lists(st.integers(0, 3), max_size=80).map(lambda t: np.array(t, dtype=np.uint16)),
    min_size=1,
    max_size=3,
)


@settings(max_examples=150, deadline=None)
@given(
    shards=shards_strategy,
    max_n=st.integers(2, 5),
    min_count=st.integers(1, 4),
    num_entries=st.integers(1, 40),
    chunk_tokens=st.sampled_from([1, 2, 5, 1 << 24]),
)
def test_counts_match_brute_force(shards, max_n, min_count, num_entries, chunk_tokens):
    vocab = FGramVocab(
        max_n=max_n, min_count=min_count, num_entries=num_entries, chunk_tokens=chunk_tokens
    )
    vocab.fit(shards)
    expected = reference_fgrams(shards, max_n=max_n, min_count=min_count, num_entries=num_entries)
    assert entries_of(vocab) == expected
    tokens_SK, lengths_S, _ = vocab.entries()
    assert tokens_SK.shape == (len(expected), max_n)
    assert (tokens_SK[np.arange(max_n) >= lengths_S[:, None]] == -1).all()


@pytest.fixture(scope="module")
def shakespeare_N() -> np.ndarray:
    text = next(BundledCorpus().documents())[:50_000]
    return ByteTokenizer().encode(text).astype(np.uint16)


def test_counts_match_brute_force_on_text(shakespeare_N):
    shards = [shakespeare_N[:30_000], shakespeare_N[30_000:]]
    vocab = FGramVocab(max_n=5, min_count=5, num_entries=3_000, chunk_tokens=4_096)
    vocab.fit(shards)
    assert entries_of(vocab) == reference_fgrams(shards, max_n=5, min_count=5, num_entries=3_000)
    stats = vocab.fit_stats
    assert stats.num_tokens == 50_000 and stats.peak_table_bytes > 0
    assert sum(stats.num_kept.values()) == vocab.num_entries == 3_000


def test_chunk_size_does_not_change_the_vocab(shakespeare_N):
    shards = [shakespeare_N[:2_000], shakespeare_N[2_000:3_000]]
    whole = FGramVocab(min_count=2, num_entries=500)
    whole.fit(shards)
    for chunk_tokens in (1, 3, 64):
        chunked = FGramVocab(min_count=2, num_entries=500, chunk_tokens=chunk_tokens)
        chunked.fit(shards)
        assert entries_of(chunked) == entries_of(whole)
        assert chunked.content_hash == whole.content_hash


def test_ties_rank_by_length_then_tokens():
    shards = [np.array(s, dtype=np.uint16) for s in ([7, 8], [1, 2, 3], [7, 8], [1, 2, 3])]
    vocab = FGramVocab(min_count=2, num_entries=3)
    vocab.fit(shards)
    assert entries_of(vocab) == [((1, 2), 2), ((2, 3), 2), ((7, 8), 2)]
    vocab.fit(shards[::-1])
    assert entries_of(vocab) == [((1, 2), 2), ((2, 3), 2), ((7, 8), 2)]


@settings(max_examples=100, deadline=None)
@given(
    shards=shards_strategy,
    max_n=st.integers(2, 5),
    num_entries=st.integers(1, 30),
    queries_BL=st.lists(
        st.lists(st.integers(0, 5), min_size=7, max_size=7), min_size=1, max_size=3
    ),
    chunk_tokens=st.sampled_from([1, 3, 1 << 24]),
)
def test_lookup_is_the_longest_suffix(shards, max_n, num_entries, queries_BL, chunk_tokens):
    vocab = FGramVocab(max_n=max_n, min_count=2, num_entries=num_entries, chunk_tokens=chunk_tokens)
    vocab.fit(shards)
    fgrams = {gram: i for i, (gram, _) in enumerate(entries_of(vocab))}
    ids_BL = np.array(queries_BL, dtype=np.int64)  # ids 4 and 5 are past every fitted token
    for ids_L in ids_BL:
        assert vocab.lookup(ids_L).tolist() == reference_lookup(ids_L, fgrams, max_n)
    out_BL = vocab.lookup_torch(torch.from_numpy(ids_BL))
    assert out_BL.dtype == torch.int64
    np.testing.assert_array_equal(out_BL.numpy(), np.stack([vocab.lookup(r) for r in ids_BL]))


def test_lookup_on_text_numpy_equals_torch(shakespeare_N):
    vocab = FGramVocab(num_entries=2_000)
    vocab.fit([shakespeare_N[:40_000]])
    val_BL = shakespeare_N[40_000:].astype(np.int64).reshape(4, -1)
    out_BL = vocab.lookup_torch(torch.from_numpy(val_BL)).numpy()
    np.testing.assert_array_equal(out_BL, np.stack([vocab.lookup(row) for row in val_BL]))
    assert 0.3 < (out_BL >= 0).mean() < 1.0
    assert (out_BL[:, 0] == -1).all(), "a row's first position has no context"


def test_save_load_round_trip(tmp_path, shakespeare_N):
    vocab = FGramVocab(max_n=4, num_entries=1_000)
    vocab.fit([shakespeare_N[:20_000]])
    vocab.tokenizer_fingerprint = "bytes-v1"
    path = tmp_path / "fgrams"  # no suffix: saved as named
    vocab.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["fgrams"], "no temporary file is left"
    loaded = FGramVocab.load(path)
    for mine, theirs in zip(vocab.entries(), loaded.entries(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert loaded.content_hash == vocab.content_hash
    assert (loaded.max_n, loaded.min_count, loaded.max_entries) == (4, 5, 1_000)
    assert loaded.tokenizer_fingerprint == "bytes-v1"
    assert loaded.fit_stats == vocab.fit_stats
    ids_L = shakespeare_N[20_000:30_000]
    np.testing.assert_array_equal(loaded.lookup(ids_L), vocab.lookup(ids_L))


def test_content_hash_follows_the_entries(shakespeare_N):
    first = FGramVocab(num_entries=300)
    first.fit([shakespeare_N[:10_000]])
    again = FGramVocab(num_entries=300, chunk_tokens=1_000)
    again.fit([shakespeare_N[:10_000]])
    other = FGramVocab(num_entries=299)
    other.fit([shakespeare_N[:10_000]])
    assert first.content_hash == again.content_hash != other.content_hash


def test_corrupt_files_are_refused_with_their_path(tmp_path, shakespeare_N):
    vocab = FGramVocab(num_entries=200)
    vocab.fit([shakespeare_N[:5_000]])
    good = tmp_path / "good.npz"
    vocab.save(good)
    data = good.read_bytes()
    garbage, truncated = tmp_path / "garbage.npz", tmp_path / "truncated.npz"
    garbage.write_bytes(b"not a vocabulary at all")
    truncated.write_bytes(data[: len(data) // 2])
    for path in (garbage, truncated):
        with pytest.raises(ValueError, match=str(path)):
            FGramVocab.load(path)
    tampered = tmp_path / "tampered.npz"
    with np.load(good) as arrays:
        fields = dict(arrays)
    fields["counts"] = fields["counts"] + 1  # counts are not hashed: still loads
    fields["tokens"][0, 0] = fields["tokens"][1, 0]
    fields["tokens"][0, 1] = fields["tokens"][1, 1]  # entry 0 duplicates entry 1's 2-gram
    np.savez(tampered, **fields)
    with pytest.raises(ValueError, match=str(tampered)):
        FGramVocab.load(tampered)
    with pytest.raises(FileNotFoundError):
        FGramVocab.load(tmp_path / "missing.npz")


def test_edge_cases_and_errors():
    vocab = FGramVocab()
    vocab.fit([np.array([3], dtype=np.uint16), np.array([], dtype=np.uint32)])
    assert vocab.num_entries == 0
    assert vocab.lookup(np.array([3, 3, 3])).tolist() == [-1, -1, -1]
    assert vocab.lookup_torch(torch.tensor([[3, 3], [1, 2]])).tolist() == [[-1, -1], [-1, -1]]
    assert vocab.lookup(np.array([], dtype=np.int64)).shape == (0,)
    with pytest.raises(ValueError, match="max_n=1"):
        FGramVocab(max_n=1)
    with pytest.raises(ValueError, match="1-D"):
        vocab.fit([np.zeros((2, 3), dtype=np.int64)])
    with pytest.raises(ValueError, match="negative"):
        vocab.fit([np.array([1, -2, 3])])
    with pytest.raises(IndexError):
        vocab.entry(0)
