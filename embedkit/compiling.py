"""``TrainingCompiler``: a block's training forward through ``torch.compile`` on CUDA.

Plugin blocks whose eager form is many small operations (routing, planning, dispatch) lose
more time launching kernels than running them at GPU sizes. They compile their training
forward once per shape; with ``"reduce-overhead"`` the compiled graphs are also replayed as CUDA
graphs, so the host launches one graph per pass instead of each kernel. Evaluation, inference
and CPU runs stay eager (their shapes vary and launches cost little there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

CompileMode = Literal["reduce-overhead", "default", "max-autotune", "max-autotune-no-cudagraphs"]
COMPILE_MODES = ("reduce-overhead", "default", "max-autotune", "max-autotune-no-cudagraphs")


class TrainingCompiler:
    """Runs ``forward`` compiled in ``mode`` while ``training`` on CUDA, else eagerly; ``mode``
    None is always eager."""

    def __init__(self, forward: Callable, mode: CompileMode | None, *, owner: str) -> None:
        if mode is not None and mode not in COMPILE_MODES:
            raise ValueError(
                f"{owner} compile_mode={mode!r} is invalid; valid: null (eager), "
                + ", ".join(COMPILE_MODES)
            )
        self.forward, self.mode = forward, mode
        self._compiled: Callable | None = None

    def __call__(self, *args, training: bool, device: torch.device):
        if self.mode is None or not training or device.type != "cuda":
            return self.forward(*args)
        if self._compiled is None:
            self._compiled = torch.compile(self.forward, mode=self.mode, dynamic=False)
        return self._compiled(*args)
