"""Tier conversion (``embedkit.tables``) and the ``embedkit table`` command.

Tables hold random bit patterns (NaNs included in bfloat16), so rows are compared through
integer views; the content hash is the SHA-256 of the row-major bytes in every tier.

Legend: R = rows of the table, D = row width.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path

import pytest
import torch

from embedkit.backends.gpu import GPUBackend
from embedkit.backends.manifest import MANIFEST_NAME, read_manifest
from embedkit.backends.pinned import TABLE_FILE, PinnedCPUBackend
from embedkit.backends.zarr_store import ZarrBackend
from embedkit.cli import main
from embedkit.dtypes import DTYPES
from embedkit.tables import TIERS, convert_table, open_table, table_info, tier_class

NUM_ROWS, DIM = 203, 8  # Zarr: 4 shards of 64 rows, the last one partial
ZARR = {"chunk_rows": 8, "shard_rows": 64}
PRODUCER = {"vocab_hash": "v123"}
PAIRS = list(itertools.permutations(TIERS, 2))


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int16) if x.element_size() == 2 else x.view(torch.int32)


def _random_table(dtype: str, seed: int = 0) -> torch.Tensor:
    word = torch.int16 if DTYPES[dtype].itemsize == 2 else torch.int32
    info = torch.iinfo(word)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(info.min, info.max, (NUM_ROWS, DIM), generator=g, dtype=word).view(
        DTYPES[dtype]
    )


def _sha256(values_RD: torch.Tensor) -> str:
    return hashlib.sha256(values_RD.contiguous().view(torch.uint8).numpy()).hexdigest()


def _stored(tier: str, path: Path, values_RD: torch.Tensor, codec: str = "none") -> str:
    """A table of ``tier`` at ``path`` holding ``values_RD``, hashed, with ``PRODUCER``."""
    shape = {"num_rows": NUM_ROWS, "dim": DIM, "dtype": str(values_RD.dtype).split(".")[1]}
    if tier == "zarr":
        backend = ZarrBackend(**shape, path=str(path), codec=codec, **ZARR)
        backend.write(0, values_RD)
        backend.seal(producer=PRODUCER)
    else:
        backend = TIERS[tier](**shape)
        backend.write(0, values_RD)
        backend.save(str(path), producer=PRODUCER)
    return str(path)


def _rows(location: str) -> torch.Tensor:
    backend = open_table(location, device="cpu")
    with torch.no_grad():
        return backend.gather(torch.arange(NUM_ROWS))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("src_tier, dst_tier", PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_every_pair_of_tiers_converts_bit_exactly(tmp_path, src_tier, dst_tier, dtype):
    values_RD = _random_table(dtype)
    src = _stored(src_tier, tmp_path / "src", values_RD)
    manifest = convert_table(
        src,
        str(tmp_path / "dst"),
        to=dst_tier,
        block_rows=100,
        **(ZARR if dst_tier == "zarr" else {}),
    )
    assert manifest == read_manifest(tmp_path / "dst")
    assert (manifest.tier, manifest.dtype) == (dst_tier, dtype)
    assert (manifest.num_rows, manifest.dim) == (NUM_ROWS, DIM)
    assert manifest.content_hash == read_manifest(src).content_hash == _sha256(values_RD)
    assert manifest.producer == PRODUCER
    assert torch.equal(_bits(_rows(str(tmp_path / "dst"))), _bits(values_RD))
    assert _leftovers(tmp_path) == ["dst", "src"], "no staging left behind"


@pytest.mark.parametrize("src_codec, dst_tier", [("zstd", "gpu"), ("none", "zarr")])
def test_zstd_stores_convert_both_ways(tmp_path, src_codec, dst_tier):
    values_RD = _random_table("bfloat16", seed=1)
    src = _stored("zarr", tmp_path / "src", values_RD, codec=src_codec)
    options = {"codec": "zstd", "chunk_rows": 4, "shard_rows": 32} if dst_tier == "zarr" else {}
    manifest = convert_table(src, str(tmp_path / "dst"), to=dst_tier, **options)
    assert manifest.content_hash == _sha256(values_RD)
    assert torch.equal(_bits(_rows(str(tmp_path / "dst"))), _bits(values_RD))
    if dst_tier == "zarr":
        info = table_info(str(tmp_path / "dst"))
        assert (info["codec"], info["chunk_rows"], info["shard_rows"]) == ("zstd", 4, 32)


def test_round_trip_through_all_tiers_keeps_the_hash(tmp_path):
    values_RD = _random_table("float32", seed=2)
    location = _stored("gpu", tmp_path / "0", values_RD)
    for step, tier in enumerate(["pinned", "zarr", "gpu"], start=1):
        manifest = convert_table(location, str(tmp_path / str(step)), to=tier)
        location = str(tmp_path / str(step))
        assert (manifest.tier, manifest.content_hash) == (tier, _sha256(values_RD))
    assert torch.equal(_bits(_rows(location)), _bits(values_RD))


def test_zarr_destination_is_written_in_whole_shards(tmp_path, monkeypatch):
    starts = []
    write = ZarrBackend.write
    monkeypatch.setattr(
        ZarrBackend, "write", lambda self, s, v: starts.append(s) or write(self, s, v)
    )
    src = _stored("pinned", tmp_path / "src", _random_table("float32"))
    convert_table(src, str(tmp_path / "dst"), to="zarr", block_rows=150, **ZARR)
    assert starts == [0, 128]


@pytest.mark.parametrize("occupant", ["files", "table"])
def test_existing_destination_is_refused_and_untouched(tmp_path, occupant):
    src = _stored("pinned", tmp_path / "src", _random_table("float32"))
    if occupant == "table":
        _stored("gpu", tmp_path / "dst", _random_table("float32", seed=3))
    else:
        (tmp_path / "dst").mkdir()
        (tmp_path / "dst" / "notes.txt").write_text("mine")
    before = {p: p.read_bytes() for p in (tmp_path / "dst").iterdir()}
    with pytest.raises(ValueError, match=rf"destination {tmp_path / 'dst'} already exists"):
        convert_table(src, str(tmp_path / "dst"), to="zarr")
    assert {p: p.read_bytes() for p in (tmp_path / "dst").iterdir()} == before
    assert _leftovers(tmp_path) == ["dst", "src"]


def _truncate_largest(location: str) -> Path:
    files = [p for p in Path(location).rglob("*") if p.is_file() and p.name != MANIFEST_NAME]
    victim = max(files, key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    return victim


@pytest.mark.parametrize("src_tier", list(TIERS))
def test_truncated_source_is_refused_and_leaves_no_destination(tmp_path, src_tier):
    src = _stored(src_tier, tmp_path / "src", _random_table("float32"))
    victim = _truncate_largest(src)
    to = "pinned" if src_tier == "zarr" else "zarr"
    with pytest.raises(ValueError, match=re.escape(str(victim))):
        convert_table(src, str(tmp_path / "dst"), to=to, **(ZARR if to == "zarr" else {}))
    assert _leftovers(tmp_path) == ["src"]


def test_source_whose_rows_do_not_match_its_hash_is_refused(tmp_path):
    src = _stored("pinned", tmp_path / "src", _random_table("float32"))
    path = tmp_path / "src" / TABLE_FILE
    raw = bytearray(path.read_bytes())
    raw[5] ^= 0xFF  # same size, other rows
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"rows hash to .* nothing converted"):
        convert_table(src, str(tmp_path / "dst"), to="gpu")
    assert _leftovers(tmp_path) == ["src"]


def test_unknown_tiers_are_refused_listing_the_known_ones(tmp_path):
    src = _stored("gpu", tmp_path / "src", _random_table("float32"))
    manifest_path = tmp_path / "src" / MANIFEST_NAME
    manifest_path.write_text(json.dumps({**json.loads(manifest_path.read_text()), "tier": "tape"}))
    with pytest.raises(ValueError, match=r"tier='tape' is unknown; known tiers: gpu, pinned, zarr"):
        open_table(src)
    with pytest.raises(ValueError, match="tier='disk' is unknown"):
        convert_table(str(tmp_path / "src"), str(tmp_path / "dst"), to="disk")
    assert tier_class("PinnedCPUBackend") is PinnedCPUBackend  # registry short names resolve


def test_open_table_dispatches_and_checks_expectations(tmp_path):
    values_RD = _random_table("bfloat16")
    for tier in TIERS:
        location = _stored(tier, tmp_path / tier, values_RD)
        backend = open_table(location, expected={"producer": PRODUCER}, device="cpu")
        assert isinstance(backend, TIERS[tier])
        with pytest.raises(ValueError, match="dtype='bfloat16', expected 'float32'"):
            open_table(location, expected={"dtype": "float32"})
    with pytest.raises(ValueError, match="the path does not exist"):
        open_table(str(tmp_path / "nowhere"))


def test_opened_gpu_table_is_trainable_unless_asked(tmp_path):
    location = _stored("gpu", tmp_path / "t", _random_table("float32"))
    assert GPUBackend.open(location, device="cpu").weight.requires_grad
    assert not GPUBackend.open(location, device="cpu", trainable=False).weight.requires_grad


def test_table_info_describes_each_tier(tmp_path):
    values_RD = _random_table("float32")
    for tier in TIERS:
        location = _stored(tier, tmp_path / tier, values_RD, codec="none")
        info = table_info(location)
        on_disk = sum(p.stat().st_size for p in Path(location).rglob("*") if p.is_file())
        assert info["tier"] == tier
        assert (info["num_rows"], info["dim"], info["dtype"]) == (NUM_ROWS, DIM, "float32")
        assert (info["content_hash"], info["producer"]) == (_sha256(values_RD), PRODUCER)
        assert info["bytes_on_disk"] == on_disk
        assert ("shard_rows" in info) == (tier == "zarr")


def _command(*argv: str) -> None:
    main(["table", *argv])


def test_command_converts_and_describes(tmp_path, capsys):
    values_RD = _random_table("bfloat16")
    src = _stored("gpu", tmp_path / "src", values_RD)
    dst = str(tmp_path / "dst")
    _command("convert", src, dst, "--to", "zarr", "--codec", "zstd", "--shard_rows", "64")
    assert f"wrote {dst}: zarr table of {NUM_ROWS} x {DIM} bfloat16" in capsys.readouterr().out
    assert torch.equal(_bits(_rows(dst)), _bits(values_RD))
    _command("info", dst)
    lines = capsys.readouterr().out.splitlines()
    for line in [
        "tier: zarr",
        "codec: zstd",
        "shard_rows: 64",
        "chunk_rows: 16",
        f"content_hash: {_sha256(values_RD)}",
        "producer: vocab_hash=v123",
    ]:
        assert line in lines


@pytest.mark.parametrize(
    "argv, message",
    [
        (["convert", "{src}", "{src}", "--to", "zarr"], "already exists"),
        (["convert", "{tmp}/nowhere", "{tmp}/dst", "--to", "gpu"], "the path does not exist"),
        (["convert", "{src}", "{tmp}/dst", "--to", "pinned", "--codec", "zstd"], "--codec"),
        (["info", "{tmp}"], "holds no embedkit table"),
    ],
    ids=["existing-destination", "missing-source", "zarr-flag-elsewhere", "not-a-table"],
)
def test_command_reports_bad_input_in_one_line(tmp_path, capsys, argv, message):
    src = _stored("pinned", tmp_path / "src", _random_table("float32"))
    with pytest.raises(SystemExit) as caught:
        _command(*(arg.format(src=src, tmp=tmp_path) for arg in argv))
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("embedkit: error: ") and message in err
    assert err.count("\n") == 1
    assert _leftovers(tmp_path) == ["src"]
