"""``RunRecord``: every ``embedkit fit`` run directory describes itself (``config.yaml``,
``summary.json``, metrics, checkpoints), and its saved config reproduces the run."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from embedkit.backends.gpu import GPUBackend
from embedkit.backends.pinned import PinnedCPUBackend
from embedkit.run_environment import git_state, source_hash
from embedkit.run_record import tables_per_tier, validation_results, vocabulary_hashes
from tests.support.bigram_vocab import BigramVocab

ROOT = Path(__file__).resolve().parents[1]
DENSE = ROOT / "recipes" / "tiny" / "dense.yaml"
# The tiny dense recipe cut down to seconds on a CPU: two validations of one batch.
TINY = [
    "--trainer.accelerator=cpu",  # the record of a CPU run, GPU machine or not
    "--trainer.max_steps=4",
    "--trainer.val_check_interval=2",
    "--trainer.limit_val_batches=1",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.tokenizer=ByteTokenizer",
    "--data.batch_size=2",
    "--data.seq_len=16",
    "--data.train_samples_per_epoch=64",
    "--model.decoder.init_args.dim=32",
    "--model.decoder.init_args.num_layers=1",
    "--model.decoder.init_args.num_heads=2",
]


def tiny_fit(root: Path, *flags: str) -> Path:
    """``embedkit fit`` of the tiny dense recipe, in this process, under ``root`` with
    ``flags`` added; the run directory."""
    from embedkit.cli import main

    main(["fit", "--config", str(DENSE), *TINY, *flags, f"--trainer.default_root_dir={root}"])
    return root / "lightning_logs" / "version_0"


def train_losses(run_dir: Path) -> list[float]:
    """``train/loss`` of every step, from the run's ``metrics.csv``."""
    with open(run_dir / "metrics.csv", newline="") as metrics:
        return [float(row["train/loss"]) for row in csv.DictReader(metrics) if row["train/loss"]]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_fit(tmp_path_factory.mktemp("fit") / "run")


def test_run_dir_holds_config_summary_metrics_and_checkpoints(run_dir):
    names = {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}
    assert {"config.yaml", "summary.json", "metrics.csv", "hparams.yaml"} <= names
    assert any(name.startswith("checkpoints/") and name.endswith(".ckpt") for name in names)
    assert not [name for name in names if name.endswith(".tmp")], names
    # TensorBoard (tensorboardX, a dev dependency) logs beside the CSV, in the same directory.
    assert any(name.startswith("events.out.tfevents") for name in names), names


def test_fit_prints_the_mean_throughput_of_its_summary(tmp_path, caplog):
    with caplog.at_level("INFO"):
        run_dir = tiny_fit(tmp_path / "run")
    rate = json.loads((run_dir / "summary.json").read_text())["training"]["tokens_per_s"]
    assert f"training throughput: {rate:,.0f} tokens/s" in caplog.text


def test_a_recipe_logger_replaces_the_default_ones(tmp_path):
    tiny_fit(tmp_path / "run", "--trainer.logger=false")
    assert (tmp_path / "run" / "summary.json").is_file()  # no logger: the root directory
    assert not list((tmp_path / "run").rglob("metrics.csv"))


