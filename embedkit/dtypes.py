"""Table element types by name, as recipes and stored manifests spell them."""

from __future__ import annotations

from typing import Literal

import torch

DTypeName = Literal["float32", "bfloat16", "float16"]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def dtype_from_name(name: str, *, field: str = "dtype") -> torch.dtype:
    """The torch dtype called ``name``; a ``ValueError`` naming ``field`` for anything else."""
    if name not in DTYPES:
        raise ValueError(f"{field}={name!r} is not a table dtype; valid: {', '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """The recipe spelling of ``dtype``."""
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"dtype {dtype} is not a table dtype; valid: {', '.join(DTYPES)}")


def compute_dtype(like: torch.Tensor) -> torch.dtype:
    """The dtype matrix products run in: autocast's when it is on for ``like``'s device, else
    ``like``'s own."""
    if torch.is_autocast_enabled(like.device.type):
        return torch.get_autocast_dtype(like.device.type)
    return like.dtype
