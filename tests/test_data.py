"""The data pipeline: corpora, the train/validation split, token shards and TextDataModule."""

from __future__ import annotations

import gzip
import json
import lzma
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from embedkit.data import (
    IGNORE_INDEX,
    BPETokenizer,
    BundledCorpus,
    ByteTokenizer,
    HuggingFaceDataset,
    TextDataModule,
    TextFiles,
    TokenizerFile,
    TokenShards,
    split_document,
    unigram_perplexity,
    write_shards,
)

DOCS = {
    "a.txt": "".join(f"alpha line {i}: the quick brown fox\n" for i in range(60)),
    "b.txt": "".join(f"beta line {i}, jumps over the lazy dog\n" for i in range(40)),
    "sub/c.txt": "".join(f"gamma {i} 🙂 héllo\n" for i in range(30)),
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name, text in DOCS.items():
        (tmp_path / "corpus" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "corpus" / name).write_text(text, encoding="utf-8")
    return tmp_path / "corpus"


# --- the split --------------------------------------------------------------------------------


def test_split_moves_the_cut_to_the_next_line_start():
    text = "aaaa\nbbbb\ncccc\ndddd\n"  # 20 characters
    assert split_document(text, val_fraction=0.5) == ("aaaa\nbbbb\n", "cccc\ndddd\n")
    assert split_document(text, val_fraction=0.45) == ("aaaa\nbbbb\ncccc\n", "dddd\n")
    assert split_document("no newline here", val_fraction=0.2) == ("no newline h", "ere")
    assert split_document("a" * 15 + "\nbb", val_fraction=0.2) == ("a" * 15 + "\n", "bb")
    assert split_document("ab\ncdefgh", val_fraction=0.2) == ("ab\ncdef", "gh"), "no later newline"


@given(text=st.text(alphabet="ab\n", max_size=80), val_fraction=st.floats(0.01, 0.99))
def test_split_is_a_deterministic_partition_at_a_line_start(text, val_fraction):
    head, tail = split_document(text, val_fraction=val_fraction)
    assert head + tail == text
    assert (head, tail) == split_document(text, val_fraction=val_fraction)
    start = round((1 - val_fraction) * len(text))
    assert len(head) >= start
    if "\n" in text[max(start - 1, 0) :] and 0 < start < len(text):
        assert head.endswith("\n") and "\n" not in head[max(start - 1, 0) : -1]


# --- corpora ----------------------------------------------------------------------------------


@pytest.fixture(params=["TextFiles", "TextFiles.xz", "BundledCorpus"])
def corpus(request, folder):
    if request.param == "TextFiles.xz":
        (folder / "d.txt.xz").write_bytes(lzma.compress(b"compressed\n"))
    return BundledCorpus() if request.param == "BundledCorpus" else TextFiles(path=str(folder))


def test_corpus_conformance(corpus):
    documents = list(corpus.documents())
    assert documents and all(isinstance(d, str) and d for d in documents)
    assert list(corpus.documents()) == documents, "the same documents on every call"
    assert len(corpus.fingerprint) == 64 and int(corpus.fingerprint, 16) >= 0
    assert corpus.fingerprint == corpus.fingerprint


def test_text_files_folder_is_sorted_and_recursive(folder):
    corpus = TextFiles(path=str(folder))
    assert list(corpus.documents()) == [DOCS["a.txt"], DOCS["b.txt"], DOCS["sub/c.txt"]]
    assert list(TextFiles(path=str(folder), pattern="*.txt").documents()) == [
        DOCS["a.txt"],
        DOCS["b.txt"],
    ]
    assert list(TextFiles(path=str(folder / "b.txt")).documents()) == [DOCS["b.txt"]]


def test_text_files_reads_compressed_files(tmp_path):
    (tmp_path / "x.txt.gz").write_bytes(gzip.compress(DOCS["a.txt"].encode()))
    (tmp_path / "y.txt.xz").write_bytes(lzma.compress(DOCS["b.txt"].encode()))
    assert list(TextFiles(path=str(tmp_path)).documents()) == [DOCS["a.txt"], DOCS["b.txt"]]
    assert list(TextFiles(path=str(tmp_path / "y.txt.xz")).documents()) == [DOCS["b.txt"]]


def test_text_files_fingerprint_follows_content(folder):
    first = TextFiles(path=str(folder)).fingerprint
    assert first == TextFiles(path=str(folder)).fingerprint
    assert len(first) == 64 and int(first, 16) >= 0
    (folder / "b.txt").write_text(DOCS["b.txt"] + "more\n", encoding="utf-8")
    assert TextFiles(path=str(folder)).fingerprint != first


def test_text_files_errors(tmp_path):
    with pytest.raises(ValueError, match=r"data\.corpus\.path='.*missing' does not exist"):
        TextFiles(path=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"corpus is empty.*empty'.*pattern='\*\*/\*\.txt'"):
        TextFiles(path=str(tmp_path / "empty"))
    (tmp_path / "empty" / "blank.txt").write_text("")
    with pytest.raises(ValueError, match=r"corpus is empty: every file.*empty'"):
        list(TextFiles(path=str(tmp_path / "empty")).documents())


def test_bundled_corpus():
    corpus = BundledCorpus()
    (text,) = list(corpus.documents())
    assert text.startswith("First Citizen:") and len(text) > 1_000_000
    assert corpus.fingerprint == BundledCorpus(name="tinyshakespeare").fingerprint


def test_hugging_face_dataset_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"pip install 'embedkit\[hf\]'"):
        list(HuggingFaceDataset(name="tiny_shakespeare").documents())


