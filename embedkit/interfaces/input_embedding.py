"""``InputEmbedding``: replaces the token embedding at chosen positions (e.g. SCONE f-grams).

Legend: B = batch, L = sequence length, D = model width, V = vocabulary size.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping

import torch
from torch import nn

from embedkit.registry import PluginInterface


class InputEmbedding(nn.Module, metaclass=PluginInterface):
    """Computes the decoder's input vectors from the ordinary token embeddings and per-position
    features of the batch (such as pre-tagged f-gram ids). The decoder builds it passing the
    model width, the vocabulary size and the table factory (``TableFactory``) for any table
    it owns."""

    __plugin_interface__ = True

    @abstractmethod
    def forward(
        self,
        embedded_BLD: torch.Tensor,
        ids_BL: torch.Tensor,
        token_embedding: nn.Embedding,
        features: Mapping[str, torch.Tensor],
    ) -> torch.Tensor:
        """Input vectors [B, L, D]; ``embedded_BLD`` holds the plain token embeddings."""
