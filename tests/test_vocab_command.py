"""``embedkit vocab build`` and ``embedkit vocab info`` on token shards of a small text: SCONE's
f-grams and L³'s row allocation.

Legend: V = token ids, N = tokens of a split.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

import embedkit_l3
import embedkit_scone
from embedkit import cli
from embedkit.commands import vocab as vocab_command
from embedkit.data import BundledCorpus, ByteTokenizer, TextFiles, TokenShards, write_shards


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


@pytest.mark.parametrize("strategy", ["lzw", "uniform", "frequency"])
def test_allocation_build_then_info(shards_dir, tmp_path, capsys, strategy):
    out, tokenizer = tmp_path / "alloc.npz", shards_dir.parent / "tokenizer.json"
    run("build", "--vocab", "LZWAllocation", "--data_dir", str(shards_dir), "--out", str(out),
        "--num_rows", "2000", "--max_rows_per_token", "16", "--strategy", strategy)  # fmt: skip
    built = capsys.readouterr().out
    assert "2,000 entries" in built and "tokens at the cap" in built
    allocation = embedkit_l3.LZWAllocation.load(out)
    assert allocation.vocab_size == ByteTokenizer().vocab_size == 256  # the manifest's, not max+1
    assert allocation.settings == {"num_rows": 2000, "max_rows_per_token": 16}
    assert allocation.strategy == strategy
    rows_V = allocation.rows_per_token()
    run("info", str(out), "--vocab", "LZWAllocation", "--tokenizer", str(tokenizer),
        "--data_dir", str(shards_dir), "--top", "5")  # fmt: skip
    info = capsys.readouterr().out
    assert allocation.content_hash in info and allocation.fit_stats.summary() in info
    assert (
        f"v=2,000 rows over V=256 token ids, at most k=16 rows per token, strategy {strategy}"
        in info
    )
    histogram = {
        label: (int(tokens.replace(",", "")), int(rows.replace(",", "")))
        for label, tokens, rows in re.findall(
            r"^  (\d+(?:-\d+)? rows?|at the cap k=16) +([\d,]+) tokens .*?([\d,]+) rows", info, re.M
        )
    }
    labels = ["1 row", "2-3 rows", "4-7 rows", "8-15 rows", "16 rows"]
    expected = dict.fromkeys(labels, (0, 0))  # the same buckets, from a plain loop over tokens
    for rows in rows_V.tolist():
        low = 1 << (rows.bit_length() - 1)
        high = min(2 * low - 1, 16)
        label = f"{low}-{high} rows" if low < high else f"{low} row{'s' if low > 1 else ''}"
        tokens, held = expected[label]
        expected[label] = (tokens + 1, held + rows)
    num_at_cap = int((rows_V == 16).sum())
    expected["at the cap k=16"] = (num_at_cap, 16 * num_at_cap)
    assert histogram == expected and list(histogram) == list(expected)
    assert num_at_cap == allocation.fit_stats.num_at_cap
    val_N = TokenShards.open(shards_dir).val_N
    read_N = rows_V[np.asarray(val_N, dtype=np.int64)]
    assert (
        f"validation split ({len(val_N):,} positions): {read_N.mean():.2f} rows read per "
        f"position, {(read_N > 1).mean():.2%} of positions have a token with more than 1 row"
    ) in info
    assert "top 5 tokens by rows" in info
    for token in np.argsort(-rows_V, kind="stable")[:5]:
        text = repr(ByteTokenizer().decode([token]))
        assert re.search(rf"│ {token} +│ {rows_V[token]} +│ [\d.]+% +│ {re.escape(text)} +│", info)


def test_build_refuses_settings_the_vocabulary_lacks(shards_dir, tmp_path):
    out = tmp_path / "alloc.npz"
    build = ("build", "--data_dir", str(shards_dir), "--out", str(out))
    with pytest.raises(SystemExit, match="--max_n is not a setting of LZWAllocation") as caught:
        run(*build, "--vocab", "LZWAllocation", "--num_rows", "1000", "--max_n", "3")
    assert "valid: --num_rows (required), --max_rows_per_token (default 512)" in str(caught.value)
    with pytest.raises(SystemExit, match="--num_rows is not a setting of FGramVocab; valid: --"):
        run(*build, "--num_rows", "1000")
    with pytest.raises(SystemExit, match="LZWAllocation needs --num_rows"):
        run(*build, "--vocab", "LZWAllocation")
    with pytest.raises(SystemExit, match=r"^embedkit vocab: error: LZWAllocation num_rows=100 is"):
        run(*build, "--vocab", "LZWAllocation", "--num_rows", "100")  # fewer rows than V=256
    with pytest.raises(SystemExit, match="strategy='nope' is invalid; valid: lzw, uniform"):
        run(*build, "--vocab", "LZWAllocation", "--num_rows", "1000", "--strategy", "nope")
    assert not out.exists()


def test_allocation_info_refuses_shards_of_another_vocab_size(shards_dir, tmp_path):
    out = tmp_path / "alloc.npz"
    run("build", "--vocab", "LZWAllocation", "--data_dir", str(shards_dir), "--out", str(out),
        "--num_rows", "1000")  # fmt: skip
    other = tmp_path / "other-shards"
    shutil.copytree(shards_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["vocab_size"] = 512
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match=r"V=256 .* vocab_size=512"):
        run("info", str(out), "--vocab", "LZWAllocation", "--data_dir", str(other))
    manifest["vocab_size"] = 256
    manifest["tokenizer_fingerprint"] = "another"
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        SystemExit, match=r"fitted on tokens of tokenizer .* from tokenizer another"
    ):
        run("info", str(out), "--vocab", "LZWAllocation", "--data_dir", str(other))
