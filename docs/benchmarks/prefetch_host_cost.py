"""Host time of one table prefetch of a few rows given on the host, per tier and path, with an
idle GPU: what a batch-1 decoding step spends on the host to start fetching its SCONE row.

Run from the repository root on a CUDA machine:

    python docs/benchmarks/prefetch_host_cost.py [--rows R] [--dim D] [--calls N]

Prints the median over ``--calls`` calls of the call alone ("host") and of the call and a
device synchronisation ("wall"), for a GPU table and a pinned table (its direct row copies, its
CPU gather into a staging buffer, and its prefetch as dispatched), at 1 and 64 rows.
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from embedkit.backends.gpu import GPUBackend
from embedkit.backends.pinned import PinnedCPUBackend


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=262144, help="rows of each table")
    parser.add_argument("--dim", type=int, default=512, help="width of a row")
    parser.add_argument("--calls", type=int, default=400, help="timed calls per path")
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
        for name, call in paths.items():
            host = median_us(call, args.calls, with_sync=False)
            wall = median_us(call, args.calls, with_sync=True)
            print(f"  {count:3d} rows  {name:22s} host {host:7.1f}  wall {wall:7.1f}")


if __name__ == "__main__":
    main()
