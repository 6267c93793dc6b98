"""``AuxiliaryLosses``: a model part that adds its own losses to the training loss.

``LanguageModel.training_step`` asks every part of the decoder that has
``auxiliary_losses()`` for the losses of the forward it just ran (already weighted), adds them
to the language-modelling loss once and logs each one under the part's name. Training windows
hold no padding, so every position counts.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class AuxiliaryLosses(Protocol):
    """A part with losses of its own (e.g. a mixture of experts' balancing losses)."""

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """The weighted losses of the last training forward, by name; cleared once returned."""
