"""L³'s lookup as fused Triton kernels (CUDA): sorted positions, each tile of a token's
positions streams that token's rows straight from the table with an online softmax.

Nothing is gathered or sorted in memory: a program reads its positions' queries through the
sort order and its token's rows from the table where they lie (CSR order), and writes the
outputs back to the positions; a table row is read once per tile of its token's positions.
The backward pass gives every block of a token's rows to one program, which loops over that
token's positions and writes the rows' gradient directly: no atomics, and no zero-filled
gradient beforehand (the programs of tokens absent from the batch write their rows' zeros).

Legend: P = positions, D = key width, E = value width, R = table rows, V = token ids,
U = distinct tokens of the batch, S = position tiles (upper bound), C = row blocks (upper bound).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
import triton
import triton.language as tl

TILE_POSITIONS = 16  # BM: positions of one token per program


def tile_rows(width: int) -> int:
    """Rows per block of the rows backward (BN), which the plan's work list is cut into: 32,
    or 16 for rows wider than 512 (registers)."""
    return 32 if width <= 512 else 16


@dataclass(frozen=True)
class Launch:
    """How one kernel is launched: rows per block (BN), warps and software-pipeline stages."""

    rows: int
    warps: int
    stages: int


# Measured on an H100 at 16,384 positions, bf16 products (docs/benchmarks/README.md). Per layer
# at width 1024 the forward takes 0.50 ms with two stages against 6.2 ms with one, the rows
# backward 1.2 ms with one stage against 13 ms with two (it spills), and the query backward
# 0.71 ms with 32-row blocks and 8 warps against 1.19 ms with 16 rows, 4 warps and one stage.
NARROW = {"forward": Launch(32, 4, 2), "query": Launch(32, 4, 2), "rows": Launch(32, 4, 2)}
WIDE = {"forward": Launch(16, 4, 2), "query": Launch(32, 8, 2), "rows": Launch(16, 4, 1)}
# fp32 products (decoding an fp32 model; fp32 training). With 4 warps the forward's tiles do
# not fit in registers: compiled for sm_90 by Triton 3.9 it spilled 10-11 KiB per thread to
# local memory at width 512 (NARROW) and 1.3-4.4 KiB at 1024 (one stage); with 8 warps it
# spills nothing and fits in shared memory (tests/test_l3_kernel_resources.py); on the H100
# the decode's lookup went from 0.8 to 0.35 ms per layer and step at batch 64. The backward
# kernels keep their launches (they spill in fp32; no recipe trains in fp32 on a GPU).
NARROW_FP32 = NARROW | {"forward": Launch(32, 8, 2)}
WIDE_FP32 = {kernel: Launch(16, 4, 1) for kernel in NARROW} | {"forward": Launch(16, 8, 2)}
# The rows backward's blocks are the plan's (``tile_rows``, made before the dtype is known):
# its entries' ``rows`` repeat ``tile_rows`` for reading, and the launch takes the plan's.


def launches(width: int, itemsize: int) -> dict[str, Launch]:
    """The launch of each kernel ("forward", "query", "rows") for rows ``width`` wide and
    products of ``itemsize`` bytes (2: bf16 under autocast, 4: exact fp32)."""
    if width <= 512:
        return NARROW if itemsize <= 2 else NARROW_FP32
    return WIDE if itemsize <= 2 else WIDE_FP32


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
    block_first_V: torch.Tensor  # first row block of each token
    token_of_block_C: torch.Tensor
    rows_per_block: int  # BN

    def tensors(self) -> list[torch.Tensor]:
        """The work lists in field order (how the custom operators take them)."""
        return [getattr(self, f.name) for f in fields(self) if f.name != "rows_per_block"]

    @classmethod
    def from_tensors(cls, tensors: list[torch.Tensor], rows_per_block: int) -> TritonPlan:
        return cls(*tensors, rows_per_block=rows_per_block)


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
    blocks_V = (rows_V + block_rows - 1) // block_rows  # every token: absent ones write zeros
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


def plan_lists_host(
    ids_P: np.ndarray, offsets_V1: np.ndarray, *, num_rows: int, width: int
) -> list[np.ndarray]:
    """``plan_triton``'s work lists computed on the host (numpy), as int64 arrays in
    ``TritonPlan`` field order: for small plans, such as a decoding step's pool, where the
    device version's twenty-odd launches cost the host more than the arithmetic. Sent to the
    device in one copy, ``TritonPlan.from_tensors`` takes them (with
    ``rows_per_block=tile_rows(width)``); the same work lists, value for value."""
    block_rows = tile_rows(width)
    num_v = offsets_V1.size - 1
    counts_V = np.bincount(ids_P, minlength=num_v)
    rows_V = np.diff(offsets_V1)
    tiles_V = (counts_V + TILE_POSITIONS - 1) // TILE_POSITIONS
    blocks_V = (rows_V + block_rows - 1) // block_rows
    tile_first_V = np.cumsum(tiles_V) - tiles_V
    block_first_V = np.cumsum(blocks_V) - blocks_V
    steps_S = np.arange(-(-ids_P.size // TILE_POSITIONS) + num_v)
    steps_C = np.arange(-(-num_rows // block_rows) + num_v)
    lists = [
        np.argsort(ids_P, kind="stable"),  # order_P
        np.cumsum(counts_V) - counts_V,  # q_start_V
        counts_V,
        offsets_V1[:-1],  # row_start_V
        rows_V,
        tile_first_V,
        np.searchsorted(tile_first_V, steps_S, side="right") - 1,  # token_of_tile_S
        block_first_V,
        np.searchsorted(block_first_V, steps_C, side="right") - 1,  # token_of_block_C
    ]
    return [a.astype(np.int64, copy=False) for a in lists]


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
    TIED: tl.constexpr,
):  # fmt: skip
    DT = OUT.dtype.element_ty  # the compute dtype
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
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
        s = tl.where(in_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(DT), v, input_precision="ieee")
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
    TIED: tl.constexpr,
):  # fmt: skip
    DT = DO.dtype.element_ty  # the compute dtype (the output's)
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
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
        p = tl.where(in_n[None, :], tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(DT), k, input_precision="ieee")
    d = tl.arange(0, D)
    dq = (dq * SCALE).to(DQ.dtype.element_ty)
    tl.store(DQ + pos[:, None] * D + d[None, :], dq, mask=in_m[:, None])


@triton.jit
def _backward_rows(
    Q, ORDER, K, V, DO, LSE, DELTA, DK, DV, SCALE,
    token_of_block, block_first, q_start, q_count, row_start, row_count,
    D: tl.constexpr, E: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    TIED: tl.constexpr,
):  # fmt: skip
    DT = DO.dtype.element_ty  # the compute dtype (the output's)
    block = tl.program_id(0)
    u = tl.load(token_of_block + block)
    j = block - tl.load(block_first + u)
    nr = tl.load(row_count + u)
    first = tl.load(q_start + u)
    last = first + tl.load(q_count + u)
    if j * BN >= nr:  # past the token's rows
        return
    offs_n = j * BN + tl.arange(0, BN)
    in_n = offs_n < nr
    rows = tl.load(row_start + u).to(tl.int64) + offs_n
    # A token absent from the batch reads no rows and writes a zero gradient.
    read = offs_n < tl.where(last > first, nr, 0)
    k = _load_rows(K, rows, D, read, DT)
    if TIED:  # noqa: SIM108 (a compile-time branch in Triton)
        v = k
    else:
        v = _load_rows(V, rows, E, read, DT)
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
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
        p = tl.where(in_m[:, None] & in_n[None, :], tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(DT)), q, input_precision="ieee")
        if TIED:
            dk += tl.dot(tl.trans(p.to(DT)), do, input_precision="ieee")
        else:
            dv += tl.dot(tl.trans(p.to(DT)), do, input_precision="ieee")
    d = tl.arange(0, D)
    tl.store(DK + rows[:, None] * D + d[None, :], dk, mask=in_n[:, None])
    if not TIED:
        e = tl.arange(0, E)
        tl.store(DV + rows[:, None] * E + e[None, :], dv, mask=in_n[:, None])


def supported(dim: int, width: int) -> bool:
    """Whether the kernels take these widths (powers of two from 16 to 1024)."""
    return all(16 <= w <= 1024 and w & (w - 1) == 0 for w in (dim, width))