def test_hugging_face_dataset_local(tmp_path):
    pytest.importorskip("datasets")
    rows = [{"text": f"row {i}\nsecond line", "id": i} for i in range(5)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    corpus = HuggingFaceDataset(name=str(tmp_path))
    assert list(corpus.documents()) == [r["text"] for r in rows]
    assert corpus.fingerprint == HuggingFaceDataset(name=str(tmp_path)).fingerprint
    with pytest.raises(ValueError, match=r"data\.corpus\.text_field='body'.*available: .*text"):
        list(HuggingFaceDataset(name=str(tmp_path), text_field="body").documents())


# --- token shards -----------------------------------------------------------------------------


def test_shards_round_trip_with_bytes(folder, tmp_path):
    corpus = TextFiles(path=str(folder))
    manifest = write_shards(
        tmp_path / "shards", corpus=corpus, tokenizer=ByteTokenizer(), val_fraction=0.2
    )
    shards = TokenShards.open(tmp_path / "shards")
    splits = [split_document(text, val_fraction=0.2) for text in corpus.documents()]
    expected_train = "\n".join(head for head, _ in splits).encode()
    expected_val = "\n".join(tail for _, tail in splits).encode()
    assert shards.train_N.astype(np.uint8).tobytes() == expected_train, "heads joined by \\n"
    assert shards.val_N.astype(np.uint8).tobytes() == expected_val
    assert shards.manifest == manifest
    stored = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert stored == {
        "format_version": 1,
        "tokenizer_fingerprint": "bytes-v1",
        "vocab_size": 256,
        "dtype": "uint16",
        "num_train_tokens": len(expected_train),
        "num_val_tokens": len(expected_val),
        "corpus_fingerprint": corpus.fingerprint,
        "val_fraction": 0.2,
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "shards"]


def test_shards_separate_documents_with_end_of_text(folder, tmp_path):
    corpus = TextFiles(path=str(folder))
    tokenizer = BPETokenizer(vocab_size=300)
    tokenizer.prepare(train_documents=corpus.documents, corpus_fingerprint="f", cache_dir=tmp_path)
    write_shards(tmp_path / "shards", corpus=corpus, tokenizer=tokenizer, val_fraction=0.1)
    shards = TokenShards.open(tmp_path / "shards")
    assert shards.train_N.dtype == np.dtype("<u2")
    for split in (shards.train_N, shards.val_N):
        assert int((split == tokenizer.eot_id).sum()) == len(DOCS) - 1
    heads = [split_document(t, val_fraction=0.1)[0] for t in corpus.documents()]
    assert tokenizer.decode(shards.train_N) == "<|endoftext|>".join(heads)


def test_failed_write_leaves_nothing(folder, tmp_path, monkeypatch):
    tokenizer = ByteTokenizer()
    calls = []

    def failing_encode_batch(texts):
        calls.append(texts)
        if len(calls) > 1:
            raise RuntimeError("injected failure")
        return [ByteTokenizer.encode(tokenizer, t) for t in texts]

    monkeypatch.setattr(tokenizer, "encode_batch", failing_encode_batch)
    with pytest.raises(RuntimeError, match="injected"):
        write_shards(
            tmp_path / "out" / "shards",
            corpus=TextFiles(path=str(folder)),
            tokenizer=tokenizer,
            val_fraction=0.1,
        )
    assert len(calls) == 2 and list((tmp_path / "out").iterdir()) == []


def test_empty_validation_split_is_refused(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.txt").write_text("tiny")
    with pytest.raises(ValueError, match=r"validation split of the corpus is empty.*val_fraction"):
        write_shards(
            tmp_path / "shards",
            corpus=TextFiles(path=str(tmp_path)),
            tokenizer=ByteTokenizer(),
            val_fraction=0.1,
        )
    assert not (tmp_path / "shards").exists()


def test_truncated_shard_is_refused(folder, tmp_path):
    corpus = TextFiles(path=str(folder))
    write_shards(tmp_path / "shards", corpus=corpus, tokenizer=ByteTokenizer(), val_fraction=0.2)
    with open(tmp_path / "shards" / "val.bin", "r+b") as stream:
        stream.truncate(10)
    with pytest.raises(ValueError, match=r"val\.bin is incomplete"):
        TokenShards.open(tmp_path / "shards")


# --- TextDataModule ---------------------------------------------------------------------------


def test_datamodule_end_to_end(tmp_path):
    data = TextDataModule(
        tokenizer=BPETokenizer(vocab_size=512),
        seq_len=32,
        batch_size=4,
        train_samples_per_epoch=16,
        cache_dir=str(tmp_path),
    )
    assert data.vocab_size == 512, "known before setup, for the model's constructor"
    data.prepare_data()
    data.setup("fit")
    batches = list(data.train_dataloader())
    assert len(batches) == 4
    assert batches[0]["input_ids"].shape == batches[0]["targets"].shape == (4, 32)
    assert batches[0]["input_ids"].dtype == batches[0]["targets"].dtype == torch.int64
    assert (batches[0]["input_ids"][:, 1:] == batches[0]["targets"][:, :-1]).all()
    val = list(data.val_dataloader())
    targets = np.concatenate([b["targets"].flatten().numpy() for b in val])
    description = data.describe()
    assert (targets != IGNORE_INDEX).sum() == description["num_val_tokens"] - 1
    assert description["vocab_size"] == 512 and description["tokenizer"] == "BPETokenizer"
    assert len(list(data.test_dataloader())) == len(val) == len(list(data.predict_dataloader()))
    assert 1 < data.unigram_perplexity() < 512

    again = TextDataModule(tokenizer=BPETokenizer(vocab_size=512), cache_dir=str(tmp_path))
    assert again.data_dir == data.data_dir, "the same configuration reuses the shards"


def test_datamodule_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path))
    assert TextDataModule().cache_dir == tmp_path


