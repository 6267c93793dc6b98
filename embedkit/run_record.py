"""``RunRecord``: makes every ``embedkit fit`` run directory describe itself.

The run directory is the trainer's ``log_dir`` (``<default_root_dir>/lightning_logs/version_N``
with the default logger), where LightningCLI already writes ``config.yaml``, the logger its
metrics and ``ModelCheckpoint`` its checkpoints. ``RunRecord`` adds ``summary.json``: written
when the fit starts (``status: running``: what ran, on what, with which data), rewritten when it
ends (``finished``, with the results) or stops on an error (``failed``) or Ctrl-C
(``interrupted``). docs/runs.md describes its fields.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from torch import nn

from embedkit.accounting import (
    extra_training_flops,
    inference_flops_per_token,
    parameter_counts,
)
from embedkit.data.shards import MANIFEST_FILE
from embedkit.data.text import digest
from embedkit.interfaces import EmbeddingBackend, VocabExtension
from embedkit.run_environment import code_state, describe_device

if TYPE_CHECKING:
    from embedkit.data.datamodule import TextDataModule
    from embedkit.lm import LanguageModel

SCHEMA_VERSION = 1
SUMMARY_FILE = "summary.json"


class RunRecord(L.Callback):
    """Writes ``summary.json`` into the run directory at the start and at the end of ``fit``.

    Made for a ``LanguageModel`` trained on a ``TextDataModule`` (batches with
    ``input_ids``); ``embedkit fit`` adds it to every run.
    """

    def __init__(self) -> None:
        self._summary: dict[str, Any] | None = None
        self._start = 0.0
        self._last_batch_end: float | None = None
        self._timed_s = 0.0
        self._timed_tokens = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._last_batch_end = None
        self._timed_s, self._timed_tokens = 0.0, 0
        self._summary = {
            "schema_version": SCHEMA_VERSION,
            "status": "running",
            "run_dir": str(Path(trainer.log_dir).resolve()),
            "started_at": _now(),
            "finished_at": None,
            **code_state(),
            "device": describe_device(trainer, pl_module.device),
            "data": describe_data(trainer.datamodule),
            "vocabularies": vocabulary_hashes(pl_module),
            "model": describe_model(pl_module, context=trainer.datamodule.seq_len),
            "tables": tables_per_tier(pl_module),
            "training": {},
            "validation": {"history": []},
            "checkpoints": {},
        }
        self._write(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Step time as LanguageModel measures it (wall time between batch ends, no device
        # synchronisation); the first step of every stretch of training is not timed.
        now = time.perf_counter()
        if self._last_batch_end is not None:
            self._timed_s += now - self._last_batch_end
            self._timed_tokens += batch["input_ids"].numel() * trainer.world_size
        self._last_batch_end = now

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_batch_end = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if trainer.sanity_checking or self._summary is None or "val/loss" not in metrics:
            return
        validation = self._summary["validation"]
        validation["history"].append(
            {
                "step": trainer.global_step,
                "tokens_seen": pl_module.tokens_seen,
                "loss": float(metrics["val/loss"]),
                "perplexity": float(metrics["val/perplexity"]),
                "extra_training_flops": extra_training_flops(pl_module.decoder),
            }
        )
        if "validation_hash" not in self._summary["data"]:
            self._summary["data"].update(describe_validation(trainer))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module, "finished")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception) -> None:
        status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed"
        self._finish(trainer, pl_module, status)

    def tokens_per_s(self) -> float | None:
        """Training tokens per second over the fit's timed steps so far (all ranks)."""
        return self._timed_tokens / self._timed_s if self._timed_s > 0 else None

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, status: str) -> None:
        if self._summary is None:  # the fit failed before it started
            return
        summary = self._summary
        summary["status"], summary["finished_at"] = status, _now()
        summary["training"] = {
            "steps": trainer.global_step,
            "tokens_seen": pl_module.tokens_seen,
            "extra_training_flops": extra_training_flops(pl_module.decoder),
            "wall_time_s": time.perf_counter() - self._start,
            "tokens_per_s": self.tokens_per_s(),
        }
        summary["validation"].update(validation_results(summary["validation"]["history"]))
        summary["checkpoints"] = describe_checkpoints(trainer, Path(summary["run_dir"]))
        self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero:
            path = Path(self._summary["run_dir"]) / SUMMARY_FILE
            write_atomic(path, json.dumps(self._summary, indent=2) + "\n")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it, renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def describe_data(data: TextDataModule) -> dict[str, Any]:
    """The data module's fingerprints and sizes (``describe()``), its batch size and the
    SHA-256 of its token shards' ``manifest.json``."""
    manifest = Path(data.shards.directory) / MANIFEST_FILE
    return data.describe() | {
        "batch_size": data.batch_size,
        "shard_manifest_hash": hashlib.sha256(manifest.read_bytes()).hexdigest(),
    }


