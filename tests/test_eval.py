"""``embedkit eval``: the arithmetic of perplexity and bits per byte, the byte tokenizer's one
byte per token, the tiny dense checkpoint scored on a new text, and bad input as one clear line.

Legend: N = tokens of a text, B = windows per batch, L = window length.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from embedkit.cli import main
from embedkit.data.tokenizers import ByteTokenizer
from embedkit.evaluation import EvalResult, score, target_bytes, tokenize_documents
from tests.test_e2e import ROOT, embedkit, fitted  # noqa: F401  (fitted: the session fixture)

DENSE = ROOT / "recipes" / "tiny" / "dense.yaml"


def test_bits_per_byte_and_perplexity_of_a_hand_made_case():
    # 4 targets at 1/4 each (2 bits each) over 8 bytes: 1 bit per byte.
    result = EvalResult(tokens=4, nll=4 * math.log(4), bytes=8)
    assert result.perplexity == pytest.approx(4.0)
    assert result.loss == pytest.approx(math.log(4))
    assert result.bits_per_byte == pytest.approx(1.0)
    assert result.as_dict()["bits_per_byte"] == pytest.approx(1.0)


class Uniform(torch.nn.Module):
    """Logits of a uniform distribution over ``vocab_size`` tokens."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, ids_BL: torch.Tensor, features: dict) -> torch.Tensor:
        return torch.zeros(*ids_BL.shape, self.vocab_size)


@pytest.mark.parametrize(
    "text", ["To be, or not to be:\nthat is the question.", "A ünïcödé ✓ text"]
)  # starts on a 1-byte token
def test_byte_tokenizer_scores_one_byte_per_token(text):
    tokenizer = ByteTokenizer()
    ids_N = tokenize_documents(tokenizer, [text, text])  # joined by a newline: no end-of-text
    assert len(ids_N) == 2 * len(text.encode()) + 1
    nll, tokens = score(
        Uniform(256), ids_N, seq_len=8, batch_size=3, device=torch.device("cpu")
    )  # 8 does not divide the targets: the last window is padded, its padding not counted
    assert tokens == len(ids_N) - 1
    assert target_bytes(tokenizer, ids_N) == tokens
    result = EvalResult(tokens=tokens, nll=nll, bytes=target_bytes(tokenizer, ids_N))
    assert result.bits_per_byte == pytest.approx(nll / math.log(2) / tokens, rel=1e-12)
    assert result.bits_per_byte == pytest.approx(8.0)  # uniform over 256 bytes


@pytest.mark.e2e
def test_tiny_dense_checkpoint_is_scored_on_a_new_text(fitted, tmp_path):  # noqa: F811
    run = fitted("dense", tmp_path)
    text = "First Citizen:\nWe are accounted poor citizens, the patricians good.\n" * 12
    (run.cwd / "new.txt").write_text(text)
    result = embedkit(
        "eval", "--config", str(run.recipe), "--ckpt_path", run.checkpoint, "--corpus", "new.txt",
        "--data.seq_len=32", "--batch_size=2", "--output", "eval.json", cwd=run.cwd,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bits per byte" in result.stdout and "perplexity" in result.stdout
    report = json.loads((run.cwd / "eval.json").read_text())
    assert 0 < report["bytes"] < len(text.encode()) and report["tokens"] > 32
    assert report["perplexity"] == pytest.approx(math.exp(report["nll"] / report["tokens"]))
    assert report["bits_per_byte"] == pytest.approx(report["nll"] / math.log(2) / report["bytes"])
    assert report["bits_per_byte"] < 8  # a trained model beats uniform bytes


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--ckpt_path", "missing.ckpt"], "--ckpt_path='missing.ckpt' does not exist"),
        (["--corpus", "missing.txt"], "--corpus='missing.txt' does not exist"),
        (["--corpus", "empty.txt"], "the corpus is empty"),
        (["--max_tokens", "0"], "--max_tokens=0 is invalid"),
        (["--data.cache_dir", "no-cache"], "tokenizer is not in the cache"),
    ],
    ids=["missing-checkpoint", "missing-corpus", "empty-corpus", "max-tokens", "untrained"],
)
def test_bad_input_is_one_clear_line(args, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.ckpt").write_bytes(b"")  # never read: the input is refused first
    (tmp_path / "text.txt").write_text("some text\n")
    (tmp_path / "empty.txt").write_text("")
    defaults = {"--ckpt_path": "model.ckpt", "--corpus": "text.txt"}
    defaults.update(dict(zip(args[::2], args[1::2], strict=True)))
    flat = [item for pair in defaults.items() for item in pair]
    assert_one_clear_line(flat, expected, capsys)
    assert not (tmp_path / "no-cache" / "tokenizers").exists()  # nothing trained


@pytest.mark.e2e
def test_text_shorter_than_one_window_is_one_clear_line(fitted, tmp_path, capsys, monkeypatch):  # noqa: F811
    run = fitted("dense", tmp_path)
    monkeypatch.chdir(run.cwd)
    (run.cwd / "short.txt").write_text("ROMEO: hi\n")
    args = ["--ckpt_path", run.checkpoint, "--corpus", "short.txt", "--data.seq_len=32"]
    assert_one_clear_line(args, "one window of data.seq_len=32 needs at least 33", capsys)


def assert_one_clear_line(args: list[str], expected: str, capsys) -> None:
    """``embedkit eval`` on the tiny dense recipe exits with 2 and ``expected`` on the last line
    of stderr, an ``embedkit: error:`` line."""
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--config", str(DENSE), *args])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("embedkit: error: ") and expected in last, last


def test_tokenize_documents_skips_empty_documents():
    ids_N = tokenize_documents(ByteTokenizer(), ["", "ab", ""])
    assert ids_N.tolist() == [97, 98] and ids_N.dtype == np.int64
