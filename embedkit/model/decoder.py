"""The decoder-only language model: token embedding, pre-norm layers, final norm, output head.

Legend: B = batch, L = sequence length, D = model width, V = vocabulary size,
T = new positions (decoding), S = positions a KV cache holds, W = preceding ids an input
embedding reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from embedkit.backends.gpu import GPUBackend
from embedkit.generation.kv_cache import KVCache
from embedkit.generation.lookup_plan import INPUT_EMBEDDING, LookupPlan
from embedkit.interfaces import FeedForward, InputEmbedding, Sublayer, TableFactory
from embedkit.model.attention import CausalSelfAttention

FeedForwardFactory = Callable[[int], FeedForward]
# Parts that may own lookup tables are built from (width, vocabulary size, table factory).
SublayerFactory = Callable[[int, int, TableFactory], Sublayer]
InputEmbeddingFactory = Callable[[int, int, TableFactory], InputEmbedding]


class DecoderLayer(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + feed_forward(norm(x))``."""

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        max_seq_len: int,
        rope_base: float | None,
        ffn: FeedForward,
    ) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(dim)
        self.attn = CausalSelfAttention(
            dim=dim, num_heads=num_heads, max_seq_len=max_seq_len, rope_base=rope_base
        )
        self.ffn_norm = nn.RMSNorm(dim)
        self.ffn = ffn

    def forward(self, hidden_BLD: torch.Tensor) -> torch.Tensor:
        hidden_BLD = hidden_BLD + self.attn(self.attn_norm(hidden_BLD))
        return hidden_BLD + self.ffn(self.ffn_norm(hidden_BLD))

    def decode(
        self,
        hidden_BTD: torch.Tensor,
        cache_layer: tuple[torch.Tensor, torch.Tensor],
        positions_BT: torch.Tensor,
        mask_B1TS: torch.Tensor | None,
        *,
        end: int,
    ) -> torch.Tensor:
        """``forward`` of new positions that attend to a KV cache (see
        ``CausalSelfAttention.decode``); the feed-forward block is per position."""
        attended_BTD = self.attn.decode(
            self.attn_norm(hidden_BTD), *cache_layer, positions_BT, mask_B1TS, end=end
        )
        hidden_BTD = hidden_BTD + attended_BTD
        return hidden_BTD + self.ffn(self.ffn_norm(hidden_BTD))


