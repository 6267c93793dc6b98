"""``L3Layer`` (L³): the sorted block-diagonal lookup equals a per-position reference in values
and gradients, memory stays bounded for tokens with k rows, the layer starts as the identity,
the allocation is fitted once and checked on reuse, and exported tables give the trained
model's outputs on every storage tier while tables of another model are refused (the Triton
kernels: ``tests/test_l3_kernels.py``).

Legend: B = batch rows, L = positions, D = model width, E = value width, P = B * L,
V = token ids, R = table rows.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from embedkit.backends.gpu import GPUBackend
from embedkit.backends.pinned import PinnedCPUBackend
from embedkit.backends.zarr_store import ZarrBackend
from embedkit.data.datamodule import TextDataModule
from embedkit.data.tokenizers import ByteTokenizer
from embedkit.model.decoder import Decoder
from embedkit_dense.swiglu import SwiGLU
from embedkit_l3.allocation import LZWAllocation
from embedkit_l3.layer import L3Layer
from embedkit_l3.token_attention import MAX_TILE_POSITIONS, plan_lookup, token_attention
from tests.support.l3_reference import assert_matches, offsets, reference

TIERS = {
    "gpu": GPUBackend,
    "pinned": partial(PinnedCPUBackend, device="cpu"),
    "zarr": ZarrBackend,
}


# 1. The bulk lookup equals the per-position reference, values and gradients.


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sorted_lookup_matches_per_position_reference(tied: bool, seed: int):
    generator = torch.Generator().manual_seed(seed)
    num_v, dim = 40, 12
    width = dim if tied else 7
    rows_V = torch.randint(1, 70, (num_v,), generator=generator)
    rows_V[0], rows_V[1], rows_V[2] = 512, 1, 300  # k rows, a single row, between powers of 2
    offsets_V1 = offsets(rows_V)
    num_r = int(offsets_V1[-1])
    keys_RD = torch.randn(num_r, dim, generator=generator, requires_grad=True)
    values_RE = keys_RD if tied else torch.randn(num_r, width, generator=generator).requires_grad_()
    ids_P = torch.randint(0, num_v, (300,), generator=generator)
    ids_P[:140] = 0  # one token over more than one tile
    ids_P[140:150] = 1
    ids_P = ids_P[torch.randperm(300, generator=generator)]
    query_PD = torch.randn(300, dim, generator=generator, requires_grad=True)
    scale = 1 / math.sqrt(dim)

    plan = plan_lookup(ids_P, offsets_V1)
    keys_MD = keys_RD[plan.pool_rows_M]
    values_ME = keys_MD if tied else values_RE[plan.pool_rows_M]
    fast_PE = token_attention(query_PD, plan, keys_MD, values_ME, scale=scale)
    slow_PE = reference(query_PD, ids_P, offsets_V1, keys_RD, values_RE, scale)
    inputs = [query_PD, keys_RD] if tied else [query_PD, keys_RD, values_RE]
    assert_matches(fast_PE, slow_PE, inputs, generator, rtol=1e-5, atol=1e-6)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the kernels need CUDA")


def test_pool_holds_each_distinct_token_rows_once():
    rows_V = torch.tensor([3, 1, 5, 2])
    ids_P = torch.tensor([2, 2, 0, 2, 3, 0])
    plan = plan_lookup(ids_P, offsets(rows_V))
    assert plan.pool_rows_M.tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]


# 2. Memory is bounded for tokens with k rows.


def test_key_slots_stay_bounded_when_every_position_has_k_rows():
    k, num_p = 512, 4096
    rows_V = torch.full((8,), k)
    ids_P = torch.randint(0, 8, (num_p,), generator=torch.Generator().manual_seed(0))
    plan = plan_lookup(ids_P, offsets(rows_V))
    per_position = k // MAX_TILE_POSITIONS  # 4 key slots per position ...
    assert plan.key_index_N.numel() <= per_position * num_p + 8 * k  # ... + one tile per token
    assert plan.num_slots <= num_p + 8 * MAX_TILE_POSITIONS
    assert plan.pool_rows_M.numel() == 8 * k  # the distinct tokens' rows, once


# 3. The layer: identity at the start, checked settings, refusal of position 0.


def _allocation(num_rows: int = 2048, **settings) -> LZWAllocation:
    return LZWAllocation(num_rows=num_rows, max_rows_per_token=64, **settings)


def _layer(tmp_path: Path, **kwargs) -> L3Layer:
    torch.manual_seed(0)
    kwargs = {"before_layer": 1, "allocation": _allocation(), "d_up": 48} | kwargs
    backend = kwargs.pop("table_backend", GPUBackend)
    return L3Layer(32, 256, backend, allocation_path=str(tmp_path / "a.npz"), **kwargs)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("l3")


@pytest.fixture(scope="module")
def data(workspace: Path) -> TextDataModule:
    return TextDataModule(
        tokenizer=ByteTokenizer(), cache_dir=str(workspace), seq_len=32, batch_size=4
    )


def test_layer_starts_as_the_identity_and_learns_from_the_first_step(tmp_path, data):
    layer = _layer(tmp_path)
    layer.connect(data)
    hidden_BLD = torch.randn(2, 16, 32)
    ids_BL = torch.randint(0, 256, (2, 16))
    out_BLD = layer(hidden_BLD, ids_BL)
    assert torch.equal(out_BLD, hidden_BLD)
    out_BLD.square().sum().backward()
    assert layer.mix.weight.grad.abs().sum() > 0


@cuda
@pytest.mark.parametrize("mode", ["reduce-overhead", "default", None])
def test_triton_and_bucket_lookups_give_the_same_layer(tmp_path, data, mode: str | None):
    layers = {
        lookup: _layer(tmp_path, lookup=lookup, compile_mode=mode)
        for lookup in ("triton", "buckets")
    }
    torch.nn.init.normal_(layers["triton"].mix.weight, std=0.1)
    torch.nn.init.normal_(layers["triton"].key_table.backend.weight)
    layers["buckets"].load_state_dict(layers["triton"].state_dict())
    hidden_BLD = torch.randn(2, 70, 32, device="cuda")
    ids_BL = torch.randint(0, 256, (2, 70), device="cuda")
    outputs, grads = {}, {}
    for name, layer in layers.items():
        layer.cuda().connect(data)
        outputs[name] = layer(hidden_BLD, ids_BL)
        outputs[name].square().sum().backward()
        grads[name] = {n: p.grad for n, p in layer.named_parameters()}
    torch.testing.assert_close(outputs["triton"], outputs["buckets"])
    assert grads["triton"]["key_table.backend.weight"] is not None  # the tied table learns
    for parameter, grad in grads["buckets"].items():
        torch.testing.assert_close(grads["triton"][parameter], grad, rtol=1e-4, atol=1e-4)


def test_triton_lookup_refuses_tables_off_the_device(tmp_path, data):
    layer = _layer(tmp_path, lookup="triton", table_backend=TIERS["pinned"])
    layer.connect(data)
    with pytest.raises(ValueError, match=r"lookup='triton' needs its tables"):
        layer(torch.randn(1, 4, 32), torch.zeros(1, 4, dtype=torch.long))


def test_connect_fits_then_reuses_the_allocation(tmp_path, data):
    layer = _layer(tmp_path)
    layer.connect(data)
    saved = LZWAllocation.load(tmp_path / "a.npz")
    assert saved.num_entries == 2048 and saved.vocab_size == 256
    assert saved.tokenizer_fingerprint == data.tokenizer.fingerprint
    again = _layer(tmp_path)
    again.connect(data)
    assert torch.equal(again.offsets_V1, layer.offsets_V1)
    with pytest.raises(ValueError, match=r"num_rows=2048 but the recipe asks for 4096"):
        _layer(tmp_path, allocation=_allocation(4096)).connect(data)


def test_bad_settings_name_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"d_emb=16 with tie_kv=True"):
        _layer(tmp_path, d_emb=16)
    with pytest.raises(ValueError, match=r"vocab_size=100 differs"):
        _layer(tmp_path, allocation=_allocation(vocab_size=100))
    with pytest.raises(ValueError, match=r"before_layer=0 is invalid"):
        _decoder(tmp_path / "a.npz", before_layer=0)
    with pytest.raises(RuntimeError, match=r"before connect"):
        _layer(tmp_path)(torch.zeros(1, 2, 32), torch.zeros(1, 2, dtype=torch.long))


def test_checkpoint_of_another_allocation_is_refused(tmp_path, data):
    layer = _layer(tmp_path)
    layer.connect(data)
    state = layer.state_dict()
    other = _layer(tmp_path / "other", allocation=_allocation(strategy="uniform"))
    other.connect(data)
    with pytest.raises(RuntimeError, match=r"another row allocation"):
        other.load_state_dict(state)
    fresh = _layer(tmp_path / "other", allocation=_allocation(strategy="uniform"))
    # loaded first, connected after
    fresh.load_state_dict(state)
    with pytest.raises(ValueError, match=r"another row allocation"):
        fresh.connect(data)


# 4. Exported tables give the trained outputs on every tier; others' tables are refused.


def _decoder(allocation_path: Path, *, tier: str = "gpu", tables: str | None = None, **kwargs):
    torch.manual_seed(0)
    layer_args = {"before_layer": 1, "d_up": 48, "tie_kv": False, "d_emb": 24} | kwargs
    return Decoder(
        vocab_size=256,
        dim=32,
        num_layers=2,
        num_heads=4,
        feed_forward=SwiGLU,
        sublayers=[
            partial(
                L3Layer,
                allocation=_allocation(),
                allocation_path=str(allocation_path),
                **layer_args,
            )
        ],
        table_backend=TIERS[tier],
        tables=tables,
    )


@pytest.fixture(scope="module")
def trained(workspace: Path, data: TextDataModule) -> Decoder:
    """A connected decoder with non-trivial weights everywhere (a stand-in for training)."""
    decoder = _decoder(workspace / "alloc.npz")
    decoder.sublayers["1"].connect(data)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in decoder.named_parameters():
            param.normal_(generator=generator).mul_(0.3 if "table" not in name else 1.0)
    return decoder.eval()


@pytest.fixture(scope="module")
def batch(data: TextDataModule) -> torch.Tensor:
    data.prepare_data()
    data.setup("fit")
    return torch.from_numpy(data.shards.val_N[: 4 * 32].astype(np.int64)).view(4, 32)


@pytest.mark.parametrize("to", ["zarr", "pinned", "gpu"])
@pytest.mark.parametrize("tier", ["gpu", "pinned", "zarr"])
@torch.no_grad()
def test_exported_tables_give_the_trained_outputs_on_every_tier(
    tmp_path, workspace, data, trained, batch, to, tier
):
    out = tmp_path / "tables"
    layer = trained.sublayers["1"]
    written = layer.export_tables(str(out), to=to, token_embedding=None, producer={"run": "t"})
    assert [Path(p).name for p in written] == ["l3-before1-keys", "l3-before1-values"]
    cached = _decoder(workspace / "alloc.npz", tier=tier, tables=str(out))
    assert not any("table" in name for name, _ in cached.named_parameters())
    cached.sublayers["1"].connect(data)
    cached.load_state_dict(trained.state_dict())
    cached.eval()
    torch.testing.assert_close(cached(batch), trained(batch), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_tables_of_another_model_are_refused(tmp_path, workspace, data, trained, batch):
    out = tmp_path / "tables"
    trained.sublayers["1"].export_tables(str(out), to="pinned", token_embedding=None, producer={})
    # Another checkpoint: the layer's weights differ from those the tables were exported with.
    state = trained.state_dict()
    state["sublayers.1.mix.weight"] = state["sublayers.1.mix.weight"] + 1.0
    cached = _decoder(workspace / "alloc.npz", tier="pinned", tables=str(out))
    cached.sublayers["1"].connect(data)
    cached.load_state_dict(state)
    with pytest.raises(ValueError, match=r"exported from another checkpoint"):
        cached(batch)
    cached.load_state_dict(trained.state_dict())
    cached(batch)
    # Another allocation: refused when the tables are placed.
    other = _decoder(tmp_path / "uniform.npz", tier="pinned", tables=str(out))
    other.sublayers["1"].allocation = _allocation(strategy="uniform")
    other.sublayers["1"].allocation.vocab_size = 256
    with pytest.raises(ValueError, match=r"another model: its allocation_hash"):
        other.sublayers["1"].connect(data)
    # Missing tables name the export command.
    missing = _decoder(workspace / "alloc.npz", tier="pinned", tables=str(tmp_path / "none"))
    with pytest.raises(ValueError, match=r"embedkit export"):
        missing.sublayers["1"].connect(data)


def test_tables_need_a_part_that_owns_tables(tmp_path):
    with pytest.raises(ValueError, match=r"model.decoder.tables="):
        Decoder(
            vocab_size=256,
            dim=32,
            num_layers=2,
            num_heads=4,
            feed_forward=SwiGLU,
            tables=str(tmp_path),
        )
