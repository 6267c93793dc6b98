"""Callbacks every embedkit run gets."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from embedkit.run_record import RunRecord


class FitSummary(L.Callback):
    """After ``fit``, prints the final validation perplexity next to the unigram baseline, and
    the mean training throughput (``RunRecord``'s, as in ``summary.json``)."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if "val/perplexity" not in metrics:
            return
        line = f"validation perplexity: {float(metrics['val/perplexity']):.2f}"
        data = trainer.datamodule
        if data is not None and hasattr(data, "unigram_perplexity"):
            line += f" (unigram baseline: {data.unigram_perplexity():.2f})"
        records = [c for c in trainer.callbacks if isinstance(c, RunRecord)]
        rate = records[0].tokens_per_s() if records else None
        if rate is not None:  # the mean over the fit (the logged metric is the last step's)
            line += f"; training throughput: {rate:,.0f} tokens/s"
        rank_zero_info(line)
