"""The stored form of a ``ZarrBackend`` table: its Zarr v3 layout and its files.

Layout: one array at the store root, shards of ``shard_rows`` x D (files ``c/<shard>/0``) made
of inner chunks of ``chunk_rows`` x D, codec none, zstd or blosc-lz4; bfloat16 rows are kept as
their 16-bit patterns (zarr dtype uint16), the logical dtype being recorded in the manifest and
in the array attribute ``embedkit_dtype``. zarr-python encodes every shard (``zarr_encoder``).

Files are named by their key relative to the store root (``zarr.json``, ``c/3/0``). Local stores
are read through memory maps (no system call per row); fsspec stores through ``cat_file`` and
``cat_ranges`` byte ranges.

Atomic update: ``commit`` takes files already written under temporary names beside their
targets (``stage``), writes a journal listing the renames, renames every file into place, then
removes the journal. A failure before the journal exists leaves the old files untouched (the
staged ones are discarded); a process that dies during the renames leaves the journal, and the
next ``recover`` (run by every open and every write) finishes them. Each rename is atomic, so a
reader never sees a half-written file; renames are not fsynced (atomic against process failure,
not power loss).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec
from zarr.storage import MemoryStore

from embedkit.backends.manifest import TableManifest

JOURNAL_KEY = ".embedkit-commit.json"
CODECS = ("none", "zstd", "blosc-lz4")
STORE_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "uint16"}
DTYPE_ATTRIBUTE = "embedkit_dtype"


def is_local(location: str) -> bool:
    """Whether ``location`` is a local path (no URL scheme, or ``file://``)."""
    return "://" not in location or location.startswith("file://")


class StoreFiles:
    """Byte access to the files under one store root, local or fsspec."""

    def __init__(self, location: str) -> None:
        self.location = location
        if is_local(location):
            self.fs = None
            self.root = os.path.abspath(location.removeprefix("file://"))
        else:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(location)

    def path(self, key: str) -> str:
        """Full path of ``key`` (for messages and for fsspec calls)."""
        return f"{self.root.rstrip('/')}/{key}"

    def is_empty(self) -> bool:
        """Whether the root does not exist or holds nothing."""
        if self.fs is None:
            return not os.path.exists(self.root) or not os.listdir(self.root)
        return not self.fs.exists(self.root) or not self.fs.ls(self.root)

    def exists(self, key: str) -> bool:
        if self.fs is None:
            return os.path.exists(self.path(key))
        return self.fs.exists(self.path(key))

    def read(self, key: str) -> bytes | None:
        """Whole content of ``key``; ``None`` when it does not exist."""
        try:
            if self.fs is None:
                return Path(self.path(key)).read_bytes()
            return self.fs.cat_file(self.path(key))
        except FileNotFoundError:
            return None

    def map(self, key: str) -> mmap.mmap | bytes | None:
        """A read-only memory map of local file ``key``: ``b""`` when empty, ``None`` if missing."""
        assert self.fs is None, "memory maps are for local stores"
        try:
            fd = os.open(self.path(key), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            if os.fstat(fd).st_size == 0:
                return b""
            mapped = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        mapped.madvise(mmap.MADV_RANDOM)
        return mapped

    def read_tail(self, key: str, num_bytes: int) -> tuple[bytes, int] | None:
        """The last ``num_bytes`` of fsspec file ``key`` and its size; ``None`` when missing."""
        try:
            size = self.fs.size(self.path(key))
        except FileNotFoundError:
            return None
        return self.fs.cat_file(self.path(key), max(0, size - num_bytes), size), size

    def read_ranges(self, key: str, starts: list[int], ends: list[int]) -> list[bytes]:
        """Byte ranges ``[start, end)`` of fsspec file ``key``, fetched in one batch."""
        paths = [self.path(key)] * len(starts)
        parts = self.fs.cat_ranges(paths, starts, ends, on_error="raise")
        return [bytes(part) for part in parts]

    def makedirs(self) -> None:
        if self.fs is None:
            os.makedirs(self.root, exist_ok=True)
        else:
            self.fs.makedirs(self.root, exist_ok=True)

    def stage(self, key: str, data: bytes) -> str:
        """Write ``data`` under a temporary name beside ``key``; return that name."""
        head, _, name = key.rpartition("/")
        temp = (
            f"{head}/.{name}.tmp-{uuid.uuid4().hex}" if head else f".{name}.tmp-{uuid.uuid4().hex}"
        )
        if self.fs is None:
            os.makedirs(os.path.dirname(self.path(temp)), exist_ok=True)
            Path(self.path(temp)).write_bytes(data)
        else:
            self.fs.pipe_file(self.path(temp), data)
        return temp

    def discard(self, temps: list[str]) -> None:
        """Remove staged files that will not be committed."""
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                self._remove(temp)

    def commit(self, renames: dict[str, str]) -> None:
        """Move staged files (temporary name -> key) into place; see the module docstring."""
        journal = self.stage(JOURNAL_KEY, json.dumps(renames).encode())
        self._rename(journal, JOURNAL_KEY)
        self.recover()

    def recover(self) -> None:
        """Finish the renames of an interrupted ``commit``, if its journal is there."""
        text = self.read(JOURNAL_KEY)
        if text is None:
            return
        for temp, key in json.loads(text).items():
            if self.exists(temp):
                self._rename(temp, key)
        self._remove(JOURNAL_KEY)

    def put(self, key: str, data: bytes) -> None:
        """Replace one file atomically."""
        self._rename(self.stage(key, data), key)

    def _rename(self, temp: str, key: str) -> None:
        if self.fs is None:
            os.replace(self.path(temp), self.path(key))
        else:
            self.fs.mv(self.path(temp), self.path(key))

    def _remove(self, key: str) -> None:
        if self.fs is None:
            os.remove(self.path(key))
        else:
            self.fs.rm_file(self.path(key))


@dataclass(frozen=True)
class TableLayout:
    """Shape and encoding of a stored table, as its ``zarr.json`` declares them."""

    num_rows: int
    dim: int
    store_dtype: np.dtype
    chunk_rows: int
    shard_rows: int
    codec: str

    @property
    def chunks_per_shard(self) -> int:
        return self.shard_rows // self.chunk_rows

    @property
    def chunk_bytes(self) -> int:
        return self.chunk_rows * self.dim * self.store_dtype.itemsize

    @property
    def index_bytes(self) -> int:
        return 16 * self.chunks_per_shard + 4

    def rows_in_shard(self, shard: int) -> int:
        return min(self.shard_rows, self.num_rows - shard * self.shard_rows)


def zarr_encoder(layout: TableLayout, dtype: str) -> tuple[zarr.Array, dict]:
    """An in-memory zarr array shaped like the table, and the dict its encoded files land in."""
    compressors = {
        "none": None,
        "zstd": ZstdCodec(level=3),
        "blosc-lz4": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
    }[layout.codec]
    encoded: dict = {}
    array = zarr.create_array(
        store=MemoryStore(encoded),
        shape=(layout.num_rows, layout.dim),
        chunks=(layout.chunk_rows, layout.dim),
        shards=(layout.shard_rows, layout.dim),
        dtype=layout.store_dtype,
        compressors=compressors,
        fill_value=0,
        attributes={DTYPE_ATTRIBUTE: dtype},
        config={"write_empty_chunks": True},  # every chunk stored: shards lie in row order
    )
    return array, encoded


def read_layout(files: StoreFiles, manifest: TableManifest) -> TableLayout:
    """The layout that ``zarr.json`` declares, checked against the manifest."""
    where = files.path("zarr.json")
    text = files.read("zarr.json")
    if text is None:
        raise ValueError(f"{where} is missing: the store has a table manifest but no Zarr array")
    try:
        meta = json.loads(text)
        shard_rows = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
        (sharding,) = meta["codecs"]
        inner = sharding["configuration"]
        chunk_rows = inner["chunk_shape"][0]
        names = "+".join(c["name"] for c in inner["codecs"])
        if names == "bytes+blosc":
            names += "-" + inner["codecs"][1]["configuration"]["cname"]
        found = {
            "shape": meta["shape"],
            "data_type": meta["data_type"],
            "codec": {"bytes": "none", "bytes+zstd": "zstd", "bytes+blosc-lz4": "blosc-lz4"}.get(
                names, names
            ),
            f"attributes.{DTYPE_ATTRIBUTE}": meta.get("attributes", {}).get(DTYPE_ATTRIBUTE),
            "sharding": (sharding["name"], inner["index_location"], inner["index_codecs"]),
        }
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise ValueError(f"{where}: not the Zarr array of an embedkit table ({err!r})") from err
    little = {"name": "bytes", "configuration": {"endian": "little"}}
    want = {
        "shape": [manifest.num_rows, manifest.dim],
        "data_type": STORE_DTYPES[manifest.dtype],
        "codec": manifest.codec,
        f"attributes.{DTYPE_ATTRIBUTE}": manifest.dtype,
        "sharding": ("sharding_indexed", "end", [little, {"name": "crc32c"}]),
    }
    for name, value in want.items():
        if found[name] != value:
            raise ValueError(f"{where}: {name}={found[name]!r}, but the manifest says {value!r}")
    store_dtype = np.dtype(STORE_DTYPES[manifest.dtype])
    return TableLayout(
        manifest.num_rows, manifest.dim, store_dtype, chunk_rows, shard_rows, manifest.codec
    )