def test_summary_describes_the_run(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["schema_version"] == 1 and summary["status"] == "finished"
    assert summary["run_dir"] == str(run_dir.resolve())
    assert summary["packages"]["torch"] == torch.__version__
    assert summary["embedkit"]["source_hash"] == source_hash()
    assert summary["training"]["extra_training_flops"] == 0.0  # dense: no training-only work
    assert all(p["extra_training_flops"] == 0.0 for p in summary["validation"]["history"])
    assert summary["device"] | {"type": "cpu", "count": 1} == summary["device"]
    data = summary["data"]
    assert data["tokenizer_fingerprint"] == "bytes-v1"
    manifest = Path(data["data_dir"]) / "manifest.json"
    assert data["shard_manifest_hash"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert data["validation_windows"] == 2 and len(data["validation_hash"]) == 64
    model = summary["model"]
    assert 0 < model["parameters_active"] <= model["parameters_total"]
    assert model["accelerator_parameter_bytes"] == 4 * model["parameters_total"]  # fp32, CPU
    assert model["inference_flops_per_token"] > 0 and model["context"] == 16
    assert summary["tables"] == {}  # the dense model has no lookup table
    training = summary["training"]
    assert training["steps"] == 4 and training["tokens_seen"] == 4 * 2 * 16
    assert training["tokens_per_s"] > 0 and training["wall_time_s"] > 0
    validation = summary["validation"]
    assert [entry["step"] for entry in validation["history"]] == [2, 4]
    with open(run_dir / "metrics.csv", newline="") as metrics:
        logged = [float(r["val/loss"]) for r in csv.DictReader(metrics) if r["val/loss"]]
    assert [entry["loss"] for entry in validation["history"]] == pytest.approx(logged)
    assert validation["final_loss"] == pytest.approx(logged[-1])
    assert validation["final_perplexity"] == pytest.approx(np.exp(logged[-1]), rel=1e-5)
    assert validation["best_loss"] == pytest.approx(min(logged))
    checkpoints = summary["checkpoints"]
    assert checkpoints["best"] in checkpoints["files"]
    assert all((run_dir / name).is_file() for name in checkpoints["files"])


def test_saved_config_reproduces_the_run(run_dir, tmp_path):
    from embedkit.cli import main

    # The saved config alone, with another root folder.
    config = str(run_dir / "config.yaml")
    main(["fit", "--config", config, f"--trainer.default_root_dir={tmp_path / 'again'}"])
    again = tmp_path / "again" / "lightning_logs" / "version_0"
    assert len(train_losses(run_dir)) == 4
    assert train_losses(again) == train_losses(run_dir)


def test_commands_take_a_runs_saved_config(run_dir, tmp_path, capsys):
    """eval, generate and export build the model from a run's own config.yaml, which also
    holds fit's options (ckpt_path, weights_only)."""
    from embedkit.cli import main

    config = str(run_dir / "config.yaml")
    (checkpoint,) = (run_dir / "checkpoints").glob("*.ckpt")
    text = tmp_path / "other.txt"
    text.write_text("Some other text to score, twice. Some other text to score, twice.\n")
    main(["eval", "--config", config, "--ckpt_path", str(checkpoint), "--corpus", str(text)])
    assert "bits per byte" in capsys.readouterr().out
    main(["generate", "--config", config, "--ckpt_path", str(checkpoint), "--prompt", "To be",
          "--max_new_tokens", "4", "--temperature", "0", "--device", "cpu"])  # fmt: skip
    assert capsys.readouterr().out.startswith("To be")


def test_validation_results_final_and_best():
    history = [
        {"step": 2, "loss": 3.0, "perplexity": 20.1},
        {"step": 4, "loss": 2.5, "perplexity": 12.2},
        {"step": 6, "loss": 2.7, "perplexity": 14.9},
    ]
    assert validation_results(history) == {
        "final_loss": 2.7,
        "final_perplexity": 14.9,
        "best_loss": 2.5,
        "best_perplexity": 12.2,
        "best_step": 4,
    }
    assert set(validation_results([]).values()) == {None}


class _Part(nn.Module):
    """A part holding a trainable table (submodule), a frozen one and a vocabulary (plain
    attributes), as SCONE's and L³'s parts do."""

    def __init__(self) -> None:
        super().__init__()
        self.table = GPUBackend(num_rows=10, dim=4)
        self.frozen = PinnedCPUBackend(num_rows=6, dim=8, dtype="bfloat16", device="cpu")
        self.vocab = BigramVocab()
        self.vocab.fit([np.array([1, 2, 1, 2, 1, 2])])


def test_tables_per_tier_and_vocabulary_hashes():
    model = nn.Module()
    model.decoder = nn.ModuleDict({"part": _Part(), "other": nn.Linear(2, 2)})
    assert tables_per_tier(model) == {
        "GPUBackend": {"tables": 1, "rows": 10, "bytes": 10 * 4 * 4},
        "PinnedCPUBackend": {"tables": 1, "rows": 6, "bytes": 6 * 8 * 2},
    }
    part = model.decoder["part"]
    assert vocabulary_hashes(model) == {"part.vocab": part.vocab.content_hash}


def test_source_hash_follows_the_sources(tmp_path, monkeypatch):
    package = tmp_path / "fakepkg"
    package.mkdir()
    (package / "__init__.py").write_text("A = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = source_hash(("fakepkg",))
    assert source_hash(("fakepkg",)) == first and len(first) == 64
    (package / "__init__.py").write_text("A = 2\n")
    assert source_hash(("fakepkg",)) != first


def test_git_state_without_git(monkeypatch):
    monkeypatch.setattr("embedkit.run_environment.shutil.which", lambda name: None)
    assert git_state() == {"git_commit": None, "git_dirty": None}


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_git_state_of_the_checkout():
    state = git_state()
    assert len(state["git_commit"]) == 40 and isinstance(state["git_dirty"], bool)


class FailAtStep3(L.Callback):
    """Fails a fit after its third step (after its first validation)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 3:
            raise RuntimeError("failing on purpose")


def test_a_failed_fit_leaves_a_failed_summary(tmp_path):
    with pytest.raises(RuntimeError, match="failing on purpose"):
        tiny_fit(tmp_path, "--trainer.callbacks=tests.test_run_record.FailAtStep3")
    summary = json.loads((tmp_path / "lightning_logs/version_0/summary.json").read_text())
    assert summary["status"] == "failed" and summary["training"]["steps"] == 3
    assert summary["validation"]["final_loss"] == summary["validation"]["history"][0]["loss"]
