"""``PlannedLookups``: a part whose table rows are known from token ids alone (a static router),
so that decoding can start reading them before the forward that uses them.

When generation knows the next tokens (right after sampling them, on the host), the decoder
asks every part that implements this for its rows (``plan_lookups``); the part starts
fetching them (``EmbeddingBackend.prefetch``: a side stream or a reader thread) and returns
what it fetched. The decoder then runs its layers; the part's forward for those positions is
``forward_planned``, which waits for the rows only where it needs them, so the transfer hides
behind the layers before it.

Legend: B = batch rows, T = new positions, W = preceding ids a part reads, D = model width.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class PlannedLookups(Protocol):
    """A part (input embedding or sublayer) that can fetch its rows ahead of its forward."""

    def plan_lookups(self, ids_BT: torch.Tensor, preceding_BW: torch.Tensor) -> object | None:
        """Start fetching the rows that new positions with ids ``ids_BT`` read (host tensors;
        ``preceding_BW`` holds each row's ids before them, -1 where there are none). Returns
        the rows in flight, handed back to ``forward_planned``; ``None`` when nothing needs
        fetching (e.g. a table already on the compute device), and the plain forward runs."""

    def forward_planned(self, hidden_BTD: torch.Tensor, planned: object) -> torch.Tensor:
        """The part's output at those positions, from the rows ``plan_lookups`` fetched;
        equal to its plain forward over the same ids."""
