"""Windows of a token array as ``torch`` datasets: random ones to train on, a tiling to evaluate.

Every item is ``{"input_ids": LongTensor[L], "targets": LongTensor[L]}`` where ``targets`` are
the inputs shifted by one token; ``IGNORE_INDEX`` marks targets to leave out of the loss. Each
per-token feature array given (aligned with the tokens) adds its window of the input positions
under its name (-1 at padding).

Legend: N = number of tokens of the array, L = window length (``seq_len``).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

IGNORE_INDEX = -100


class RandomWindows(Dataset):
    """Windows of ``seq_len + 1`` tokens starting at pseudo-random positions.

    Item ``i`` (any ``i >= 0``) is drawn from a generator seeded by ``(seed, i)``, so it is the
    same in every process and every run. ``len`` is the number of windows per epoch;
    ``EpochSampler`` gives epoch ``e`` the items ``e * len`` to ``(e + 1) * len - 1``.
    """

    def __init__(
        self,
        tokens_N: np.ndarray,
        *,
        seq_len: int,
        num_samples: int,
        seed: int,
        features: dict[str, np.ndarray] | None = None,
    ) -> None:
        """
        Args:
            tokens_N: The token ids (e.g. a memmap of the training split).
            seq_len: Length ``L`` of the inputs and of the targets.
            num_samples: Number of windows per epoch.
            seed: Seed of the positions.
            features: Per-token arrays aligned with ``tokens_N``, windowed with the inputs.
        """
        if len(tokens_N) <= seq_len:
            raise ValueError(
                f"data.seq_len={seq_len} needs at least {seq_len + 1} tokens; the training split "
                f"has {len(tokens_N)}: lower seq_len or use a larger corpus"
            )
        self.tokens_N = tokens_N
        self.seq_len = seq_len
        self.num_samples = num_samples
        self.seed = seed
        self.features = dict(features or {})

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        start = int(rng.integers(0, len(self.tokens_N) - self.seq_len))
        window = torch.from_numpy(self.tokens_N[start : start + self.seq_len + 1].astype(np.int64))
        item = {"input_ids": window[:-1], "targets": window[1:]}
        for name, feature_N in self.features.items():
            item[name] = torch.from_numpy(feature_N[start : start + self.seq_len].astype(np.int64))
        return item

    def __getstate__(self) -> dict[str, Any]:
        return _state_with_refs(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        _restore_refs(self, state)


class EpochSampler(Sampler[int]):
    """Indices ``epoch * num_samples`` to ``(epoch + 1) * num_samples - 1`` in order, so that
    each epoch of ``RandomWindows`` draws fresh windows (Lightning calls ``set_epoch``)."""

    def __init__(self, *, num_samples: int) -> None:
        """
        Args:
            num_samples: Number of indices per epoch.
        """
        self.num_samples = num_samples
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.epoch * self.num_samples, (self.epoch + 1) * self.num_samples))


class ValidationWindows(Dataset):
    """Consecutive non-overlapping windows in which every token after the first is a target
    exactly once; the last window is padded (inputs with 0, targets with ``IGNORE_INDEX``)."""

    def __init__(
        self, tokens_N: np.ndarray, *, seq_len: int, features: dict[str, np.ndarray] | None = None
    ) -> None:
        """
        Args:
            tokens_N: The token ids (e.g. a memmap of the validation split).
            seq_len: Length ``L`` of the inputs and of the targets.
            features: Per-token arrays aligned with ``tokens_N``, windowed with the inputs.
        """
        if len(tokens_N) < 2:
            raise ValueError(
                f"the validation split has {len(tokens_N)} tokens; it needs at least 2: "
                "raise data.val_fraction or use a larger corpus"
            )
        self.tokens_N = tokens_N
        self.seq_len = seq_len
        self.features = dict(features or {})

    @property
    def num_targets(self) -> int:
        """Number of target tokens over all windows (all tokens but the first)."""
        return len(self.tokens_N) - 1

    def __len__(self) -> int:
        return -(-self.num_targets // self.seq_len)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} of {len(self)}")
        start = index * self.seq_len
        window = self.tokens_N[start : start + self.seq_len + 1].astype(np.int64)
        num_valid = len(window) - 1
        input_ids_L = torch.zeros(self.seq_len, dtype=torch.int64)
        targets_L = torch.full((self.seq_len,), IGNORE_INDEX, dtype=torch.int64)
        input_ids_L[:num_valid] = torch.from_numpy(window[:-1])
        targets_L[:num_valid] = torch.from_numpy(window[1:])
        item = {"input_ids": input_ids_L, "targets": targets_L}
        for name, feature_N in self.features.items():
            feature_L = torch.full((self.seq_len,), -1, dtype=torch.int64)
            feature_L[:num_valid] = torch.from_numpy(
                feature_N[start : start + num_valid].astype(np.int64)
            )
            item[name] = feature_L
        return item

    def __getstate__(self) -> dict[str, Any]:
        return _state_with_refs(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        _restore_refs(self, state)


def _state_with_refs(dataset: Dataset) -> dict[str, Any]:
    features = {name: _MemmapRef.of(f) for name, f in dataset.features.items()}
    return {**dataset.__dict__, "tokens_N": _MemmapRef.of(dataset.tokens_N), "features": features}


def _restore_refs(dataset: Dataset, state: dict[str, Any]) -> None:
    features = {name: _MemmapRef.resolve(f) for name, f in state["features"].items()}
    dataset.__dict__.update(
        state, tokens_N=_MemmapRef.resolve(state["tokens_N"]), features=features
    )


class _MemmapRef:
    """How a memmap travels to a worker process: its file, reopened there, not its content."""

    def __init__(self, *, filename: str, dtype: np.dtype, offset: int, shape: tuple) -> None:
        self.filename, self.dtype, self.offset, self.shape = filename, dtype, offset, shape

    @classmethod
    def of(cls, tokens_N: np.ndarray) -> _MemmapRef | np.ndarray:
        if isinstance(tokens_N, np.memmap) and isinstance(tokens_N.base, mmap.mmap):  # not a view
            return cls(
                filename=tokens_N.filename,
                dtype=tokens_N.dtype,
                offset=tokens_N.offset,
                shape=tokens_N.shape,
            )
        return tokens_N

    @staticmethod
    def resolve(value: _MemmapRef | np.ndarray) -> np.ndarray:
        if isinstance(value, _MemmapRef):
            return np.memmap(
                value.filename, dtype=value.dtype, mode="r", offset=value.offset, shape=value.shape
            )
        return value
