"""L³ allocations (``embedkit_l3``): the LZW scan against a plain Algorithm 1, the row-count
invariants (sum v, 1..k per token, deterministic), the frequency property, files and errors.

Legend: V = token ids, C = codewords.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import embedkit_l3
from embedkit_l3 import store
from embedkit_l3.lzw import codeword_order, lzw_scan, tuple_of

STRATEGIES = ["lzw", "uniform", "frequency"]
CLASSES = [partial(embedkit_l3.LZWAllocation, strategy=s) for s in STRATEGIES]


def reference_lzw(shards, vocab_size: int) -> dict[tuple, int]:
    """Algorithm 1's scan over token tuples, phrase by phrase (a cut final phrase counts +1)."""
    counts = {(t,): 0 for t in range(vocab_size)}
    for shard in shards:
        tokens = [int(t) for t in shard]
        i = 0
        while i < len(tokens):
            j = i + 1
            while j < len(tokens) and tuple(tokens[i : j + 1]) in counts:
                j += 1
            counts[tuple(tokens[i:j])] += 1
            if j < len(tokens):
                counts[tuple(tokens[i : j + 1])] = 1
            i = j + 1
    return counts


def reference_walk(counts: dict[tuple, int], *, vocab_size: int, v: int, k: int) -> list[int]:
    """The paper's allocation loop over the sorted codewords (one pass)."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], len(item[0]), item[0]))
    alloc, total = [1] * vocab_size, vocab_size
    for word, _ in ranked:
        if total == v:
            break
        if alloc[word[-1]] < k:
            alloc[word[-1]] += 1
            total += 1
    return alloc


corpora = st.lists(
    st.lists(st.integers(0, 7), max_size=60).map(lambda x: np.array(x, dtype=np.int64)),
    min_size=1,
    max_size=3,
)


@settings(max_examples=80, deadline=None)
@given(shards=corpora)
def test_lzw_scan_matches_reference(shards):
    book = lzw_scan(shards, vocab_size=8)
    got = {tuple_of(book, c): int(book.count_C[c]) for c in range(len(book.count_C))}
    assert got == reference_lzw(shards, 8)
    order = codeword_order(book)
    expected = sorted(got.items(), key=lambda item: (-item[1], len(item[0]), item[0]))
    assert [tuple_of(book, c) for c in order] == [w for w, _ in expected]


@settings(max_examples=60, deadline=None)
@given(shards=corpora, data=st.data())
def test_lzw_rows_match_reference_walk(shards, data):
    k = data.draw(st.integers(1, 6))
    v = data.draw(st.integers(8, 8 * k))
    alloc = embedkit_l3.LZWAllocation(num_rows=v, max_rows_per_token=k, vocab_size=8)
    alloc.fit(shards)
    walked = reference_walk(reference_lzw(shards, 8), vocab_size=8, v=v, k=k)
    if sum(walked) == v:  # else the codewords ran out: the repeat passes take over
        assert alloc.rows_per_token().tolist() == walked


@pytest.mark.parametrize("cls", CLASSES, ids=STRATEGIES)
@settings(max_examples=40, deadline=None)
@given(shards=corpora, data=st.data())
def test_invariants(cls, shards, data):
    num_v = data.draw(st.integers(8, 20))
    k = data.draw(st.integers(1, 40))
    v = data.draw(st.integers(num_v, num_v * k))
    alloc = cls(num_rows=v, max_rows_per_token=k, vocab_size=num_v)
    alloc.fit(shards)
    rows_V = alloc.rows_per_token()
    assert rows_V.dtype == np.int64 and rows_V.shape == (num_v,)
    assert rows_V.sum() == v == alloc.num_entries
    assert rows_V.min() >= 1 and rows_V.max() <= k
    offsets_V1 = alloc.offsets()
    assert offsets_V1[0] == 0 and (np.diff(offsets_V1) == rows_V).all()
    ids_L = np.arange(num_v)
    np.testing.assert_array_equal(alloc.lookup(ids_L), offsets_V1[:-1])
    again = cls(num_rows=v, max_rows_per_token=k, vocab_size=num_v)
    again.fit(shards)
    assert again.content_hash == alloc.content_hash


def test_uniform_and_frequency_exact():
    uniform = embedkit_l3.LZWAllocation(
        num_rows=23, max_rows_per_token=5, vocab_size=5, strategy="uniform"
    )
    uniform.fit([np.array([0, 1])])
    assert uniform.rows_per_token().tolist() == [5, 5, 5, 4, 4]
    freq = embedkit_l3.LZWAllocation(
        num_rows=14, max_rows_per_token=6, vocab_size=4, strategy="frequency"
    )
    freq.fit([np.array([0] * 50 + [1] * 3 + [2] * 1)])  # 10 extra rows: 0 capped at 5
    assert freq.rows_per_token().tolist() == [6, 5, 2, 1]


def _shakespeare_ids():
    from embedkit.data import BundledCorpus, ByteTokenizer

    text = next(BundledCorpus().documents())[:200_000]
    return ByteTokenizer().encode(text).astype(np.int64)


def test_frequent_tokens_get_more_rows_on_real_text():
    ids = _shakespeare_ids()
    alloc = embedkit_l3.LZWAllocation(num_rows=256 * 8, max_rows_per_token=64, vocab_size=256)
    alloc.fit([ids])
    rows_V, counts_V = alloc.rows_per_token(), np.bincount(ids, minlength=256)
    order = np.argsort(-counts_V)
    assert rows_V[order[:10]].mean() > 4 * rows_V[counts_V == 0].mean()
    assert rows_V[counts_V == 0].max() == 1, "unseen bytes end no codeword"
    assert rows_V[ord(" ")] == 64 and rows_V[ord("e")] == 64


@pytest.mark.parametrize("cls", CLASSES, ids=STRATEGIES)
def test_save_load_hash(cls, tmp_path):
    alloc = cls(num_rows=100, max_rows_per_token=20, vocab_size=10)
    alloc.fit([np.array([1, 2, 3, 1, 2, 3, 9, 9, 1, 2])])
    alloc.save(tmp_path / "a.npz")
    loaded = embedkit_l3.LZWAllocation.load(tmp_path / "a.npz")
    assert loaded.strategy == alloc.strategy
    assert loaded.content_hash == alloc.content_hash
    np.testing.assert_array_equal(loaded.offsets(), alloc.offsets())
    assert loaded.fit_stats == alloc.fit_stats
    other = cls(num_rows=100, max_rows_per_token=21, vocab_size=10)
    other.fit([np.array([1, 2, 3, 1, 2, 3, 9, 9, 1, 2])])
    assert other.content_hash != alloc.content_hash, "settings are part of the hash"
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a valid"):
        embedkit_l3.LZWAllocation.load(tmp_path / "bad.npz")
    store.save_npz(tmp_path / "other.npz", "embedkit.Other", {}, alloc.rows_per_token(), None, "")
    with pytest.raises(ValueError, match="format"):
        embedkit_l3.LZWAllocation.load(tmp_path / "other.npz")


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="strategy='zipf' is invalid; valid: lzw, uniform"):
        embedkit_l3.LZWAllocation(num_rows=10, strategy="zipf")


@pytest.mark.parametrize("cls", CLASSES, ids=STRATEGIES)
def test_errors(cls):
    shards = [np.array([0, 5, 3])]
    with pytest.raises(ValueError, match="vocab_size=None"):
        cls(num_rows=10).fit(shards)
    with pytest.raises(ValueError, match=r"token id 5 .* vocab_size=5"):
        cls(num_rows=10, vocab_size=5).fit(shards)
    with pytest.raises(ValueError, match="num_rows=5 is invalid"):
        cls(num_rows=5, vocab_size=6).fit(shards)
    with pytest.raises(ValueError, match="num_rows=13 is invalid"):
        cls(num_rows=13, max_rows_per_token=2, vocab_size=6).fit(shards)
    with pytest.raises(ValueError, match="max_rows_per_token=0"):
        cls(num_rows=13, max_rows_per_token=0)
    with pytest.raises(ValueError, match="not fitted"):
        cls(num_rows=10, vocab_size=6).lookup(np.array([1]))
    with pytest.raises(ValueError, match="1-D"):
        cls(num_rows=10, vocab_size=6).fit([np.zeros((2, 2), dtype=np.int64)])
