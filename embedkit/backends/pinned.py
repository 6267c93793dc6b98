"""``PinnedCPUBackend``: a frozen table in page-locked host memory, read by the GPU directly.

On CUDA, ``gather`` is a Triton kernel reading rows from host memory through UVA
(``embedkit.backends.uva_gather``) with a grid of ``PROGRAMS_PER_SM`` programs per SM (it may
overlap compute: L³ gathers a step's pool on its planning stream), and ``prefetch`` runs it on
a side stream, except for a few rows given on the host (a decoding step's SCONE rows), copied
on the caller's stream: up to ``DIRECT_COPY_ROWS`` rows straight from the pinned table, one
asynchronous copy each; up to ``SMALL_PREFETCH_BYTES`` gathered by the CPU into pinned memory
first, for one copy. Both cost the host less than a kernel on a side stream. Without CUDA,
``index_select`` (``prefetch`` in a background thread).
Rows given on the host (the normal case) are validated (``IndexError``); rows already on the
GPU are not, as that needs a host sync: the kernel yields a zero row for an out-of-range
index and never reads outside the table.
Stored as a directory: ``table.bin`` (raw row-major bytes) and the table manifest, written
and read by ``embedkit.backends.raw_table``.

Legend: N = number of requested rows, R = rows of the table, D = row width.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from embedkit.backends.manifest import TableManifest
from embedkit.backends.raw_table import TABLE_FILE as TABLE_FILE  # re-exported: the stored form
from embedkit.backends.raw_table import read_raw_table, save_raw_table
from embedkit.backends.validation import check_block, check_rows, resolve_device
from embedkit.dtypes import DTypeName, dtype_from_name
from embedkit.interfaces import EmbeddingBackend, ReadyRows, RowsHandle, StreamRows

TIER = "pinned"
# Host rows up to this many are prefetched by one asynchronous copy each, straight from the
# pinned table: no staging buffer to allocate and no CPU gather (batch-1 decoding).
DIRECT_COPY_ROWS = 4
# Host rows up to this many bytes are prefetched by a CPU gather and one copy: the kernel's
# launch, side stream and event cost the host more than the gather itself.
SMALL_PREFETCH_BYTES = 256 * 1024
# A gather may overlap compute (a prefetch, or L³'s pool gathered on its planning stream): its
# kernel runs at most this many programs per SM (each moving several 4 KiB blocks), so that its
# loads, which wait on PCIe, leave most of every SM to the kernels it overlaps. Two per SM keep
# ~1 MB in flight on an H100, ten times PCIe's bandwidth-delay product. (Session 8, H100: an
# uncapped pool gather ran 95 us against 112 us, but made the decode step 0.5 ms slower.)
PROGRAMS_PER_SM = 2


class ThreadRows(RowsHandle):
    """Rows being gathered by a background thread (CPU-only machines)."""

    def __init__(self, future: Future) -> None:
        self._future = future

    def wait(self) -> torch.Tensor:
        return self._future.result()


class PinnedCPUBackend(EmbeddingBackend):
    """A frozen table in pinned host memory; on CUDA its rows are read by a GPU kernel via UVA."""

    def __init__(
        self,
        *,
        num_rows: int,
        dim: int,
        dtype: DTypeName = "float32",
        device: str = "auto",
    ) -> None:
        """
        Args:
            num_rows: Number of rows of the table.
            dim: Width of a row.
            dtype: Element type of the table.
            device: Where gathered rows land: "auto" (the current CUDA device when CUDA is
                available, else the CPU), "cpu", "cuda" or "cuda:<index>".
        """
        self._setup(num_rows, dim, dtype_from_name(dtype), device)
        self._table_RD.zero_()

    def _setup(self, num_rows: int, dim: int, dtype: torch.dtype, device: str) -> None:
        if num_rows <= 0 or dim <= 0:
            raise ValueError(f"num_rows={num_rows} and dim={dim} must both be positive")
        self._device = resolve_device(device)
        # Page-locked only where a GPU can use it (PyTorch's pinned allocator rounds the size
        # up to a power of two of bytes).
        pin = torch.cuda.is_available()
        self._table_RD = torch.empty(num_rows, dim, dtype=dtype, pin_memory=pin)
        self._side_stream: torch.cuda.Stream | None = None
        self._max_programs: int | None = None  # set at the first gather on CUDA
        self._executor: ThreadPoolExecutor | None = None
        self._last_future: Future | None = None
        self._gpu_reads = False

    @property
    def host_table(self) -> torch.Tensor:
        """The page-locked [rows, dim] table itself (read it; write through ``write``)."""
        return self._table_RD

    @property
    def num_rows(self) -> int:
        return self._table_RD.shape[0]

    @property
    def dim(self) -> int:
        return self._table_RD.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self._table_RD.dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def reads_device_rows(self) -> bool:
        return True  # the UVA kernel takes them (CUDA); on the CPU they are host rows

    def gather(self, rows_N: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``rows_N`` as a [N, dim] tensor on ``device``, written into ``out`` if given."""
        want = ((rows_N.numel(), self.dim), self.dtype, self._device, True)
        if out is not None and (out.shape, out.dtype, out.device, out.is_contiguous()) != want:
            raise ValueError(
                f"out must be a contiguous [{rows_N.numel()}, {self.dim}] {self.dtype} tensor on "
                f"{self._device}, got {tuple(out.shape)} {out.dtype} on {out.device}"
            )
        if self._device.type == "cpu":
            check_rows(rows_N, self.num_rows)
            return torch.index_select(self._table_RD, 0, rows_N.cpu(), out=out)
        return self._gather_on_device(rows_N, out=out)

    def _gather_on_device(
        self,
        rows_N: torch.Tensor,
        *,
        out: torch.Tensor | None = None,
        max_programs: int | None = None,
    ) -> torch.Tensor:
        """The UVA gather on the current stream, at most ``max_programs`` programs along the
        rows (``None``: ``PROGRAMS_PER_SM`` per SM)."""
        from embedkit.backends.uva_gather import gather_rows

        rows_dev_N = self._rows_on_device(rows_N)
        if out is None:
            out = torch.empty(rows_N.numel(), self.dim, dtype=self.dtype, device=self._device)
        if max_programs is None:
            if self._max_programs is None:
                sms = torch.cuda.get_device_properties(self._device).multi_processor_count
                self._max_programs = PROGRAMS_PER_SM * sms
            max_programs = self._max_programs
        gather_rows(self._table_RD, rows_dev_N, out, max_programs=max_programs)
        self._gpu_reads = True
        return out

    def prefetch(self, rows_N: torch.Tensor) -> RowsHandle:
        """Start the gather; on CUDA on a side stream, ordered before the caller's by ``wait``
        (a few host rows: copied on the caller's stream, straight from the table or gathered
        by the CPU first).

        ``rows_N`` is copied before this returns, so the caller may reuse it at once.
        """
        if self._device.type == "cpu":
            check_rows(rows_N, self.num_rows)
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="embedkit-pinned")
            rows_copy_N = rows_N.to("cpu", copy=True)
            self._last_future = self._executor.submit(
                torch.index_select, self._table_RD, 0, rows_copy_N
            )
            return ThreadRows(self._last_future)
        if not rows_N.is_cuda:  # a few host rows: copied on the caller's stream
            if rows_N.numel() <= DIRECT_COPY_ROWS:
                return ReadyRows(self._copy_rows(rows_N))
            if rows_N.numel() * self.dim * self.dtype.itemsize <= SMALL_PREFETCH_BYTES:
                return ReadyRows(self._small_gather(rows_N))
        consumer = torch.cuda.current_stream(self._device)
        if self._side_stream is None:
            # High priority: the gather waits on PCIe, not on the SMs, so it should not queue
            # behind the compute kernels it is meant to overlap.
            self._side_stream = torch.cuda.Stream(self._device, priority=-1)
        side = self._side_stream
        if rows_N.is_cuda:
            side.wait_stream(consumer)  # rows_N was produced by work queued on the consumer
        with torch.cuda.stream(side):
            rows_ND = self._gather_on_device(rows_N)
            ready = torch.cuda.Event()
            ready.record(side)
        if rows_N.is_cuda:
            rows_N.record_stream(side)
        return StreamRows(rows_ND, ready)

    def write(self, start: int, values_ND: torch.Tensor) -> None:
        """Overwrite rows ``start ..``; waits for gathers in flight, which read the table."""
        check_block(start, values_ND, self.num_rows, self.dim, self.dtype)
        if self._last_future is not None:
            self._last_future.exception()  # the single worker runs in order: all earlier done
            self._last_future = None
        if self._gpu_reads:
            torch.cuda.synchronize(self._device)
            self._gpu_reads = False
        self._table_RD[start : start + values_ND.shape[0]].copy_(values_ND)

    def save(
        self,
        location: str,
        *,
        content_hash: str | None = None,
        producer: dict[str, str] | None = None,
    ) -> TableManifest:
        """Store the table at directory ``location`` atomically; return its manifest.

        ``content_hash`` defaults to the SHA-256 of the table's bytes; ``producer`` records
        what made the table (e.g. ``{"vocab_hash": ...}``). An existing table at ``location``
        is replaced; any other existing non-empty path is refused.
        """
        return save_raw_table(
            location, self._table_RD, tier=TIER, content_hash=content_hash, producer=producer
        )

    @classmethod
    def open(
        cls,
        location: str,
        *,
        expected: Mapping[str, object] | None = None,
        device: str = "auto",
    ) -> PinnedCPUBackend:
        """Read the table stored at directory ``location`` into pinned memory.

        ``expected`` holds manifest fields the caller relies on (``num_rows``, ``dim``,
        ``dtype``, ``content_hash``, ``producer={"vocab_hash": ...}``); a ``ValueError`` names
        each one that differs. ``device`` is that of the constructor.
        """
        backend = cls.__new__(cls)

        def into(manifest: TableManifest) -> torch.Tensor:
            dtype = dtype_from_name(manifest.dtype)
            backend._setup(manifest.num_rows, manifest.dim, dtype, device)
            return backend._table_RD

        read_raw_table(location, tier=TIER, into=into, expected=expected)
        return backend

    def _copy_rows(self, rows_N: torch.Tensor) -> torch.Tensor:
        """Host rows ``rows_N`` copied from the pinned table to the device, one asynchronous
        copy per row on the current stream (``write`` waits for them: they read the table)."""
        check_rows(rows_N, self.num_rows)
        rows_ND = torch.empty(rows_N.numel(), self.dim, dtype=self.dtype, device=self._device)
        for index, row in enumerate(rows_N.tolist()):
            rows_ND[index].copy_(self._table_RD[row], non_blocking=True)
        self._gpu_reads = True
        return rows_ND

    def _small_gather(self, rows_N: torch.Tensor) -> torch.Tensor:
        """Host rows ``rows_N`` gathered by the CPU into pinned memory, then copied to the
        device on the current stream without blocking (the pinned allocator keeps the buffer
        until the copy has run)."""
        check_rows(rows_N, self.num_rows)
        staged_ND = torch.empty(rows_N.numel(), self.dim, dtype=self.dtype, pin_memory=True)
        torch.index_select(self._table_RD, 0, rows_N.reshape(-1), out=staged_ND)
        return staged_ND.to(self._device, non_blocking=True)

    def _rows_on_device(self, rows_N: torch.Tensor) -> torch.Tensor:
        if rows_N.is_cuda:
            if rows_N.dtype not in (torch.int64, torch.int32) or rows_N.dim() != 1:
                raise ValueError(f"rows must be 1-D int64/int32, got {rows_N.dtype} {rows_N.shape}")
            if rows_N.device != self._device:
                raise ValueError(f"rows are on {rows_N.device}, the table serves {self._device}")
            return rows_N.contiguous()
        check_rows(rows_N, self.num_rows)
        # A private pinned copy: the async copy then never reads memory the caller may change,
        # and the pinned allocator keeps the block until the copy has run (it records an event).
        staging_N = torch.empty(rows_N.shape, dtype=rows_N.dtype, pin_memory=True)
        staging_N.copy_(rows_N)
        return staging_N.to(self._device, non_blocking=True)
