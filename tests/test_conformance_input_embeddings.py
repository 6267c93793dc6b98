"""Conformance of every registered ``InputEmbedding``.

A registered input embedding must appear in ``EXAMPLES`` (how to build a small one for a model
of width ``DIM`` over ``VOCAB`` token ids, given a folder for anything it keeps); the suite then
checks what the decoder relies on: shapes and type, gradients into the token embeddings and
its own parameters, causality (a position's vector depends on its own id and earlier ones
only, which is what lets decoding hand it a window of preceding ids), results independent of
the other rows, checkpoints that round-trip, and, for parts with ``PlannedLookups``, planned
rows equal to the plain forward.

Legend: B = batch rows, L = positions, D = model width, W = preceding ids.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from embedkit import registry
from embedkit.backends.gpu import GPUBackend
from embedkit.data.datamodule import TextDataModule
from embedkit.data.tokenizers import ByteTokenizer
from embedkit.interfaces import DataConnected, InputEmbedding, PlannedLookups

VOCAB, DIM = 256, 32


def _scone(cls, folder: Path):
    from embedkit_scone.vocab import FGramVocab

    vocab = FGramVocab(max_n=3, min_count=2, num_entries=300)
    return cls(DIM, VOCAB, GPUBackend, vocab=vocab, vocab_path=str(folder / "v.npz"))


EXAMPLES = {
    "SconeEmbedding": _scone,
    "TokenTableEmbedding": lambda cls, folder: cls(DIM, VOCAB, GPUBackend, table_dim=16),
}

EMBEDDINGS = registry.specs("InputEmbedding")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> TextDataModule:
    folder = tmp_path_factory.mktemp("input-embedding-data")
    data = TextDataModule(tokenizer=ByteTokenizer(), cache_dir=str(folder), seq_len=32)
    data.prepare_data()
    data.setup("fit")
    return data


@pytest.fixture(params=EMBEDDINGS, ids=[s.short_name for s in EMBEDDINGS])
def make(request, tmp_path: Path, data: TextDataModule):
    spec = request.param
    assert spec.short_name in EXAMPLES, f"add an example of {spec.class_path} to EXAMPLES"

    def build() -> InputEmbedding:
        torch.manual_seed(0)
        part = EXAMPLES[spec.short_name](spec.load(), tmp_path)
        if isinstance(part, DataConnected):
            part.connect(data)
        with torch.no_grad():  # away from any special initialisation
            for param in part.parameters():
                param.add_(0.1 * torch.randn_like(param))
        return part

    return build


def _inputs(data: TextDataModule, seed: int = 0):
    """Two rows of real text (so that f-grams match), their token embeddings and a module."""
    generator = torch.Generator().manual_seed(seed)
    start = int(torch.randint(0, 2000, (1,), generator=generator))
    ids_BL = torch.from_numpy(data.shards.val_N[start : start + 48].astype("int64")).view(2, 24)
    token_embedding = nn.Embedding(VOCAB, DIM)
    return ids_BL, token_embedding


def test_shape_type_and_gradients(make, data):
    part = make()
    assert isinstance(part, InputEmbedding)
    ids_BL, token_embedding = _inputs(data)
    embedded_BLD = token_embedding(ids_BL)
    out_BLD = part(embedded_BLD, ids_BL, token_embedding, {})
    assert out_BLD.shape == embedded_BLD.shape and out_BLD.dtype == embedded_BLD.dtype
    out_BLD.square().sum().backward()
    assert token_embedding.weight.grad is not None
    trained = [p for p in part.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in trained)


@torch.no_grad()
def test_no_position_sees_later_ones(make, data):
    part = make().eval()
    ids_BL, token_embedding = _inputs(data)
    out_BLD = part(token_embedding(ids_BL), ids_BL, token_embedding, {})
    later_BL = ids_BL.clone()
    later_BL[:, 12:] = (later_BL[:, 12:] + 1) % VOCAB
    changed_BLD = part(token_embedding(later_BL), later_BL, token_embedding, {})
    torch.testing.assert_close(changed_BLD[:, :12], out_BLD[:, :12])
    assert not torch.allclose(changed_BLD[:, 12:], out_BLD[:, 12:])


@torch.no_grad()
def test_deterministic_and_batch_independent(make, data):
    part = make().eval()
    ids_BL, token_embedding = _inputs(data, 1)
    out_BLD = part(token_embedding(ids_BL), ids_BL, token_embedding, {})
    torch.testing.assert_close(part(token_embedding(ids_BL), ids_BL, token_embedding, {}), out_BLD)
    alone_BLD = part(token_embedding(ids_BL[1:]), ids_BL[1:], token_embedding, {})
    torch.testing.assert_close(alone_BLD, out_BLD[1:], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_checkpoint_round_trips(make, data):
    first, second = make().eval(), make().eval()
    for param in second.parameters():
        param.add_(1.0)
    second.load_state_dict(first.state_dict())
    ids_BL, token_embedding = _inputs(data, 2)
    embedded_BLD = token_embedding(ids_BL)
    torch.testing.assert_close(
        second(embedded_BLD, ids_BL, token_embedding, {}),
        first(embedded_BLD, ids_BL, token_embedding, {}),
    )


@torch.no_grad()
def test_planned_rows_equal_the_plain_forward_at_new_positions(make, data, tmp_path):
    """A part with ``PlannedLookups`` gives, for new positions after a window of preceding
    ids, what its plain forward over window and new ids gives there; a part that fetches only
    from exported tables (SCONE) is checked reading its own export on the pinned tier."""
    part = make().eval()
    if not isinstance(part, PlannedLookups):
        return  # fetches nothing ahead: decoding runs its plain forward
    ids_BL, token_embedding = _inputs(data, 3)
    width = getattr(part, "num_preceding_ids", 0)
    preceding_BW, new_BT = ids_BL[:, 12 - width : 12], ids_BL[:, 12:]
    if part.plan_lookups(new_BT, preceding_BW) is None and hasattr(part, "export_tables"):
        part.export_tables(
            str(tmp_path / "tables"), to="pinned", token_embedding=token_embedding, producer={}
        )
        reader = make().eval()
        reader.use_exported_tables(str(tmp_path / "tables"))
        if isinstance(reader, DataConnected):
            reader.connect(data)
        reader.load_state_dict(part.state_dict(), strict=False)
        part = reader
    plain_BLD = part(token_embedding(ids_BL), ids_BL, token_embedding, {})  # checks the source
    planned = part.plan_lookups(new_BT, preceding_BW)
    assert planned is not None
    out_BTD = part.forward_planned(token_embedding(new_BT), planned)
    torch.testing.assert_close(out_BTD, plain_BLD[:, 12:], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out_BTD, token_embedding(new_BT))  # the rows were used
