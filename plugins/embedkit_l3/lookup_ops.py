"""L³'s Triton lookup as custom operators with a registered gradient (CUDA), so that eager
autograd and ``torch.compile`` (which sees into the kernels and keeps their gradient) run the
same code: ``token_lookup`` and its backward ``token_lookup_backward``.

Legend: P = positions, D = key width, E = value width, R = table rows.
"""

# No ``from __future__ import annotations``: the operators' schemas are read from the
# annotations.
import contextlib
from typing import Optional

import torch
from torch.library import triton_op, wrap_triton

from embedkit_l3.triton_lookup import (
    TILE_POSITIONS,
    TritonPlan,
    _backward_query,
    _backward_rows,
    _forward,
    launches,
)


def _launch_options(
    kernel: str, keys_RD: torch.Tensor, values: torch.Tensor, dtype: torch.dtype
) -> dict:
    """Compile-time arguments and launch settings of ``kernel`` for these tables and products
    in ``dtype``."""
    width = max(keys_RD.shape[1], values.shape[1])
    launch = launches(width, dtype.itemsize)[kernel]
    return dict(
        D=keys_RD.shape[1], E=values.shape[1], BM=TILE_POSITIONS, BN=launch.rows,
        TIED=values is keys_RD, num_warps=launch.warps, num_stages=launch.stages,
    )  # fmt: skip


