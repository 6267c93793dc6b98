"""Random-row reads from a sharded Zarr v3 table, without zarr-python's per-chunk machinery.

Legend: N = requested rows, U = unique rows, D = row width, C = inner chunks of a shard,
K = inner chunks needed from one shard, R = rows of an inner chunk, S = cache slots.

A shard file (key ``c/<shard>/0``) ends with its index: C little-endian uint64 pairs
(offset, nbytes), one per inner chunk, then the crc32c of those 16*C bytes; an absent chunk has
offset = nbytes = 2**64 - 1 and reads as zeros, as does an absent shard. A read groups the rows
by shard, parses each shard's index once (kept for the ``MAX_OPEN_SHARDS`` most recent shards)
and fetches only the inner chunks it needs. A local uncompressed shard whose chunks lie in order
(as every shard ``ZarrBackend`` writes) is used as one memory-mapped [rows, D] array and rows are
fancy-indexed from it with no decode; other shards are read chunk by chunk (memory map slices
locally, one ``cat_ranges`` batch on fsspec) and decoded with numcodecs.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import google_crc32c
import numpy as np
from numcodecs import blosc, zstd

from embedkit.backends.zarr_format import StoreFiles, TableLayout

NO_CHUNK = 2**64 - 1
MAX_OPEN_SHARDS = 1024
PARALLEL_MIN_ROWS = 8192  # local uncompressed reads of fewer rows use the calling thread
PARALLEL_MIN_CHUNKS = 8  # ... and remote reads of fewer rows
DECOMPRESS = {"zstd": zstd.decompress, "blosc-lz4": blosc.decompress}  # (source, dest)


@dataclass
class Shard:
    """One opened shard: where its chunks lie, and its bytes (a memory map; ``None`` on fsspec)."""

    key: str
    starts_C: np.ndarray
    lengths_C: np.ndarray
    data: object
    rows_RD: np.ndarray | None  # the whole shard as rows, when local, uncompressed and in order


def parse_index(tail: bytes, file_size: int, layout: TableLayout, where: str) -> np.ndarray:
    """The [C, 2] (offset, nbytes) pairs of a shard; a ``ValueError`` naming ``where`` if broken."""
    if file_size < layout.index_bytes:
        raise ValueError(
            f"{where}: shard file of {file_size} bytes is shorter than its "
            f"{layout.index_bytes}-byte index (truncated)"
        )
    body, checksum = tail[-layout.index_bytes : -4], tail[-4:]
    if google_crc32c.value(bytes(body)) != int.from_bytes(checksum, "little"):
        raise ValueError(f"{where}: shard index checksum does not match (truncated or corrupt)")
    pairs_C2 = np.frombuffer(body, dtype="<u8").reshape(layout.chunks_per_shard, 2)
    present = pairs_C2[:, 0] != NO_CHUNK
    data_bytes = file_size - layout.index_bytes
    if np.any(pairs_C2[present, 0] + pairs_C2[present, 1] > data_bytes):
        raise ValueError(f"{where}: shard index points past the {data_bytes} bytes of chunk data")
    if layout.codec == "none" and np.any(pairs_C2[present, 1] != layout.chunk_bytes):
        raise ValueError(f"{where}: an uncompressed chunk is not {layout.chunk_bytes} bytes long")
    return pairs_C2


class RowCache:
    """Bounded cache of hot rows, direct-mapped: row r lives in slot r % S, evicting its holder."""

    def __init__(self, num_slots: int, dim: int, store_dtype: np.dtype) -> None:
        self.tags_S = np.full(num_slots, -1, dtype=np.int64)
        self.values_SD = np.empty((num_slots, dim), dtype=store_dtype)
        self.lock = threading.Lock()

    def lookup(self, rows_N: np.ndarray, out_ND: np.ndarray) -> np.ndarray:
        """Copy the cached rows into ``out_ND``; return the positions of the others."""
        slots_N = rows_N % len(self.tags_S)
        with self.lock:
            hit_N = self.tags_S[slots_N] == rows_N
            hits = np.flatnonzero(hit_N)
            out_ND[hits] = self.values_SD[slots_N[hits]]
        return np.flatnonzero(~hit_N)

    def insert(self, rows_U: np.ndarray, values_UD: np.ndarray) -> None:
        slots_U = rows_U % len(self.tags_S)
        _, first = np.unique(slots_U, return_index=True)
        with self.lock:
            self.tags_S[slots_U[first]] = rows_U[first]
            self.values_SD[slots_U[first]] = values_UD[first]

    def forget(self, start: int, stop: int) -> None:
        with self.lock:
            self.tags_S[(self.tags_S >= start) & (self.tags_S < stop)] = -1


class ShardReader:
    """Reads rows of one stored table in any order; see the module docstring."""

    def __init__(
        self, files: StoreFiles, layout: TableLayout, *, cache_rows: int, num_threads: int
    ) -> None:
        self.files, self.layout, self.num_threads = files, layout, num_threads
        self.decompress = DECOMPRESS.get(layout.codec)
        # Local uncompressed rows come straight from the page cache, which is their row cache.
        cached = cache_rows > 0 and (files.fs is not None or self.decompress is not None)
        # Threads help remote reads (waiting on I/O) and large copies from memory maps (numpy
        # releases the GIL); numcodecs decoders hold the GIL for much of a call, and measured
        # slower in threads, so local compressed reads stay in the calling thread.
        if files.fs is not None:
            self.parallel_min_rows = PARALLEL_MIN_CHUNKS
        elif self.decompress is None:
            self.parallel_min_rows = PARALLEL_MIN_ROWS
        else:
            self.parallel_min_rows = None
        num_slots = min(cache_rows, layout.num_rows)
        self.cache = RowCache(num_slots, layout.dim, layout.store_dtype) if cached else None
        self._shards: OrderedDict[int, Shard | None] = OrderedDict()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def read(self, rows_N: np.ndarray, out_ND: np.ndarray, *, cached: bool = True) -> None:
        """Fill ``out_ND`` with rows ``rows_N`` (int64, in range, any order, repeats allowed)."""
        if len(rows_N) == 0:
            return
        if self.cache is None or not cached:
            self._fill(rows_N, out_ND)
            return
        missed_M = self.cache.lookup(rows_N, out_ND)
        if len(missed_M) == 0:
            return
        rows_U, inverse_M = np.unique(rows_N[missed_M], return_inverse=True)
        fetched_UD = np.empty((len(rows_U), self.layout.dim), dtype=self.layout.store_dtype)
        self._fill(rows_U, fetched_UD)
        self.cache.insert(rows_U, fetched_UD)
        out_ND[missed_M] = fetched_UD[inverse_M]

    def forget(self, shards: range, start: int, stop: int) -> None:
        """Drop what is known of ``shards`` and rows ``start .. stop - 1`` (after a write)."""
        with self._lock:
            for shard in shards:
                self._shards.pop(shard, None)
        if self.cache is not None:
            self.cache.forget(start, stop)

    def _fill(self, rows_N: np.ndarray, out_ND: np.ndarray) -> None:
        shards_N = rows_N // self.layout.shard_rows
        order_N = np.argsort(shards_N, kind="stable")
        sorted_N = shards_N[order_N]
        cuts = np.flatnonzero(sorted_N[1:] != sorted_N[:-1]) + 1
        bounds = [0, *cuts.tolist(), len(rows_N)]
        tasks = [(int(sorted_N[a]), order_N[a:b]) for a, b in itertools.pairwise(bounds)]
        min_rows = self.parallel_min_rows
        if self.num_threads == 1 or min_rows is None or len(rows_N) < min_rows:
            for shard, positions in tasks:
                self._fill_shard(shard, positions, rows_N, out_ND)
            return
        piece = max(min_rows // 4, len(rows_N) // (4 * self.num_threads))
        pieces = [(s, p[i : i + piece]) for s, p in tasks for i in range(0, len(p), piece)]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="embedkit-zarr")
        jobs = [self._pool.submit(self._fill_shard, s, p, rows_N, out_ND) for s, p in pieces]
        for job in jobs:
            job.result()

    def _fill_shard(
        self, shard_id: int, positions: np.ndarray, rows_N: np.ndarray, out_ND: np.ndarray
    ) -> None:
        local = rows_N[positions] - shard_id * self.layout.shard_rows
        shard = self._shard(shard_id)
        if shard is None:
            out_ND[positions] = 0
        elif shard.rows_RD is not None:
            out_ND[positions] = shard.rows_RD[local]
        else:
            chunk_of = local // self.layout.chunk_rows
            needed_K = np.unique(chunk_of)
            blocks_KRD = self._chunks(shard, needed_K)
            out_ND[positions] = blocks_KRD[
                np.searchsorted(needed_K, chunk_of), local % self.layout.chunk_rows
            ]

    def _chunks(self, shard: Shard, needed_K: np.ndarray) -> np.ndarray:
        layout = self.layout
        starts_K, lengths_K = shard.starts_C[needed_K], shard.lengths_C[needed_K]
        present = np.flatnonzero(starts_K != NO_CHUNK)
        shape = (len(needed_K), layout.chunk_rows, layout.dim)
        blocks_KRD = np.zeros(shape, layout.store_dtype)  # absent chunks read as zeros
        starts = starts_K[present].tolist()
        ends = (starts_K[present] + lengths_K[present]).tolist()
        if shard.data is None:
            raws = self.files.read_ranges(shard.key, starts, ends)
        else:
            view = memoryview(shard.data)
            raws = [view[s:e] for s, e in zip(starts, ends, strict=True)]
        for k, raw in zip(present.tolist(), raws, strict=True):
            try:
                if self.decompress is None:
                    blocks_KRD[k] = np.frombuffer(raw, layout.store_dtype).reshape(shape[1:])
                else:
                    self.decompress(raw, blocks_KRD[k])
            except (ValueError, RuntimeError) as err:
                where = self.files.path(shard.key)
                raise ValueError(
                    f"{where}: inner chunk {needed_K[k]} does not decode ({err})"
                ) from err
        return blocks_KRD

    def _shard(self, shard_id: int) -> Shard | None:
        with self._lock:
            if shard_id in self._shards:
                self._shards.move_to_end(shard_id)
                return self._shards[shard_id]
        shard = self._open(shard_id)
        with self._lock:
            self._shards[shard_id] = shard
            if len(self._shards) > MAX_OPEN_SHARDS:
                self._shards.popitem(last=False)
        return shard

    def _open(self, shard_id: int) -> Shard | None:
        layout, key = self.layout, f"c/{shard_id}/0"
        if self.files.fs is None:
            data = self.files.map(key)
            if data is None:
                return None
            tail, size = data[-layout.index_bytes :], len(data)
        else:
            found = self.files.read_tail(key, layout.index_bytes)
            if found is None:
                return None
            data, (tail, size) = None, found
        pairs_C2 = parse_index(tail, size, layout, self.files.path(key))
        starts_C, lengths_C = pairs_C2[:, 0], pairs_C2[:, 1]
        rows_RD = None
        num_rows = layout.rows_in_shard(shard_id)
        num_chunks = -(-num_rows // layout.chunk_rows)
        in_order = np.arange(num_chunks, dtype=np.uint64) * np.uint64(layout.chunk_bytes)
        if (
            data is not None
            and self.decompress is None
            and np.array_equal(starts_C[:num_chunks], in_order)
        ):
            count = num_chunks * layout.chunk_rows * layout.dim
            rows_RD = np.frombuffer(data, layout.store_dtype, count=count).reshape(-1, layout.dim)
        return Shard(key, starts_C, lengths_C, data, rows_RD)
