"""L³'s lookup as fused Triton kernels (CUDA): sorted positions, each tile of a token's
positions streams that token's rows straight from the table with an online softmax.

Nothing is gathered or sorted in memory: a program reads its positions' queries through the
sort order and its token's rows from the table where they lie (CSR order), and writes the
outputs back to the positions; a table row is read once per tile of its token's positions.
The backward pass gives every block of a token's rows to one program, which loops over that
token's positions and writes the rows' gradient directly: no atomics, and rows no position
read stay zero.

Legend: P = positions, D = key width, E = value width, R = table rows, V = token ids,
U = distinct tokens of the batch, S = position tiles (upper bound), C = row blocks (upper bound).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

TILE_POSITIONS = 16  # BM: positions of one token per program


def tile_rows(width: int) -> int:
    """Rows per program (BN): 32, or 16 for rows wider than 512 (shared memory)."""
    return 32 if width <= 512 else 16


@dataclass(frozen=True)
class TritonPlan:
    """Sorted positions and the work lists of the three kernels, indexed by token id; made from
    token ids alone, with fixed shapes and no host synchronisation."""

    order_P: torch.Tensor  # position at each sorted place
    q_start_V: torch.Tensor  # first sorted place of each token
    q_count_V: torch.Tensor  # its positions (0: absent from the batch)
    row_start_V: torch.Tensor  # first table row of each token
    row_count_V: torch.Tensor
    tile_first_V: torch.Tensor  # first position tile of each token
    token_of_tile_S: torch.Tensor
    block_first_V: torch.Tensor  # first row block of each present token
    token_of_block_C: torch.Tensor
    rows_per_block: int  # BN


def plan_triton(
    ids_P: torch.Tensor, offsets_V1: torch.Tensor, *, num_rows: int, width: int
) -> TritonPlan:
    """Work lists for positions ``ids_P`` over CSR ``offsets_V1`` and tables of rows ``width``
    wide. Grids have fixed upper bounds (``ceil(P / BM) + V`` tiles, ``ceil(v / BN) + V`` row
    blocks); spare programs exit at once, so nothing waits for the device."""
    block_rows = tile_rows(width)
    device = ids_P.device
    num_v = offsets_V1.numel() - 1
    order_P = torch.argsort(ids_P, stable=True)
    counts_V = torch.zeros(num_v, dtype=torch.long, device=device)
    counts_V.index_add_(0, ids_P, torch.ones_like(ids_P))  # bincount would wait for max()
    rows_V = offsets_V1.diff()
    tiles_V = (counts_V + TILE_POSITIONS - 1) // TILE_POSITIONS
    blocks_V = torch.where(counts_V > 0, (rows_V + block_rows - 1) // block_rows, 0)
    tile_first_V = torch.cumsum(tiles_V, 0) - tiles_V
    block_first_V = torch.cumsum(blocks_V, 0) - blocks_V
    # Among tokens that share a first tile (or block), only the last can own any: the
    # rightmost match is the owner.
    steps_S = torch.arange(-(-ids_P.numel() // TILE_POSITIONS) + num_v, device=device)
    steps_C = torch.arange(-(-num_rows // block_rows) + num_v, device=device)
    return TritonPlan(
        order_P=order_P,
        q_start_V=torch.cumsum(counts_V, 0) - counts_V,
        q_count_V=counts_V,
        row_start_V=offsets_V1[:-1],
        row_count_V=rows_V,
        tile_first_V=tile_first_V,
        token_of_tile_S=torch.searchsorted(tile_first_V, steps_S, right=True) - 1,
        block_first_V=block_first_V,
        token_of_block_C=torch.searchsorted(block_first_V, steps_C, right=True) - 1,
        rows_per_block=block_rows,
    )


@triton.jit
def _load_rows(ptr, rows, width: tl.constexpr, mask, dtype: tl.constexpr):
    cols = tl.arange(0, width)
    return tl.load(ptr + rows[:, None] * width + cols[None, :], mask=mask[:, None], other=0.0).to(
        dtype
    )


@triton.jit
def _forward(
    Q, ORDER, K, V, OUT, LSE, SCALE,
    token_of_tile, tile_first, q_start, q_count, row_start, row_count,
    D: tl.constexpr, E: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    TIED: tl.constexpr, DT: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    u = tl.load(token_of_tile + tile)
    j = tile - tl.load(tile_first + u)
    count = tl.load(q_count + u)
    if j * BM >= count:
        return
    first = tl.load(q_start + u)
    offs_m = first + j * BM + tl.arange(0, BM)  # sorted places
    in_m = offs_m < first + count
    pos = tl.load(ORDER + offs_m, mask=in_m, other=0).to(tl.int64)  # their positions
    q = (_load_rows(Q, pos, D, in_m, tl.float32) * SCALE).to(DT)
    r0 = tl.load(row_start + u).to(tl.int64)
    nr = tl.load(row_count + u)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, E], tl.float32)
    for n0 in range(0, nr, BN):
        offs_n = n0 + tl.arange(0, BN)
        in_n = offs_n < nr
        k = _load_rows(K, r0 + offs_n, D, in_n, DT)
        if TIED:  # noqa: SIM108 (a compile-time branch in Triton)
            v = k
        else:
            v = _load_rows(V, r0 + offs_n, E, in_n, DT)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        s = tl.where(in_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(DT), v, input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    e = tl.arange(0, E)
    out = acc.to(OUT.dtype.element_ty)
    tl.store(OUT + pos[:, None] * E + e[None, :], out, mask=in_m[:, None])
    tl.store(LSE + offs_m, m_i + tl.log(l_i), mask=in_m)


@triton.jit
def _backward_query(
    Q, ORDER, K, V, OUT, DO, LSE, DELTA, DQ, SCALE,
    token_of_tile, tile_first, q_start, q_count, row_start, row_count,
    D: tl.constexpr, E: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    TIED: tl.constexpr, DT: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    u = tl.load(token_of_tile + tile)
    j = tile - tl.load(tile_first + u)
    count = tl.load(q_count + u)
    if j * BM >= count:
        return
    first = tl.load(q_start + u)
    offs_m = first + j * BM + tl.arange(0, BM)
    in_m = offs_m < first + count
    pos = tl.load(ORDER + offs_m, mask=in_m, other=0).to(tl.int64)
    q = (_load_rows(Q, pos, D, in_m, tl.float32) * SCALE).to(DT)
    do = _load_rows(DO, pos, E, in_m, tl.float32)
    delta = tl.sum(do * _load_rows(OUT, pos, E, in_m, tl.float32), 1)
    tl.store(DELTA + offs_m, delta, mask=in_m)  # for _backward_rows
    do = do.to(DT)
    lse = tl.load(LSE + offs_m, mask=in_m, other=0.0)
    r0 = tl.load(row_start + u).to(tl.int64)
    nr = tl.load(row_count + u)
    dq = tl.zeros([BM, D], tl.float32)
    for n0 in range(0, nr, BN):
        offs_n = n0 + tl.arange(0, BN)
        in_n = offs_n < nr
        k = _load_rows(K, r0 + offs_n, D, in_n, DT)
        if TIED:  # noqa: SIM108 (a compile-time branch in Triton)
            v = k
        else:
            v = _load_rows(V, r0 + offs_n, E, in_n, DT)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        p = tl.where(in_n[None, :], tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(DT), k, input_precision=PRECISION)
    d = tl.arange(0, D)
    dq = (dq * SCALE).to(DQ.dtype.element_ty)
    tl.store(DQ + pos[:, None] * D + d[None, :], dq, mask=in_m[:, None])


@triton.jit
def _backward_rows(
    Q, ORDER, K, V, DO, LSE, DELTA, DK, DV, SCALE,
    token_of_block, block_first, q_start, q_count, row_start, row_count,
    D: tl.constexpr, E: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    TIED: tl.constexpr, DT: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    block = tl.program_id(0)
    u = tl.load(token_of_block + block)
    j = block - tl.load(block_first + u)
    nr = tl.load(row_count + u)
    first = tl.load(q_start + u)
    last = first + tl.load(q_count + u)
    if (j * BN >= nr) | (last == first):  # past the token's rows, or a token not in the batch
        return
    offs_n = j * BN + tl.arange(0, BN)
    in_n = offs_n < nr
    rows = tl.load(row_start + u).to(tl.int64) + offs_n
    k = _load_rows(K, rows, D, in_n, DT)
    if TIED:  # noqa: SIM108 (a compile-time branch in Triton)
        v = k
    else:
        v = _load_rows(V, rows, E, in_n, DT)
    dk = tl.zeros([BN, D], tl.float32)
    dv = tl.zeros([BN, E], tl.float32)
    for m0 in range(first, last, BM):
        offs_m = m0 + tl.arange(0, BM)
        in_m = offs_m < last
        pos = tl.load(ORDER + offs_m, mask=in_m, other=0).to(tl.int64)
        q = (_load_rows(Q, pos, D, in_m, tl.float32) * SCALE).to(DT)
        do = _load_rows(DO, pos, E, in_m, DT)
        lse = tl.load(LSE + offs_m, mask=in_m, other=0.0)
        delta = tl.load(DELTA + offs_m, mask=in_m, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        p = tl.where(in_m[:, None] & in_n[None, :], tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(DT)), q, input_precision=PRECISION)
        if TIED:
            dk += tl.dot(tl.trans(p.to(DT)), do, input_precision=PRECISION)
        else:
            dv += tl.dot(tl.trans(p.to(DT)), do, input_precision=PRECISION)
    d = tl.arange(0, D)
    tl.store(DK + rows[:, None] * D + d[None, :], dk, mask=in_n[:, None])
    if not TIED:
        e = tl.arange(0, E)
        tl.store(DV + rows[:, None] * E + e[None, :], dv, mask=in_n[:, None])


_DT = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


class _TokenLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query_PD, keys_RD, values_RE, plan: TritonPlan, dtype, scale: float):
        tied = values_RE is None
        values = keys_RD if tied else values_RE
        query_PD = query_PD.contiguous()
        num_p, width = query_PD.shape[0], values.shape[1]
        out_PE = query_PD.new_empty(num_p, width, dtype=dtype)
        lse_P = torch.empty(num_p, dtype=torch.float32, device=query_PD.device)
        options = _options(keys_RD, values, tied, dtype, plan)
        _forward[(plan.token_of_tile_S.numel(),)](
            query_PD, plan.order_P, keys_RD, values, out_PE, lse_P, scale,
            plan.token_of_tile_S, plan.tile_first_V, plan.q_start_V, plan.q_count_V,
            plan.row_start_V, plan.row_count_V, **options,
        )  # fmt: skip
        ctx.save_for_backward(query_PD, keys_RD, values, out_PE, lse_P)
        ctx.plan, ctx.tied, ctx.dtype, ctx.scale = plan, tied, dtype, scale
        return out_PE

    @staticmethod
    def backward(ctx, grad_PE):
        query_PD, keys_RD, values, out_PE, lse_P = ctx.saved_tensors
        plan, tied, scale = ctx.plan, ctx.tied, ctx.scale
        grad_PE = grad_PE.contiguous()
        options = _options(keys_RD, values, tied, ctx.dtype, plan)
        delta_P = torch.empty_like(lse_P)
        grad_query_PD = torch.empty_like(query_PD)
        _backward_query[(plan.token_of_tile_S.numel(),)](
            query_PD, plan.order_P, keys_RD, values, out_PE, grad_PE, lse_P, delta_P,
            grad_query_PD, scale,
            plan.token_of_tile_S, plan.tile_first_V, plan.q_start_V, plan.q_count_V,
            plan.row_start_V, plan.row_count_V, **options,
        )  # fmt: skip
        grad_keys_RD = torch.zeros(keys_RD.shape, dtype=torch.float32, device=keys_RD.device)
        grad_values_RE = None if tied else torch.zeros(values.shape, dtype=torch.float32,
                                                       device=values.device)  # fmt: skip
        _backward_rows[(plan.token_of_block_C.numel(),)](
            query_PD, plan.order_P, keys_RD, values, grad_PE, lse_P, delta_P, grad_keys_RD,
            grad_keys_RD if tied else grad_values_RE, scale,
            plan.token_of_block_C, plan.block_first_V, plan.q_start_V, plan.q_count_V,
            plan.row_start_V, plan.row_count_V, **options,
        )  # fmt: skip
        return (
            grad_query_PD,
            _cast(grad_keys_RD, keys_RD),
            _cast(grad_values_RE, values),
            None,
            None,
            None,
        )


def _options(keys_RD, values, tied: bool, dtype: torch.dtype, plan: TritonPlan) -> dict:
    wide = max(keys_RD.shape[1], values.shape[1]) > 512
    return dict(
        D=keys_RD.shape[1], E=values.shape[1], BM=TILE_POSITIONS, BN=plan.rows_per_block,
        TIED=tied, DT=_DT[dtype], PRECISION="ieee" if dtype == torch.float32 else "tf32",
        num_warps=4, num_stages=1 if wide else 3,
    )  # fmt: skip


def _cast(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if grad is None else grad.to(like.dtype)


def supported(dim: int, width: int) -> bool:
    """Whether the kernels take these widths (powers of two from 16 to 1024)."""
    return all(16 <= w <= 1024 and w & (w - 1) == 0 for w in (dim, width))


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
    ``dtype`` (bf16 under autocast, exact fp32 otherwise), accumulation in fp32."""
    return _TokenLookup.apply(query_PD, keys_RD, values_RE, plan, dtype, scale)
