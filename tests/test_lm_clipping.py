"""Gradient clipping with a fused AdamW under bf16 mixed precision (Lightning refuses it on its
own path) and without one: the clipped norm, and a short fit."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from embedkit.lm import LanguageModel
from embedkit.model.decoder import Decoder
from embedkit_dense.swiglu import SwiGLU


def tiny_model() -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(
        decoder=Decoder(vocab_size=32, dim=16, num_layers=1, num_heads=2, feed_forward=SwiGLU)
    )


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_clipping_without_a_scaler_clips_every_parameter(algorithm: str):
    model = tiny_model()
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    optimizer = torch.optim.AdamW(model.parameters())
    model.configure_gradient_clipping(optimizer, 0.5, algorithm)
    grads = [p.grad for p in model.parameters()]
    if algorithm == "norm":
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        assert norm == pytest.approx(0.5, rel=1e-4)
    else:
        assert all(float(g.abs().max()) == pytest.approx(0.5) for g in grads)


def test_bf16_mixed_fit_clips_with_a_fused_adamw(monkeypatch, tmp_path):
    monkeypatch.setattr(LanguageModel, "_fused_optimizer", lambda self, parameters: True)
    model = tiny_model()
    ids_NL = torch.randint(0, 32, (8, 9))
    batches = [{"input_ids": ids[:-1][None], "targets": ids[1:][None]} for ids in ids_NL]
    trainer = L.Trainer(
        accelerator="cpu", precision="bf16-mixed", gradient_clip_val=0.1, max_steps=3,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    optimizer = trainer.optimizers[0]
    assert optimizer.defaults["fused"] is True
    assert trainer.global_step == 3
