"""``Corpus``: where the documents a language model trains on come from.

Implementations: ``TextFiles`` (a text file or a folder of them, plain, ``.gz`` or ``.xz``),
``BundledCorpus`` (a corpus shipped with embedkit) and ``HuggingFaceDataset`` (a ``datasets``
dataset, installed with ``pip install 'embedkit[hf]'``).
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
from abc import ABC, abstractmethod
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from embedkit.data.text import digest

COMPRESSED_SUFFIXES = (".gz", ".xz")


class Corpus(ABC):
    """A sequence of documents with a fingerprint of their content."""

    @abstractmethod
    def documents(self) -> Iterator[str]:
        """Yield every document as one text, in the same order on every call."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """Hex digest of the content: equal fingerprints mean equal documents."""


class TextFiles(Corpus):
    """A text file, or every file of a folder matching a pattern; one document per file.

    Files ending in ``.gz`` or ``.xz`` are decompressed on the fly. Bytes that are not UTF-8
    are read as U+FFFD, and line endings are kept as they are in the files.
    """

    def __init__(self, *, path: str, pattern: str = "**/*.txt") -> None:
        """
        Args:
            path: A text file, or a folder whose files matching ``pattern`` form the corpus
                (read in sorted order).
            pattern: Glob pattern, relative to ``path``, of the files of a folder; each file
                matching it with ``.gz`` or ``.xz`` appended is read too. Ignored for a file.
        """
        self.path = Path(path).expanduser()
        self.pattern = pattern
        if not self.path.exists():
            raise ValueError(
                f"data.corpus.path={path!r} does not exist; give a text file or a folder of them"
            )
        self.files = _list_files(self.path, pattern)
        if not self.files:
            raise ValueError(
                f"the corpus is empty: no file in data.corpus.path={path!r} matches "
                f"data.corpus.pattern={pattern!r} (nor that pattern with .gz or .xz appended)"
            )
        self._fingerprint: str | None = None

    def documents(self) -> Iterator[str]:
        num_nonempty = 0
        for file in self.files:
            text = _read_bytes(file).decode("utf-8", errors="replace")
            if text:
                num_nonempty += 1
                yield text
        if num_nonempty == 0:
            raise ValueError(
                f"the corpus is empty: every file of data.corpus.path={str(self.path)!r} is empty"
            )

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            root = self.path if self.path.is_dir() else self.path.parent
            sha = hashlib.sha256(b"textfiles-v1")
            for file in self.files:
                data = file.read_bytes()
                sha.update(f"\0{file.relative_to(root).as_posix()}\0{len(data)}\0".encode())
                sha.update(data)
            self._fingerprint = sha.hexdigest()
        return self._fingerprint


class BundledCorpus(Corpus):
    """A small corpus shipped inside embedkit (``embedkit/data/corpora/``); one document."""

    def __init__(self, *, name: Literal["tinyshakespeare"] = "tinyshakespeare") -> None:
        """
        Args:
            name: Which bundled corpus: ``tinyshakespeare`` is Karpathy's 1.1 MB selection of
                Shakespeare's plays.
        """
        if name not in ("tinyshakespeare",):
            raise ValueError(f"data.corpus.name={name!r} is not bundled; valid: tinyshakespeare")
        self.name = name
        self._fingerprint: str | None = None

    def _bytes(self) -> bytes:
        return (resources.files("embedkit.data") / "corpora" / f"{self.name}.txt").read_bytes()

    def documents(self) -> Iterator[str]:
        yield self._bytes().decode("utf-8")

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = hashlib.sha256(self._bytes()).hexdigest()
        return self._fingerprint


class HuggingFaceDataset(Corpus):
    """One split of a Hugging Face ``datasets`` dataset; one document per row.

    Needs the optional dependency: ``pip install 'embedkit[hf]'``.
    """

    def __init__(
        self,
        *,
        name: str,
        split: str = "train",
        text_field: str = "text",
        config_name: str | None = None,
    ) -> None:
        """
        Args:
            name: Dataset name on the Hub (``owner/name``) or a local folder of data files, as
                ``datasets.load_dataset`` takes it.
            split: Which split to read (all of it is the corpus; embedkit makes its own
                validation split).
            text_field: Column holding each row's text.
            config_name: Configuration (subset) of the dataset, if it has several.
        """
        self.name = name
        self.split = split
        self.text_field = text_field
        self.config_name = config_name
        self._dataset: Any = None

    def _load(self) -> Any:
        if self._dataset is None:
            try:
                import datasets
            except ImportError as err:
                raise ImportError(
                    "data.corpus HuggingFaceDataset needs the 'datasets' package: "
                    "pip install 'embedkit[hf]'"
                ) from err
            dataset = datasets.load_dataset(self.name, self.config_name, split=self.split)
            if self.text_field not in dataset.column_names:
                raise ValueError(
                    f"data.corpus.text_field={self.text_field!r} is not a column of "
                    f"{self.name!r} (split {self.split!r}); available: "
                    f"{', '.join(dataset.column_names)}"
                )
            self._dataset = dataset
        return self._dataset

    def documents(self) -> Iterator[str]:
        for batch in self._load().iter(batch_size=1024):
            yield from batch[self.text_field]

    @property
    def fingerprint(self) -> str:
        return digest(
            {
                "name": self.name,
                "split": self.split,
                "config_name": self.config_name,
                "text_field": self.text_field,
                "content": getattr(self._load(), "_fingerprint", None),
            }
        )


def _list_files(path: Path, pattern: str) -> list[Path]:
    if path.is_file():
        return [path]
    patterns = [pattern, *(pattern + suffix for suffix in COMPRESSED_SUFFIXES)]
    return sorted({file for p in patterns for file in path.glob(p) if file.is_file()})


def _read_bytes(file: Path) -> bytes:
    if file.suffix == ".gz":
        with gzip.open(file, "rb") as stream:
            return stream.read()
    if file.suffix == ".xz":
        with lzma.open(file, "rb") as stream:
            return stream.read()
    return file.read_bytes()
