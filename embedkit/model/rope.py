"""Rotary position embeddings (RoFormer, arXiv 2104.09864), half-split convention.

Legend: B = batch, H = heads, L = sequence length, E = head width.
"""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Cos/sin tables for positions ``0 .. max_seq_len - 1``, rebuilt on the fly when exceeded."""

    def __init__(self, *, head_dim: int, max_seq_len: int, base: float = 10_000.0) -> None:
        """
        Args:
            head_dim: Width of one attention head (even).
            max_seq_len: Positions precomputed at construction.
            base: Wavelength base of the rotation frequencies.
        """
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"head_dim={head_dim} must be even for rotary embeddings")
        self.head_dim = head_dim
        self.base = base
        self._build(max_seq_len)

    def _build(self, seq_len: int) -> None:
        inv_freq_E2 = 1.0 / (
            self.base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)
        )
        angles_LE2 = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq_E2)
        self.register_buffer("cos_LE2", angles_LE2.cos(), persistent=False)
        self.register_buffer("sin_LE2", angles_LE2.sin(), persistent=False)

    def forward(self, x_BHLE: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Rotate queries or keys at positions ``start .. start + L - 1``."""
        seq_len = x_BHLE.shape[-2]
        if start + seq_len > self.cos_LE2.shape[0]:
            device = self.cos_LE2.device
            self._build(start + seq_len)
            self.to(device)
        cos_LE2 = self.cos_LE2[start : start + seq_len]
        sin_LE2 = self.sin_LE2[start : start + seq_len]
        return apply_rotary(x_BHLE, cos_LE2, sin_LE2)

    def at(self, x_BHLE: torch.Tensor, positions_BL: torch.Tensor, *, end: int) -> torch.Tensor:
        """Rotate queries or keys at per-row positions ``positions_BL`` (decoding rows of
        different lengths), all below ``end`` (known on the host, so no device sync)."""
        if end > self.cos_LE2.shape[0]:
            device = self.cos_LE2.device
            self._build(end)
            self.to(device)
        cos_B1LE2 = self.cos_LE2[positions_BL].unsqueeze(1)
        sin_B1LE2 = self.sin_LE2[positions_BL].unsqueeze(1)
        return apply_rotary(x_BHLE, cos_B1LE2, sin_B1LE2)


def apply_rotary(
    x_BHLE: torch.Tensor, cos_LE2: torch.Tensor, sin_LE2: torch.Tensor
) -> torch.Tensor:
    """Rotate pairs ``(x[..., i], x[..., i + E/2])`` by the angle of their position and ``i``
    (the tables broadcast over ``x``: ``[L, E/2]``, or ``[B, 1, L, E/2]`` per row)."""
    half = x_BHLE.shape[-1] // 2
    x1, x2 = x_BHLE[..., :half].float(), x_BHLE[..., half:].float()
    rotated = torch.cat((x1 * cos_LE2 - x2 * sin_LE2, x2 * cos_LE2 + x1 * sin_LE2), dim=-1)
    return rotated.to(x_BHLE.dtype)
