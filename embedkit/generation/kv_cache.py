"""``KVCache``: the keys, values and token ids of the rows being decoded, preallocated once.

Rows may hold different numbers of tokens (a batch of prompts of different lengths): each row
has its own length, and its next tokens go to the positions right after it. Prompts are
right-padded; a padding position is written like a token but lies past its row's length, so
no query of that row reads it and the row's next token overwrites it.

Legend: B = batch rows, H = heads, S = positions the cache holds at most, E = head width,
T = new positions, N = layers.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values ``[N, B, H, S, E]`` of every attention layer, the token ids ``[B, S]``
    (for input embeddings that read preceding ids) and the length of every row."""

    def __init__(
        self,
        *,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        """
        Args:
            num_layers: Attention layers of the decoder.
            batch_size: Rows decoded together.
            num_heads: Attention heads per layer.
            max_len: Positions a row can hold (prompt and generated tokens).
            head_dim: Width of one head.
            dtype: Element type of the keys and values (the attention's compute type).
            device: Where the cache lives (the model's device).
        """
        shape = (num_layers, batch_size, num_heads, max_len, head_dim)
        self.keys_NBHSE = torch.zeros(shape, dtype=dtype, device=device)
        self.values_NBHSE = torch.zeros(shape, dtype=dtype, device=device)
        self.ids_BS = torch.full((batch_size, max_len), -1, dtype=torch.long, device=device)
        self.lengths_B = torch.zeros(batch_size, dtype=torch.long, device=device)
        # The longest row's length, kept on the host: it bounds the keys a step reads and the
        # rotary positions it needs without waiting for the device.
        self.max_length = 0

    @property
    def max_len(self) -> int:
        """Positions a row can hold."""
        return self.ids_BS.shape[1]

    def positions(self, num_new: int) -> torch.Tensor:
        """Positions ``[B, T]`` of ``num_new`` tokens that continue every row."""
        if self.max_length + num_new > self.max_len:
            raise ValueError(
                f"{num_new} new positions after {self.max_length} exceed the cache's "
                f"max_len={self.max_len}; make the cache longer"
            )
        offsets_T = torch.arange(num_new, device=self.lengths_B.device)
        return self.lengths_B[:, None] + offsets_T

    def preceding_ids(self, positions_BT: torch.Tensor, num_ids: int) -> torch.Tensor:
        """The ``num_ids`` ids held before each row's first new position, ``[B, num_ids]``;
        -1 before the start of a row."""
        offsets_W = torch.arange(-num_ids, 0, device=positions_BT.device)
        window_BW = positions_BT[:, :1] + offsets_W
        ids_BW = self.ids_BS.gather(1, window_BW.clamp_min(0))
        return torch.where(window_BW >= 0, ids_BW, -1)

    def write_ids(self, positions_BT: torch.Tensor, ids_BT: torch.Tensor) -> None:
        """Keep the new ids at their positions."""
        self.ids_BS.scatter_(1, positions_BT, ids_BT)

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views ``[B, H, S, E]`` of layer ``index``'s keys and values."""
        return self.keys_NBHSE[index], self.values_NBHSE[index]

    def advance(self, lengths_B: torch.Tensor | None, max_new: int) -> None:
        """Every row holds ``lengths_B`` more tokens (``None``: ``max_new`` each), at most
        ``max_new`` (known on the host)."""
        self.lengths_B += max_new if lengths_B is None else lengths_B
        self.max_length += max_new


def write_positions(cache_BHSE: torch.Tensor, positions_BT: torch.Tensor, new_BHTE: torch.Tensor):
    """Write ``new_BHTE`` into ``cache_BHSE`` at each row's positions, in place."""
    rows_B1 = torch.arange(cache_BHSE.shape[0], device=cache_BHSE.device)[:, None]
    cache_BHSE.transpose(1, 2)[rows_B1, positions_BT] = new_BHTE.transpose(1, 2)
