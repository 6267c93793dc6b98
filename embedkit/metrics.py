"""Perplexity from summed cross-entropy (no softmax over the vocabulary is kept)."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class SummedPerplexity(Metric):
    """``exp(total negative log-likelihood / number of predicted tokens)``, synced across ranks."""

    full_state_update = False
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state(
            "nll_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, nll_sum: torch.Tensor, count: torch.Tensor) -> None:
        """Add a batch's summed cross-entropy (nats) over ``count`` predicted tokens."""
        self.nll_sum += nll_sum.detach().double()
        self.count += count.detach().long()

    def compute(self) -> torch.Tensor:
        return torch.exp(self.nll_sum / self.count.clamp_min(1))
