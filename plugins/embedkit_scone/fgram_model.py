"""``FGramModel``: the small causal transformer that turns an f-gram into an input embedding.

It reads only the main model's token embeddings of the f-gram's own tokens plus learned
absolute positions up to K, and returns the hidden state of the f-gram's last token (SCONE,
arXiv 2502.01637, §3.2). Its output therefore depends on the f-gram alone and can be cached.
Legend: F = f-grams, K = longest f-gram, D = main model width, W = f-gram model width.
"""

from __future__ import annotations

import torch
from torch import nn

from embedkit.model.decoder import DecoderLayer, FeedForwardFactory
from embedkit_dense.swiglu import SwiGLU


class FGramModel(nn.Module):
    """A causal transformer over the token embeddings of one f-gram; depth and width are set
    independently of the main model (the paper scales it separately)."""

    def __init__(
        self,
        *,
        dim: int,
        max_n: int,
        num_layers: int = 2,
        width: int | None = None,
        num_heads: int = 4,
        feed_forward: FeedForwardFactory = SwiGLU,
    ) -> None:
        """
        Args:
            dim: Main model width (the width of token embeddings in and f-gram embeddings out).
            max_n: Longest f-gram (K); positions are learned up to it.
            num_layers: Transformer layers of the f-gram model.
            width: Its hidden width; ``None`` uses ``dim``.
            num_heads: Its attention heads.
            feed_forward: Its feed-forward block, built from its width.
        """
        super().__init__()
        width = width or dim
        self.project_in = nn.Linear(dim, width, bias=False) if width != dim else nn.Identity()
        self.positions = nn.Embedding(max_n, width)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.layers = nn.ModuleList(
            DecoderLayer(
                dim=width,
                num_heads=num_heads,
                max_seq_len=max_n,
                rope_base=None,
                ffn=feed_forward(width),
            )
            for _ in range(num_layers)
        )
        self.norm = nn.RMSNorm(width)
        self.project_out = nn.Linear(width, dim, bias=False)

    def forward(self, embedded_FKD: torch.Tensor, lengths_F: torch.Tensor) -> torch.Tensor:
        """Embeddings [F, D] of f-grams whose tokens' embeddings are ``embedded_FKD``
        (left-aligned, padding after the last token) and whose lengths are ``lengths_F``."""
        F, K, _ = embedded_FKD.shape
        hidden_FKW = self.project_in(embedded_FKD) + self.positions.weight[:K]
        for layer in self.layers:
            hidden_FKW = layer(hidden_FKW)  # causal: padding after the last token is never read
        last_FW = hidden_FKW[torch.arange(F, device=hidden_FKW.device), lengths_F - 1]
        return self.project_out(self.norm(last_FW))
