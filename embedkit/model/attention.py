"""Causal multi-head self-attention with rotary positions and fused scaled-dot-product attention.

Legend: B = batch, L = sequence length, D = model width, H = heads, E = head width,
T = new positions (decoding), S = positions a KV cache holds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embedkit.generation.kv_cache import write_positions
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

    def decode(
        self,
        hidden_BTD: torch.Tensor,
        keys_BHSE: torch.Tensor,
        values_BHSE: torch.Tensor,
        positions_BT: torch.Tensor,
        mask_B1TS: torch.Tensor | None,
        *,
        end: int,
    ) -> torch.Tensor:
        """Attend new positions to the cached ones and to themselves, writing their keys and
        values into ``keys_BHSE`` / ``values_BHSE`` at ``positions_BT`` (all below ``end``).

        ``mask_B1TS`` says which of the first S cached positions each new one reads; ``None``
        when the cache is empty and the new positions start every row (a prompt's prefill:
        causal attention among them, as in ``forward``).
        """
        B, T, D = hidden_BTD.shape
        qkv_BT3HE = self.qkv(hidden_BTD).view(B, T, 3, self.num_heads, D // self.num_heads)
        q_BHTE, k_BHTE, v_BHTE = qkv_BT3HE.permute(2, 0, 3, 1, 4).unbind(0)
        if self.rotary is not None:
            q_BHTE = self.rotary.at(q_BHTE, positions_BT, end=end)
            k_BHTE = self.rotary.at(k_BHTE, positions_BT, end=end)
        write_positions(keys_BHSE, positions_BT, k_BHTE)
        write_positions(values_BHSE, positions_BT, v_BHTE)
        if mask_B1TS is None:
            attended_BHTE = F.scaled_dot_product_attention(q_BHTE, k_BHTE, v_BHTE, is_causal=True)
        else:
            S = mask_B1TS.shape[-1]
            attended_BHTE = F.scaled_dot_product_attention(
                q_BHTE, keys_BHSE[:, :, :S], values_BHSE[:, :, :S], attn_mask=mask_B1TS
            )
        return self.out(attended_BHTE.transpose(1, 2).reshape(B, T, D))
