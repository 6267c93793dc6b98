"""``GPUBackend``: a trainable table held on the module's device (the CPU on a CPU-only machine).

Legend: N = number of requested rows, D = row width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embedkit.backends.validation import check_block, check_rows
from embedkit.dtypes import DTypeName, dtype_from_name
from embedkit.interfaces import EmbeddingBackend, RowsHandle


class ReadyRows(RowsHandle):
    """Rows already gathered (on-device gathers are asynchronous to the host anyway)."""

    def __init__(self, rows_ND: torch.Tensor) -> None:
        self._rows_ND = rows_ND

    def wait(self) -> torch.Tensor:
        return self._rows_ND


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

    def gather(self, rows_N: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling() and rows_N.device.type == "cpu":
            check_rows(rows_N, self.num_rows)
        return F.embedding(rows_N.to(self.device), self.weight)

    def prefetch(self, rows_N: torch.Tensor) -> RowsHandle:
        return ReadyRows(self.gather(rows_N))

    @torch.no_grad()
    def write(self, start: int, values_ND: torch.Tensor) -> None:
        check_block(start, values_ND, self.num_rows, self.dim, self.dtype)
        self.weight[start : start + values_ND.shape[0]].copy_(values_ND)

    @classmethod
    def open(cls, location: str) -> GPUBackend:
        raise ValueError(
            f"GPUBackend keeps its table in module memory, saved with the model's checkpoint; "
            f"it has no storage to open at {location!r}"
        )
