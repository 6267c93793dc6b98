"""``GroupedExperts``: E SwiGLU experts stored as stacked weights and run on rows sorted by
expert, as one grouped matmul per projection (``torch._grouped_mm``) or a loop over the
experts' contiguous slices.

Legend: N = routed rows (positions x K, sorted by expert), D = width, F = expert hidden width,
E = experts.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from embedkit.dtypes import compute_dtype

Implementation = Literal["auto", "grouped", "loop"]


def grouped_mm_supported(rows_ND: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether ``torch._grouped_mm`` runs here: on the CPU, or bf16 on a CUDA device of compute
    capability 9.0 or more (Hopper)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if rows_ND.device.type == "cpu":
        return True
    if rows_ND.device.type != "cuda" or dtype != torch.bfloat16:
        return False
    return _hopper_or_newer(rows_ND.device.index or 0)


@torch.compiler.assume_constant_result  # a constant to torch.compile, not a graph break
def _hopper_or_newer(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) >= (9, 0)


class GroupedExperts(nn.Module):
    """SwiGLU experts, ``down_e(silu(gate_e(x)) * up_e(x))``, over rows grouped by expert."""

    def __init__(
        self,
        *,
        dim: int,
        hidden_dim: int,
        num_experts: int,
        init_std: float = 0.02,
        implementation: Implementation = "auto",
    ) -> None:
        """
        Args:
            dim: Model width D.
            hidden_dim: Hidden width F of each expert.
            num_experts: Number of experts E.
            init_std: Standard deviation of the normal initialisation.
            implementation: "grouped" (``torch._grouped_mm``: one kernel per projection),
                "loop" (one matmul per expert over its contiguous rows; one host sync for the
                group sizes) or "auto" (grouped where the device supports it).
        """
        super().__init__()
        if implementation not in ("auto", "grouped", "loop"):
            raise ValueError(
                f"GroupedExperts implementation={implementation!r} is invalid; "
                "valid: auto, grouped, loop"
            )
        self.implementation = implementation
        self.gate_EDF = nn.Parameter(torch.randn(num_experts, dim, hidden_dim) * init_std)
        self.up_EDF = nn.Parameter(torch.randn(num_experts, dim, hidden_dim) * init_std)
        self.down_EFD = nn.Parameter(torch.randn(num_experts, hidden_dim, dim) * init_std)

    @property
    def num_experts(self) -> int:
        return self.gate_EDF.shape[0]

    def forward(self, rows_ND: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        """Expert e applied to its ``counts_E[e]`` consecutive rows of ``rows_ND`` [N, D]."""
        dtype = compute_dtype(rows_ND)
        rows_ND = rows_ND.to(dtype)
        weights = [w.to(dtype) for w in (self.gate_EDF, self.up_EDF, self.down_EFD)]
        grouped = self.implementation == "grouped" or (
            self.implementation == "auto" and grouped_mm_supported(rows_ND, dtype)
        )
        if grouped:
            offsets_E = torch.cumsum(counts_E, 0).to(torch.int32)
            return _swiglu(rows_ND, *weights, lambda x, w: torch._grouped_mm(x, w, offs=offsets_E))
        gate, up, down = weights
        chunks = rows_ND.split(counts_E.tolist())
        outputs = [
            _swiglu(chunk, gate[e], up[e], down[e], torch.matmul) for e, chunk in enumerate(chunks)
        ]
        return torch.cat(outputs) if outputs else rows_ND.new_zeros(0, rows_ND.shape[1])


def _swiglu(rows, gate, up, down, matmul) -> torch.Tensor:
    return matmul(F.silu(matmul(rows, gate)) * matmul(rows, up), down)
