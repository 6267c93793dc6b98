"""Stored tables of any tier: open one, convert it to another tier in one call, describe it.

Every stored table carries the table manifest (``embedkit.backends.manifest``), whose ``tier``
names the backend that reads it: "gpu", "pinned" and "zarr" for the core tiers, the registry
short name for a third-party backend. A conversion copies the rows block by block, keeps the
table's ``content_hash`` (the SHA-256 of its row-major bytes, the same in every tier) and
``producer``, and checks both ends against that hash.

Legend: R = rows of the table, D = row width, B = rows per copied block.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from embedkit import registry
from embedkit.backends.gpu import GPUBackend
from embedkit.backends.manifest import TableManifest, read_manifest
from embedkit.backends.pinned import PinnedCPUBackend
from embedkit.backends.zarr_format import StoreFiles, is_local, read_layout
from embedkit.backends.zarr_store import ZarrBackend
from embedkit.interfaces import EmbeddingBackend

TIERS: dict[str, type[EmbeddingBackend]] = {
    "gpu": GPUBackend,
    "pinned": PinnedCPUBackend,
    "zarr": ZarrBackend,
}


def tier_class(tier: str, *, source: str | None = None) -> type[EmbeddingBackend]:
    """The backend class of ``tier``: a core tier or a registered backend's short name.

    Args:
        tier: A manifest's ``tier``.
        source: Where the tier was read, named in the error for an unknown tier.
    """
    if tier in TIERS:
        return TIERS[tier]
    specs = registry.specs("EmbeddingBackend")
    if any(spec.short_name == tier for spec in specs):
        return registry.resolve("EmbeddingBackend", tier)
    core = {f"{cls.__module__}.{cls.__qualname__}" for cls in TIERS.values()}
    known = [*TIERS, *(spec.short_name for spec in specs if spec.class_path not in core)]
    where = f"{source}: " if source else ""
    raise ValueError(f"{where}tier={tier!r} is unknown; known tiers: {', '.join(known)}")


def open_table(
    location: str, *, expected: Mapping[str, object] | None = None, **tier_kwargs: object
) -> EmbeddingBackend:
    """Open the table stored at ``location`` with the backend its manifest names.

    Args:
        location: A stored table of any tier (a directory, or an fsspec URL for Zarr).
        expected: Manifest fields the caller relies on (``num_rows``, ``dtype``,
            ``content_hash``, ``producer={"vocab_hash": ...}``), checked by the tier's ``open``.
        tier_kwargs: Passed to the tier's ``open`` (e.g. ``device="cpu"``).
    """
    manifest = _read_manifest(location)
    if expected is not None:
        tier_kwargs["expected"] = expected
    return tier_class(manifest.tier, source=location).open(location, **tier_kwargs)


def convert_table(
    src_location: str, dst_location: str, *, to: str, block_rows: int = 65536, **dst_kwargs: object
) -> TableManifest:
    """Copy the table at ``src_location`` into a new table of tier ``to``; its manifest.

    The destination is built under a temporary name beside ``dst_location`` and renamed into
    place once its rows hash to the source's ``content_hash`` (when the source records one):
    a failure leaves no destination. ``producer`` is carried over.

    Args:
        src_location: A stored table of any tier.
        dst_location: A local path that must not exist yet.
        to: The destination tier: "gpu", "pinned", "zarr" or a registered backend's short name.
        block_rows: Rows copied per step (for Zarr rounded to whole shards).
        dst_kwargs: Constructor arguments of the destination tier (for Zarr ``codec``,
            ``chunk_rows``, ``shard_rows``).
    """
    if block_rows <= 0:
        raise ValueError(f"block_rows={block_rows} must be positive")
    tier_class(to)  # an unknown tier fails before anything is read
    target = Path(dst_location)
    if target.exists() or target.is_symlink():
        raise ValueError(f"destination {target} already exists; not replacing it")
    manifest = _read_manifest(src_location)
    src_cls = tier_class(manifest.tier, source=src_location)
    source = src_cls.open(src_location, **_accepted(src_cls.open, device="cpu", cache_rows=0))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.convert-{uuid.uuid4().hex[:8]}")
    try:
        written = _copy(source, manifest, src_location, to, str(staging), block_rows, dst_kwargs)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written


def _copy(source, manifest, src_location, to, staging, block_rows, dst_kwargs):
    dst_cls = tier_class(to)
    shape = {"num_rows": manifest.num_rows, "dim": manifest.dim, "dtype": manifest.dtype}
    in_place = "path" in inspect.signature(dst_cls).parameters  # lives in storage, like Zarr
    if in_place:
        destination = dst_cls(**shape, path=staging, **dst_kwargs)
    else:
        destination = dst_cls(**shape, **dst_kwargs)
    step = _whole_shards(dst_cls, block_rows, dst_kwargs)
    digest = hashlib.sha256()
    with torch.no_grad(), _progress() as progress:
        task = progress.add_task(f"{manifest.tier} -> {to}", total=manifest.num_rows)
        for start in range(0, manifest.num_rows, step):
            rows_B = torch.arange(start, min(start + step, manifest.num_rows))
            block_BD = source.gather(rows_B).cpu().contiguous()
            digest.update(block_BD.view(torch.uint8).numpy())
            destination.write(start, block_BD)
            progress.advance(task, len(rows_B))
    rows_hash = digest.hexdigest()
    if manifest.content_hash and manifest.content_hash != rows_hash:
        raise ValueError(
            f"{src_location}: its manifest records content_hash={manifest.content_hash!r} but "
            f"its rows hash to {rows_hash!r}: damaged, or the manifest is not this table's; "
            "nothing converted"
        )
    if in_place:
        written = destination.seal(producer=manifest.producer)  # hashes the stored rows
    else:
        written = destination.save(staging, producer=manifest.producer)
    if written.content_hash != rows_hash:
        raise ValueError(
            f"the {dst_cls.__name__} table written for {src_location} hashes to "
            f"{written.content_hash!r}, its source to {rows_hash!r}; nothing converted"
        )
    return written


def _whole_shards(dst_cls: type, block_rows: int, dst_kwargs: Mapping[str, object]) -> int:
    parameter = inspect.signature(dst_cls).parameters.get("shard_rows")
    if parameter is None:
        return block_rows
    shard_rows = int(dst_kwargs.get("shard_rows", parameter.default))
    return max(shard_rows, block_rows // shard_rows * shard_rows)


def _accepted(method, **options: object) -> dict[str, object]:
    names = inspect.signature(method).parameters
    return {name: value for name, value in options.items() if name in names}


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not sys.stderr.isatty(),
    )


def _read_manifest(location: str) -> TableManifest:
    if is_local(location) and not os.path.exists(location.removeprefix("file://")):
        raise ValueError(f"no table at {location}: the path does not exist")
    return read_manifest(location)


def table_info(location: str) -> dict[str, object]:
    """What the table at ``location`` holds, from its manifest (and Zarr layout).

    Keys: location, tier, num_rows, dim, dtype, codec, bytes_on_disk, content_hash,
    producer, and for Zarr chunk_rows and shard_rows.
    """
    manifest = _read_manifest(location)
    files = StoreFiles(location)
    info: dict[str, object] = {
        "location": location,
        "tier": manifest.tier,
        "num_rows": manifest.num_rows,
        "dim": manifest.dim,
        "dtype": manifest.dtype,
        "codec": manifest.codec,
        "bytes_on_disk": _bytes_on_disk(files),
        "content_hash": manifest.content_hash,
        "producer": dict(manifest.producer),
    }
    if manifest.tier == "zarr":
        layout = read_layout(files, manifest)
        info["chunk_rows"], info["shard_rows"] = layout.chunk_rows, layout.shard_rows
    return info


def _bytes_on_disk(files: StoreFiles) -> int:
    if files.fs is not None:
        return int(files.fs.du(files.root))
    return sum(
        os.path.getsize(os.path.join(folder, name))
        for folder, _, names in os.walk(files.root)
        for name in names
    )
