"""``StaticTokenRouter``: L³'s router, t -> all rows of token t (arXiv 2601.21461).

The rows of a token come from an allocation's CSR offsets (``LZWAllocation.offsets()``), so
routes depend on token ids only and the rows can be prefetched before the layer runs.

Legend: B = batch, L = sequence length, P = B * L positions, N = routed rows, V = token ids.
"""

from __future__ import annotations

import numpy as np
import torch

from embedkit.interfaces import Router, Routes, VocabExtension


class StaticTokenRouter(Router):
    """Position p reads every row of its token, ``offsets[t]..offsets[t+1]-1``, with no weights
    (L³ attends over them itself); static."""

    def __init__(self, *, allocation: VocabExtension) -> None:
        """
        Args:
            allocation: A fitted (or loaded) allocation with ``offsets()``, the CSR offsets
                ``[V + 1]`` of its rows, such as ``LZWAllocation``; the router copies them.
        """
        offsets = getattr(allocation, "offsets", None)
        if offsets is None:
            raise ValueError(
                f"StaticTokenRouter allocation={type(allocation).__name__} has no offsets(); "
                "valid: an allocation such as LZWAllocation"
            )
        offsets_V1 = torch.from_numpy(np.array(offsets(), dtype=np.int64))  # a copy
        if offsets_V1.numel() < 2:
            raise ValueError(
                f"StaticTokenRouter allocation={type(allocation).__name__} is not fitted; "
                "valid: an allocation after fit(shards) or load(path)"
            )
        self._offsets = {offsets_V1.device: offsets_V1}

    @property
    def static(self) -> bool:
        return True

    @property
    def num_rows(self) -> int:
        return int(self._offsets[torch.device("cpu")][-1])

    @property
    def vocab_size(self) -> int:
        """Number of token ids V routed."""
        return self._offsets[torch.device("cpu")].numel() - 1

    def offsets_on(self, device: torch.device) -> torch.Tensor:
        """The CSR offsets ``[V + 1]`` on ``device`` (copied once per device)."""
        if device not in self._offsets:
            self._offsets[device] = self._offsets[torch.device("cpu")].to(device)
        return self._offsets[device]

    def route(self, ids_BL: torch.Tensor, hidden_BLD: torch.Tensor | None = None) -> Routes:
        """Rows of the positions' tokens, concatenated in row-major position order; ids must be
        below ``vocab_size``. One host sync (the number of rows N)."""
        offsets_V1 = self.offsets_on(ids_BL.device)
        ids_P = ids_BL.reshape(-1).long()
        starts_P = offsets_V1[ids_P]
        counts_P = offsets_V1[ids_P + 1] - starts_P
        offsets_P1 = torch.zeros(ids_P.numel() + 1, dtype=torch.int64, device=ids_BL.device)
        torch.cumsum(counts_P, dim=0, out=offsets_P1[1:])
        num_n = int(offsets_P1[-1])
        shift_P = starts_P - offsets_P1[:-1]  # row = its index in rows_N + its position's shift
        rows_N = torch.arange(num_n, device=ids_BL.device) + torch.repeat_interleave(
            shift_P, counts_P, output_size=num_n
        )
        return Routes(rows_N=rows_N, offsets_P1=offsets_P1, weights_N=None)
