"""``TokenTableEmbedding``: extra per-token capacity from a lookup table on any tier.

Every position adds ``proj(table[token])`` to its token embedding: a [vocab, table_dim] table
read by token id (a static route, so the rows can live off the accelerator, as in per-layer
embeddings of on-device models). The projection starts at zero, so training starts from the
plain model.
Legend: B = batch, L = sequence length, D = model width, T = table row width.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from embedkit.dtypes import DTypeName
from embedkit.interfaces import InputEmbedding, TableFactory
from embedkit.model.table_slot import TableSlot


class TokenTableEmbedding(InputEmbedding):
    """Adds a projected row of a per-token table (held by any storage tier) to each position."""

    def __init__(
        self,
        dim: int,
        vocab_size: int,
        table_backend: TableFactory,
        *,
        table_dim: int = 64,
        table_dtype: DTypeName = "float32",
        init_std: float = 0.02,
    ) -> None:
        """
        Args:
            dim: Model width, passed by the decoder.
            vocab_size: Rows of the table (one per token), passed by the decoder.
            table_backend: Where the table lives, passed by the decoder
                (``model.decoder.init_args.table_backend``).
            table_dim: Width of a table row.
            table_dtype: Element type of the table.
            init_std: Standard deviation of the table's initial rows.
        """
        super().__init__()
        backend = table_backend(num_rows=vocab_size, dim=table_dim, dtype=table_dtype)
        self.table = TableSlot(backend, init_std=init_std)
        self.proj = nn.Linear(table_dim, dim, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(
        self,
        embedded_BLD: torch.Tensor,
        ids_BL: torch.Tensor,
        token_embedding: nn.Embedding,
        features: Mapping[str, torch.Tensor],
    ) -> torch.Tensor:
        rows_PT = self.table.gather(ids_BL.reshape(-1))
        rows_BLT = rows_PT.to(embedded_BLD.device, self.proj.weight.dtype).view(*ids_BL.shape, -1)
        return embedded_BLD + self.proj(rows_BLT)
