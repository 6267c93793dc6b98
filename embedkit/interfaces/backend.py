"""``EmbeddingBackend``: where a [rows, dim] table lives and how its rows reach the compute device.

Legend: N = number of requested rows, D = row width (``dim``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

from embedkit.registry import PluginInterface


class RowsHandle(ABC):
    """An asynchronous gather in flight, returned by ``EmbeddingBackend.prefetch``."""

    @abstractmethod
    def wait(self) -> torch.Tensor:
        """Block the current stream (not the host) until the rows are ready; return [N, D]."""


class ReadyRows(RowsHandle):
    """Rows already gathered, or queued on the current stream (device work is asynchronous to
    the host anyway)."""

    def __init__(self, rows_ND: torch.Tensor) -> None:
        self._rows_ND = rows_ND

    def wait(self) -> torch.Tensor:
        return self._rows_ND


class StreamRows(RowsHandle):
    """Rows being gathered on another CUDA stream, whose ``ready`` event is recorded after the
    gather: ``wait`` orders the current stream after it and marks the rows as used there
    (they were allocated on the other stream)."""

    def __init__(self, rows_ND: torch.Tensor, ready: torch.cuda.Event) -> None:
        self._rows_ND = rows_ND
        self._ready = ready

    @property
    def ready(self) -> torch.cuda.Event:
        """The event recorded after the gather (``ready.query()``: whether it has run)."""
        return self._ready

    def wait(self) -> torch.Tensor:
        stream = torch.cuda.current_stream(self._rows_ND.device)
        stream.wait_event(self._ready)
        self._rows_ND.record_stream(stream)
        return self._rows_ND


class EmbeddingBackend(metaclass=PluginInterface):
    """Storage of one lookup table: gather rows, prefetch them ahead of use, write them in bulk.

    Implementations are created empty from ``(num_rows, dim, dtype)`` through their
    constructor and, where the tier has persistent storage, opened from it with ``open``.
    """

    __plugin_interface__ = True

    @property
    @abstractmethod
    def num_rows(self) -> int:
        """Number of rows in the table."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Width of a row."""

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype:
        """Element type of the stored rows (and of the gathered ones)."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Device on which gathered rows land."""

    @property
    def reads_device_rows(self) -> bool:
        """Whether ``gather`` and ``prefetch`` take rows already on ``device`` without a host
        synchronisation (unvalidated: out-of-range rows are the caller's error). Callers whose
        rows are there, e.g. sent once for several tables, then pass them so, and may call
        ``gather`` on a side stream of their own (L³'s planning stream): it must queue its
        work on the current stream. ``False`` (the default): pass rows on the host."""
        return False

    @abstractmethod
    def gather(self, rows_N: torch.Tensor) -> torch.Tensor:
        """Rows ``rows_N`` (int64, any order, repeats allowed) as [N, dim] on ``device``."""

    @abstractmethod
    def prefetch(self, rows_N: torch.Tensor) -> RowsHandle:
        """Start gathering ``rows_N`` without waiting; the handle's ``wait()`` equals ``gather``."""

    @abstractmethod
    def write(self, start: int, values_ND: torch.Tensor) -> None:
        """Overwrite rows ``start .. start + N - 1`` with ``values_ND``."""

    @classmethod
    @abstractmethod
    def open(cls, location: str) -> EmbeddingBackend:
        """Open an existing table stored at ``location`` (tiers without storage raise)."""


TableFactory = Callable[[int, int, str], EmbeddingBackend]
"""Creates an empty table: called as ``factory(num_rows=, dim=, dtype=)``. Recipes give a
backend class (and its other arguments), e.g. ``table_backend: PinnedCPUBackend``."""
