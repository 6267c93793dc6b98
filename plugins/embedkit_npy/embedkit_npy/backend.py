"""``NpyBackend``: a frozen table in a memory-mapped ``.npy`` file, read with numpy indexing.

The store is a directory: ``table.npy`` (a plain ``[rows, dim]`` array that
``np.load(path, mmap_mode="r")`` reads; bfloat16 is stored as its 16-bit pattern, ``uint16``)
and the embedkit table manifest (``embedkit-table.json``: shape, logical dtype, tier
``"NpyBackend"``). The operating system's page cache holds the hot rows.

Legend: N = number of requested rows, D = row width.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from embedkit.backends.manifest import TableManifest, read_manifest, write_manifest
from embedkit.backends.validation import check_block, check_rows
from embedkit.dtypes import DTypeName, dtype_from_name
from embedkit.interfaces import EmbeddingBackend, RowsHandle

TABLE_FILE = "table.npy"
TIER = "NpyBackend"  # the registry short name, so table tooling can find the class
STORE_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class FutureRows(RowsHandle):
    """Rows being read by the backend's background thread."""

    def __init__(self, future: Future) -> None:
        self._future = future

    def wait(self) -> torch.Tensor:
        return self._future.result()


class NpyBackend(EmbeddingBackend):
    """A frozen table in a memory-mapped ``.npy`` file; rows are read with numpy indexing."""

    def __init__(
        self,
        *,
        num_rows: int,
        dim: int,
        dtype: DTypeName = "float32",
        path: str | None = None,
        device: str = "cpu",
    ) -> None:
        """Create a zero-filled table; open an existing one with ``NpyBackend.open``.

        Args:
            num_rows: Number of rows of the table.
            dim: Width of a row.
            dtype: Element type of the table (bfloat16 is stored as its 16-bit pattern).
            path: Directory to create the table in, new or empty. None: a fresh temporary
                directory, removed with the backend.
            device: Where gathered rows land ("cpu", "cuda", "cuda:1").
        """
        if num_rows <= 0 or dim <= 0:
            raise ValueError(f"num_rows={num_rows} and dim={dim} must both be positive")
        dtype_from_name(dtype)
        target_device = _parse_device(device)
        directory = Path(tempfile.mkdtemp(prefix="embedkit-npy-") if path is None else path)
        if path is None:  # also removed when a later step of this constructor fails
            weakref.finalize(self, shutil.rmtree, directory, ignore_errors=True)
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise ValueError(
                f"path={str(directory)!r} exists and is not an empty directory; not overwriting "
                "it (open a table with NpyBackend.open, or give a new or empty path)"
            )
        directory.mkdir(parents=True, exist_ok=True)
        table = np.lib.format.open_memmap(
            directory / TABLE_FILE, mode="w+", dtype=STORE_DTYPES[dtype], shape=(num_rows, dim)
        )
        table.flush()
        manifest = TableManifest(num_rows=num_rows, dim=dim, dtype=dtype, tier=TIER)
        write_manifest(directory, manifest)  # last: a directory without one is not a table
        self._attach(directory, manifest, table, target_device)

    @classmethod
    def open(
        cls,
        location: str,
        *,
        expected: Mapping[str, object] | None = None,
        device: str = "cpu",
    ) -> NpyBackend:
        """Map the table stored in directory ``location`` (read-only until the first ``write``).

        ``expected`` holds manifest fields the caller relies on (``num_rows``, ``dim``,
        ``dtype``, ``content_hash``, ``producer={"vocab_hash": ...}``); a ``ValueError`` names
        each one that differs. ``device`` is the constructor's.
        """
        target_device = _parse_device(device)
        manifest = read_manifest(location)
        manifest.check_matches(source=location, tier=TIER, codec="none")
        dtype_from_name(manifest.dtype, field=f"{location} manifest dtype")
        if expected:
            manifest.check_matches(source=location, **expected)
        directory = Path(location)
        table = np.load(_checked(directory / TABLE_FILE, manifest, location), mmap_mode="r")
        backend = cls.__new__(cls)
        backend._attach(directory, manifest, table, target_device)
        return backend

    def _attach(self, directory: Path, manifest: TableManifest, table, device: torch.device):
        self._directory, self._manifest, self._table = directory, manifest, table
        self._dtype = dtype_from_name(manifest.dtype)
        self._device = device
        self._executor: ThreadPoolExecutor | None = None
        self._last_future: Future | None = None

    @property
    def num_rows(self) -> int:
        return self._manifest.num_rows

    @property
    def dim(self) -> int:
        return self._manifest.dim

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def location(self) -> str:
        """The directory holding the table (what ``open`` takes)."""
        return str(self._directory)

    @property
    def manifest(self) -> TableManifest:
        """The manifest of the stored table."""
        return self._manifest

    def gather(self, rows_N: torch.Tensor) -> torch.Tensor:
        check_rows(rows_N, self.num_rows)
        return self._read(rows_N.cpu().numpy())

    def prefetch(self, rows_N: torch.Tensor) -> RowsHandle:
        """Start reading ``rows_N`` in a background thread; ``wait()`` gives them on ``device``.

        ``rows_N`` is copied before this returns, so the caller may reuse it at once.
        """
        check_rows(rows_N, self.num_rows)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="embedkit-npy")
        self._last_future = self._executor.submit(self._read, rows_N.cpu().numpy().copy())
        return FutureRows(self._last_future)

    def _read(self, rows_N: np.ndarray) -> torch.Tensor:
        rows_ND = np.asarray(self._table[rows_N])  # fancy indexing copies out of the map
        if self._dtype == torch.bfloat16:
            rows_ND = rows_ND.view(np.int16)  # torch views int16, not uint16, as bfloat16
        return torch.from_numpy(rows_ND).view(self._dtype).to(self._device)

    def write(self, start: int, values_ND: torch.Tensor) -> None:
        """Overwrite rows ``start ..`` and flush them to the file.

        The block is checked before any row changes, so a refused write leaves the table as it
        was; a crash during the copy may leave part of the block written. Waits for prefetches
        in flight, which read the rows this write replaces.
        """
        check_block(start, values_ND, self.num_rows, self.dim, self.dtype)
        if self._last_future is not None:
            self._last_future.exception()  # the single worker runs in order: all earlier done
            self._last_future = None
        if not self._table.flags.writeable:  # opened read-only: map it for writing now
            self._table = np.load(self._directory / TABLE_FILE, mmap_mode="r+")
        values = values_ND.detach().cpu()
        if values.dtype == torch.bfloat16:
            values = values.view(torch.int16)
        stop = start + values.shape[0]
        self._table[start:stop] = values.numpy().view(self._table.dtype)
        self._table.flush()


