"""``embedkit vocab build`` and ``embedkit vocab info`` on token shards of a small text."""

from __future__ import annotations

import json
import shutil

import pytest

import embedkit_scone
from embedkit import cli
from embedkit.commands import vocab as vocab_command
from embedkit.data import BundledCorpus, ByteTokenizer, TextFiles, write_shards


def run(*argv: str) -> None:
    vocab_command.run(vocab_command.build_parser().parse_args(list(argv)))


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab-command")
    text = root / "text.txt"
    text.write_text(next(BundledCorpus().documents())[:60_000], encoding="utf-8")
    directory = root / "shards"
    tokenizer = ByteTokenizer()
    write_shards(directory, corpus=TextFiles(path=str(text)), tokenizer=tokenizer, val_fraction=0.1)
    tokenizer.save(root / "tokenizer.json")
    return directory


def test_build_then_info(shards_dir, tmp_path, capsys):
    out = tmp_path / "fgrams.npz"
    run("build", "--data_dir", str(shards_dir), "--out", str(out), "--num_entries", "500")
    built = capsys.readouterr().out
    assert "500 entries" in built and "M tokens/s" in built and "peak count tables" in built
    vocab = embedkit_scone.FGramVocab.load(out)
    assert vocab.num_entries == 500 and vocab.max_n == 5 and vocab.min_count == 5
    assert vocab.tokenizer_fingerprint == ByteTokenizer().fingerprint
    tokenizer = shards_dir.parent / "tokenizer.json"
    run("info", str(out), "--data_dir", str(shards_dir), "--tokenizer", str(tokenizer))
    info = capsys.readouterr().out
    assert "500 entries" in info and vocab.content_hash in info
    assert "length 2:" in info and "coverage of the validation split" in info
    assert "top 20 entries" in info and "'" in info  # decoded text is shown quoted


def test_build_settings_reach_the_vocabulary(shards_dir, tmp_path, capsys):
    out = tmp_path / "short.npz"
    run("build", "--data_dir", str(shards_dir), "--out", str(out), "--max_n", "3",
        "--min_count", "9", "--num_entries", "50", "--chunk_tokens", "1000")  # fmt: skip
    vocab = embedkit_scone.FGramVocab.load(out)
    assert (vocab.max_n, vocab.min_count, vocab.max_entries) == (3, 9, 50)
    assert vocab.entries()[2].min() >= 9 and vocab.entries()[1].max() <= 3


def test_info_refuses_shards_of_another_tokenizer(shards_dir, tmp_path):
    out = tmp_path / "fgrams.npz"
    run("build", "--data_dir", str(shards_dir), "--out", str(out), "--num_entries", "100")
    other = tmp_path / "other-shards"
    shutil.copytree(shards_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["tokenizer_fingerprint"] = "f" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match="tokenizer") as caught:
        run("info", str(out), "--data_dir", str(other))
    assert "bytes-v1" in str(caught.value) and "f" * 64 in str(caught.value)


def test_errors_name_the_bad_input(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(SystemExit, match=str(bad)):
        run("info", str(bad))
    with pytest.raises(SystemExit, match="no token shards"):
        run("build", "--data_dir", str(tmp_path / "none"), "--out", str(tmp_path / "x.npz"))
    with pytest.raises(SystemExit, match="unknown VocabExtension 'Nope'"):
        run("info", str(bad), "--vocab", "Nope")


def test_embedkit_vocab_is_a_command(shards_dir, tmp_path, capsys):
    out = tmp_path / "fgrams.npz"
    cli.main(["vocab", "build", "--data_dir", str(shards_dir), "--out", str(out)])
    cli.main(["vocab", "info", str(out), "--top", "3"])
    assert "top 3 entries" in capsys.readouterr().out
