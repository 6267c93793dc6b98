"""Host time of one table prefetch per tier and path, with an idle GPU: what a decoding step
spends on the host to start fetching its rows.

Run from the repository root on a CUDA machine:

    python docs/benchmarks/prefetch_host_cost.py [--rows R] [--dim D] [--calls N]
        [--pool_rows M]

Prints the median over ``--calls`` calls of the call alone ("host") and of the call and a
device synchronisation ("wall"):

- rows given on the host, 1 and 64 (a batch-1 step's SCONE row): a GPU table and a pinned
  table (its direct row copies, its CPU gather into a staging buffer, and its prefetch as
  dispatched);
- a pool of ``--pool_rows`` rows given on the device (an L³ step's pool at batch 64, about
  1,000 rows): each table's fetch as L³ issues it on the planning stream (a gather there),
  the pinned table's prefetch issued on the planning stream (L³'s path before session 13: a
  hop to the table's side stream), the pinned table's UVA gather launched alone on the
  calling stream (its capped grid, and an uncapped one), and, as a candidate that the
  library does not use, torch's ``index_select`` over a CUDA view of the pinned table (UVA),
  checked equal to the table's rows first.
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from embedkit.backends.gpu import GPUBackend
from embedkit.backends.pinned import PinnedCPUBackend
from embedkit_l3.layer_planning import _planning_fetch, _planning_stream


def median_us(call: Callable[[], object], calls: int, *, with_sync: bool) -> float:
    """Median microseconds of ``call`` (and a device sync after it, ``with_sync``), each call
    started on an idle device."""
    times = []
    for _ in range(calls):
        torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        if with_sync:
            torch.cuda.synchronize()
        times.append(1e6 * (time.perf_counter() - start))
    torch.cuda.synchronize()
    return statistics.median(times)


def report(paths: dict[str, Callable[[], object]], calls: int, label: str) -> None:
    """Print each path's median host and wall microseconds, after ``label``."""
    for name, call in paths.items():
        host = median_us(call, calls, with_sync=False)
        wall = median_us(call, calls, with_sync=True)
        print(f"  {label}{name:42s} host {host:7.1f}  wall {wall:7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=262144, help="rows of each table")
    parser.add_argument("--dim", type=int, default=512, help="width of a row")
    parser.add_argument("--calls", type=int, default=400, help="timed calls per path")
    parser.add_argument("--pool_rows", type=int, default=1024, help="rows of the device pool")
    args = parser.parse_args()
    device = torch.device("cuda")
    gpu = GPUBackend(num_rows=args.rows, dim=args.dim).to(device)
    pinned = PinnedCPUBackend(num_rows=args.rows, dim=args.dim)
    generator = torch.Generator().manual_seed(0)
    print(f"{torch.cuda.get_device_name(device)}; median us over {args.calls} calls")
    for count in (1, 64):
        rows_N = torch.randint(0, args.rows, (count,), generator=generator)
        paths = {
            "gpu prefetch": lambda rows_N=rows_N: gpu.prefetch(rows_N).wait(),
            "pinned prefetch": lambda rows_N=rows_N: pinned.prefetch(rows_N).wait(),
            "pinned direct copies": lambda rows_N=rows_N: pinned._copy_rows(rows_N),
            "pinned CPU gather": lambda rows_N=rows_N: pinned._small_gather(rows_N),
        }
        report(paths, args.calls, f"{count:3d} rows  ")
    pool_M = torch.randint(0, args.rows, (args.pool_rows,), generator=generator).to(device)
    print(f"a pool of {args.pool_rows} rows given on the device")
    report(pool_paths(gpu, pinned, pool_M), args.calls, "")


class _DeviceView:
    """A pinned host tensor described as device memory (``__cuda_array_interface__``): with
    unified addressing its address is valid on the GPU, so ``torch.as_tensor`` wraps it as a
    CUDA tensor whose kernels read the host rows over PCIe."""

    def __init__(self, table_RD: torch.Tensor) -> None:
        assert table_RD.dtype == torch.float32 and table_RD.is_contiguous()
        self.__cuda_array_interface__ = {
            "shape": tuple(table_RD.shape),
            "typestr": "<f4",
            "data": (table_RD.data_ptr(), False),
            "version": 3,
            "strides": None,
        }


def pool_paths(
    gpu: GPUBackend, pinned: PinnedCPUBackend, pool_M: torch.Tensor
) -> dict[str, Callable[[], object]]:
    """The ways to fetch the rows ``pool_M`` (on the device) of each table. The UVA view's path
    is left out, with the reason printed, if the view cannot be made or reads other rows."""
    planning = _planning_stream(pool_M.device)

    def prefetch_on_planning_stream() -> torch.Tensor:
        with torch.cuda.stream(planning):
            fetched = pinned.prefetch(pool_M)
            done = torch.cuda.Event()
            done.record(planning)
        rows_MD = fetched.wait()
        torch.cuda.current_stream().wait_event(done)
        return rows_MD

    paths = {
        "gpu, planning stream (L³)": lambda: _planning_fetch(gpu, pool_M).wait(),
        "pinned, planning stream (L³)": lambda: _planning_fetch(pinned, pool_M).wait(),
        "pinned prefetch, planning stream (before)": prefetch_on_planning_stream,
        "pinned UVA gather alone": lambda: pinned._gather_on_device(pool_M),
        "pinned UVA gather, uncapped grid": lambda: pinned._gather_on_device(
            pool_M, max_programs=len(pool_M)
        ),
    }
    try:
        view_RD = uva_view(pinned, pool_M)
    except (RuntimeError, TypeError) as error:
        print(f"  pinned index_select over UVA view: not timed ({error})")
    else:
        paths["pinned index_select over UVA view"] = lambda: torch.index_select(view_RD, 0, pool_M)
    return paths


def uva_view(pinned: PinnedCPUBackend, pool_M: torch.Tensor) -> torch.Tensor:
    """``pinned``'s table as a CUDA tensor on ``pool_M``'s device, once ``index_select`` over it
    is seen to read the table's rows ``pool_M`` (the table is filled with random rows first)."""
    pinned.write(0, torch.randn(pinned.num_rows, pinned.dim))
    table_RD = pinned.host_table
    view_RD = torch.as_tensor(_DeviceView(table_RD), device=pool_M.device)
    read_MD = torch.index_select(view_RD, 0, pool_M).cpu()
    if not torch.equal(read_MD.view(torch.int32), table_RD[pool_M.cpu()].view(torch.int32)):
        raise RuntimeError("index_select over the view read other rows than the table's")
    return view_RD


if __name__ == "__main__":
    main()
