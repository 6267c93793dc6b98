"""``Router``: which rows each position reads, and with what weights.

Legend: B = batch, L = sequence length, P = B * L positions, N = routed rows in total, D = width.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch

from embedkit.registry import PluginInterface


@dataclass(frozen=True)
class Routes:
    """Rows per position in CSR form: position p reads ``rows_N[offsets_P1[p]:offsets_P1[p+1]]``.

    ``weights_N`` holds one weight per routed row (``None`` when the consumer computes its own,
    as an attention over the rows does).
    """

    rows_N: torch.Tensor
    offsets_P1: torch.Tensor
    weights_N: torch.Tensor | None = None

    @property
    def num_positions(self) -> int:
        """Number of routed positions P."""
        return self.offsets_P1.numel() - 1

    def counts_P(self) -> torch.Tensor:
        """Number of rows each position reads."""
        return self.offsets_P1[1:] - self.offsets_P1[:-1]


class Router(metaclass=PluginInterface):
    """Maps positions to table rows. A *static* router needs token ids only, so its routes can
    be computed (and the rows prefetched) before the layer that uses them runs."""

    __plugin_interface__ = True

    @property
    @abstractmethod
    def static(self) -> bool:
        """True when ``route`` depends on token ids only (``hidden_BLD`` is ignored)."""

    @property
    @abstractmethod
    def num_rows(self) -> int:
        """Number of rows of the table this router addresses; every routed row is below it."""

    @abstractmethod
    def route(self, ids_BL: torch.Tensor, hidden_BLD: torch.Tensor | None = None) -> Routes:
        """Routes of the B * L positions of ``ids_BL`` in row-major order."""
