"""Wall-clock timing of a call as its caller sees it (device work included)."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch


def device_name(device: torch.device) -> str:
    """The device's name as benchmark reports give it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    """Wait for all work queued on ``device`` (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    call: Callable[[object], object],
    inputs: Sequence[object],
    *,
    warmup: int,
    device: torch.device,
) -> list[float]:
    """Seconds of ``call(x)`` for each ``x`` in ``inputs`` after ``warmup`` untimed calls,
    each timed from an idle device to its completion."""
    for x in inputs[:warmup]:
        call(x)
    synchronize(device)
    seconds = []
    for x in inputs[warmup:]:
        start = time.perf_counter()
        call(x)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def summarize(seconds: Sequence[float], *, bytes_moved: int) -> dict[str, float]:
    """p50 / p99 latency in milliseconds and the bandwidth at the median, in GB/s."""
    p50, p99 = np.percentile(np.asarray(seconds), [50, 99])
    return {
        "p50_ms": float(p50 * 1e3),
        "p99_ms": float(p99 * 1e3),
        "gb_per_s": float(bytes_moved / p50 / 1e9) if p50 > 0 else float("inf"),
    }
