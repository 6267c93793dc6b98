"""Planned lookups: as soon as the next tokens are known, every part with static routing
(``PlannedLookups``: SCONE's f-gram row, L³'s rows of the token) starts fetching its rows, and
``Decoder.decode`` hands each part what it fetched. Off-device tables (pinned CPU memory, Zarr)
are then read while the layers before their first use run.

Legend: B = batch rows, T = new positions, W = preceding ids a part reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from embedkit.interfaces import PlannedLookups

if TYPE_CHECKING:
    from embedkit.model.decoder import Decoder

INPUT_EMBEDDING = "input_embedding"  # the plan's key of the input embedding; sublayers: "3", ...


@dataclass(frozen=True)
class LookupPlan:
    """The rows in flight for one ``Decoder.decode`` call, per part (``INPUT_EMBEDDING`` or a
    sublayer's key, the index of the layer it runs before)."""

    planned: Mapping[str, object]

    def of(self, part: str) -> object | None:
        """What ``part`` fetched, or ``None`` (the part runs its plain forward)."""
        return self.planned.get(part)


def preceding_ids(history: Sequence[Sequence[int]], width: int) -> torch.Tensor:
    """The last ``width`` ids of every row of ``history`` [B, W], -1 before a row's start."""
    preceding_BW = torch.full((len(history), width), -1, dtype=torch.long)
    for row, ids in enumerate(history):
        tail = list(ids[-width:]) if width else []  # slices the tail only: histories grow
        if tail:
            preceding_BW[row, width - len(tail) :] = torch.as_tensor(tail, dtype=torch.long)
    return preceding_BW


def plan_lookups(
    decoder: Decoder, ids_BT: torch.Tensor, history: Sequence[Sequence[int]]
) -> LookupPlan | None:
    """Start fetching the rows that ``decoder.decode(ids_BT, ...)`` will read, for new ids
    ``ids_BT`` (on the host) after each row's ``history`` (its ids so far, on the host; empty
    lists for a prefill). ``None`` when no part has rows to fetch."""
    ids_BT = ids_BT.cpu()
    parts: dict[str, object] = {}
    if isinstance(decoder.input_embedding, PlannedLookups):
        width = getattr(decoder.input_embedding, "num_preceding_ids", 0)
        parts[INPUT_EMBEDDING] = decoder.input_embedding
    else:
        width = 0
    parts |= {k: s for k, s in decoder.sublayers.items() if isinstance(s, PlannedLookups)}
    if not parts:
        return None
    preceding_BW = preceding_ids(history, width)
    planned = {name: part.plan_lookups(ids_BT, preceding_BW) for name, part in parts.items()}
    planned = {name: rows for name, rows in planned.items() if rows is not None}
    return LookupPlan(planned) if planned else None
