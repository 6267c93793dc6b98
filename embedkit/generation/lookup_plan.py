"""Planned lookups: as soon as the next tokens are known, every part with static routing
(``PlannedLookups``: SCONE's f-gram row, L³'s rows of the token) starts fetching its rows, and
``Decoder.decode`` hands each part what it fetched. Off-device tables (pinned CPU memory, Zarr)
are then read while the layers before their first use run.

Sublayers' fetches may be deferred (``defer_sublayers``): the first of them starts when it
asks for its rows, i.e. once the layers before it are queued, and the others once it has run
(its lookup is queued too), in order of use. With CUDA-graphed steps the host is far ahead of
the device, so its planning (pooling, staging, launches) then overlaps those layers instead of
keeping the device idle after sampling's sync, and the later sublayers' planning overlaps the
first one's lookup instead of delaying its launch; the rows still move while the layers before
them run. Eager steps keep the host busy launching those layers, so they start every fetch
first.

Legend: B = batch rows, T = new positions, W = preceding ids a part reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import torch

from embedkit.interfaces import PlannedLookups

if TYPE_CHECKING:
    from embedkit.model.decoder import Decoder

INPUT_EMBEDDING = "input_embedding"  # the plan's key of the input embedding; sublayers: "3", ...


@dataclass
class LookupPlan:
    """The rows in flight for one ``Decoder.decode`` call, per part (``INPUT_EMBEDDING`` or a
    sublayer's key, the index of the layer it runs before); ``deferred``: parts whose fetch
    starts, in order of use, when they or a later part ask for their rows, or once a part has
    run (``start_deferred``)."""

    planned: dict[str, object]
    deferred: dict[str, Callable[[], object | None]] = field(default_factory=dict)

    def of(self, part: str) -> object | None:
        """What ``part`` fetched, or ``None`` (the part runs its plain forward). A deferred
        part starts its fetch now, after those deferred before it."""
        if part in self.deferred:
            self.start_deferred(until=part)
        return self.planned.get(part)

    def start_deferred(self, *, until: str | None = None) -> None:
        """Start the deferred parts' fetches now, in order of use: all of them, or those up to
        and including part ``until``."""
        while self.deferred:
            part = next(iter(self.deferred))
            rows = self.deferred.pop(part)()
            if rows is not None:
                self.planned[part] = rows
            if part == until:
                return


def preceding_ids(history: Sequence[Sequence[int]], width: int) -> torch.Tensor:
    """The last ``width`` ids of every row of ``history`` [B, W], -1 before a row's start."""
    preceding_BW = torch.full((len(history), width), -1, dtype=torch.long)
    for row, ids in enumerate(history):
        tail = list(ids[-width:]) if width else []  # slices the tail only: histories grow
        if tail:
            preceding_BW[row, width - len(tail) :] = torch.as_tensor(tail, dtype=torch.long)
    return preceding_BW


def plan_lookups(
    decoder: Decoder,
    ids_BT: torch.Tensor,
    history: Sequence[Sequence[int]],
    *,
    defer_sublayers: bool = False,
) -> LookupPlan | None:
    """Start fetching the rows that ``decoder.decode(ids_BT, ...)`` will read, for new ids
    ``ids_BT`` (on the host) after each row's ``history`` (its ids so far, on the host; empty
    lists for a prefill). ``None`` when no part has rows to fetch. ``defer_sublayers``: the
    sublayers after the first layer start theirs when the first of them asks (for graphed
    steps; see the module's docstring)."""
    ids_BT = ids_BT.cpu()
    parts: dict[str, PlannedLookups] = {}
    if isinstance(decoder.input_embedding, PlannedLookups):
        width = getattr(decoder.input_embedding, "num_preceding_ids", 0)
        parts[INPUT_EMBEDDING] = decoder.input_embedding
    else:
        width = 0
    sublayers = sorted(decoder.sublayers.items(), key=lambda item: int(item[0]))
    parts |= {k: s for k, s in sublayers if isinstance(s, PlannedLookups)}
    if not parts:
        return None
    preceding_BW = preceding_ids(history, width)
    plan = LookupPlan({})
    for name, part in parts.items():
        start = partial(part.plan_lookups, ids_BT, preceding_BW)
        if defer_sublayers and name != INPUT_EMBEDDING and int(name) > 0:
            plan.deferred[name] = start
        elif (rows := start()) is not None:
            plan.planned[name] = rows
    return plan if plan.planned or plan.deferred else None
