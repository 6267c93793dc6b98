"""Conformance of every registered ``Sublayer``.

A registered sublayer must appear in ``EXAMPLES`` (how to build a small one for a model of
width ``DIM`` over ``VOCAB`` token ids, given a folder for anything it keeps); the suite then
checks what the decoder relies on: a valid position, shapes, gradients, causality (no position
sees later ones), results independent of the other rows of the batch, and checkpoints that
round-trip.

Legend: B = batch rows, L = positions, D = model width.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from embedkit import registry
from embedkit.backends.gpu import GPUBackend
from embedkit.data.datamodule import TextDataModule
from embedkit.data.tokenizers import ByteTokenizer
from embedkit.interfaces import DataConnected, PlannedLookups, Sublayer

VOCAB, DIM = 256, 32

EXAMPLES = {
    "L3Layer": lambda cls, folder: cls(
        DIM,
        VOCAB,
        GPUBackend,
        before_layer=1,
        allocation=_l3_allocation(),
        allocation_path=str(folder / "allocation.npz"),
        d_up=64,
    ),
}

SUBLAYERS = registry.specs("Sublayer")


def _l3_allocation():
    from embedkit_l3 import LZWAllocation

    return LZWAllocation(num_rows=1024, max_rows_per_token=32)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> TextDataModule:
    folder = tmp_path_factory.mktemp("sublayer-data")
    return TextDataModule(tokenizer=ByteTokenizer(), cache_dir=str(folder), seq_len=32)


@pytest.fixture(params=SUBLAYERS, ids=[s.short_name for s in SUBLAYERS])
def make(request, tmp_path: Path, data: TextDataModule):
    spec = request.param
    assert spec.short_name in EXAMPLES, f"add an example of {spec.class_path} to EXAMPLES"

    def build() -> Sublayer:
        torch.manual_seed(0)
        sublayer = EXAMPLES[spec.short_name](spec.load(), tmp_path)
        if isinstance(sublayer, DataConnected):
            sublayer.connect(data)
        with torch.no_grad():  # away from any special initialisation (e.g. the identity)
            for param in sublayer.parameters():
                param.add_(0.1 * torch.randn_like(param))
        return sublayer

    return build


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    hidden_BLD = torch.randn(2, 24, DIM, generator=generator)
    ids_BL = torch.randint(0, VOCAB, (2, 24), generator=generator)
    ids_BL[0, :10] = 7  # a repeated token
    return hidden_BLD, ids_BL


def test_position_shape_and_gradients(make):
    sublayer = make()
    assert isinstance(sublayer, Sublayer)
    assert sublayer.before_layer >= 1
    hidden_BLD, ids_BL = _inputs()
    hidden_BLD.requires_grad_()
    out_BLD = sublayer(hidden_BLD, ids_BL)
    assert out_BLD.shape == hidden_BLD.shape and out_BLD.dtype == hidden_BLD.dtype
    out_BLD.square().sum().backward()
    assert hidden_BLD.grad is not None and bool(hidden_BLD.grad.abs().sum() > 0)
    trained = [p for p in sublayer.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in trained)


@torch.no_grad()
def test_no_position_sees_later_ones(make):
    """The decoder is causal: changing a position's hidden state or token may change it and
    later positions, never earlier ones."""
    sublayer = make()
    hidden_BLD, ids_BL = _inputs()
    out_BLD = sublayer(hidden_BLD, ids_BL)
    later_hidden, later_ids = hidden_BLD.clone(), ids_BL.clone()
    later_hidden[:, 12:] += 1.0
    later_ids[:, 12:] = (later_ids[:, 12:] + 1) % VOCAB
    changed_BLD = sublayer(later_hidden, later_ids)
    torch.testing.assert_close(changed_BLD[:, :12], out_BLD[:, :12], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(changed_BLD[:, 12:], out_BLD[:, 12:])


@torch.no_grad()
def test_deterministic_and_batch_independent(make):
    sublayer = make()
    hidden_BLD, ids_BL = _inputs()
    out_BLD = sublayer(hidden_BLD, ids_BL)
    torch.testing.assert_close(sublayer(hidden_BLD, ids_BL), out_BLD)
    torch.testing.assert_close(
        sublayer(hidden_BLD[1:], ids_BL[1:]), out_BLD[1:], rtol=1e-5, atol=1e-5
    )


@torch.no_grad()
def test_checkpoint_round_trips(make):
    first, second = make(), make()
    with torch.no_grad():
        for param in second.parameters():
            param.add_(1.0)
    second.load_state_dict(first.state_dict())
    hidden_BLD, ids_BL = _inputs(2)
    torch.testing.assert_close(second(hidden_BLD, ids_BL), first(hidden_BLD, ids_BL))


@torch.no_grad()
def test_planned_lookups_equal_the_plain_forward(make):
    """A sublayer with static routing (``PlannedLookups``) gives, from the rows it planned for
    some ids, what its plain forward gives for them (decoding relies on it)."""
    sublayer = make().eval()
    if not isinstance(sublayer, PlannedLookups):
        return  # reads nothing ahead: decoding runs its plain forward
    hidden_BLD, ids_BL = _inputs(3)
    planned = sublayer.plan_lookups(ids_BL, torch.full((2, 0), -1))
    assert planned is not None  # the CPU has no fused path: its tables' rows are fetched
    torch.testing.assert_close(
        sublayer.forward_planned(hidden_BLD, planned), sublayer(hidden_BLD, ids_BL)
    )
