"""Callbacks every embedkit run gets."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


class FitSummary(L.Callback):
    """After ``fit``, prints the final validation perplexity next to the unigram baseline."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if "val/perplexity" not in metrics:
            return
        line = f"validation perplexity: {float(metrics['val/perplexity']):.2f}"
        data = trainer.datamodule
        if data is not None and hasattr(data, "unigram_perplexity"):
            line += f" (unigram baseline: {data.unigram_perplexity():.2f})"
        if "train/tokens_per_s" in metrics:
            line += f"; training throughput: {float(metrics['train/tokens_per_s']):,.0f} tokens/s"
        rank_zero_info(line)