def test_unigram_perplexity_matches_a_reference():
    train_N = np.array([0, 0, 1, 2, 0], dtype=np.uint16)
    targets_N = np.array([0, 1, 3], dtype=np.uint16)
    probs = {0: 4 / 9, 1: 2 / 9, 2: 2 / 9, 3: 1 / 9}  # (count + 1) / (5 + 4)
    expected = np.exp(-np.mean([np.log(probs[t]) for t in targets_N]))
    assert unigram_perplexity(train_N, targets_N, vocab_size=4) == pytest.approx(expected)


def test_datamodule_argument_errors():
    with pytest.raises(ValueError, match=r"data\.val_fraction=1\.0 is invalid"):
        TextDataModule(val_fraction=1.0)
    with pytest.raises(ValueError, match=r"data\.seq_len=0 is invalid"):
        TextDataModule(seq_len=0)


def test_empty_corpus_is_refused_on_first_use(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "blank.txt").write_text("")
    data = TextDataModule(corpus=TextFiles(path=str(tmp_path / "corpus")), cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="corpus is empty"):
        _ = data.vocab_size


def test_seq_len_longer_than_validation_split(folder, tmp_path):
    data = TextDataModule(
        corpus=TextFiles(path=str(folder)),
        tokenizer=ByteTokenizer(),
        seq_len=1000,
        val_fraction=0.05,
        cache_dir=str(tmp_path),
    )
    data.prepare_data()
    num_val_tokens = TokenShards.open(data.data_dir).manifest.num_val_tokens
    expected = (
        rf"data\.seq_len=1000 is longer than the validation split \({num_val_tokens} tokens\)"
    )
    with pytest.raises(ValueError, match=expected + "; lower seq_len or raise val_fraction"):
        data.setup("fit")