def describe_validation(trainer: L.Trainer) -> dict[str, Any]:
    """``validation_windows`` (windows scored per validation) and ``validation_hash``: a digest
    of the validation split (corpus, tokenizer, val_fraction), seq_len and that window count,
    equal exactly when two runs score the same validation targets."""
    loader = trainer.val_dataloaders
    batches = sum(trainer.num_val_batches)
    windows = min(len(loader.dataset), batches * loader.batch_size * trainer.world_size)
    data = trainer.datamodule.describe()
    keys = ("corpus_fingerprint", "tokenizer_fingerprint", "val_fraction", "seq_len")
    key = {name: data[name] for name in keys} | {"validation_windows": windows}
    return {"validation_windows": windows, "validation_hash": digest(key)}


def _implements(value: object, interface: type) -> bool:
    # Not isinstance: a negative check on a plugin interface would import its plugins.
    return interface in type(value).__mro__


def _attributes(module: nn.Module) -> list[tuple[str, object]]:
    """The plain (non-module) attributes of ``module``, where parts keep vocabularies and
    tables that are not submodules."""
    return [(k, v) for k, v in vars(module).items() if not k.startswith("__")]


def vocabulary_hashes(model: nn.Module) -> dict[str, str]:
    """``content_hash`` of every vocabulary extension a part holds (SCONE's f-grams, L³'s
    allocation), by ``<part>.<attribute>``."""
    return {
        f"{name}.{attr}".lstrip("."): value.content_hash
        for name, part in model.decoder.named_modules()
        for attr, value in _attributes(part)
        if _implements(value, VocabExtension)
    }


def table_backends(model: nn.Module) -> list[EmbeddingBackend]:
    """Every lookup table backend held by ``model``'s parts, submodule or not, once each."""
    found: dict[int, EmbeddingBackend] = {}
    for part in model.modules():
        if _implements(part, EmbeddingBackend):
            found[id(part)] = part
        for _, value in _attributes(part):
            if _implements(value, EmbeddingBackend):
                found[id(value)] = value
    return list(found.values())


def tables_per_tier(model: nn.Module) -> dict[str, dict[str, int]]:
    """Tables, rows and bytes (rows x width x element size) per backend class."""
    tiers: dict[str, dict[str, int]] = {}
    for table in table_backends(model):
        tier = tiers.setdefault(type(table).__name__, {"tables": 0, "rows": 0, "bytes": 0})
        tier["tables"] += 1
        tier["rows"] += table.num_rows
        tier["bytes"] += table.num_rows * table.dim * table.dtype.itemsize
    return tiers


def describe_model(model: LanguageModel, *, context: int) -> dict[str, Any]:
    """Parameters (as ``embedkit info`` counts them), inference FLOPs per token at ``context``
    tokens of attention, and the bytes of the parameters on the training device."""
    unique = {id(p): p for p in model.parameters()}.values()
    on_device = sum(p.numel() * p.element_size() for p in unique if p.device == model.device)
    return {
        **{f"parameters_{k}": v for k, v in parameter_counts(model.decoder).items()},
        "context": context,
        "inference_flops_per_token": inference_flops_per_token(model.decoder, context=context),
        "accelerator_parameter_bytes": on_device,
    }


def validation_results(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Final (last) and best (lowest loss) validation of ``history``; None without any."""
    if not history:
        return dict.fromkeys(
            ("final_loss", "final_perplexity", "best_loss", "best_perplexity", "best_step")
        )
    best = min(history, key=lambda entry: entry["loss"])
    return {
        "final_loss": history[-1]["loss"],
        "final_perplexity": history[-1]["perplexity"],
        "best_loss": best["loss"],
        "best_perplexity": best["perplexity"],
        "best_step": best["step"],
    }


def describe_checkpoints(trainer: L.Trainer, run_dir: Path) -> dict[str, Any]:
    """The checkpoint files under the run directory and the best one, relative to it."""
    files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*.ckpt"))
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    if best is not None and Path(best).resolve().is_relative_to(run_dir):
        best = str(Path(best).resolve().relative_to(run_dir))
    return {"files": files, "best": best}
