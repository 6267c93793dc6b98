"""Causal multi-head self-attention with rotary positions and fused scaled-dot-product attention.

Legend: B = batch, L = sequence length, D = model width, H = heads, E = head width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embedkit.model.rope import RotaryEmbedding


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention: fused QKV projection, RoPE on Q and K, SDPA, projection."""

    def __init__(
        self, *, dim: int, num_heads: int, max_seq_len: int, rope_base: float | None
    ) -> None:
        """
        Args:
            dim: Model width; a multiple of ``num_heads``.
            num_heads: Number of attention heads.
            max_seq_len: Positions for which rotary tables are precomputed.
            rope_base: Wavelength base of the rotary frequencies; ``None`` disables rotary
                positions (the caller adds absolute ones).
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"model.decoder.dim={dim} is not a multiple of num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.rotary = (
            RotaryEmbedding(head_dim=dim // num_heads, max_seq_len=max_seq_len, base=rope_base)
            if rope_base is not None
            else None
        )

    def forward(self, hidden_BLD: torch.Tensor) -> torch.Tensor:
        """Attend each position to itself and the positions before it."""
        B, L, D = hidden_BLD.shape
        qkv_BL3HE = self.qkv(hidden_BLD).view(B, L, 3, self.num_heads, D // self.num_heads)
        q_BHLE, k_BHLE, v_BHLE = qkv_BL3HE.permute(2, 0, 3, 1, 4).unbind(0)
        if self.rotary is not None:
            q_BHLE, k_BHLE = self.rotary(q_BHLE), self.rotary(k_BHLE)
        attended_BHLE = F.scaled_dot_product_attention(q_BHLE, k_BHLE, v_BHLE, is_causal=True)
        return self.out(attended_BHLE.transpose(1, 2).reshape(B, L, D))
