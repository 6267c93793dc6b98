"""The manifest every stored table carries: what it holds and what produced it.

A store is refused when its manifest does not match what the reader expects (shape, dtype,
the hash of the vocabulary or checkpoint that produced it), with an error naming the field.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST_NAME = "embedkit-table.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TableManifest:
    """Shape, element type, encoding and provenance of a stored table."""

    num_rows: int
    dim: int
    dtype: str
    tier: str
    codec: str = "none"
    content_hash: str = ""
    producer: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        """The manifest as indented JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str) -> TableManifest:
        """Parse a manifest; a ``ValueError`` naming ``source`` when it is not one."""
        try:
            data = json.loads(text)
            manifest = cls(**data)
        except (json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"{source}: not a valid embedkit table manifest ({err})") from err
        if manifest.format_version != FORMAT_VERSION:
            raise ValueError(
                f"{source}: manifest format_version={manifest.format_version}; "
                f"this embedkit reads {FORMAT_VERSION}"
            )
        return manifest

    def check_matches(self, *, source: str, **expected: object) -> None:
        """Raise a ``ValueError`` naming every field whose value differs from ``expected``.

        ``producer`` entries are compared key by key (``producer={"vocab_hash": ...}``).
        """
        problems = []
        for name, want in expected.items():
            if name == "producer":
                for key, value in dict(want).items():
                    have = self.producer.get(key)
                    if have != value:
                        problems.append(f"producer.{key}={have!r}, expected {value!r}")
                continue
            have = getattr(self, name)
            if have != want:
                problems.append(f"{name}={have!r}, expected {want!r}")
        if problems:
            raise ValueError(f"table at {source} does not match: " + "; ".join(problems))


def _is_url(directory: str | Path) -> bool:
    text = str(directory)
    return "://" in text and not text.startswith("file://")


def _local(directory: str | Path) -> Path:
    return Path(str(directory).removeprefix("file://"))


def write_manifest(directory: str | Path, manifest: TableManifest) -> None:
    """Write ``manifest`` into ``directory`` (a path or an fsspec URL) atomically.

    Locally through a temporary file and a rename; on fsspec filesystems as one object write.
    """
    if _is_url(directory):
        import fsspec

        fs, root = fsspec.core.url_to_fs(str(directory))
        fs.pipe_file(f"{root.rstrip('/')}/{MANIFEST_NAME}", manifest.to_json().encode())
        return
    directory = _local(directory)
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=directory)
    with os.fdopen(fd, "w") as handle:
        handle.write(manifest.to_json())
    os.replace(tmp, directory / MANIFEST_NAME)


def read_manifest(directory: str | Path) -> TableManifest:
    """Read the manifest of the table stored in ``directory`` (a path or an fsspec URL)."""
    if _is_url(directory):
        import fsspec

        fs, root = fsspec.core.url_to_fs(str(directory))
        path = f"{root.rstrip('/')}/{MANIFEST_NAME}"
        try:
            text = fs.cat_file(path).decode()
        except FileNotFoundError:
            text = None
    else:
        path = _local(directory) / MANIFEST_NAME
        text = path.read_text() if path.is_file() else None
    if text is None:
        raise ValueError(f"{directory} holds no embedkit table (missing {MANIFEST_NAME})")
    return TableManifest.from_json(text, source=str(path))
