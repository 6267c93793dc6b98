"""The raw on-disk form of an in-memory table (``GPUBackend``, ``PinnedCPUBackend``).

A table is stored as a directory holding ``table.bin`` (the rows' bytes, row-major, little
endian; bfloat16 as its 16-bit patterns) and the table manifest (``embedkit.backends.manifest``)
whose ``tier`` names the backend that wrote it. The directory is written under a temporary name
beside the target and renamed into place, so a reader sees the old table, none, or the new one.
Its content hash is the SHA-256 of ``table.bin``, the same bytes every tier hashes (Zarr's
``seal`` included), so a table keeps its hash across tiers.

Legend: R = rows of the table, D = row width.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from embedkit.backends.manifest import MANIFEST_NAME, TableManifest, read_manifest, write_manifest
from embedkit.dtypes import dtype_from_name, dtype_name

TABLE_FILE = "table.bin"
IO_BLOCK_BYTES = 64 << 20


def save_raw_table(
    location: str,
    table_RD: torch.Tensor,
    *,
    tier: str,
    content_hash: str | None = None,
    producer: Mapping[str, str] | None = None,
) -> TableManifest:
    """Store ``table_RD`` (on any device) at directory ``location`` atomically; its manifest.

    Args:
        location: Directory to write; an existing raw table there is replaced, any other
            non-empty path is refused.
        table_RD: The table; rows on a device are copied to the host block by block.
        tier: The manifest's ``tier``: the backend that ``open`` should read it with.
        content_hash: Recorded as is; None: the SHA-256 of the table's bytes.
        producer: What made the table (e.g. ``{"vocab_hash": ...}``).
    """
    target = Path(location)
    if target.exists() and not _replaceable(target):
        raise ValueError(f"{target} exists and holds no embedkit table; not replacing it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.mkdir()  # with the umask's permissions, as the renamed table keeps them
    try:
        digest = _write_rows(staging / TABLE_FILE, table_RD, hash_it=content_hash is None)
        manifest = TableManifest(
            num_rows=table_RD.shape[0],
            dim=table_RD.shape[1],
            dtype=dtype_name(table_RD.dtype),
            tier=tier,
            codec="none",
            content_hash=digest if content_hash is None else content_hash,
            producer=dict(producer or {}),
        )
        write_manifest(staging, manifest)
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def read_raw_table(
    location: str,
    *,
    tier: str,
    into: Callable[[TableManifest], torch.Tensor],
    expected: Mapping[str, object] | None = None,
) -> tuple[torch.Tensor, TableManifest]:
    """Read the raw table at directory ``location`` into the tensor ``into(manifest)`` gives.

    Args:
        location: Directory written by ``save_raw_table``.
        tier: The ``tier`` its manifest must name.
        into: Returns the contiguous [R, D] destination for the checked manifest. A host
            tensor is filled by ``readinto`` in large blocks straight into its memory; a
            device tensor through two pinned staging buffers, copies overlapping reads.
        expected: Manifest fields the caller relies on (``num_rows``, ``dtype``,
            ``content_hash``, ``producer={"vocab_hash": ...}``); a ``ValueError`` names each
            one that differs.
    """
    directory = Path(location)
    manifest = read_manifest(directory)
    manifest.check_matches(source=str(directory), tier=tier, codec="none")
    dtype = dtype_from_name(manifest.dtype, field=f"{directory} manifest dtype")
    if expected:
        manifest.check_matches(source=str(directory), **expected)
    path = directory / TABLE_FILE
    if not path.is_file():
        raise ValueError(f"{directory} has a table manifest but no {TABLE_FILE}")
    expected_bytes = manifest.num_rows * manifest.dim * dtype.itemsize
    actual_bytes = path.stat().st_size
    if actual_bytes != expected_bytes:
        raise ValueError(
            f"{path} holds {actual_bytes} bytes, expected {expected_bytes} ({manifest.num_rows} "
            f"rows x {manifest.dim} {manifest.dtype} values): truncated, or not this table"
        )
    table_RD = into(manifest)
    assert table_RD.shape == (manifest.num_rows, manifest.dim) and table_RD.dtype == dtype
    assert table_RD.is_contiguous()
    flat = table_RD.view(torch.uint8).reshape(-1)
    with open(path, "rb", buffering=0) as handle:
        if flat.device.type == "cpu":
            _fill(handle, memoryview(flat.numpy()), path, 0, expected_bytes)
        else:
            _fill_device(handle, flat, path)
    return table_RD, manifest


def _write_rows(path: Path, table_RD: torch.Tensor, *, hash_it: bool) -> str:
    digest = hashlib.sha256()
    row_bytes = table_RD.shape[1] * table_RD.element_size()
    rows_per_block = max(1, IO_BLOCK_BYTES // row_bytes)
    with open(path, "wb") as handle:
        for start in range(0, table_RD.shape[0], rows_per_block):
            block_RD = table_RD[start : start + rows_per_block].detach().cpu().contiguous()
            block = block_RD.view(torch.uint8).reshape(-1).numpy()  # a view on host rows
            handle.write(block)
            if hash_it:
                digest.update(block)
        handle.flush()
        os.fsync(handle.fileno())
    return digest.hexdigest() if hash_it else ""


def _fill(handle, view: memoryview, path: Path, offset: int, total: int) -> None:
    """Read ``len(view)`` bytes into ``view``; ``offset`` and ``total`` are for the message."""
    done = 0
    while done < len(view):
        got = handle.readinto(view[done : done + IO_BLOCK_BYTES])
        if not got:
            raise ValueError(f"{path} ended after {offset + done} bytes, expected {total}")
        done += got


def _fill_device(handle, flat: torch.Tensor, path: Path) -> None:
    total = flat.numel()
    size = min(IO_BLOCK_BYTES, total)
    staging = [torch.empty(size, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
    copied: list[torch.cuda.Event | None] = [None, None]
    with torch.cuda.device(flat.device):
        for step, start in enumerate(range(0, total, size)):
            slot, count = step % 2, min(size, total - start)
            if copied[slot] is not None:
                copied[slot].synchronize()  # its previous copy has left the buffer
            _fill(handle, memoryview(staging[slot].numpy())[:count], path, start, total)
            flat[start : start + count].copy_(staging[slot][:count], non_blocking=True)
            copied[slot] = torch.cuda.Event()
            copied[slot].record()
        torch.cuda.current_stream().synchronize()


def _replaceable(target: Path) -> bool:
    return target.is_dir() and ((target / MANIFEST_NAME).is_file() or not any(target.iterdir()))


def _swap_in(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; a reader sees the old table, none, or the new one."""
    retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        os.rename(target, retired)
    os.rename(staging, target)
    shutil.rmtree(retired, ignore_errors=True)
