"""Dropless dispatch of ``embedkit_moe`` against a plain per-expert loop, values and gradients
(fp32), with the grouped matmul and with the loop over expert slices, unused experts included.

Legend: P = positions, D = width, F = expert width, E = experts, K = experts per position.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from embedkit_moe.dispatch import dispatch_to_experts
from embedkit_moe.experts import GroupedExperts

DIM, WIDTH, EXPERTS, TOP_K = 16, 24, 5, 2


def _case(seed: int):
    generator = torch.Generator().manual_seed(seed)
    hidden_PD = torch.randn(37, DIM, generator=generator, requires_grad=True)
    scores_PE = torch.randn(37, EXPERTS, generator=generator)
    scores_PE[:, 4] = -1e9  # expert 4 is never chosen
    top = scores_PE.topk(TOP_K, dim=-1)
    weights_PK = top.values.softmax(-1).requires_grad_()
    return hidden_PD, top.indices, weights_PK


def _reference(
    hidden_PD, experts_PK, weights_PK, experts: GroupedExperts, capacity: int | None = None
) -> torch.Tensor:
    """Every expert over every position it was chosen for, one at a time; with a capacity,
    only its first ``capacity`` (position, slot) pairs in position order."""
    out_PD = torch.zeros_like(hidden_PD)
    for e in range(EXPERTS):
        for p, k in (experts_PK == e).nonzero().tolist()[:capacity]:
            x = hidden_PD[p]
            y = F.silu(x @ experts.gate_EDF[e]) * (x @ experts.up_EDF[e]) @ experts.down_EFD[e]
            out_PD = out_PD.index_add(0, torch.tensor([p]), (weights_PK[p, k] * y)[None])
    return out_PD


@pytest.mark.parametrize("implementation", ["grouped", "loop"])
def test_dispatch_matches_a_per_expert_loop(implementation):
    torch.manual_seed(0)
    experts = GroupedExperts(
        dim=DIM, hidden_dim=WIDTH, num_experts=EXPERTS, init_std=0.3,
        implementation=implementation,
    )  # fmt: skip
    hidden_PD, experts_PK, weights_PK = _case(1)
    dispatched = dispatch_to_experts(hidden_PD, experts_PK, weights_PK, experts)
    fast_PD = dispatched.out_PD
    slow_PD = _reference(hidden_PD, experts_PK, weights_PK, experts)
    assert float(dispatched.dropped_share) == 0.0
    torch.testing.assert_close(fast_PD, slow_PD, rtol=1e-5, atol=1e-6)
    grad_PD = torch.randn(fast_PD.shape, generator=torch.Generator().manual_seed(2))
    inputs = [hidden_PD, weights_PK, experts.gate_EDF, experts.up_EDF, experts.down_EFD]
    fast = torch.autograd.grad(fast_PD, inputs, grad_PD)
    slow = torch.autograd.grad(slow_PD, inputs, grad_PD)
    for fast_grad, slow_grad in zip(fast, slow, strict=True):
        torch.testing.assert_close(fast_grad, slow_grad, rtol=1e-5, atol=1e-6)
    assert float(fast[2][4].abs().sum()) == 0.0  # the unused expert gets no gradient


@pytest.mark.parametrize("implementation", ["grouped", "loop"])
def test_capacity_drops_the_pairs_past_it_in_position_order(implementation):
    torch.manual_seed(0)
    experts = GroupedExperts(
        dim=DIM, hidden_dim=WIDTH, num_experts=EXPERTS, init_std=0.3,
        implementation=implementation,
    )  # fmt: skip
    hidden_PD, experts_PK, weights_PK = _case(3)
    capacity = 9  # ceil(0.6 * 74 / 5): the busiest experts overflow
    dispatched = dispatch_to_experts(
        hidden_PD, experts_PK, weights_PK, experts, capacity_factor=0.6
    )
    slow_PD = _reference(hidden_PD, experts_PK, weights_PK, experts, capacity)
    torch.testing.assert_close(dispatched.out_PD, slow_PD, rtol=1e-5, atol=1e-6)
    counts = torch.bincount(experts_PK.reshape(-1), minlength=EXPERTS)
    dropped = int((counts - capacity).clamp(min=0).sum())
    assert dropped > 0
    assert float(dispatched.dropped_share) == pytest.approx(dropped / experts_PK.numel())
    grad_PD = torch.randn(slow_PD.shape, generator=torch.Generator().manual_seed(4))
    inputs = [hidden_PD, weights_PK, experts.gate_EDF, experts.up_EDF, experts.down_EFD]
    fast = torch.autograd.grad(dispatched.out_PD, inputs, grad_PD)
    slow = torch.autograd.grad(slow_PD, inputs, grad_PD)
    for fast_grad, slow_grad in zip(fast, slow, strict=True):
        torch.testing.assert_close(fast_grad, slow_grad, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"capacity_factor=0 is invalid"):
        dispatch_to_experts(hidden_PD, experts_PK, weights_PK, experts, capacity_factor=0)


def test_bad_implementation_names_the_field():
    with pytest.raises(ValueError, match=r"implementation='fast' is invalid"):
        GroupedExperts(dim=DIM, hidden_dim=WIDTH, num_experts=EXPERTS, implementation="fast")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 grouped matmul on CUDA")
def test_grouped_and_loop_agree_in_bf16_on_cuda():
    torch.manual_seed(0)
    experts = GroupedExperts(dim=64, hidden_dim=128, num_experts=8, init_std=0.1).cuda()
    hidden_PD = torch.randn(1000, 64, device="cuda")
    experts_PK = torch.randint(0, 8, (1000, 2), device="cuda")
    weights_PK = torch.rand(1000, 2, device="cuda")
    outputs = {}
    for implementation in ("grouped", "loop"):
        experts.implementation = implementation
        with torch.autocast("cuda", dtype=torch.bfloat16):
            outputs[implementation] = dispatch_to_experts(
                hidden_PD, experts_PK, weights_PK, experts
            ).out_PD
    torch.testing.assert_close(outputs["grouped"], outputs["loop"], rtol=2e-2, atol=2e-2)
