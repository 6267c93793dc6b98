"""What a model part hands to training besides its output: losses, metrics and cost.

``AuxiliaryLosses``: ``LanguageModel.training_step`` asks every part of the decoder that has
``auxiliary_losses()`` for the losses of the forward it just ran (already weighted), adds them
to the language-modelling loss once and logs each one under the part's name. Training windows
hold no padding, so every position counts.

``TrainingMetrics``: at the steps whose logs Lightning writes (every
``trainer.log_every_n_steps``), ``training_step`` asks every part that has
``training_metrics()`` for the metrics of the forward it just ran and logs each one as
``train/<part name>/<metric>``. Parts are asked only then, so a metric may cost a few kernels
but no step in between pays for it.

``TrainingCost``: a part whose training does work that its inference does not (SCONE's f-gram
model, replaced by a table at inference) counts it, so that run summaries and comparisons can
add it to the ``3 x inference FLOPs x tokens`` estimate of training FLOPs.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class AuxiliaryLosses(Protocol):
    """A part with losses of its own (e.g. a mixture of experts' balancing losses)."""

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """The weighted losses of the last training forward, by name; cleared once returned."""


@runtime_checkable
class TrainingCost(Protocol):
    """A part with training-only work (not in its inference FLOPs per token)."""

    def extra_training_flops(self) -> float:
        """FLOPs of that work, forward and backward, in every training forward since the part
        was built (read on the host: call it at validations and at the end, not every step)."""


@runtime_checkable
class TrainingMetrics(Protocol):
    """A part with metrics of its own to log while training (e.g. a mixture of experts' load)."""

    def training_metrics(self) -> dict[str, torch.Tensor]:
        """Metrics of the last training forward, by name (``/`` groups them), each a tensor of
        one element left on its device: reading it on the host is the logger's job."""
