"""L³'s Triton kernels: the host planner makes the device planner's work lists, and the kernels
equal the per-position reference in values and gradients (under Triton's interpreter on the
CPU, compiled on CUDA) without waiting for the device.

Legend: P = positions, D = key width, E = value width, R = table rows, V = token ids.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.support.interpreter import needs_triton, needs_triton_interpreter, run_interpreted
from tests.support.l3_reference import assert_matches, fused_lookup, offsets, reference

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the kernels need CUDA")


@needs_triton_interpreter
def test_triton_kernels_match_the_reference_in_the_interpreter():
    """The three kernels' indexing and arithmetic on the CPU, values and gradients (what the
    CUDA test below checks with the compiled kernels)."""
    run_interpreted("tests.support.interpreted_lookup", "interpreted lookups: ok")


@needs_triton
@pytest.mark.parametrize("num_p", [1, 17, 64, 300])
@pytest.mark.parametrize("width", [64, 1024])  # row blocks of 32 and of 16
def test_host_planning_gives_the_device_plan(num_p: int, width: int):
    """``plan_lists_host`` (numpy, a decoding step's pool) makes ``plan_triton``'s work lists,
    value for value: tokens absent from the positions, tokens without rows, one token over
    many position tiles."""
    from embedkit_l3.triton_lookup import TritonPlan, plan_lists_host, plan_triton, tile_rows

    generator = np.random.default_rng(num_p)
    rows_V = generator.integers(0, 70, 40)
    rows_V[:3] = 512, 0, 33
    offsets_V1 = np.concatenate(([0], np.cumsum(rows_V)))
    ids_P = generator.integers(0, 30, num_p)  # tokens 30-39 absent
    ids_P[: num_p // 2] = 0
    generator.shuffle(ids_P)
    num_r = int(offsets_V1[-1])
    lists = plan_lists_host(ids_P, offsets_V1, num_rows=num_r, width=width)
    host = TritonPlan.from_tensors([torch.from_numpy(a) for a in lists], tile_rows(width))
    device = plan_triton(
        torch.from_numpy(ids_P), torch.from_numpy(offsets_V1), num_rows=num_r, width=width
    )
    assert host.rows_per_block == device.rows_per_block
    for name, got, expected in zip(
        [f for f in vars(host) if f != "rows_per_block"], host.tensors(), device.tensors(),
        strict=True,
    ):  # fmt: skip
        assert got.dtype == expected.dtype == torch.int64, name
        assert torch.equal(got, expected), name


@cuda
@pytest.mark.parametrize("dim", [32, 1024])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_triton_kernels_match_per_position_reference_values_and_gradients(tied: bool, dim: int):
    from embedkit_l3.triton_lookup import plan_triton

    generator = torch.Generator().manual_seed(1)
    rows_V = torch.randint(1, 70, (40,), generator=generator)
    rows_V[0], rows_V[1], rows_V[2] = 512, 1, 33  # k rows, one row, across row blocks
    offsets_V1 = offsets(rows_V).cuda()
    num_r, width = int(offsets_V1[-1]), dim if tied else 16
    keys_RD = torch.randn(num_r, dim, generator=generator).cuda().requires_grad_()
    values_RE = keys_RD if tied else torch.randn(num_r, width, generator=generator).cuda()
    values_RE.requires_grad_()
    ids_P = torch.randint(0, 40, (300,), generator=generator)
    ids_P[:140] = 0  # one token over many position tiles
    ids_P = ids_P[torch.randperm(300, generator=generator)].cuda()
    query_PD = torch.randn(300, dim, generator=generator).cuda().requires_grad_()
    plan = plan_triton(ids_P, offsets_V1, num_rows=num_r, width=dim)
    fast_PE = fused_lookup(query_PD, plan, keys_RD, values_RE, tied=tied, scale=0.2)
    slow_PE = reference(query_PD, ids_P, offsets_V1, keys_RD, values_RE, 0.2)
    # fp32 throughout; sums of 1024 products in another order differ in the last bits, which
    # the sharp softmax of wide random vectors magnifies to ~4e-5.
    close = {"rtol": 1e-5, "atol": 1e-5} if dim <= 64 else {"rtol": 1e-4, "atol": 1e-4}
    inputs = [query_PD, keys_RD] if tied else [query_PD, keys_RD, values_RE]
    assert_matches(fast_PE, slow_PE, inputs, generator, **close)


@cuda
def test_triton_lookup_never_waits_for_the_device():
    from embedkit_l3.lookup_ops import triton_token_attention
    from embedkit_l3.triton_lookup import plan_triton

    ids_P = torch.randint(0, 100, (4096,), device="cuda")
    offsets_V1 = offsets(torch.randint(1, 50, (100,))).cuda()
    num_r = int(offsets_V1[-1])
    table_RD = torch.randn(num_r, 64, device="cuda", requires_grad=True)
    query_PD = torch.randn(4096, 64, device="cuda", requires_grad=True)

    def step():
        plan = plan_triton(ids_P, offsets_V1, num_rows=num_r, width=64)
        out_PE = triton_token_attention(
            query_PD, plan, table_RD, None, scale=0.1, dtype=torch.bfloat16
        )
        out_PE.float().sum().backward()

    step()  # compiles the kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
