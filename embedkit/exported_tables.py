"""Tables a trained model exports for inference (``embedkit export``): written once from rows a
part computes or holds, then placed on the configured tier when a model reads them.

A stored table's manifest ``producer`` records what made it (vocabulary or allocation hash,
hash of the weights it depends on, checkpoint sha256), so a part can refuse a table that does
not belong to it.
Legend: R = rows of the table, D = row width, B = rows of a block.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Mapping

import torch

from embedkit.backends.manifest import read_manifest
from embedkit.interfaces import EmbeddingBackend, TableFactory
from embedkit.tables import TIERS, open_table

BLOCK_ROWS = 16384

RowsOf = Callable[[int, int], torch.Tensor]
"""``rows_of(start, stop)``: rows ``start .. stop - 1`` of the table to write, [B, D]."""


@torch.no_grad()
def write_table(
    location: str,
    rows_of: RowsOf,
    *,
    to: str,
    num_rows: int,
    dim: int,
    dtype: str,
    producer: Mapping[str, str],
) -> None:
    """Store ``num_rows`` rows from ``rows_of`` at ``location`` on tier ``to`` ("zarr",
    "pinned" or "gpu"); nothing is left at ``location`` when it fails."""
    if to not in TIERS:
        raise ValueError(f"--to={to!r} is not a tier; valid: {', '.join(TIERS)}")
    if os.path.exists(location):
        raise ValueError(f"--out: {location!r} already exists; not replacing it")
    staging = f"{location}.partial-{os.getpid()}"
    try:
        if to == "zarr":
            table = TIERS[to](num_rows=num_rows, dim=dim, dtype=dtype, path=staging)
        else:
            table = TIERS[to](num_rows=num_rows, dim=dim, dtype=dtype)
        for start in range(0, num_rows, BLOCK_ROWS):
            stop = min(start + BLOCK_ROWS, num_rows)
            table.write(start, rows_of(start, stop).to(table.device, table.dtype))
        if to == "zarr":
            table.seal(producer=dict(producer))
            del table
            os.rename(staging, location)
        else:
            table.save(location, producer=dict(producer))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def place_table(
    location: str,
    table_backend: TableFactory,
    *,
    num_rows: int,
    dim: int,
    producer: Mapping[str, str],
    what: str,
) -> tuple[EmbeddingBackend, dict[str, str]]:
    """The exported table at ``location`` copied onto the tier ``table_backend`` makes, and its
    manifest's producer. ``ValueError`` naming ``what`` (e.g. "the f-gram table") when its
    shape or any of the ``producer`` fields differ from the expected ones."""
    if not os.path.exists(location.removeprefix("file://")):
        raise ValueError(f"{what} at {location!r} does not exist; write it with `embedkit export`")
    manifest = read_manifest(location)
    for field, expected in producer.items():
        found = manifest.producer.get(field)
        if found != expected:
            raise ValueError(
                f"{what} at {location!r} was made for another model: its {field} is "
                f"{found!r}, this model's is {expected!r}; export it again from this model"
            )
    source = open_table(location, expected={"num_rows": num_rows, "dim": dim})
    table = table_backend(num_rows=num_rows, dim=dim, dtype=manifest.dtype)
    for start in range(0, num_rows, BLOCK_ROWS):
        rows_B = torch.arange(start, min(start + BLOCK_ROWS, num_rows))
        table.write(start, source.gather(rows_B).to(table.device))
    return table, dict(manifest.producer)


def weights_hash(*modules: torch.nn.Module) -> str:
    """SHA-256 of the modules' parameters (fp32, in order): a table exported with these weights
    is valid only with them."""
    digest = hashlib.sha256()
    for module in modules:
        for name, param in module.named_parameters():
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
