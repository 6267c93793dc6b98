"""The expert-load metrics of ``MoEFeedForward`` (``TrainingMetrics``): their values from a
known load, logged by ``LanguageModel`` per layer at Lightning's logging steps only.

Legend: B = batch rows, L = positions, E = experts.
"""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from embedkit.interfaces import TrainingMetrics
from embedkit.lm import LanguageModel
from embedkit.model.decoder import Decoder
from embedkit_moe.feed_forward import MoEFeedForward

NUM_EXPERTS = 4


def moe_model(*, num_layers: int = 2) -> LanguageModel:
    torch.manual_seed(0)
    decoder = Decoder(
        vocab_size=64, dim=32, num_layers=num_layers, num_heads=4,
        feed_forward=lambda dim: MoEFeedForward(dim, num_experts=NUM_EXPERTS, top_k=2),
    )  # fmt: skip
    return LanguageModel(decoder=decoder, warmup_steps=1)


def batch(rows: int = 2, length: int = 12) -> dict[str, torch.Tensor]:
    ids_BL = torch.randint(0, 64, (rows, length))
    return {"input_ids": ids_BL, "targets": torch.roll(ids_BL, -1, 1)}


def layer_metrics(logged: dict, layer: str) -> dict[str, float]:
    """The metrics (not the losses) logged for ``layer``, by metric name."""
    prefix = f"train/{layer}/"
    return {
        name.removeprefix(prefix): float(value)
        for name, value in logged.items()
        if name.startswith(prefix) and not name.endswith("_loss")
    }


def test_metrics_of_a_known_load():
    block = MoEFeedForward(32, num_experts=NUM_EXPERTS, top_k=2)
    assert isinstance(block, TrainingMetrics)
    block.last_load_E.copy_(torch.tensor([0.5, 0.25, 0.125, 0.125]))
    block.last_dropped.fill_(0.1)
    metrics = {name: float(value) for name, value in block.training_metrics().items()}
    entropy = -(0.5 * math.log(0.5) + 0.25 * math.log(0.25) + 2 * 0.125 * math.log(0.125))
    assert metrics == pytest.approx(
        {
            "load_entropy": entropy,
            "load_max_over_mean": 2.0,
            "load_min": 0.125,
            "dropped_share": 0.1,
            "load/expert_0": 0.5,
            "load/expert_1": 0.25,
            "load/expert_2": 0.125,
            "load/expert_3": 0.125,
        }
    )


def test_language_model_logs_them_per_layer_at_logging_steps_only(monkeypatch):
    model = moe_model()
    for layer in model.decoder.layers:  # the bias picks experts 0 and 1 for every position
        layer.ffn.router.expert_bias_E.copy_(torch.tensor([10.0, 10.0, 0.0, 0.0]))
    calls = []
    original = MoEFeedForward.training_metrics
    monkeypatch.setattr(
        MoEFeedForward, "training_metrics", lambda self: calls.append(self) or original(self)
    )
    logged = {}
    model.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    model.trainer = SimpleNamespace(global_step=0, log_every_n_steps=2)
    model.training_step(batch(), 0)  # step 1 of 2: nothing computed
    assert calls == [] and layer_metrics(logged, "layers.0.ffn") == {}
    model.trainer.global_step = 1
    model.training_step(batch(), 1)  # step 2: Lightning writes this step's logs
    assert len(calls) == 2  # once per layer
    for layer in ("layers.0.ffn", "layers.1.ffn"):
        assert layer_metrics(logged, layer) == pytest.approx(
            {
                "load_entropy": math.log(2),
                "load_max_over_mean": 2.0,
                "load_min": 0.0,
                "dropped_share": 0.0,
                "load/expert_0": 0.5,
                "load/expert_1": 0.5,
                "load/expert_2": 0.0,
                "load/expert_3": 0.0,
            }
        )


def test_no_metrics_without_a_trainer_or_with_logging_off():
    model = moe_model(num_layers=1)
    logged = {}
    model.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    model.training_step(batch(), 0)
    model.trainer = SimpleNamespace(global_step=0, log_every_n_steps=0)
    model.training_step(batch(), 0)
    assert "train/layers.0.ffn/load_balancing_loss" in logged
    assert layer_metrics(logged, "layers.0.ffn") == {}


@pytest.fixture
def one_thread():
    """A model this small runs fastest on one thread, and does not fight other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_lightning_writes_them_on_the_rows_of_its_logging_steps(tmp_path):
    model = moe_model(num_layers=1)
    samples = [{k: v[0] for k, v in batch(rows=1).items()} for _ in range(6)]
    loader = torch.utils.data.DataLoader(samples, batch_size=1)
    trainer = L.Trainer(
        max_steps=6, log_every_n_steps=3, logger=CSVLogger(tmp_path, name="run"),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, loader)
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    loss_steps = [int(r["step"]) for r in rows if r["train/loss"]]
    metric_steps = [int(r["step"]) for r in rows if r["train/layers.0.ffn/load_entropy"]]
    assert loss_steps == metric_steps == [2, 5]
    for row in rows:
        if row["train/layers.0.ffn/load_entropy"]:
            shares = [float(row[f"train/layers.0.ffn/load/expert_{e}"]) for e in range(4)]
            assert sum(shares) == pytest.approx(1.0)
