"""``GPUBackend``: a trainable table held on the module's device (the CPU on a CPU-only machine).

The model's checkpoint holds the table; ``save`` / ``open`` export it alone in the raw stored
form of ``embedkit.backends.raw_table`` (manifest tier "gpu"), which other tiers convert from.

Legend: N = number of requested rows, D = row width.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from embedkit.backends.manifest import TableManifest
from embedkit.backends.raw_table import read_raw_table, save_raw_table
from embedkit.backends.validation import check_block, check_rows
from embedkit.dtypes import DTypeName, dtype_from_name
from embedkit.interfaces import EmbeddingBackend, ReadyRows, RowsHandle

TIER = "gpu"


class GPUBackend(nn.Module, EmbeddingBackend):
    """A table as an ``nn.Parameter`` on the device of the module that owns it; trainable."""

    def __init__(
        self,
        *,
        num_rows: int,
        dim: int,
        dtype: DTypeName = "float32",
        init_std: float = 0.02,
        trainable: bool = True,
    ) -> None:
        """
        Args:
            num_rows: Number of rows of the table.
            dim: Width of a row.
            dtype: Element type of the table.
            init_std: Standard deviation of the normal initialisation.
            trainable: Whether the optimiser updates the table.
        """
        super().__init__()
        if num_rows <= 0:
            raise ValueError(f"num_rows={num_rows} must be positive")
        if dim <= 0:
            raise ValueError(f"dim={dim} must be positive")
        weight = torch.empty(num_rows, dim, dtype=dtype_from_name(dtype))
        nn.init.normal_(weight, std=init_std)
        self.weight = nn.Parameter(weight, requires_grad=trainable)

    @property
    def num_rows(self) -> int:
        return self.weight.shape[0]

    @property
    def dim(self) -> int:
        return self.weight.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.weight.device

    @property
    def reads_device_rows(self) -> bool:
        return True

    def gather(self, rows_N: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling() and rows_N.device.type == "cpu":
            check_rows(rows_N, self.num_rows)
        return self.weight.index_select(0, rows_N.to(self.device, non_blocking=True))

    def prefetch(self, rows_N: torch.Tensor) -> RowsHandle:
        return ReadyRows(self.gather(rows_N))

    @torch.no_grad()
    def write(self, start: int, values_ND: torch.Tensor) -> None:
        check_block(start, values_ND, self.num_rows, self.dim, self.dtype)
        self.weight[start : start + values_ND.shape[0]].copy_(values_ND)

    def save(
        self,
        location: str,
        *,
        content_hash: str | None = None,
        producer: dict[str, str] | None = None,
    ) -> TableManifest:
        """Store the table at directory ``location`` atomically (raw bytes); return its manifest.

        The stored form is that of ``PinnedCPUBackend.save`` (``embedkit.backends.raw_table``)
        with manifest tier "gpu". ``content_hash`` defaults to the SHA-256 of the table's
        bytes; ``producer`` records what made the table (e.g. ``{"vocab_hash": ...}``). An
        existing table at ``location`` is replaced; any other existing non-empty path is
        refused. A model's checkpoint keeps the table too; ``save`` is for exporting it alone.
        """
        return save_raw_table(
            location, self.weight, tier=TIER, content_hash=content_hash, producer=producer
        )

    @classmethod
    def open(
        cls,
        location: str,
        *,
        expected: Mapping[str, object] | None = None,
        device: str = "auto",
        trainable: bool = True,
    ) -> GPUBackend:
        """Read the table stored at directory ``location`` by ``save``.

        Rows are read into host memory and, for a CUDA device, streamed to it through pinned
        staging buffers. The table is trainable by default, as a constructed one is (pass
        ``trainable=False`` to serve it frozen).

        Args:
            location: Directory written by ``save``.
            expected: Manifest fields the caller relies on (``num_rows``, ``dim``, ``dtype``,
                ``content_hash``, ``producer={"vocab_hash": ...}``); a ``ValueError`` names
                each one that differs.
            device: Where the table lives: "auto" (CUDA when available, else the CPU), "cpu",
                "cuda" or "cuda:<index>".
            trainable: Whether the optimiser updates the table.
        """
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        target = torch.device(device)

        def into(manifest: TableManifest) -> torch.Tensor:
            shape, dtype = (manifest.num_rows, manifest.dim), dtype_from_name(manifest.dtype)
            return torch.empty(shape, dtype=dtype, device=target)

        weight_RD, _ = read_raw_table(location, tier=TIER, into=into, expected=expected)
        backend = cls.__new__(cls)
        nn.Module.__init__(backend)
        backend.weight = nn.Parameter(weight_RD, requires_grad=trainable)
        return backend
