"""Tokenizers: one conformance suite over every implementation, BPE caching, chunked encoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedkit.data import BPETokenizer, BundledCorpus, ByteTokenizer, Tokenizer, TokenizerFile
from embedkit.data.text import chunk_text

SAMPLE = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n  Héllo wörld 🙂 — 42!\n"


def _shakespeare_head() -> str:
    return next(BundledCorpus().documents())[:200_000]


def _prepare(tokenizer: Tokenizer, cache_dir: Path, text: str | None = None) -> Tokenizer:
    text = _shakespeare_head() if text is None else text
    tokenizer.prepare(
        train_documents=lambda: iter([text]),
        corpus_fingerprint="shakespeare-head",
        cache_dir=cache_dir,
    )
    return tokenizer


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> BPETokenizer:
    return _prepare(BPETokenizer(vocab_size=512), tmp_path_factory.mktemp("bpe-cache"))


def _tokenizer_file(bpe: BPETokenizer, tmp_path: Path) -> Tokenizer:
    bpe.save(tmp_path / "tokenizer.json")
    return TokenizerFile(path=str(tmp_path / "tokenizer.json"))


CASES = {
    "ByteTokenizer": lambda bpe, tmp_path: ByteTokenizer(),
    "BPETokenizer": lambda bpe, tmp_path: bpe,
    "TokenizerFile": _tokenizer_file,
}


@pytest.fixture(params=list(CASES))
def tokenizer(request, bpe, tmp_path) -> Tokenizer:
    return _prepare(CASES[request.param](bpe, tmp_path), tmp_path / "cache")


def test_encode_decode_round_trip(tokenizer):
    ids_N = tokenizer.encode(SAMPLE)
    assert ids_N.ndim == 1 and ids_N.dtype == np.uint32 and len(ids_N) > 0
    assert int(ids_N.max()) < tokenizer.vocab_size
    assert tokenizer.decode(ids_N) == SAMPLE
    assert tokenizer.decode(list(ids_N)) == SAMPLE
    assert len(tokenizer.encode("")) == 0


def test_encode_batch_equals_encode(tokenizer):
    texts = [SAMPLE, "", "x", _shakespeare_head()[:5000]]
    for ids_N, text in zip(tokenizer.encode_batch(texts), texts, strict=True):
        np.testing.assert_array_equal(ids_N, tokenizer.encode(text))


def test_save_reload_gives_same_ids(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "saved" / "tokenizer.json")
    reloaded = TokenizerFile(path=str(tmp_path / "saved" / "tokenizer.json"))
    assert reloaded.vocab_size == tokenizer.vocab_size
    assert reloaded.eot_id == tokenizer.eot_id
    np.testing.assert_array_equal(reloaded.encode(SAMPLE), tokenizer.encode(SAMPLE))
    if not isinstance(tokenizer, ByteTokenizer):
        assert reloaded.fingerprint == tokenizer.fingerprint


def test_fingerprint_is_stable_and_distinguishes(tokenizer, bpe, tmp_path):
    assert tokenizer.fingerprint == tokenizer.fingerprint
    other = _prepare(BPETokenizer(vocab_size=300), tmp_path / "other-cache")
    assert other.fingerprint != tokenizer.fingerprint


def test_byte_tokenizer_is_utf8():
    tokenizer = ByteTokenizer()
    np.testing.assert_array_equal(tokenizer.encode("aé"), [97, 0xC3, 0xA9])
    assert tokenizer.vocab_size == 256 and tokenizer.eot_id is None


def test_bpe_vocabulary(bpe):
    assert bpe.vocab_size == 512
    assert bpe.eot_id == 0
    assert len(bpe.encode(_shakespeare_head())) < 200_000 / 1.8, "merges must compress"


def test_bpe_vocab_size_is_the_trained_size(tmp_path):
    tokenizer = _prepare(BPETokenizer(vocab_size=4096, min_frequency=2), tmp_path, text="ab ab ab")
    assert 257 <= tokenizer.vocab_size < 4096


def test_bpe_second_prepare_loads_the_cache(bpe, tmp_path):
    first = _prepare(BPETokenizer(vocab_size=512), tmp_path)
    path = tmp_path / "tokenizers" / first.cache_key("shakespeare-head") / "tokenizer.json"
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"], "no temporary files"

    def must_not_train():
        raise AssertionError("the cached tokenizer must be loaded, not retrained")

    second = BPETokenizer(vocab_size=512)
    second.prepare(
        train_documents=must_not_train, corpus_fingerprint="shakespeare-head", cache_dir=tmp_path
    )
    assert second.fingerprint == first.fingerprint == bpe.fingerprint
    second.prepare(
        train_documents=must_not_train, corpus_fingerprint="shakespeare-head", cache_dir=tmp_path
    )
    assert BPETokenizer(vocab_size=600).cache_key("shakespeare-head") != first.cache_key(
        "shakespeare-head"
    )


def test_bpe_errors(tmp_path):
    with pytest.raises(ValueError, match=r"data\.tokenizer\.vocab_size=100 .*at least 257"):
        BPETokenizer(vocab_size=100)
    with pytest.raises(RuntimeError, match="before prepare"):
        _ = BPETokenizer().vocab_size


def test_tokenizer_file_errors(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ValueError, match=r"data\.tokenizer\.path=.*nope\.json.* does not exist"):
        TokenizerFile(path=str(missing))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"data\.tokenizer\.path=.*bad\.json.* not a valid"):
        TokenizerFile(path=str(tmp_path / "bad.json"))


def test_chunk_text_pieces_are_safe_cuts():
    text = "ab\ncd\n\n  ef\ngh\n" * 50
    pieces = list(chunk_text(text, max_chars=16))
    assert "".join(pieces) == text and len(pieces) > 10
    for piece in pieces[:-1]:
        assert piece.endswith("\n") and not piece[-2].isspace()
    assert list(chunk_text("x" * 100, max_chars=10)) == ["x" * 100], "no safe cut: whole"


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("ab 'sé7\n\t.!\u00a0🙂")), max_size=300),
    max_chars=st.integers(1, 40),
)
def test_chunked_encoding_equals_whole_encoding(bpe, text, max_chars):
    tokenizer = bpe.hf_tokenizer
    whole = tokenizer.encode(text, add_special_tokens=False).ids
    pieces = chunk_text(text, max_chars=max_chars)
    chunked = [i for piece in pieces for i in tokenizer.encode(piece, add_special_tokens=False).ids]
    assert chunked == whole


def test_long_text_encodes_like_the_whole(bpe):
    text = _shakespeare_head()
    whole = bpe.hf_tokenizer.encode(text, add_special_tokens=False).ids
    np.testing.assert_array_equal(bpe.encode(text), whole)