def test_data_dir_of_another_tokenizer_is_refused(folder, tmp_path):
    corpus = TextFiles(path=str(folder))
    shards = str(tmp_path / "shards")
    made = TextDataModule(corpus=corpus, tokenizer=ByteTokenizer(), data_dir=shards, seq_len=8)
    made.prepare_data()
    made.setup("fit")
    ByteTokenizer().save(tmp_path / "bytes.json")
    same_ids = TokenizerFile(path=str(tmp_path / "bytes.json"))  # same vocab, other fingerprint
    for tokenizer, expected in (
        (same_ids, rf"fingerprint {same_ids.fingerprint}\).*fingerprint bytes-v1\)"),
        (BPETokenizer(vocab_size=400), r"vocab_size=\d+ but .* have vocab_size=256"),
    ):
        data = TextDataModule(
            corpus=corpus, tokenizer=tokenizer, data_dir=shards, cache_dir=str(tmp_path), seq_len=8
        )
        data.prepare_data()  # finds shards there and leaves them
        with pytest.raises(ValueError, match=r"^data\.tokenizer .*" + expected) as error:
            data.setup("fit")
        assert f"data.data_dir={shards!r}" in str(error.value)
        assert "another data_dir" in str(error.value)


def test_features_are_tagged_once_and_windowed(tmp_path):
    from tests.support.bigram_vocab import BigramVocab

    data = TextDataModule(
        tokenizer=ByteTokenizer(), seq_len=16, batch_size=2, cache_dir=str(tmp_path)
    )
    data.prepare_data()
    data.setup("fit")
    vocab = BigramVocab(min_count=50)
    vocab.fit([data.shards.train_N])
    data.add_feature("bigram_ids", vocab)
    batch = next(iter(data.train_dataloader()))
    ids_BL, tags_BL = batch["input_ids"], batch["bigram_ids"]
    assert tags_BL.shape == ids_BL.shape
    for row_ids, row_tags in zip(ids_BL.numpy(), tags_BL.numpy(), strict=True):
        expected = vocab.lookup(row_ids)
        np.testing.assert_array_equal(row_tags[1:], expected[1:])  # position 0 has context
    stored = list((data.data_dir / "features").glob("bigram_ids-*.train.bin"))
    assert len(stored) == 1
    before = stored[0].stat().st_mtime_ns
    val = next(iter(data.val_dataloader()))
    np.testing.assert_array_equal(
        val["bigram_ids"][0, 1:].numpy(), vocab.lookup(val["input_ids"][0].numpy())[1:]
    )
    data.features("train")
    assert stored[0].stat().st_mtime_ns == before, "tags are computed once"
