"""Conformance of every registered ``VocabExtension`` (plus a small reference, see support/).

A registered vocabulary must appear in ``EXAMPLES`` (how to build one that finds entries in
the repetitive corpus below).
"""

from __future__ import annotations

import numpy as np
import pytest

from embedkit import registry
from tests.support.bigram_vocab import BigramVocab

EXAMPLES: dict[str, object] = {
    "FGramVocab": lambda cls: cls(min_count=2, num_entries=1_000),
    "LZWAllocation": lambda cls: cls(num_rows=640, max_rows_per_token=32, vocab_size=64),
}

VOCABS = [(s.short_name, s) for s in registry.specs("VocabExtension")]
CASES = [*VOCABS, ("reference:BigramVocab", None)]


def _build(spec):
    if spec is None:
        return BigramVocab(min_count=2)
    assert spec.short_name in EXAMPLES, f"add an example of {spec.class_path} to EXAMPLES"
    return EXAMPLES[spec.short_name](spec.load())


@pytest.fixture(params=[c[1] for c in CASES], ids=[c[0] for c in CASES])
def vocab(request):
    return _build(request.param)


def _shards() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    phrase = np.array([5, 6, 7, 8, 9], dtype=np.uint16)
    noise = rng.integers(0, 64, size=400).astype(np.uint16)
    shard = np.concatenate([phrase, noise[:200], phrase, phrase, noise[200:], phrase])
    return [shard, np.tile(phrase, 20)]


def test_fit_then_lookup(vocab):
    vocab.fit(_shards())
    assert vocab.num_entries > 0
    ids_L = np.array([1, 5, 6, 7, 8, 9, 63, 62], dtype=np.int64)
    entries_L = vocab.lookup(ids_L)
    assert entries_L.shape == ids_L.shape and entries_L.dtype == np.int64
    assert (entries_L[2:6] >= 0).all(), "the repeated phrase must be found"
    assert ((entries_L >= -1) & (entries_L < vocab.num_entries)).all()


def test_save_load_round_trip(vocab, tmp_path):
    vocab.fit(_shards())
    path = tmp_path / "vocab"
    vocab.save(path)
    loaded = type(vocab).load(path)
    assert loaded.num_entries == vocab.num_entries
    assert loaded.content_hash == vocab.content_hash
    ids_L = np.concatenate(_shards()).astype(np.int64)[:300]
    np.testing.assert_array_equal(loaded.lookup(ids_L), vocab.lookup(ids_L))


def test_content_hash_tracks_entries(vocab):
    probe_L = np.concatenate([*_shards(), np.tile(np.array([1, 2, 3]), 20)]).astype(np.int64)
    vocab.fit(_shards())
    first, first_entries_L = vocab.content_hash, vocab.lookup(probe_L)
    vocab.fit([np.tile(np.array([1, 2, 3], dtype=np.uint16), 50)])
    if not np.array_equal(vocab.lookup(probe_L), first_entries_L):
        assert vocab.content_hash != first, "entries changed, so must the hash"
    vocab.fit(_shards())
    assert vocab.content_hash == first, "the hash is a function of the entries"
