"""SCONE's exported f-gram table: it gives the f-gram model's logits on every storage tier, one
from another vocabulary or checkpoint is refused, and export never replaces a destination.

Legend: B = batch rows, L = positions.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from embedkit.data.datamodule import TextDataModule
from embedkit.model.decoder import Decoder
from embedkit_scone.embedding import FEATURE
from tests.support.scone_models import (
    TIERS,
    files_of,
    scone_data,
    scone_decoder,
    tagged_batch,
    trained_decoder,
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scone-table")


@pytest.fixture(scope="module")
def data(workspace: Path) -> TextDataModule:
    return scone_data(workspace)


@pytest.fixture(scope="module")
def trained(workspace: Path, data: TextDataModule) -> Decoder:
    return trained_decoder(workspace, data)


@pytest.fixture(scope="module")
def exported(workspace: Path, trained: Decoder) -> str:
    (location,) = trained.input_embedding.export_tables(
        str(workspace / "out"), to="zarr", token_embedding=trained.token_embedding, producer={}
    )
    return location


# 5. Cached inference: the exported table gives the f-gram model's logits on every tier.


@pytest.mark.parametrize("tier", list(TIERS))
@torch.no_grad()
def test_exported_table_gives_the_fgram_models_logits(
    tier: str, workspace: Path, data: TextDataModule, trained: Decoder, exported: str
):
    ids_BL, tags_BL = tagged_batch(data, start=1000, rows=3, length=40)
    assert (tags_BL >= 0).any() and (tags_BL < 0).any()
    cached = scone_decoder(workspace / "v.npz", table=exported, tier=tier)
    assert cached.input_embedding.fgram_model is None
    cached.input_embedding.connect(data)
    cached.load_state_dict(trained.state_dict())
    cached.eval()
    for features in ({FEATURE: tags_BL}, None):
        torch.testing.assert_close(
            cached.logits(cached(ids_BL, features)),
            trained.logits(trained(ids_BL, features)),
            rtol=1e-5,
            atol=1e-6,
        )


# 6. A table from another vocabulary or another checkpoint is refused.


def test_table_from_another_vocabulary_is_refused(
    tmp_path: Path, data: TextDataModule, exported: str
):
    decoder = scone_decoder(tmp_path / "other.npz", table=exported, num_entries=400)
    with pytest.raises(ValueError, match=r"another model: its vocab_hash"):
        decoder.input_embedding.connect(data)


@pytest.mark.parametrize("connect_first", [True, False], ids=["connect-load", "load-connect"])
def test_table_from_another_checkpoint_is_refused(
    workspace: Path, data: TextDataModule, trained: Decoder, exported: str, connect_first: bool
):
    state = trained.state_dict()
    other = state["token_embedding.weight"] + 1.0
    state["token_embedding.weight"] = state["head.weight"] = other  # tied: both keys
    cached = scone_decoder(workspace / "v.npz", table=exported, tier="pinned")
    if connect_first:
        cached.input_embedding.connect(data)
    cached.load_state_dict(state)
    if not connect_first:
        cached.input_embedding.connect(data)
    ids_BL = torch.randint(0, 256, (1, 8))
    with pytest.raises(ValueError, match=r"exported from another checkpoint"):
        cached(ids_BL)
    cached.load_state_dict(trained.state_dict())  # the matching weights: accepted again
    cached(ids_BL)


# 7. Export never replaces a destination; a table-mode model has nothing to export.


@pytest.mark.parametrize("to", ["zarr", "pinned", "gpu"])
def test_export_refuses_an_existing_destination(tmp_path: Path, trained: Decoder, to: str):
    scone, token_embedding = trained.input_embedding, trained.token_embedding
    (location,) = scone.export_tables(
        str(tmp_path), to=to, token_embedding=token_embedding, producer={"run": "a"}
    )
    assert location == f"{tmp_path}/fgram_table"
    before = files_of(tmp_path)
    with pytest.raises(ValueError, match=r"already exists"):
        scone.export_tables(
            str(tmp_path), to=to, token_embedding=token_embedding, producer={"run": "b"}
        )
    assert files_of(tmp_path) == before


def test_export_refuses_a_foreign_path_at_the_destination(tmp_path: Path, trained: Decoder):
    (tmp_path / "fgram_table").mkdir()
    (tmp_path / "fgram_table" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"already exists"):
        trained.input_embedding.export_tables(
            str(tmp_path), to="zarr", token_embedding=trained.token_embedding, producer={}
        )
    assert files_of(tmp_path) == {"fgram_table/notes.txt": b"keep me"}


def test_table_mode_has_nothing_to_export(
    tmp_path: Path, workspace: Path, data: TextDataModule, exported: str
):
    cached = scone_decoder(workspace / "v.npz", table=exported)
    cached.input_embedding.connect(data)
    with pytest.raises(ValueError, match=r"none to export"):
        cached.input_embedding.export_tables(
            str(tmp_path), to="zarr", token_embedding=cached.token_embedding, producer={}
        )
    assert not any(tmp_path.iterdir())
