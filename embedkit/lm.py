"""``LanguageModel``: the LightningModule that trains and evaluates a ``Decoder``.

Legend: B = batch, L = sequence length, D = model width, V = vocabulary size.
"""

from __future__ import annotations

import time
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from embedkit.interfaces import AuxiliaryLosses, DataConnected, TrainingMetrics
from embedkit.metrics import SummedPerplexity
from embedkit.model.decoder import Decoder
from embedkit.schedule import warmup_cosine

IGNORE_INDEX = -100


class LanguageModel(L.LightningModule):
    """Next-token training of a decoder with AdamW, linear warmup and cosine decay."""

    def __init__(
        self,
        *,
        decoder: Decoder,
        lr: float = 3e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
    ) -> None:
        """
        Args:
            decoder: The network: a ``Decoder`` with its feed-forward blocks, sublayers and
                input embedding.
            lr: Peak learning rate of AdamW.
            weight_decay: Decoupled weight decay, applied to matrices only (not to norms,
                embeddings or lookup tables).
            betas: AdamW moment coefficients.
            warmup_steps: Steps of linear warmup from 0 to ``lr``.
            min_lr_ratio: Floor of the cosine decay as a fraction of ``lr``, reached at the last
                step (``trainer.max_steps`` or the epochs' worth of steps).
        """
        super().__init__()
        self.save_hyperparameters()
        self.decoder = decoder
        self.val_perplexity = SummedPerplexity()
        self.test_perplexity = SummedPerplexity()
        self.tokens_seen = 0
        self._last_batch_end: float | None = None

    def setup(self, stage: str) -> None:
        """Connect the decoder's parts to the data module (see ``DataConnected``)."""
        datamodule = self.trainer.datamodule
        if datamodule is None:
            return
        for part in self.decoder.modules():
            if isinstance(part, DataConnected):
                part.connect(datamodule)

    def forward(self, ids_BL: torch.Tensor, features: dict | None = None) -> torch.Tensor:
        """Logits [B, L, V] for token ids ``ids_BL``."""
        return self.decoder.logits(self.decoder(ids_BL, features))

    def _summed_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        ids_BL, targets_BL = batch["input_ids"], batch["targets"]
        features = {k: v for k, v in batch.items() if k not in ("input_ids", "targets")}
        logits_BLV = self(ids_BL, features)
        nll_sum = F.cross_entropy(
            logits_BLV.flatten(0, 1).float(),
            targets_BL.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        return nll_sum, (targets_BL != IGNORE_INDEX).sum()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        nll_sum, count = self._summed_loss(batch)
        loss = nll_sum / count.clamp_min(1)
        self.log("train/loss", loss, prog_bar=True)
        if self._is_logging_step():
            self._log_training_metrics()
        auxiliary = self._auxiliary_losses()
        if auxiliary is not None:
            self.log("train/total_loss", loss + auxiliary)
            return loss + auxiliary
        return loss

    def _auxiliary_losses(self) -> torch.Tensor | None:
        """Sum of the decoder parts' own losses of this forward, each logged by part and name."""
        total = None
        for name, part in self.decoder.named_modules():
            if not isinstance(part, AuxiliaryLosses):
                continue
            for loss_name, value in part.auxiliary_losses().items():
                self.log(f"train/{name}/{loss_name}", value)
                total = value if total is None else total + value
        return total

    def _is_logging_step(self) -> bool:
        """Whether Lightning writes this step's logs: every ``log_every_n_steps`` optimizer
        steps, counted as its logger connector counts them; False without a trainer."""
        trainer = self._trainer
        if trainer is None or trainer.log_every_n_steps < 1:
            return False
        return (trainer.global_step + 1) % trainer.log_every_n_steps == 0

    def _log_training_metrics(self) -> None:
        """Log the metrics of this forward of every decoder part that has some, by part name."""
        for name, part in self.decoder.named_modules():
            if isinstance(part, TrainingMetrics):
                for metric_name, value in part.training_metrics().items():
                    self.log(f"train/{name}/{metric_name}", value)

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        # Wall time between consecutive batch ends: in steady state this is the true step time
        # even on an asynchronous device, and it needs no host synchronisation.
        tokens = batch["input_ids"].numel() * self.trainer.world_size
        self.tokens_seen += tokens
        now = time.perf_counter()
        if self._last_batch_end is not None:
            self.log(
                "train/tokens_per_s", tokens / max(now - self._last_batch_end, 1e-9), prog_bar=True
            )
        self.log("train/tokens_seen", float(self.tokens_seen))
        self._last_batch_end = now

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        nll_sum, count = self._summed_loss(batch)
        self.val_perplexity.update(nll_sum, count)
        self.log("val/loss", nll_sum / count.clamp_min(1), reduce_fx="mean", batch_size=int(count))
        self.log("val/perplexity", self.val_perplexity, prog_bar=True)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        nll_sum, count = self._summed_loss(batch)
        self.test_perplexity.update(nll_sum, count)
        self.log("test/loss", nll_sum / count.clamp_min(1), batch_size=int(count))
        self.log("test/perplexity", self.test_perplexity)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        """Per-token negative log-likelihood [B, L] (0 where the target is padding)."""
        ids_BL, targets_BL = batch["input_ids"], batch["targets"]
        features = {k: v for k, v in batch.items() if k not in ("input_ids", "targets")}
        logits_BLV = self(ids_BL, features)
        nll_BL = F.cross_entropy(
            logits_BLV.transpose(1, 2).float(),
            targets_BL,
            ignore_index=IGNORE_INDEX,
            reduction="none",
        )
        return {"input_ids": ids_BL, "nll": nll_BL}

    def _fused_optimizer(self, parameters: list[torch.Tensor]) -> bool | None:
        """One fused AdamW kernel per step on CUDA (large lookup tables make the per-tensor
        path slow), unless a gradient scaler (fp16) must unscale the gradients before
        clipping; None lets torch choose."""
        on_cuda = all(p.is_cuda for p in parameters)
        return (on_cuda and self._gradient_scaler() is None) or None

    def _gradient_scaler(self):
        """The precision plugin's gradient scaler (fp16 mixed precision), else None."""
        return getattr(getattr(self._trainer, "precision_plugin", None), "scaler", None)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip as Lightning does; without a gradient scaler (fp32, bf16-mixed) directly:
        Lightning refuses to clip for a fused AdamW under mixed precision although nothing
        needs unscaling then."""
        if not gradient_clip_val or self._gradient_scaler() is not None:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        if gradient_clip_algorithm in (None, "norm"):
            torch.nn.utils.clip_grad_norm_(parameters, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_value_(parameters, gradient_clip_val)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            is_matrix = param.dim() >= 2 and "embedding" not in name and "table" not in name
            (decay if is_matrix else no_decay).append(param)
        fused = self._fused_optimizer(decay + no_decay)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams.lr,
            betas=self.hparams.betas,
            fused=fused,
        )
        schedule = partial(
            warmup_cosine,
            warmup_steps=max(1, self.hparams.warmup_steps),
            total_steps=int(self.trainer.estimated_stepping_batches),
            min_ratio=self.hparams.min_lr_ratio,
        )
        scheduler = LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