@triton_op("embedkit_l3::token_lookup", mutates_args=())
def token_lookup(
    query_PD: torch.Tensor,
    keys_RD: torch.Tensor,
    values_RE: Optional[torch.Tensor],  # noqa: UP045 (the schema needs typing.Optional)
    plan: list[torch.Tensor],
    scale: float,
    dtype: torch.dtype,
    rows_per_block: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(scale * K_t q) V_t`` per position in ``dtype`` [P, E], and the softmax's
    log-sum-exp [P] (for the backward)."""
    p = TritonPlan.from_tensors(plan, rows_per_block)
    return _run_forward(wrap_triton(_forward), query_PD, keys_RD, values_RE, p, scale, dtype)


def _run_forward(
    kernel,
    query_PD: torch.Tensor,
    keys_RD: torch.Tensor,
    values_RE: torch.Tensor | None,
    plan: TritonPlan,
    scale: float,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward ``kernel`` (``_forward``, or it wrapped for tracing); [P, E], [P]."""
    values = keys_RD if values_RE is None else values_RE
    num_p = query_PD.shape[0]
    out_PE = query_PD.new_empty(num_p, values.shape[1], dtype=dtype)
    lse_P = query_PD.new_empty(num_p, dtype=torch.float32)
    kernel[(plan.token_of_tile_S.shape[0],)](
        query_PD, plan.order_P, keys_RD, values, out_PE, lse_P, scale,
        plan.token_of_tile_S, plan.tile_first_V, plan.q_start_V, plan.q_count_V,
        plan.row_start_V, plan.row_count_V, **_launch_options("forward", keys_RD, values, dtype),
    )  # fmt: skip
    return out_PE, lse_P


@triton_op("embedkit_l3::token_lookup_backward", mutates_args=())
def token_lookup_backward(
    grad_PE: torch.Tensor,
    query_PD: torch.Tensor,
    keys_RD: torch.Tensor,
    values_RE: Optional[torch.Tensor],  # noqa: UP045
    out_PE: torch.Tensor,
    lse_P: torch.Tensor,
    plan: list[torch.Tensor],
    scale: float,
    rows_per_block: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the query, the keys and the values (fp32; an empty values gradient when
    tied). Rows no position read get zero."""
    p = TritonPlan.from_tensors(plan, rows_per_block)
    values = keys_RD if values_RE is None else values_RE
    delta_P = torch.empty_like(lse_P)
    grad_query_PD = torch.empty_like(query_PD)
    wrap_triton(_backward_query)[(p.token_of_tile_S.shape[0],)](
        query_PD, p.order_P, keys_RD, values, out_PE, grad_PE, lse_P, delta_P, grad_query_PD,
        scale, p.token_of_tile_S, p.tile_first_V, p.q_start_V, p.q_count_V, p.row_start_V,
        p.row_count_V, **_launch_options("query", keys_RD, values, grad_PE.dtype),
    )  # fmt: skip
    # _backward_rows writes every row (zeros where no position read it); its row blocks are
    # the plan's.
    grad_keys_RD = torch.empty(keys_RD.shape, dtype=torch.float32, device=keys_RD.device)
    tied = values_RE is None
    rows_options = {**_launch_options("rows", keys_RD, values, grad_PE.dtype), "BN": rows_per_block}
    grad_values_RE = grad_keys_RD.new_empty((0,) if tied else tuple(values.shape))
    wrap_triton(_backward_rows)[(p.token_of_block_C.shape[0],)](
        query_PD, p.order_P, keys_RD, values, grad_PE, lse_P, delta_P, grad_keys_RD,
        grad_keys_RD if tied else grad_values_RE, scale,
        p.token_of_block_C, p.block_first_V, p.q_start_V, p.q_count_V, p.row_start_V,
        p.row_count_V, **rows_options,
    )  # fmt: skip
    return grad_query_PD, grad_keys_RD, grad_values_RE


def _save_for_backward(ctx, inputs, output) -> None:
    query_PD, keys_RD, values_RE, plan, scale, _, rows_per_block = inputs
    out_PE, lse_P = output
    ctx.save_for_backward(query_PD, keys_RD, values_RE, out_PE, lse_P, *plan)
    ctx.scale, ctx.rows_per_block, ctx.plan_size = scale, rows_per_block, len(plan)


def _backward(ctx, grad_PE: torch.Tensor, _grad_lse_P: torch.Tensor):
    query_PD, keys_RD, values_RE, out_PE, lse_P, *plan = ctx.saved_tensors
    grad_query_PD, grad_keys_RD, grad_values_RE = token_lookup_backward(
        grad_PE.contiguous(), query_PD, keys_RD, values_RE, out_PE, lse_P, plan,
        ctx.scale, ctx.rows_per_block,
    )  # fmt: skip
    grad_values_RE = None if values_RE is None else grad_values_RE.to(values_RE.dtype)
    no_plan_grads = [None] * ctx.plan_size  # the structure of the inputs
    keys_grad = grad_keys_RD.to(keys_RD.dtype)
    return grad_query_PD, keys_grad, grad_values_RE, no_plan_grads, None, None, None


token_lookup.register_autograd(_backward, setup_context=_save_for_backward)


def triton_token_attention(
    query_PD: torch.Tensor,
    plan: TritonPlan,
    keys_RD: torch.Tensor,
    values_RE: torch.Tensor | None,
    *,
    scale: float,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``softmax(scale * K_t q) V_t`` for every position [P, E] in ``dtype``, with ``keys_RD``
    and ``values_RE`` whole tables on the GPU (``values_RE`` None: tied); products in
    ``dtype`` (bf16 under autocast, exact fp32 otherwise), accumulation in fp32.

    Without gradients and outside ``torch.compile`` (decoding) the forward kernel is launched
    directly: the custom operator's dispatch costs the host ~0.1 ms a call."""
    tensors = (query_PD, keys_RD) if values_RE is None else (query_PD, keys_RD, values_RE)
    grads = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if not grads and not torch.compiler.is_compiling():
        on_device = query_PD.is_cuda  # else Triton's interpreter (the tests, on the CPU)
        with torch.cuda.device(query_PD.device) if on_device else contextlib.nullcontext():
            out_PE, _ = _run_forward(
                _forward, query_PD.contiguous(), keys_RD, values_RE, plan, scale, dtype
            )
        return out_PE
    out_PE, _ = token_lookup(
        query_PD.contiguous(), keys_RD, values_RE, plan.tensors(), scale, dtype,
        plan.rows_per_block,
    )  # fmt: skip
    return out_PE
