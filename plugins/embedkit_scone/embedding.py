"""``SconeEmbedding``: the f-gram embedding of SCONE replaces the token embedding per position.

Every position whose longest suffix is an f-gram (tagged once in the data, feature
``fgram_ids``) takes that f-gram's embedding instead of its token embedding; other positions
keep the token embedding. The f-gram vocabulary is fitted on the training shards the first
time the model meets its data (``connect``) and kept at ``vocab_path``; later runs load it.
The embedding comes from the ``FGramModel`` while training (run once per distinct f-gram of
the batch, then scattered), or from a table exported by ``embedkit export`` on any storage
tier (cached inference: the f-gram model is not built).
Legend: B = batch, L = sequence length, D = model width, S = f-grams, K = longest f-gram,
M = matched positions, P = B * L positions, U = distinct f-grams among the matched.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from embedkit.accounting import matrix_flops
from embedkit.interfaces import InputEmbedding, RowsHandle, TableFactory
from embedkit.model.decoder import FeedForwardFactory
from embedkit_dense.swiglu import SwiGLU
from embedkit_scone.fgram_model import FGramModel
from embedkit_scone.table import export_fgram_table, load_fgram_table
from embedkit_scone.vocab import FGramVocab

FEATURE = "fgram_ids"


def token_embedding_hash(weight_VD: torch.Tensor) -> str:
    """SHA-256 of token embeddings (fp32): an exported table is valid only with these."""
    return hashlib.sha256(weight_VD.detach().float().cpu().contiguous().numpy()).hexdigest()


@dataclass(frozen=True)
class PlannedFGrams:
    """Which new positions match an f-gram (host), and their table rows in flight."""

    matched_BT: torch.Tensor
    rows: RowsHandle


class SconeEmbedding(InputEmbedding):
    """SCONE input embeddings: f-gram embeddings replace token embeddings at matched positions."""

    def __init__(
        self,
        dim: int,
        vocab_size: int,
        table_backend: TableFactory,
        *,
        vocab: FGramVocab,
        vocab_path: str,
        fgram_layers: int = 2,
        fgram_width: int | None = None,
        fgram_heads: int = 4,
        fgram_feed_forward: FeedForwardFactory = SwiGLU,
        table: str | None = None,
    ) -> None:
        """
        Args:
            dim: Model width, passed by the decoder.
            vocab_size: Token vocabulary size, passed by the decoder.
            table_backend: Storage tier of the exported f-gram table, passed by the decoder.
            vocab: The f-gram vocabulary's settings (K, minimum count, S).
            vocab_path: Where the fitted vocabulary is kept: loaded when it exists (its
                settings must equal ``vocab``'s), else fitted on the training shards and saved
                there (``embedkit vocab build`` makes one ahead of time).
            fgram_layers: Layers of the f-gram model.
            fgram_width: Hidden width of the f-gram model (``None``: the model width).
            fgram_heads: Attention heads of the f-gram model.
            fgram_feed_forward: Feed-forward block of the f-gram model, built from its width.
            table: Path of an f-gram table written by ``embedkit export``; when given, f-gram
                embeddings are read from it on the ``table_backend`` tier and the f-gram model
                is not built (cached inference).
        """
        super().__init__()
        self.vocab = vocab
        self.vocab_path = vocab_path
        self.dim, self.vocab_size, self.table_backend = dim, vocab_size, table_backend
        self.table_location = table
        self._table_producer: dict[str, str] = {}
        self._table_checked = False
        object.__setattr__(self, "_table", None)
        self.fgram_model = None
        self._fgram_tokens: torch.Tensor | None = None  # through the f-gram model, training
        if table is None:
            self.fgram_model = FGramModel(
                dim=dim,
                max_n=self.vocab.max_n,
                num_layers=fgram_layers,
                width=fgram_width,
                num_heads=fgram_heads,
                feed_forward=fgram_feed_forward,
            )

    def use_exported_tables(self, directory: str) -> None:
        """Read the f-gram table from ``directory`` (written by ``embedkit export``) on the
        ``table_backend`` tier; the f-gram model is dropped (cached inference)."""
        self.table_location = f"{directory}/fgram_table"
        self.fgram_model = None

    def connect(self, data) -> None:
        """Load or fit the vocabulary on ``data``, check it against the data's tokenizer, load
        the exported table if any, and ask the data for f-gram tags."""
        fingerprint = data.tokenizer.fingerprint
        if os.path.exists(self.vocab_path):
            self.vocab = load_matching_vocab(self.vocab_path, self.vocab)
        else:
            data.prepare_data()
            data.setup("fit")
            self.vocab.fit([data.shards.train_N])
            self.vocab.tokenizer_fingerprint = fingerprint
            self.vocab.save(self.vocab_path)
        if self.vocab.tokenizer_fingerprint not in (None, fingerprint):
            raise ValueError(
                f"vocab_path={self.vocab_path!r} was fitted on tokens of tokenizer "
                f"{self.vocab.tokenizer_fingerprint} but data.tokenizer is {fingerprint}; "
                "give another vocab_path (it is fitted there) or the matching tokenizer"
            )
        tokens_SK, lengths_S, _ = self.vocab.entries()
        self.register_buffer(
            "tokens_SK", torch.from_numpy(tokens_SK.astype(np.int64)), persistent=False
        )
        self.register_buffer(
            "lengths_S", torch.from_numpy(lengths_S.astype(np.int64)), persistent=False
        )
        if self.table_location is not None:
            backend, self._table_producer = load_fgram_table(
                self.table_location, self.table_backend, num_rows=self.vocab.num_entries,
                dim=self.dim, vocab_hash=self.vocab.content_hash,
            )  # fmt: skip
            # Not a submodule: the table comes from the export, never from the checkpoint.
            object.__setattr__(self, "_table", backend)
        data.add_feature(FEATURE, self.vocab)

    @property
    def num_preceding_ids(self) -> int:
        """Ids before a position that decide its embedding: the longest f-gram's K - 1 (the
        decoder's incremental ``decode`` hands them over with the new ids)."""
        return self.vocab.max_n - 1

    def inference_flops_per_token(self) -> int:
        """0: at inference the exported table replaces the f-gram model (one row lookup)."""
        return 0

    def lookup_parameters(self) -> int:
        """The f-gram model's parameters: at inference one table row per position replaces it."""
        if self.fgram_model is None:
            return 0
        return sum(p.numel() for p in self.fgram_model.parameters())

    def export_tables(
        self, directory: str, *, to: str, token_embedding: nn.Embedding, producer: dict
    ) -> list[str]:
        """Write the f-gram table (the f-gram model over all S f-grams) into ``directory``."""
        if self.fgram_model is None:
            raise ValueError("this SconeEmbedding reads an exported table; it has none to export")
        location = f"{directory}/fgram_table"
        hashes = {
            "vocab_hash": self.vocab.content_hash,
            "token_embedding_hash": token_embedding_hash(token_embedding.weight),
        }
        export_fgram_table(self, token_embedding, location, to=to, producer=producer | hashes)
        return [location]

    def extra_training_flops(self) -> float:
        """``TrainingCost``: the f-gram model runs in training only (a table replaces it at
        inference): 3 x 2 FLOPs per weight of its matrices per token through it (every token
        of every distinct f-gram of each batch; its attention over at most K positions is left
        out)."""
        if self._fgram_tokens is None or self.fgram_model is None:
            return 0.0
        return 3.0 * matrix_flops(self.fgram_model) * float(self._fgram_tokens)

    def _count_fgram_tokens(self, tokens: torch.Tensor) -> None:
        """Add to the running count, on the device (no host synchronisation)."""
        if self._fgram_tokens is None or self._fgram_tokens.device != tokens.device:
            previous = 0 if self._fgram_tokens is None else float(self._fgram_tokens)
            self._fgram_tokens = torch.tensor(previous, dtype=torch.float64, device=tokens.device)
        self._fgram_tokens += tokens

    def fgram_embeddings(self, fgrams_U: torch.Tensor, token_embedding: nn.Embedding):
        """Embeddings [U, D] of f-grams ``fgrams_U`` computed by the f-gram model."""
        tokens_UK = self.tokens_SK[fgrams_U]
        embedded_UKD = token_embedding(tokens_UK.clamp_min(0))
        return self.fgram_model(embedded_UKD, self.lengths_S[fgrams_U])

    def forward(
        self,
        embedded_BLD: torch.Tensor,
        ids_BL: torch.Tensor,
        token_embedding: nn.Embedding,
        features: Mapping[str, torch.Tensor],
    ) -> torch.Tensor:
        if not hasattr(self, "tokens_SK"):
            raise RuntimeError("SconeEmbedding is used before connect(datamodule) loaded its vocab")
        fgrams_BL = features.get(FEATURE)
        if fgrams_BL is None:  # untagged input (e.g. a prompt): match within each row
            fgrams_BL = self.vocab.lookup_torch(ids_BL)
        matched_BL = fgrams_BL >= 0
        if self._table is not None:
            # Cached inference: one row per position, selected without a host sync.
            if not self._table_checked:
                self._check_table_source(token_embedding)
            self._table_follows(embedded_BLD.device)
            rows_PD = self._table.gather(fgrams_BL.clamp_min(0).reshape(-1))
            rows_BLD = rows_PD.to(embedded_BLD.device, embedded_BLD.dtype).view_as(embedded_BLD)
            return torch.where(matched_BL.unsqueeze(-1), rows_BLD, embedded_BLD)
        fgrams_M = fgrams_BL[matched_BL]
        fgrams_U, inverse_M = torch.unique(fgrams_M, return_inverse=True)
        rows_MD = self.fgram_embeddings(fgrams_U, token_embedding)[inverse_M]
        if self.training and torch.is_grad_enabled():  # tokens through the f-gram model
            self._count_fgram_tokens(self.lengths_S[fgrams_U].sum())
        replaced_BLD = embedded_BLD.clone()
        replaced_BLD[matched_BL] = rows_MD.to(embedded_BLD.dtype)
        return replaced_BLD

    def _table_follows(self, device: torch.device) -> None:
        """Move an exported table on the GPU tier (a module outside the model) to ``device``."""
        if isinstance(self._table, nn.Module) and self._table.device != device:
            self._table.to(device)

    def plan_lookups(self, ids_BT: torch.Tensor, preceding_BW: torch.Tensor):
        """Start fetching the exported table's row of every new position (its longest f-gram
        over the preceding ids and its own, found on the host); ``None`` without a table (the
        f-gram model computes the embeddings) and before the first plain forward after
        loading, which checks the table against the token embeddings."""
        if self._table is None or not self._table_checked:
            return None
        if not hasattr(self, "tokens_SK"):
            raise RuntimeError("SconeEmbedding is used before connect(datamodule) loaded its vocab")
        self._table_follows(self.tokens_SK.device)
        # One numpy lookup over the rows laid end to end, each closed by -1 (no f-gram spans
        # it): small arrays, where torch's CPU ops cost more to call than to run.
        window_BWT = torch.cat((preceding_BW, ids_BT), dim=1).cpu().numpy()
        closed_BX = np.pad(window_BWT, ((0, 0), (0, 1)), constant_values=-1)
        found_BX = self.vocab.lookup(closed_BX.reshape(-1)).reshape(closed_BX.shape)
        fgrams_BT = torch.from_numpy(found_BX[:, preceding_BW.shape[1] : -1])
        rows = self._table.prefetch(fgrams_BT.clamp_min(0).reshape(-1))
        return PlannedFGrams(fgrams_BT >= 0, rows)

    def forward_planned(self, embedded_BTD: torch.Tensor, planned: PlannedFGrams) -> torch.Tensor:
        """The input vectors of the positions ``planned`` was made for, from their rows."""
        # Without blocking only towards CUDA: a copy to the host must be complete when read.
        onto_cuda = embedded_BTD.device.type == "cuda"
        matched_BT = planned.matched_BT.to(embedded_BTD.device, non_blocking=onto_cuda)
        rows_BTD = planned.rows.wait().to(embedded_BTD.device, non_blocking=onto_cuda)
        rows_BTD = rows_BTD.to(embedded_BTD.dtype)
        return torch.where(matched_BT.unsqueeze(-1), rows_BTD.view_as(embedded_BTD), embedded_BTD)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if self.table_location is None:
            return
        # Cached inference: the f-gram model's weights in the checkpoint are not needed; the
        # table is checked against the loaded token embeddings at the next forward.
        for key in [k for k in unexpected_keys if k.startswith(prefix + "fgram_model.")]:
            unexpected_keys.remove(key)
        self._table_checked = False

    def _check_table_source(self, token_embedding: nn.Embedding) -> None:
        """Refuse a table exported from other token embeddings (another checkpoint); once per
        loaded state, on the first forward after it."""
        expected = self._table_producer.get("token_embedding_hash")
        if expected and token_embedding_hash(token_embedding.weight) != expected:
            raise ValueError(
                f"the f-gram table at {self.table_location!r} was exported from another "
                "checkpoint (its token embeddings differ); export it again from this one"
            )
        self._table_checked = True


def load_matching_vocab(path: str, configured: FGramVocab) -> FGramVocab:
    """The vocabulary saved at ``path``, refused when its settings differ from ``configured``."""
    loaded = FGramVocab.load(path)
    for field, attribute in (
        ("max_n", "max_n"),
        ("min_count", "min_count"),
        ("num_entries", "max_entries"),  # the cap given as num_entries
    ):
        have, want = getattr(loaded, attribute), getattr(configured, attribute)
        if have != want:
            raise ValueError(
                f"vocab_path={path!r} holds an f-gram vocabulary with {field}={have} but the "
                f"recipe asks for {want}; give another vocab_path (it is fitted there) or "
                "matching settings"
            )
    return loaded
