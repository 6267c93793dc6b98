"""Argument checks shared by every backend: row indices and written blocks.

Legend: N = number of rows, D = row width.
"""

from __future__ import annotations

import torch


def check_rows(rows_N: torch.Tensor, num_rows: int) -> None:
    """Raise ``IndexError`` naming the offending row when ``rows_N`` leaves ``[0, num_rows)``."""
    if rows_N.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"rows must be int64 or int32, got {rows_N.dtype}")
    if rows_N.dim() != 1:
        raise ValueError(f"rows must be 1-D, got shape {tuple(rows_N.shape)}")
    if rows_N.numel() == 0:
        return
    if rows_N.device.type == "cpu":  # numpy's reductions: a few µs, torch's ~20 (decoding)
        host_N = rows_N.numpy()
        low, high = int(host_N.min()), int(host_N.max())
    else:
        low, high = int(rows_N.min()), int(rows_N.max())
    if low < 0 or high >= num_rows:
        bad = low if low < 0 else high
        raise IndexError(f"row {bad} is out of range for a table of {num_rows} rows")


def check_block(start: int, values_ND: torch.Tensor, num_rows: int, dim: int, dtype) -> None:
    """Raise a ``ValueError`` naming the field when a written block does not fit the table."""
    if values_ND.dim() != 2 or values_ND.shape[1] != dim:
        raise ValueError(f"values must have shape [N, {dim}], got {tuple(values_ND.shape)}")
    if values_ND.dtype != dtype:
        raise ValueError(f"values dtype {values_ND.dtype} does not match the table dtype {dtype}")
    if start < 0 or start + values_ND.shape[0] > num_rows:
        raise ValueError(
            f"start={start} with {values_ND.shape[0]} rows leaves the table of {num_rows} rows"
        )


def resolve_device(device: str) -> torch.device:
    """A backend's ``device`` option: "auto" (the current CUDA device when CUDA is available,
    else the CPU), "cpu", "cuda" or "cuda:<index>"; a ``ValueError`` naming it otherwise."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device={device!r} is not a device; valid: auto, cpu, cuda[:N]") from err
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise ValueError(f"device={device!r} is not supported; valid: auto, cpu, cuda[:N]")
    if not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; valid here: auto, cpu")
    index = torch.cuda.current_device() if resolved.index is None else resolved.index
    return torch.device("cuda", index)
