"""The exported f-gram table: written once from a trained f-gram model, read at inference.

The table [S, D] holds the f-gram model's output for every f-gram; its manifest records the
vocabulary hash and the hash of the token embeddings it was computed from, so a table from
another vocabulary or another checkpoint is refused.
Legend: S = f-grams, D = model width, N = rows of a block.
"""

from __future__ import annotations

import os
import shutil

import torch

from embedkit.backends.manifest import read_manifest
from embedkit.dtypes import dtype_name
from embedkit.interfaces import EmbeddingBackend, TableFactory
from embedkit.tables import TIERS, open_table

BLOCK_ROWS = 16384


def load_fgram_table(
    location: str, table_backend: TableFactory, *, num_rows: int, dim: int, vocab_hash: str
) -> tuple[EmbeddingBackend, dict[str, str]]:
    """The exported table at ``location`` placed on the tier ``table_backend`` makes, and the
    manifest's producer hashes; a ``ValueError`` when it does not fit the vocabulary."""
    manifest = read_manifest(location)
    if manifest.producer.get("vocab_hash") != vocab_hash:
        raise ValueError(
            f"the f-gram table at {location!r} was built from another f-gram vocabulary "
            f"(vocab_hash {manifest.producer.get('vocab_hash')!r}, the configured vocab has "
            f"{vocab_hash!r}); export it again with this vocabulary"
        )
    source = open_table(location, expected={"num_rows": num_rows, "dim": dim})
    table = table_backend(num_rows=num_rows, dim=dim, dtype=manifest.dtype)
    for start in range(0, num_rows, BLOCK_ROWS):
        rows_N = torch.arange(start, min(start + BLOCK_ROWS, num_rows))
        table.write(start, source.gather(rows_N).to(table.device))
    return table, dict(manifest.producer)


@torch.no_grad()
def export_fgram_table(
    embedding, token_embedding: torch.nn.Embedding, location: str, *, to: str, producer: dict
) -> None:
    """Run the f-gram model of ``embedding`` (a ``SconeEmbedding``) over every f-gram and store
    the [S, D] table at ``location`` on tier ``to`` ("zarr", "pinned" or "gpu")."""
    if to not in TIERS:
        raise ValueError(f"--to={to!r} is not a tier; valid: {', '.join(TIERS)}")
    num_rows = embedding.vocab.num_entries
    dim = token_embedding.weight.shape[1]
    dtype = dtype_name(token_embedding.weight.dtype)
    device = token_embedding.weight.device
    if os.path.exists(location):
        raise ValueError(f"--out: {location!r} already exists; not replacing it")
    staging = f"{location}.partial-{os.getpid()}"
    if to == "zarr":
        table = TIERS[to](num_rows=num_rows, dim=dim, dtype=dtype, path=staging)
    else:
        table = TIERS[to](num_rows=num_rows, dim=dim, dtype=dtype)
    for start in range(0, num_rows, BLOCK_ROWS):
        fgrams_N = torch.arange(start, min(start + BLOCK_ROWS, num_rows), device=device)
        rows_ND = embedding.fgram_embeddings(fgrams_N, token_embedding)
        try:
            table.write(start, rows_ND.to(table.device, table.dtype))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    if to == "zarr":
        try:
            table.seal(producer=producer)
            del table
            os.rename(staging, location)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    else:
        table.save(location, producer=producer)
