"""The exported f-gram table: written once from a trained f-gram model, read at inference.

The table [S, D] holds the f-gram model's output for every f-gram; its manifest records the
vocabulary hash and the hash of the token embeddings it was computed from, so a table from
another vocabulary or another checkpoint is refused.
Legend: S = f-grams, D = model width, N = rows of a block.
"""

from __future__ import annotations

import torch

from embedkit.dtypes import dtype_name
from embedkit.exported_tables import place_table, write_table
from embedkit.interfaces import EmbeddingBackend, TableFactory


def load_fgram_table(
    location: str, table_backend: TableFactory, *, num_rows: int, dim: int, vocab_hash: str
) -> tuple[EmbeddingBackend, dict[str, str]]:
    """The exported table at ``location`` placed on the tier ``table_backend`` makes, and the
    manifest's producer hashes; a ``ValueError`` when it does not fit the vocabulary."""
    return place_table(
        location,
        table_backend,
        num_rows=num_rows,
        dim=dim,
        producer={"vocab_hash": vocab_hash},
        what="the f-gram table",
    )


@torch.no_grad()
def export_fgram_table(
    embedding, token_embedding: torch.nn.Embedding, location: str, *, to: str, producer: dict
) -> None:
    """Run the f-gram model of ``embedding`` (a ``SconeEmbedding``) over every f-gram and store
    the [S, D] table at ``location`` on tier ``to`` ("zarr", "pinned" or "gpu")."""
    device = token_embedding.weight.device

    def rows_of(start: int, stop: int) -> torch.Tensor:
        fgrams_N = torch.arange(start, stop, device=device)
        return embedding.fgram_embeddings(fgrams_N, token_embedding)

    write_table(
        location,
        rows_of,
        to=to,
        num_rows=embedding.vocab.num_entries,
        dim=token_embedding.weight.shape[1],
        dtype=dtype_name(token_embedding.weight.dtype),
        producer=producer,
    )
