"""``ZarrBackend``: reads against a reference, the store's format, atomic writes, broken stores.

Legend: N = requested rows, D = row width (``DIM``).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from embedkit.backends import zarr_reader, zarr_store
from embedkit.backends.manifest import MANIFEST_NAME
from embedkit.backends.zarr_format import JOURNAL_KEY, StoreFiles
from embedkit.backends.zarr_store import ZarrBackend
from embedkit.dtypes import DTYPES

NUM_ROWS, DIM = 203, 8  # 7 shards of 32 rows, the last one partial
LAYOUT = {"chunk_rows": 4, "shard_rows": 32}
CODECS = ["none", "zstd", "blosc-lz4"]


def _bits(x: torch.Tensor) -> np.ndarray:
    return x.contiguous().view(torch.int16 if x.element_size() == 2 else torch.int32).numpy()


def _values(dtype: str, seed: int = 0, num_rows: int = NUM_ROWS) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_rows, DIM, generator=generator).to(DTYPES[dtype])


def _store(path: Path, codec: str = "none", dtype: str = "float32", **options) -> ZarrBackend:
    backend = ZarrBackend(
        num_rows=NUM_ROWS, dim=DIM, dtype=dtype, path=str(path), codec=codec, **LAYOUT, **options
    )
    backend.write(0, _values(dtype))
    return backend


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("codec", CODECS)
def test_gather_matches_reference_and_other_readers(tmp_path, codec, dtype):
    backend = _store(tmp_path / "t", codec, dtype, cache_rows=16)
    reference_ND = _values(dtype)
    rows_N = torch.randint(0, NUM_ROWS, (300,), generator=torch.Generator().manual_seed(1))
    for _ in range(2):  # the second pass reads through the row cache where there is one
        np.testing.assert_array_equal(_bits(backend.gather(rows_N)), _bits(reference_ND[rows_N]))
    stored = zarr.open_array(str(tmp_path / "t"), mode="r")
    assert stored.attrs["embedkit_dtype"] == dtype
    np.testing.assert_array_equal(stored[:].view(_bits(reference_ND).dtype), _bits(reference_ND))
    tensorstore = pytest.importorskip("tensorstore")
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "t")}}
    read = tensorstore.open(spec).result().read().result()
    np.testing.assert_array_equal(read.view(_bits(reference_ND).dtype), _bits(reference_ND))


@settings(max_examples=25, deadline=None)
@given(
    writes=st.lists(st.tuples(st.integers(0, NUM_ROWS - 1), st.integers(1, 70)), max_size=4),
    rows=st.lists(st.integers(0, NUM_ROWS - 1), max_size=40),
    codec=st.sampled_from(CODECS),
)
def test_writes_then_reads_match_numpy(writes, rows, codec):
    backend = ZarrBackend(num_rows=NUM_ROWS, dim=DIM, codec=codec, cache_rows=8, **LAYOUT)
    reference_ND = np.zeros((NUM_ROWS, DIM), dtype=np.float32)
    for seed, (start, length) in enumerate(writes):
        block = _values("float32", seed, min(length, NUM_ROWS - start))
        backend.gather(torch.arange(NUM_ROWS))  # cached rows must not outlive the write,
        backend.prefetch(torch.arange(NUM_ROWS))  # nor rows a prefetch in flight caches
        backend.write(start, block)
        reference_ND[start : start + len(block)] = block.numpy()
    rows_N = torch.tensor(rows, dtype=torch.int64)
    np.testing.assert_array_equal(backend.gather(rows_N).numpy(), reference_ND[rows])
    np.testing.assert_array_equal(backend.prefetch(rows_N).wait().numpy(), reference_ND[rows])


@pytest.mark.parametrize("inline_rows", [0, 10_000])
def test_prefetch_in_the_background_or_at_once_gives_the_rows(tmp_path, monkeypatch, inline_rows):
    monkeypatch.setattr(zarr_store, "INLINE_PREFETCH_ROWS", inline_rows)
    backend = _store(tmp_path / "t")
    rows_N = torch.randint(0, NUM_ROWS, (300,), generator=torch.Generator().manual_seed(3))
    handle = backend.prefetch(rows_N)
    background = isinstance(handle, zarr_store.FutureRows)
    assert background == (inline_rows < len(rows_N))
    assert torch.equal(handle.wait(), backend.gather(rows_N))


def test_parallel_reads_match(tmp_path, monkeypatch):
    monkeypatch.setattr(zarr_reader, "PARALLEL_MIN_ROWS", 16)
    backend = _store(tmp_path / "t", num_threads=4)
    rows_N = torch.randint(0, NUM_ROWS, (5000,), generator=torch.Generator().manual_seed(2))
    assert torch.equal(backend.gather(rows_N), _values("float32")[rows_N])


def test_foreign_sparse_shards_read_as_zarr_does(tmp_path):
    backend = ZarrBackend(num_rows=NUM_ROWS, dim=DIM, path=str(tmp_path / "t"), **LAYOUT)
    stored = zarr.open_array(str(tmp_path / "t"), mode="r+")
    stored[37:39] = 7.0  # zarr-python writes only these chunks: the others stay absent
    reopened = ZarrBackend.open(backend.location)
    assert reopened._reader._shard(1).rows_RD is None  # not in row order: chunk by chunk
    np.testing.assert_array_equal(reopened.gather(torch.arange(NUM_ROWS)).numpy(), stored[:])


def test_fsspec_store_round_trips():
    location = f"memory://embedkit-{uuid.uuid4().hex}/table"
    backend = ZarrBackend(num_rows=NUM_ROWS, dim=DIM, path=location, codec="zstd", **LAYOUT)
    backend.write(0, _values("float32"))
    rows_N = torch.tensor([202, 0, 5, 5, 64, 31, 100, 101, 150, 2, 3, 199])  # read in threads
    reopened = ZarrBackend.open(location, expected={"num_rows": NUM_ROWS})
    assert torch.equal(reopened.gather(rows_N), _values("float32")[rows_N])
    stored = zarr.open_array(zarr.storage.FsspecStore.from_url(location), mode="r")
    np.testing.assert_array_equal(stored[:], _values("float32").numpy())


def test_existing_store_or_files_are_not_overwritten(tmp_path):
    backend = _store(tmp_path / "t")
    with pytest.raises(ValueError, match=r"t'? already holds an embedkit table"):
        ZarrBackend(num_rows=NUM_ROWS, dim=DIM, path=backend.location)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"other'? already holds other files"):
        ZarrBackend(num_rows=NUM_ROWS, dim=DIM, path=str(tmp_path / "other"))
    assert torch.equal(backend.gather(torch.arange(NUM_ROWS)), _values("float32"))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"shard_rows": 30}, "multiple of chunk_rows"),
        ({"codec": "lzma"}, "codec='lzma'"),
        ({"chunk_rows": 0}, "chunk_rows=0"),
        ({"cache_rows": -1}, "cache_rows=-1"),
        ({"dtype": "int8"}, "dtype='int8'"),
    ],
)
def test_bad_arguments_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        ZarrBackend(num_rows=NUM_ROWS, dim=DIM, **{"chunk_rows": 4, **options})


def test_temporary_store_is_removed_with_its_backend():
    backend = ZarrBackend(num_rows=NUM_ROWS, dim=DIM)
    location = backend.location
    assert os.path.isdir(location)
    del backend
    gc.collect()
    assert not os.path.exists(location)


def test_failed_write_leaves_rows_and_no_staged_files(tmp_path, monkeypatch):
    backend = _store(tmp_path / "t", "zstd")
    real_stage, staged = StoreFiles.stage, []

    def failing_stage(self, key, data):
        if len(staged) == 2:
            raise OSError("disk full (injected)")
        staged.append(key)
        return real_stage(self, key, data)

    monkeypatch.setattr(StoreFiles, "stage", failing_stage)
    with pytest.raises(OSError, match="injected"):
        backend.write(10, torch.ones(100, DIM))
    assert torch.equal(backend.gather(torch.arange(NUM_ROWS)), _values("float32"))
    reopened = ZarrBackend.open(backend.location)
    assert torch.equal(reopened.gather(torch.arange(NUM_ROWS)), _values("float32"))
    assert not [p for p in (tmp_path / "t").rglob("*") if ".tmp-" in p.name]


def test_commit_interrupted_midway_is_finished_on_open(tmp_path, monkeypatch):
    backend = _store(tmp_path / "t")
    real_rename, done = StoreFiles._rename, []

    def dying_rename(self, temp, key):
        if len(done) == 2:  # the journal and one shard are in place
            raise OSError("killed (injected)")
        done.append(key)
        real_rename(self, temp, key)

    monkeypatch.setattr(StoreFiles, "_rename", dying_rename)
    with pytest.raises(OSError, match="injected"):
        backend.write(0, torch.ones(NUM_ROWS, DIM))
    monkeypatch.undo()
    assert (tmp_path / "t" / JOURNAL_KEY).exists()
    reopened = ZarrBackend.open(backend.location)
    assert torch.equal(reopened.gather(torch.arange(NUM_ROWS)), torch.ones(NUM_ROWS, DIM))
    assert not (tmp_path / "t" / JOURNAL_KEY).exists()


def test_manifest_records_hash_and_producer_and_is_checked(tmp_path):
    backend = _store(tmp_path / "t", dtype="bfloat16")
    manifest = backend.seal(producer={"vocab_hash": "v1"})
    assert manifest.content_hash == hashlib.sha256(_bits(_values("bfloat16"))).hexdigest()
    location = backend.location
    ZarrBackend.open(location, expected={"content_hash": manifest.content_hash, "dim": DIM})
    with pytest.raises(ValueError, match=r"dim=8, expected 9.*producer.vocab_hash='v1', expected"):
        ZarrBackend.open(location, expected={"dim": 9, "producer": {"vocab_hash": "v2"}})
    backend.write(0, _values("bfloat16", seed=5, num_rows=2))
    assert ZarrBackend.open(location).manifest.content_hash == ""  # no longer these rows


def _edit_json(path: Path, **fields: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def _first_shard(path: Path) -> Path:
    return path / "c" / "0" / "0"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: _first_shard(p).write_bytes(_first_shard(p).read_bytes()[:-9]), "checksum"),
        (lambda p: _first_shard(p).write_bytes(b"\0" * 10), "shorter than its"),
        (lambda p: _first_shard(p).write_bytes(b""), "shorter than its"),
        (lambda p: _first_shard(p).write_bytes(b"\1" + _first_shard(p).read_bytes()[1:]), "decode"),
    ],
    ids=["truncated", "cut-to-10-bytes", "empty", "corrupt-chunk"],
)
def test_broken_shard_is_reported_with_its_path(tmp_path, damage, message):
    backend = _store(tmp_path / "t", "zstd")
    damage(tmp_path / "t")
    reopened = ZarrBackend.open(backend.location)
    with pytest.raises(ValueError, match=message) as caught:
        reopened.gather(torch.tensor([40, 1]))
    assert str(_first_shard(tmp_path / "t")) in str(caught.value)
    assert torch.equal(reopened.gather(torch.tensor([40])), _values("float32")[40:41])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / MANIFEST_NAME).unlink(), "missing embedkit-table.json"),
        (lambda p: (p / MANIFEST_NAME).write_text("{"), "not a valid embedkit table manifest"),
        (lambda p: (p / "zarr.json").unlink(), "zarr.json is missing"),
        (lambda p: (p / "zarr.json").write_text("[]"), "not the Zarr array"),
        (
            lambda p: _edit_json(p / "zarr.json", shape=[203, 9]),
            r"shape=\[203, 9\], but the manifest",
        ),
        (lambda p: _edit_json(p / MANIFEST_NAME, tier="pinned"), "tier='pinned', expected 'zarr'"),
    ],
    ids=["no-manifest", "bad-manifest", "no-zarr-json", "bad-zarr-json", "shape", "tier"],
)
def test_broken_store_is_refused_on_open(tmp_path, damage, message):
    _store(tmp_path / "t")
    damage(tmp_path / "t")
    with pytest.raises(ValueError, match=message) as caught:
        ZarrBackend.open(str(tmp_path / "t"))
    assert str(tmp_path / "t") in str(caught.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rows_land_on_cuda(tmp_path):
    backend = ZarrBackend.open(_store(tmp_path / "t", dtype="bfloat16").location, device="cuda")
    rows_N = torch.tensor([5, 200, 5, 0])
    expected_ND = _values("bfloat16")[rows_N]
    assert torch.equal(backend.gather(rows_N).cpu(), expected_ND)
    assert torch.equal(backend.prefetch(rows_N).wait().cpu(), expected_ND)
