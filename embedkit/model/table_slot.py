"""``TableSlot``: one lookup table on any tier, checkpointed the same way whatever the tier.

A trainable tier (``GPUBackend``) is an ``nn.Module`` and saves its rows as a parameter; a
frozen tier (pinned CPU, Zarr, third-party) is not, so the slot writes its rows into the
checkpoint itself under the same key, ``<prefix>backend.weight``. A checkpoint trained with
the table on the GPU therefore loads into any tier, and back.
Legend: R = table rows, D = row width, N = rows.
"""

from __future__ import annotations

import torch
from torch import nn

from embedkit.interfaces import EmbeddingBackend, RowsHandle

WEIGHT_KEY = "backend.weight"
BLOCK_ROWS = 1 << 16


class TableSlot(nn.Module):
    """Holds one ``EmbeddingBackend`` inside a model and persists its rows in checkpoints."""

    def __init__(self, backend: EmbeddingBackend, *, init_std: float) -> None:
        """
        Args:
            backend: The table, freshly created by a table factory.
            init_std: Standard deviation of the normal initialisation written into a frozen
                tier (a trainable tier initialises itself).
        """
        super().__init__()
        self.backend = backend
        if not isinstance(backend, nn.Module):
            generator = torch.Generator().manual_seed(0)
            for start in range(0, backend.num_rows, BLOCK_ROWS):
                count = min(BLOCK_ROWS, backend.num_rows - start)
                rows = torch.randn(count, backend.dim, generator=generator) * init_std
                backend.write(start, rows.to(backend.dtype))

    def gather(self, rows_N: torch.Tensor) -> torch.Tensor:
        """Rows ``rows_N`` of the table as [N, D] on the backend's device."""
        return self.backend.gather(rows_N)

    def prefetch(self, rows_N: torch.Tensor) -> RowsHandle:
        """Start gathering rows ``rows_N``; the handle's ``wait()`` gives them as ``gather``."""
        return self.backend.prefetch(rows_N)

    def _frozen(self) -> bool:
        return not isinstance(self.backend, nn.Module)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._frozen():
            blocks = [
                self.backend.gather(torch.arange(s, min(s + BLOCK_ROWS, self.backend.num_rows)))
                for s in range(0, self.backend.num_rows, BLOCK_ROWS)
            ]
            destination[prefix + WEIGHT_KEY] = torch.cat(blocks).cpu()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if not self._frozen():
            return
        key = prefix + WEIGHT_KEY
        if key in unexpected_keys:
            unexpected_keys.remove(key)
        if key not in state_dict:
            if strict:
                missing_keys.append(key)
            return
        rows_RD = state_dict[key]
        expected = (self.backend.num_rows, self.backend.dim)
        if tuple(rows_RD.shape) != expected:
            error_msgs.append(
                f"{key}: checkpoint table has shape {tuple(rows_RD.shape)}, "
                f"the configured table {expected}"
            )
            return
        for start in range(0, rows_RD.shape[0], BLOCK_ROWS):
            self.backend.write(start, rows_RD[start : start + BLOCK_ROWS].to(self.backend.dtype))
