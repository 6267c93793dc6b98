"""``FeedForward``: the per-layer channel-mixing block of the decoder (dense MLP, MoE, ...).

Legend: B = batch, L = sequence length, D = model width.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import nn

from embedkit.registry import PluginInterface


class FeedForward(nn.Module, metaclass=PluginInterface):
    """A decoder layer's feed-forward block. The decoder builds one per layer, passing the model
    width as the only argument, so recipes give every other argument."""

    __plugin_interface__ = True

    @abstractmethod
    def forward(self, hidden_BLD: torch.Tensor) -> torch.Tensor:
        """Map [B, L, D] to [B, L, D]."""
