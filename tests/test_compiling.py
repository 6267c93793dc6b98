"""``TrainingCompiler``: the modes it takes, and eager runs off CUDA or outside training."""

from __future__ import annotations

import pytest
import torch

from embedkit.compiling import TrainingCompiler


def test_an_unknown_mode_is_refused_with_the_owner_the_value_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"L3Layer compile_mode='fast' is invalid; valid: null"):
        TrainingCompiler(lambda x: x, "fast", owner="L3Layer")


@pytest.mark.parametrize("training", [True, False])
def test_cpu_and_evaluation_runs_stay_eager(training: bool):
    calls = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(torch.compiler.is_compiling())
        return x + 1

    block = TrainingCompiler(forward, "reduce-overhead", owner="Block")
    out = block(torch.zeros(2), training=training, device=torch.device("cpu"))
    assert torch.equal(out, torch.ones(2)) and calls == [False] and block._compiled is None
