"""``IdentityRouter``: every position reads the one row of its own token, with weight 1.

This is the routing of a plain token embedding expressed as a ``Router``, so a dense model's
vocabulary table can live in any ``EmbeddingBackend``.
Legend: B = batch, L = sequence length, P = B * L positions.
"""

from __future__ import annotations

import torch

from embedkit.interfaces import Router, Routes


class IdentityRouter(Router):
    """Position p reads row ``ids[p]`` with weight 1; static (token ids only)."""

    def __init__(self, *, num_rows: int) -> None:
        """
        Args:
            num_rows: Size of the vocabulary (rows of the table addressed).
        """
        if num_rows <= 0:
            raise ValueError(f"num_rows={num_rows} must be positive")
        self._num_rows = num_rows

    @property
    def static(self) -> bool:
        return True

    @property
    def num_rows(self) -> int:
        return self._num_rows

    def route(self, ids_BL: torch.Tensor, hidden_BLD: torch.Tensor | None = None) -> Routes:
        rows_P = ids_BL.reshape(-1).long()
        offsets_P1 = torch.arange(rows_P.numel() + 1, device=ids_BL.device)
        return Routes(
            rows_N=rows_P,
            offsets_P1=offsets_P1,
            weights_N=torch.ones_like(rows_P, dtype=torch.float32),
        )