def _parse_device(device: str) -> torch.device:
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device={device!r} is not a device; valid: cpu, cuda[:N]") from err


def _checked(path: Path, manifest: TableManifest, location: str) -> Path:
    """``path`` when its ``.npy`` header and size match ``manifest``; a ``ValueError`` else."""
    if not path.is_file():
        raise ValueError(f"{location} has a table manifest but no {TABLE_FILE}")
    want_shape = (manifest.num_rows, manifest.dim)
    want_dtype = np.dtype(STORE_DTYPES[manifest.dtype])
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version not in HEADER_READERS:
                raise ValueError(
                    f".npy format version {version} is not one of {list(HEADER_READERS)}"
                )
            shape, fortran_order, dtype = HEADER_READERS[version](handle)
            header_bytes = handle.tell()
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable .npy file ({err})") from err
    if (shape, fortran_order, dtype) != (want_shape, False, want_dtype):
        raise ValueError(
            f"{path} holds a {'Fortran-order ' if fortran_order else ''}{shape} {dtype} array; "
            f"the manifest at {location} describes {want_shape} {manifest.dtype} "
            f"(stored as {want_dtype}) rows"
        )
    expected = header_bytes + manifest.num_rows * manifest.dim * want_dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise ValueError(
            f"{path} holds {actual} bytes, expected {expected} ({manifest.num_rows} rows x "
            f"{manifest.dim} {manifest.dtype} values after the header): truncated, or not "
            "this table"
        )
    return path