class Decoder(nn.Module):
    """A Llama-style decoder whose parts are injected: the feed-forward block of every layer,
    sublayers inserted between layers, and a per-position replacement of the input embedding."""

    def __init__(
        self,
        *,
        vocab_size: int,
        dim: int,
        num_layers: int,
        num_heads: int,
        feed_forward: FeedForwardFactory,
        max_seq_len: int = 2048,
        rope_base: float = 10_000.0,
        tie_embeddings: bool = True,
        sublayers: Sequence[SublayerFactory] = (),
        input_embedding: InputEmbeddingFactory | None = None,
        table_backend: TableFactory = GPUBackend,
        tables: str | None = None,
        init_std: float = 0.02,
    ) -> None:
        """
        Args:
            vocab_size: Number of token ids; linked from the data module, not set in recipes.
            dim: Model width.
            num_layers: Number of decoder layers.
            num_heads: Attention heads per layer; ``dim`` must be a multiple of it.
            feed_forward: Builds one layer's feed-forward block from the model width
                (e.g. ``SwiGLU``); called once per layer.
            max_seq_len: Positions whose rotary tables are precomputed (longer ones are built
                when first needed).
            rope_base: Wavelength base of the rotary frequencies.
            tie_embeddings: Share the token embedding with the output head.
            sublayers: Blocks inserted between decoder layers, each built from the model width,
                the vocabulary size and ``table_backend``, and placed by its own
                ``before_layer``.
            input_embedding: Replaces the token embedding per position (e.g. SCONE), built
                from the model width, the vocabulary size and ``table_backend``; ``None``
                keeps plain token embeddings.
            table_backend: The storage tier of every lookup table the parts own: a backend
                class and its arguments (``GPUBackend`` trains; ``PinnedCPUBackend``,
                ``ZarrBackend`` and plugins hold frozen tables off the accelerator). The
                overlays ``recipes/storage/*.yaml`` set it.
            tables: Folder of lookup tables written by ``embedkit export``: every part that
                owns tables (SCONE's f-gram table, L³'s key/value tables) reads them from there
                onto ``table_backend`` instead of from the checkpoint (cached inference).
            init_std: Standard deviation of the normal initialisation of weights; residual
                output projections are scaled down by ``sqrt(2 * num_layers)``.
        """
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"model.decoder.num_layers={num_layers} must be at least 1")
        self.vocab_size = vocab_size
        self.dim = dim
        self.max_seq_len = max_seq_len
        self.num_heads = num_heads
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList(
            DecoderLayer(
                dim=dim,
                num_heads=num_heads,
                max_seq_len=max_seq_len,
                rope_base=rope_base,
                ffn=feed_forward(dim),
            )
            for _ in range(num_layers)
        )
        self.sublayers = nn.ModuleDict()
        for build in sublayers:
            sublayer = build(dim, vocab_size, table_backend)
            position = sublayer.before_layer
            if not 1 <= position < num_layers:
                raise ValueError(
                    f"model.decoder.sublayers: {type(sublayer).__name__}.before_layer={position} "
                    f"is invalid; valid: 1 .. {num_layers - 1} (never before the first layer)"
                )
            if str(position) in self.sublayers:
                raise ValueError(f"model.decoder.sublayers: two sublayers before layer {position}")
            self.sublayers[str(position)] = sublayer
        self.input_embedding = (
            input_embedding(dim, vocab_size, table_backend) if input_embedding is not None else None
        )
        if tables is not None:
            parts = [*self.sublayers.values(), self.input_embedding]
            readers = [p for p in parts if hasattr(p, "use_exported_tables")]
            if not readers:
                raise ValueError(
                    f"model.decoder.tables={tables!r}, but no part of this model owns lookup "
                    "tables; valid: null"
                )
            for part in readers:
                part.use_exported_tables(tables)
        self.norm = nn.RMSNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self._init_weights(init_std, num_layers)
        if tie_embeddings:
            self.head.weight = self.token_embedding.weight

    def _init_weights(self, std: float, num_layers: int) -> None:
        for name, param in self.named_parameters():
            if param.dim() == 2 and name.startswith(("token_embedding", "head", "layers")):
                scaled = name.endswith(("attn.out.weight", "ffn.down.weight"))
                nn.init.normal_(param, std=std / (2 * num_layers) ** 0.5 if scaled else std)

    def forward(
        self, ids_BL: torch.Tensor, features: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Final hidden states [B, L, D] (before the output head) for token ids ``ids_BL``."""
        hidden_BLD = self.token_embedding(ids_BL)
        if self.input_embedding is not None:
            hidden_BLD = self.input_embedding(
                hidden_BLD, ids_BL, self.token_embedding, features or {}
            )
        for index, layer in enumerate(self.layers):
            if str(index) in self.sublayers:
                hidden_BLD = self.sublayers[str(index)](hidden_BLD, ids_BL)
            hidden_BLD = layer(hidden_BLD)
        return self.norm(hidden_BLD)

    def new_cache(self, *, batch_size: int, max_len: int) -> KVCache:
        """An empty KV cache for ``batch_size`` rows of at most ``max_len`` positions, on the
        model's device and in its parameters' type."""
        weight = self.token_embedding.weight
        return KVCache(
            num_layers=len(self.layers),
            batch_size=batch_size,
            num_heads=self.num_heads,
            max_len=max_len,
            head_dim=self.dim // self.num_heads,
            dtype=weight.dtype,
            device=weight.device,
        )

    def decode(
        self,
        ids_BT: torch.Tensor,
        cache: KVCache,
        *,
        lengths: Sequence[int] | None = None,
        plan: LookupPlan | None = None,
    ) -> torch.Tensor:
        """Final hidden states [B, T, D] of tokens ``ids_BT`` that continue the rows held in
        ``cache`` (empty: a prompt's prefill), whose keys, values and ids are written into it.
        Equals ``forward`` over each row's whole sequence at the new positions. Sublayers and
        feed-forward blocks see the new positions only; an input embedding whose output at a
        position reads the ids before it (SCONE) says how many with ``num_preceding_ids``, and
        gets them from the cache.

        Args:
            ids_BT: The new token ids of every row, right-padded with any valid id.
            cache: The rows decoded so far (``new_cache``); updated in place.
            lengths: Tokens of each row among the T (prompts of different lengths); ``None``:
                all T. A padding position's keys are never read by its row and are
                overwritten by the row's next token.
            plan: Rows that parts with static routing started fetching for these ids
                (``embedkit.generation.lookup_plan.plan_lookups``); they run
                ``forward_planned`` with them. ``None``: every part reads its rows itself.
        """
        T = ids_BT.shape[1]
        positions_BT = cache.positions(T)
        end = cache.max_length + T  # above every position of this call
        mask_B1TS = None
        if cache.max_length > 0:  # attend to the cached positions of the row, and causally
            mask_B1TS = cached_positions_mask(positions_BT, end)
        hidden_BTD = self.embed_new(ids_BT, cache, plan=plan, positions_BT=positions_BT)
        cache.write_ids(positions_BT, ids_BT)
        for index, layer in enumerate(self.layers):
            hidden_BTD = self.run_sublayer(index, hidden_BTD, ids_BT, plan)
            hidden_BTD = layer.decode(
                hidden_BTD, cache.layer(index), positions_BT, mask_B1TS, end=end
            )
        advance_B = (
            None
            if lengths is None
            else torch.as_tensor(lengths).to(ids_BT.device, non_blocking=True)
        )
        cache.advance(advance_B, T if lengths is None else max(lengths))
        return self.norm(hidden_BTD)

    def embed_new(
        self,
        ids_BT: torch.Tensor,
        cache: KVCache,
        *,
        plan: LookupPlan | None = None,
        positions_BT: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Input vectors [B, T, D] of new tokens ``ids_BT`` that continue the rows of
        ``cache`` (``decode``'s first part; the ids are not yet written into the cache):
        token embeddings, replaced by the input embedding's (from its planned rows, or from
        the new ids and the ids before them in the cache). ``positions_BT``: the new
        positions, when the caller has them."""
        hidden_BTD = self.token_embedding(ids_BT)
        planned_input = plan.of(INPUT_EMBEDDING) if plan is not None else None
        if planned_input is not None:
            return self.input_embedding.forward_planned(hidden_BTD, planned_input)
        if self.input_embedding is None:
            return hidden_BTD
        # Per position, from its own id and (SCONE) the ids before it: run the window of
        # preceding ids the part reads along with the new ones, keep the new positions.
        if positions_BT is None:
            positions_BT = cache.positions(ids_BT.shape[1])
        num_preceding = getattr(self.input_embedding, "num_preceding_ids", 0)
        window_BW = cache.preceding_ids(positions_BT, num_preceding)
        ids_BWT = torch.cat((window_BW, ids_BT), dim=1)
        embedded_BWTD = torch.cat((self.token_embedding(window_BW.clamp_min(0)), hidden_BTD), dim=1)
        hidden_BTD = self.input_embedding(embedded_BWTD, ids_BWT, self.token_embedding, {})
        return hidden_BTD[:, num_preceding:]

    def run_sublayer(
        self, index: int, hidden_BTD: torch.Tensor, ids_BT: torch.Tensor, plan: LookupPlan | None
    ) -> torch.Tensor:
        """The sublayer before layer ``index`` over new positions (from its planned rows when
        ``plan`` has them); ``hidden_BTD`` itself where there is none. Sublayers are per
        position: L³ reads the new ids only. Once it is queued, the deferred fetches of the
        plan's later sublayers start."""
        if str(index) not in self.sublayers:
            return hidden_BTD
        sublayer = self.sublayers[str(index)]
        if plan is None:
            return sublayer(hidden_BTD, ids_BT)
        planned = plan.of(str(index))
        if planned is None:
            hidden_BTD = sublayer(hidden_BTD, ids_BT)
        else:
            hidden_BTD = sublayer.forward_planned(hidden_BTD, planned)
        plan.start_deferred()  # the later sublayers' fetches, now that this one is queued
        return hidden_BTD

    def logits(self, hidden_BLD: torch.Tensor) -> torch.Tensor:
        """Output logits [B, L, V] from final hidden states."""
        return self.head(hidden_BLD)

    def num_parameters(self, *, non_embedding: bool = False) -> int:
        """Number of parameters, optionally without the token embedding and output head."""
        params = {id(p): p for p in self.parameters()}
        if non_embedding:
            params.pop(id(self.token_embedding.weight), None)
            params.pop(id(self.head.weight), None)
        return sum(p.numel() for p in params.values())


def cached_positions_mask(positions_BT: torch.Tensor, num_keys: int) -> torch.Tensor:
    """Which of the first ``num_keys`` cache positions each new position reads [B, 1, T, S]:
    its row's positions up to itself."""
    keys_S = torch.arange(num_keys, device=positions_BT.device)
    return (keys_S <= positions_BT[:, :, None]).unsqueeze(1)
