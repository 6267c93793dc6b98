"""``Sublayer``: a block inserted between two decoder layers (e.g. an L³ lookup layer).

Legend: B = batch, L = sequence length, D = model width.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import nn

from embedkit.registry import PluginInterface


class Sublayer(nn.Module, metaclass=PluginInterface):
    """A residual-stream block that runs before decoder layer ``before_layer`` and may read the
    token ids (static routing). The decoder builds it passing the model width, the vocabulary
    size and the table factory (``TableFactory``) for any table it owns."""

    __plugin_interface__ = True

    @property
    @abstractmethod
    def before_layer(self) -> int:
        """Index of the decoder layer this block runs before; at least 1 (never first)."""

    @abstractmethod
    def forward(self, hidden_BLD: torch.Tensor, ids_BL: torch.Tensor) -> torch.Tensor:
        """The new residual stream [B, L, D]."""
