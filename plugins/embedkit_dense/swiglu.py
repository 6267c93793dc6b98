"""``SwiGLU``: the dense feed-forward block, ``down(silu(gate(x)) * up(x))`` (Shazeer 2020).

Legend: B = batch, L = sequence length, D = model width, F = hidden width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embedkit.interfaces import FeedForward


class SwiGLU(FeedForward):
    """The plain gated MLP of Llama-style decoders; the dense baseline's feed-forward block."""

    def __init__(self, dim: int, *, hidden_dim: int | None = None, multiple_of: int = 64) -> None:
        """
        Args:
            dim: Model width, passed by the decoder.
            hidden_dim: Hidden width; default ``8/3 * dim`` (the parameter count of a 4x MLP),
                rounded up to ``multiple_of``.
            multiple_of: Rounding of the default hidden width.
        """
        super().__init__()
        if hidden_dim is None:
            hidden_dim = -(-int(8 * dim / 3) // multiple_of) * multiple_of
        self.gate = nn.Linear(dim, hidden_dim, bias=False)
        self.up = nn.Linear(dim, hidden_dim, bias=False)
        self.down = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, hidden_BLD: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(hidden_BLD)) * self.up(hidden_BLD))
