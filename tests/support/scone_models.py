"""Small SCONE decoders over the byte tokenizer, shared by the SCONE test modules.

Legend: B = batch rows, L = positions.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch

from embedkit.backends.gpu import GPUBackend
from embedkit.backends.pinned import PinnedCPUBackend
from embedkit.backends.zarr_store import ZarrBackend
from embedkit.data.datamodule import TextDataModule
from embedkit.data.tokenizers import ByteTokenizer
from embedkit.model.decoder import Decoder
from embedkit_dense.swiglu import SwiGLU
from embedkit_scone.embedding import FEATURE, SconeEmbedding
from embedkit_scone.vocab import FGramVocab

TIERS = {
    "gpu": GPUBackend,
    "pinned": partial(PinnedCPUBackend, device="cpu"),
    "zarr": ZarrBackend,
}
SETTINGS = {"max_n": 4, "min_count": 3, "num_entries": 500}
# fp32 on the CPU: a matmul's rows depend in their last bits on how many rows it has, so the
# same f-gram computed in batches of other sizes agrees to rounding, not bit for bit.
CLOSE = {"rtol": 1e-5, "atol": 1e-5}


def scone_data(cache_dir: Path) -> TextDataModule:
    return TextDataModule(
        tokenizer=ByteTokenizer(), cache_dir=str(cache_dir), seq_len=32, batch_size=4
    )


def scone_decoder(
    vocab_path: Path, *, table: str | None = None, tier: str = "gpu", **settings: int
) -> Decoder:
    torch.manual_seed(0)
    return Decoder(
        vocab_size=256,
        dim=32,
        num_layers=2,
        num_heads=4,
        feed_forward=SwiGLU,
        input_embedding=partial(
            SconeEmbedding,
            vocab=FGramVocab(**(SETTINGS | settings)),
            vocab_path=str(vocab_path),
            fgram_layers=1,
            table=table,
        ),
        table_backend=TIERS[tier],
    )


def tagged_batch(data: TextDataModule, *, start: int, rows: int, length: int):
    """Consecutive windows of the training split and their f-gram tags from the data."""
    stop = start + rows * length
    ids_BL = torch.from_numpy(data.shards.train_N[start:stop].astype(np.int64)).view(rows, length)
    tags_N = data.features("train")[FEATURE][start:stop]
    return ids_BL, torch.from_numpy(tags_N.astype(np.int64)).view(rows, length)


def files_of(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def trained_decoder(workspace: Path, data: TextDataModule) -> Decoder:
    """A connected decoder with non-trivial weights everywhere (a stand-in for training)."""
    decoder = scone_decoder(workspace / "v.npz")
    decoder.input_embedding.connect(data)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in decoder.parameters():
            param.normal_(generator=generator)
    return decoder.eval()
