"""``embedkit generate`` end to end on checkpoints of the tiny recipes (fitted once per session
by ``tests/test_e2e.py``'s fixture): greedy output continues the prompt, is deterministic and
the same alone or in a batch; exported tables on another tier are read, another model's are
refused; bad input is one clear line."""

from __future__ import annotations

import pytest
import torch

from embedkit.cli import main
from tests.test_e2e import ROOT, embedkit, fitted  # noqa: F401  (fitted: the session fixture)

pytestmark = pytest.mark.e2e
DENSE = ROOT / "recipes" / "tiny" / "dense.yaml"


def test_greedy_generation_continues_the_prompt_alone_or_in_a_batch(fitted, tmp_path):  # noqa: F811
    run = fitted("dense", tmp_path)
    common = (
        "generate", "--config", str(run.recipe), "--ckpt_path", run.checkpoint,
        "--max_new_tokens", "12", "--temperature", "0",
    )  # fmt: skip
    alone = embedkit(*common, "--prompt", "ROMEO:", cwd=run.cwd)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert alone.stdout.startswith("ROMEO:") and len(alone.stdout) > len("ROMEO:\n")
    batch = embedkit(
        *common, "--prompt", "ROMEO:", "--prompt", "JULIET: O Romeo", "--no_stream", cwd=run.cwd
    )
    assert batch.returncode == 0, batch.stderr[-3000:]
    first, second = batch.stdout.split("\n---\n")
    assert first + "\n" == alone.stdout  # deterministic, and the same streamed or in a batch
    assert second.startswith("JULIET: O Romeo")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--ckpt_path", "missing.ckpt", "--prompt", "A"], "--ckpt_path='missing.ckpt' does not"),
        (["--prompt", ""], "prompt 1 is empty"),
        ([], "no prompt; give --prompt"),
        (["--prompt", "A", "--top_p", "0"], "top_p=0.0 is invalid; valid: 0 < top_p <= 1"),
        (["--prompt", "A", "--device", "cuda"], "--device=cuda, but no CUDA device"),
    ],
    ids=["missing-checkpoint", "empty-prompt", "no-prompt", "top-p", "no-cuda"],
)
def test_bad_input_is_one_clear_line(args, expected, tmp_path, capsys):
    if "cuda" in expected and torch.cuda.is_available():
        pytest.skip("a CUDA device is available")
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"")  # never read: the input is refused first
    assert_one_clear_line(["--ckpt_path", str(checkpoint), *args], expected, capsys)


def test_prompt_longer_than_the_model_is_one_clear_line(fitted, capsys, tmp_path, monkeypatch):  # noqa: F811
    run = fitted("dense", tmp_path)
    monkeypatch.chdir(run.cwd)
    args = ["--ckpt_path", run.checkpoint, "--prompt", "A", "--max_new_tokens", "500"]
    assert_one_clear_line(args, "exceeds the model's max_seq_len=128", capsys)


def assert_one_clear_line(args: list[str], expected: str, capsys) -> None:
    """``embedkit generate`` on the tiny dense recipe exits with 2 and ``expected`` on the
    last line of stderr, an ``embedkit: error:`` line."""
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--config", str(DENSE), *args])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("embedkit: error: ") and expected in last, last


def test_l3_tables_on_another_tier_are_read_and_another_models_refused(fitted, tmp_path):  # noqa: F811
    run = fitted("l3", tmp_path)
    export = embedkit(
        "export", "--config", str(run.recipe), "--ckpt_path", run.checkpoint, "--out", "tables",
        cwd=run.cwd,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr[-3000:]
    common = (
        "generate", "--config", str(run.recipe), "--ckpt_path", run.checkpoint,
        "--prompt", "ROMEO:", "--max_new_tokens", "8", "--temperature", "0",
        "--model.decoder.init_args.tables", "tables",
    )  # fmt: skip
    pinned = ROOT / "recipes" / "storage" / "pinned.yaml"
    cached = embedkit(*common, "--config", str(pinned), cwd=run.cwd)
    assert cached.returncode == 0, cached.stderr[-3000:]
    assert cached.stdout.startswith("ROMEO:")
    other = embedkit(
        *common,
        "--model.decoder.init_args.sublayers.init_args.allocation.init_args.strategy=uniform",
        "--model.decoder.init_args.sublayers.init_args.allocation_path=other.npz",
        cwd=run.cwd,
    )
    assert other.returncode == 2, other.stderr[-3000:]
    assert "embedkit: error: " in other.stderr and "another model" in other.stderr
    assert "Traceback" not in other.stderr
