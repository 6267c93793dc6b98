"""``embedkit bench storage``: gather latency and bandwidth of every tier, next to the hardware
limits measured in the same run (H2D copy, HBM gather, CPU gather + copy).

Legend: R = table rows, D = row width, N = rows gathered per call.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence

import torch

from embedkit.backends.gpu import GPUBackend
from embedkit.backends.pinned import PinnedCPUBackend
from embedkit.backends.zarr_store import ZarrBackend
from embedkit.bench.timing import device_name, summarize, synchronize, time_calls
from embedkit.dtypes import dtype_from_name


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


BLOCK_ROWS = 1 << 18


def _random_gpu_table(num_rows: int, dim: int, dtype: str, device: torch.device) -> GPUBackend:
    """A ``GPUBackend`` on ``device`` filled with random rows, block by block."""
    with device:  # initialise on the device: a CPU-side normal_ over 10^10 values takes minutes
        table = GPUBackend(num_rows=num_rows, dim=dim, dtype=dtype, trainable=False)
    for low in range(0, num_rows, BLOCK_ROWS):
        count = min(BLOCK_ROWS, num_rows - low)
        table.write(low, torch.randn(count, dim, device=device).to(table.dtype))
    return table


def _h2d_copy_gbps(device: torch.device, *, num_bytes: int = 1 << 30) -> float | None:
    if device.type != "cuda":
        return None
    host = torch.empty(num_bytes, dtype=torch.uint8, pin_memory=True)
    dest = torch.empty(num_bytes, dtype=torch.uint8, device=device)
    copy = lambda _: dest.copy_(host, non_blocking=True)  # noqa: E731
    seconds = time_calls(copy, [None] * 8, warmup=2, device=device)
    return summarize(seconds, bytes_moved=num_bytes)["gb_per_s"]


def _row_sets(num_rows: int, batch: int, count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(batch)
    return [torch.randint(0, num_rows, (batch,), generator=generator) for _ in range(count)]


def _measure(
    name: str, call: Callable, num_rows: int, batch: int, row_bytes: int, device, repeats: int
) -> dict:
    inputs = _row_sets(num_rows, batch, repeats + 3)
    seconds = time_calls(call, inputs, warmup=3, device=device)
    return {"method": name, "rows": batch, **summarize(seconds, bytes_moved=batch * row_bytes)}


def run_storage_bench(
    *,
    num_rows: int,
    dim: int,
    dtype: str,
    batch_sizes: Sequence[int],
    zarr_rows: int,
    zarr_path: str | None,
    repeats: int,
) -> dict:
    """Measure every tier and the reference limits; return the results as a dict."""
    device = _device()
    torch_dtype = dtype_from_name(dtype, field="--dtype")
    row_bytes = dim * torch_dtype.itemsize
    log = lambda msg: print(f"[bench storage] {msg}", flush=True)  # noqa: E731

    started = time.perf_counter()
    gpu = _random_gpu_table(num_rows, dim, dtype, device)
    source_RD = gpu.weight.detach()
    synchronize(device)
    log(f"GPUBackend {num_rows:,} x {dim} {dtype} built in {time.perf_counter() - started:.1f}s")
    started = time.perf_counter()
    pinned = PinnedCPUBackend(num_rows=num_rows, dim=dim, dtype=dtype, device=str(device))
    for low in range(0, num_rows, BLOCK_ROWS):
        pinned.write(low, source_RD[low : low + BLOCK_ROWS])
    log(f"PinnedCPUBackend built in {time.perf_counter() - started:.1f}s")

    store_dir = zarr_path or tempfile.mkdtemp(prefix="embedkit-bench-zarr-")
    zarr_rows = min(zarr_rows, num_rows)
    started = time.perf_counter()
    zarr = ZarrBackend(
        num_rows=zarr_rows, dim=dim, dtype=dtype, path=f"{store_dir}/table", cache_rows=0
    )
    shard_rows = 16384
    for low in range(0, zarr_rows, shard_rows * 8):
        zarr.write(low, source_RD[low : min(low + shard_rows * 8, zarr_rows)].cpu())
    del zarr
    zarr = ZarrBackend.open(f"{store_dir}/table", cache_rows=0)
    zarr.gather(torch.arange(zarr_rows))  # warm the page cache, as the targets assume
    log(f"wrote and warmed a {zarr_rows:,}-row Zarr store in {time.perf_counter() - started:.1f}s")

    results = []
    host_RD = pinned.host_table
    for batch in batch_sizes:
        cases: list[tuple[str, Callable, int]] = [
            ("GPUBackend", lambda r: gpu.gather(r.to(device, non_blocking=True)), num_rows),
            (
                "reference: index_select on device",
                lambda r: source_RD.index_select(0, r.to(device, non_blocking=True)),
                num_rows,
            ),
            ("PinnedCPUBackend", pinned.gather, num_rows),
            ("ZarrBackend", zarr.gather, zarr_rows),
        ]
        if device.type == "cuda":
            staging = torch.empty(batch, dim, dtype=torch_dtype, pin_memory=True)
            cases.append(
                (
                    "reference: CPU index_select + copy",
                    lambda r, staging=staging: torch.index_select(host_RD, 0, r, out=staging).to(
                        device, non_blocking=True
                    ),
                    num_rows,
                )
            )
        for name, call, rows_in_table in cases:
            count = repeats if batch <= 4096 else max(5, repeats // 4)
            results.append(_measure(name, call, rows_in_table, batch, row_bytes, device, count))
            r = results[-1]
            log(
                f"{name:<36} {batch:>6} rows: p50 {r['p50_ms']:.3f} ms, "
                f"p99 {r['p99_ms']:.3f} ms, {r['gb_per_s']:.2f} GB/s"
            )
        synchronize(device)

    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "table": {"rows": num_rows, "dim": dim, "dtype": dtype, "zarr_rows": zarr_rows},
        "zarr": {"chunk_rows": 16, "shard_rows": shard_rows, "codec": "none", "page_cache": "warm"},
        "h2d_copy_gb_per_s": _h2d_copy_gbps(device),
        "results": results,
    }
