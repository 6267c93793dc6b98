"""A model's lookup tables move between tiers by configuration alone: the same checkpoint gives
the same logits with its tables on the GPU tier, in pinned memory, in Zarr or back."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from embedkit.backends.gpu import GPUBackend
from embedkit.backends.pinned import PinnedCPUBackend
from embedkit.backends.zarr_store import ZarrBackend
from embedkit.model.decoder import Decoder
from embedkit.model.token_table import TokenTableEmbedding
from embedkit_dense.swiglu import SwiGLU

TIERS = {
    "gpu": GPUBackend,
    "pinned": partial(PinnedCPUBackend, device="cpu"),
    "zarr": ZarrBackend,
}


def _decoder(tier: str) -> Decoder:
    torch.manual_seed(0)
    return Decoder(
        vocab_size=50,
        dim=32,
        num_layers=2,
        num_heads=4,
        feed_forward=SwiGLU,
        input_embedding=partial(TokenTableEmbedding, table_dim=8),
        table_backend=TIERS[tier],
    )


@pytest.fixture(scope="module")
def trained_state() -> dict:
    decoder = _decoder("gpu")
    with torch.no_grad():  # stand-in for training: a table and projection that matter
        decoder.input_embedding.table.backend.weight.normal_()
        decoder.input_embedding.proj.weight.normal_()
    return decoder.state_dict()


@pytest.mark.parametrize("tier", list(TIERS))
def test_checkpoint_loads_into_every_tier_with_identical_logits(tier, trained_state):
    ids_BL = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(3))
    reference = _decoder("gpu")
    reference.load_state_dict(trained_state)
    moved = _decoder(tier)
    moved.load_state_dict(trained_state)
    assert torch.equal(moved.logits(moved(ids_BL)), reference.logits(reference(ids_BL)))


@pytest.mark.parametrize("tier", ["pinned", "zarr"])
def test_frozen_tier_checkpoints_round_trip_to_gpu(tier, trained_state):
    frozen = _decoder(tier)
    frozen.load_state_dict(trained_state)
    state = frozen.state_dict()
    key = "input_embedding.table.backend.weight"
    assert torch.equal(state[key], trained_state[key])
    back = _decoder("gpu")
    back.load_state_dict(state)
    assert torch.equal(back.input_embedding.table.backend.weight, trained_state[key])


def test_frozen_tier_trains_the_rest_and_keeps_the_table():
    decoder = _decoder("pinned")
    table_before = decoder.state_dict()["input_embedding.table.backend.weight"]
    assert all("table" not in name for name, _ in decoder.named_parameters())
    optimizer = torch.optim.SGD(decoder.parameters(), lr=0.1)
    ids_BL = torch.randint(0, 50, (2, 9))
    loss = decoder.logits(decoder(ids_BL)).logsumexp(-1).mean()
    loss.backward()
    optimizer.step()
    assert torch.equal(decoder.state_dict()["input_embedding.table.backend.weight"], table_before)


def test_table_shape_mismatch_is_reported(trained_state):
    state = dict(trained_state)
    state["input_embedding.table.backend.weight"] = torch.zeros(49, 8)
    with pytest.raises(RuntimeError, match=r"checkpoint table has shape \(49, 8\)"):
        _decoder("pinned").load_state_dict(state)
