"""``ZarrBackend``: a frozen table in a sharded Zarr v3 array, on a local disk or any fsspec store.

The store stays a plain Zarr array (``zarr_format``): zarr-python and tensorstore read it.
``gather`` bypasses zarr-python and reads only the byte ranges of the inner chunks it needs
(``zarr_reader``). ``write`` re-encodes each shard it touches whole with zarr-python, stages the
new shards beside the old ones and commits them together: a failure leaves the previous rows in
place. Write in blocks of whole shards (multiples of ``shard_rows`` rows) for speed.

Legend: N = requested rows, D = row width.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import tempfile
import weakref
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Literal

import numpy as np
import torch

from embedkit.backends.manifest import MANIFEST_NAME, TableManifest, read_manifest, write_manifest
from embedkit.backends.validation import check_block, check_rows, resolve_device
from embedkit.backends.zarr_format import (
    CODECS,
    STORE_DTYPES,
    StoreFiles,
    TableLayout,
    read_layout,
    zarr_encoder,
)
from embedkit.backends.zarr_reader import ShardReader
from embedkit.dtypes import DTypeName, dtype_from_name
from embedkit.interfaces import EmbeddingBackend, ReadyRows, RowsHandle

Codec = Literal["none", "zstd", "blosc-lz4"]
TIER = "zarr"
# A prefetch of at most this many rows of a local store reads them at once on the calling
# thread: handing them to the prefetch thread costs more (about 0.25 ms, and the thread then
# waits for the GIL while the caller launches kernels) than reading them (0.03 ms for a row).
INLINE_PREFETCH_ROWS = 256


class FutureRows(RowsHandle):
    """Rows being read by a background thread.

    ``wait`` blocks the host until the read (CPU work) is done, then queues the copy to the
    device on the current stream without blocking.
    """

    def __init__(self, future: Future, to_device) -> None:
        self._future, self._to_device = future, to_device

    def wait(self) -> torch.Tensor:
        return self._to_device(self._future.result())


class ZarrBackend(EmbeddingBackend):
    """A frozen table in a sharded Zarr v3 store, read with parallel byte-range I/O."""

    def __init__(
        self,
        *,
        num_rows: int,
        dim: int,
        dtype: DTypeName = "float32",
        path: str | None = None,
        codec: Codec = "none",
        chunk_rows: int = 16,
        shard_rows: int = 16384,
        cache_rows: int = 65536,
        num_threads: int = 8,
        device: str = "cpu",
    ) -> None:
        """Create an empty table (all rows zero); open an existing one with ``ZarrBackend.open``.

        Args:
            num_rows: Number of rows of the table.
            dim: Width of a row.
            dtype: Element type of the table (bfloat16 is stored as its 16-bit pattern).
            path: Where to create the store: a local directory or an fsspec URL, new or empty.
                None: a fresh temporary directory, removed with the backend.
            codec: Compression of each inner chunk: "none" (fastest reads), "zstd" or
                "blosc-lz4".
            chunk_rows: Rows per inner chunk, the unit read from storage.
            shard_rows: Rows per shard (one file or object); a multiple of ``chunk_rows``.
            cache_rows: Capacity in rows of the cache of hot rows for compressed or remote
                stores (local uncompressed rows are cached by the OS); 0 disables it.
            num_threads: Threads reading in parallel: remote chunks, and large batches of
                local uncompressed rows (local decodes use the calling thread).
            device: Where gathered rows land: "cpu", "auto" (the current CUDA device when CUDA
                is available, else the CPU), "cuda" or "cuda:<index>"; on CUDA they are copied
                from a pinned staging buffer without blocking the host.
        """
        counts = {"num_rows": num_rows, "dim": dim, "chunk_rows": chunk_rows}
        for name, value in {**counts, "shard_rows": shard_rows, "num_threads": num_threads}.items():
            if value <= 0:
                raise ValueError(f"{name}={value} must be positive")
        if cache_rows < 0:
            raise ValueError(f"cache_rows={cache_rows} must be 0 (no cache) or positive")
        if shard_rows % chunk_rows:
            raise ValueError(
                f"shard_rows={shard_rows} must be a multiple of chunk_rows={chunk_rows}"
            )
        if codec not in CODECS:
            raise ValueError(f"codec={codec!r} is not supported; valid: {', '.join(CODECS)}")
        dtype_from_name(dtype)
        location = tempfile.mkdtemp(prefix="embedkit-zarr-") if path is None else path
        files = StoreFiles(location)
        if not files.is_empty():
            held = "an embedkit table" if files.exists(MANIFEST_NAME) else "other files"
            raise ValueError(
                f"path={location!r} already holds {held}; not overwriting it (open a table "
                "with ZarrBackend.open, or give a new or empty path)"
            )
        layout = TableLayout(
            num_rows, dim, np.dtype(STORE_DTYPES[dtype]), chunk_rows, shard_rows, codec
        )
        files.makedirs()
        files.put("zarr.json", zarr_encoder(layout, dtype)[1]["zarr.json"].to_bytes())
        manifest = TableManifest(num_rows=num_rows, dim=dim, dtype=dtype, tier=TIER, codec=codec)
        write_manifest(location, manifest)  # last: a store without a manifest is not a table
        self._attach(files, manifest, layout, cache_rows, num_threads, device)
        if path is None:
            weakref.finalize(self, shutil.rmtree, location, ignore_errors=True)

    @classmethod
    def open(
        cls,
        location: str,
        *,
        expected: Mapping[str, object] | None = None,
        cache_rows: int = 65536,
        num_threads: int = 8,
        device: str = "cpu",
    ) -> ZarrBackend:
        """Open the table stored at ``location`` (a local directory or an fsspec URL).

        ``expected`` holds manifest fields the caller relies on (``num_rows``, ``dim``,
        ``dtype``, ``content_hash``, ``producer={"vocab_hash": ...}``); a ``ValueError`` names
        each one that differs. The other arguments are those of the constructor.
        """
        files = StoreFiles(location)
        files.recover()
        manifest = read_manifest(location)
        manifest.check_matches(source=location, tier=TIER)
        dtype_from_name(manifest.dtype, field=f"{location} manifest dtype")
        if expected:
            manifest.check_matches(source=location, **expected)
        layout = read_layout(files, manifest)
        backend = cls.__new__(cls)
        backend._attach(files, manifest, layout, cache_rows, num_threads, device)
        return backend

    def _attach(self, files, manifest, layout, cache_rows, num_threads, device) -> None:
        self._files, self._manifest, self._layout = files, manifest, layout
        self._dtype = dtype_from_name(manifest.dtype)
        self._device = resolve_device(device)
        self._reader = ShardReader(files, layout, cache_rows=cache_rows, num_threads=num_threads)
        self._prefetcher: ThreadPoolExecutor | None = None
        self._in_flight: list[Future] = []

    @property
    def num_rows(self) -> int:
        return self._layout.num_rows

    @property
    def dim(self) -> int:
        return self._layout.dim

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def location(self) -> str:
        """Where the table is stored (what ``open`` takes)."""
        return self._files.location

    @property
    def manifest(self) -> TableManifest:
        """The manifest of the stored table."""
        return self._manifest

    def gather(self, rows_N: torch.Tensor) -> torch.Tensor:
        check_rows(rows_N, self.num_rows)
        return self._to_device(self._read(rows_N.cpu().numpy().astype(np.int64)))

    def prefetch(self, rows_N: torch.Tensor) -> RowsHandle:
        """Start reading ``rows_N`` in a background thread (a few rows of a local store: read
        at once); ``wait()`` gives them on ``device``, copied without blocking the host."""
        check_rows(rows_N, self.num_rows)
        host_rows_N = rows_N.cpu().numpy().astype(np.int64)
        if len(host_rows_N) <= INLINE_PREFETCH_ROWS and self._files.fs is None:
            return ReadyRows(self._to_device(self._read(host_rows_N)))
        if self._prefetcher is None:  # its own threads: a read fans out into the reader's pool
            self._prefetcher = ThreadPoolExecutor(2, thread_name_prefix="embedkit-zarr-prefetch")
        future = self._prefetcher.submit(self._read, host_rows_N)
        self._in_flight = [f for f in self._in_flight if not f.done()] + [future]
        return FutureRows(future, self._to_device)

    def _read(self, rows_N: np.ndarray) -> torch.Tensor:
        shape, store_dtype = (len(rows_N), self.dim), self._layout.store_dtype
        if self._device.type == "cuda":  # pinned staging buffer (the allocator reuses blocks)
            carrier = torch.int16 if self._dtype == torch.bfloat16 else self._dtype
            host_ND = torch.empty(shape, dtype=carrier, pin_memory=True)
            self._reader.read(rows_N, host_ND.numpy().view(store_dtype))
        else:  # numpy backs large buffers with huge pages: half the page faults' cost
            out_ND = np.empty(shape, dtype=store_dtype)
            self._reader.read(rows_N, out_ND)
            host_ND = torch.from_numpy(out_ND)
        return host_ND.view(self._dtype)

    def _to_device(self, host_ND: torch.Tensor) -> torch.Tensor:
        if self._device.type == "cpu":
            return host_ND
        return host_ND.to(self._device, non_blocking=True)  # the pinned block outlives the copy

    def write(self, start: int, values_ND: torch.Tensor) -> None:
        """Overwrite rows ``start ..`` atomically (every shard touched is rewritten whole).

        Waits for prefetches in flight, which could otherwise cache rows this write replaces.
        """
        check_block(start, values_ND, self.num_rows, self.dim, self.dtype)
        wait(self._in_flight)
        self._in_flight = []
        stop, span = start + values_ND.shape[0], self._layout.shard_rows
        if stop == start:
            return
        values = values_ND.detach().cpu().contiguous()
        if values.dtype == torch.bfloat16:
            values = values.view(torch.int16)
        values = values.numpy().view(self._layout.store_dtype)
        shards = range(start // span, (stop - 1) // span + 1)
        self._files.recover()
        staged: dict[str, str] = {}
        try:
            array, chunks = zarr_encoder(self._layout, self._manifest.dtype)
            for shard in shards:
                low, high = shard * span, min((shard + 1) * span, self.num_rows)
                if start <= low and high <= stop:
                    block = values[low - start : high - start]
                else:
                    block = np.empty((high - low, self.dim), dtype=self._layout.store_dtype)
                    self._reader.read(np.arange(low, high), block, cached=False)
                    a, b = max(low, start), min(high, stop)
                    block[a - low : b - low] = values[a - start : b - start]
                array[low:high] = block
                key = f"c/{shard}/0"
                staged[self._files.stage(key, chunks.pop(key).to_bytes())] = key
            manifest = dataclasses.replace(self._manifest, content_hash="")
            if manifest != self._manifest:  # the recorded hash no longer describes the rows
                staged[self._files.stage(MANIFEST_NAME, manifest.to_json().encode())] = (
                    MANIFEST_NAME
                )
        except BaseException:
            self._files.discard(list(staged))
            raise
        try:
            self._files.commit(staged)
            self._manifest = manifest
        finally:
            self._reader.forget(shards, start, stop)

    def seal(
        self, *, content_hash: str | None = None, producer: dict[str, str] | None = None
    ) -> TableManifest:
        """Record what the table holds in its manifest; return the new manifest.

        ``content_hash`` defaults to the SHA-256 of the rows' bytes (row-major, as every tier
        computes it); ``producer`` adds what made the table (e.g. ``{"vocab_hash": ...}``).
        A later ``write`` clears the hash.
        """
        if content_hash is None:
            digest, span = hashlib.sha256(), self._layout.shard_rows
            for low in range(0, self.num_rows, span):
                rows = np.arange(low, min(low + span, self.num_rows))
                block = np.empty((len(rows), self.dim), dtype=self._layout.store_dtype)
                self._reader.read(rows, block, cached=False)
                digest.update(block)
            content_hash = digest.hexdigest()
        producer = {**self._manifest.producer, **(producer or {})}
        manifest = dataclasses.replace(self._manifest, content_hash=content_hash, producer=producer)
        self._files.put(MANIFEST_NAME, manifest.to_json().encode())
        self._manifest = manifest
        return manifest
