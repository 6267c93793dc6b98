"""L³'s lookup: every position attends, with its hidden state as the only query, over the rows
of its own token, in bulk (arXiv 2601.21461, "sorted block-diagonal" training).

Positions are sorted by token id, so the per-token masks are block diagonal. Each distinct
token's positions are cut into tiles of at most T positions, and every tile is padded to the
next power of two R >= the token's row count (R <= k): tiles of one R form one batched matmul.
The rows of the batch's distinct tokens are gathered once (the "pool", <= v rows, what an
offloaded table must transfer), each tile reads its token's rows from the pool, and the result
is unsorted. Python loops over the <= log2(k) + 1 row buckets, never over tokens or positions.

Memory is bounded for tokens with k rows: a tile holds at most T = min(R, 128) positions, so
the gathered keys are at most max(1, k / 128) rows per position plus one tile per distinct
token, and the scores at most R per position.

Legend: P = positions, D = query width, E = value width, U = distinct tokens of the batch,
M = pooled rows of those tokens, S = tiles, T = positions per tile, R = padded rows per tile,
Q = padded tile positions (sum of T), N = gathered key slots (sum of R), V = token ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MAX_TILE_POSITIONS = 128
MIN_PADDED_ROWS = 16  # tokens with 2..16 rows share one bucket: fewer, larger batched matmuls


@dataclass(frozen=True)
class LookupPlan:
    """Where every position's query, keys and output go; depends on token ids only (static
    routing), so one plan serves keys and values of every table with the same allocation."""

    pool_rows_M: torch.Tensor  # table rows of the distinct tokens, token by token
    key_index_N: torch.Tensor  # pool row of each key slot (padding reads later rows, masked)
    rows_S: torch.Tensor  # real rows of each tile's token
    bias_S1R: tuple[torch.Tensor, ...]  # per bucket: 0 for a token's rows, -inf for padding
    slot_of_P: torch.Tensor  # tile slot of each position (distinct; the other slots are padding)
    num_slots: int  # Q
    buckets: tuple[tuple[int, int, int], ...]  # (tiles, T, R) per bucket, in slot order


def plan_lookup(
    ids_P: torch.Tensor, offsets_V1: torch.Tensor, *, max_rows: int | None = None
) -> LookupPlan:
    """The sorted tiling of positions with token ids ``ids_P`` over CSR ``offsets_V1`` (on the
    same device); ``max_rows`` is the most rows of a token (read from the offsets when not
    given). Two host synchronisations (distinct tokens; tile and pool sizes)."""
    device = ids_P.device
    num_p = ids_P.numel()
    order_P = torch.argsort(ids_P, stable=True)
    tokens_U, counts_U = torch.unique_consecutive(ids_P[order_P], return_counts=True)  # sync 1
    first_row_U = offsets_V1[tokens_U]
    rows_U = offsets_V1[tokens_U + 1] - first_row_U
    start_U = torch.cumsum(counts_U, 0) - counts_U  # first sorted position of each token
    # Padded rows R: 1, 16, then powers of 4 (64, 256, ...), at most the next power of 2 of
    # the most rows of a token: few buckets (few launches), at most 4x padding.
    if max_rows is None:
        max_rows = int(offsets_V1.diff().max())
    top_exponent = math.ceil(math.log2(max(max_rows, 1)))
    min_exponent = MIN_PADDED_ROWS.bit_length() - 1
    exponent_U = torch.ceil(torch.log2(rows_U.double())).long()  # exact for counts < 2**52
    exponent_U = (exponent_U + 1) // 2 * 2  # even: powers of 4
    exponent_U = exponent_U.clamp(min=min_exponent, max=max(top_exponent, min_exponent))
    bucket_U = torch.where(rows_U == 1, 0, exponent_U)
    padded_U = torch.pow(2, bucket_U)
    tile_U = padded_U.clamp(max=MAX_TILE_POSITIONS)
    tiles_U = (counts_U + tile_U - 1) // tile_U
    num_buckets = max(top_exponent, min_exponent) + 1
    tiles_per_bucket = torch.zeros(num_buckets + 1, dtype=torch.long, device=device)
    tiles_per_bucket.index_add_(0, bucket_U, tiles_U)
    tiles_per_bucket[-1] = rows_U.sum()
    *tiles_b, num_m = tiles_per_bucket.tolist()  # sync 2
    buckets = tuple(
        (tiles, min(2**b, MAX_TILE_POSITIONS), 2**b) for b, tiles in enumerate(tiles_b) if tiles
    )
    num_s = sum(tiles for tiles, _, _ in buckets)
    num_q = sum(tiles * t for tiles, t, _ in buckets)
    num_n = sum(tiles * r for tiles, _, r in buckets)

    pool_start_U = torch.cumsum(rows_U, 0) - rows_U
    pool_rows_M = ranges(first_row_U, rows_U, num_m)

    # Tiles in bucket order (stable: by token id within a bucket).
    by_bucket_U = torch.argsort(bucket_U, stable=True)
    tiles_in_order = tiles_U[by_bucket_U]
    token_S = torch.repeat_interleave(by_bucket_U, tiles_in_order, output_size=num_s)
    tile_positions_S, padded_S = tile_U[token_S], padded_U[token_S]
    first_slot_S = torch.cumsum(tile_positions_S, 0) - tile_positions_S

    # Slot of each position: its tile's first slot + its rank within the tile.
    sorted_token_P = torch.repeat_interleave(
        torch.arange(len(tokens_U), device=device), counts_U, output_size=num_p
    )
    rank_P = torch.arange(num_p, device=device) - start_U[sorted_token_P]
    tile_P = rank_P // tile_U[sorted_token_P]
    first_tile_U = torch.empty_like(tiles_U)
    first_tile_U[by_bucket_U] = torch.cumsum(tiles_in_order, 0) - tiles_in_order
    slot_sorted_P = (
        first_slot_S[first_tile_U[sorted_token_P] + tile_P] + rank_P % tile_U[sorted_token_P]
    )
    slot_of_P = torch.empty(num_p, dtype=torch.long, device=device)
    slot_of_P[order_P] = slot_sorted_P

    # Key slots: row j of tile s reads pool row pool_start + j (masked when j >= rows).
    j_N = ranges(torch.zeros_like(padded_S), padded_S, num_n)
    tile_of_N = torch.repeat_interleave(
        torch.arange(num_s, device=device), padded_S, output_size=num_n
    )
    key_index_N = (pool_start_U[token_S][tile_of_N] + j_N).clamp(max=max(num_m - 1, 0))
    rows_S = rows_U[token_S]
    bias_S1R = tuple(
        torch.zeros(tiles, 1, rows, device=device).masked_fill_(
            (torch.arange(rows, device=device) >= rows_b[:, None]).unsqueeze(1), float("-inf")
        )
        for (tiles, _, rows), rows_b in zip(
            buckets, rows_S.split([b[0] for b in buckets]), strict=True
        )
    )
    return LookupPlan(pool_rows_M, key_index_N, rows_S, bias_S1R, slot_of_P, num_q, buckets)


def ranges(starts_K: torch.Tensor, lengths_K: torch.Tensor, total: int) -> torch.Tensor:
    """``cat([arange(s, s + n) for s, n in zip(starts_K, lengths_K)])`` without a loop."""
    ends_K = torch.cumsum(lengths_K, 0)
    shift_K = starts_K - (ends_K - lengths_K)
    steps = torch.arange(total, device=lengths_K.device)
    return steps + torch.repeat_interleave(shift_K, lengths_K, output_size=total)


def token_attention(
    query_PD: torch.Tensor,
    plan: LookupPlan,
    keys_MD: torch.Tensor,
    values_ME: torch.Tensor,
    *,
    scale: float,
) -> torch.Tensor:
    """``softmax(scale * K_t q) V_t`` for every position [P, E] in the dtype of ``keys_MD``;
    ``keys_MD`` and ``values_ME`` are the pooled rows (each table's rows
    ``plan.pool_rows_M``; the same tensor when K and V are tied). Softmax in fp32."""
    dtype = keys_MD.dtype
    query_QD = query_PD.new_zeros(plan.num_slots, query_PD.shape[1], dtype=dtype)
    query_QD = query_QD.index_copy(0, plan.slot_of_P, (query_PD * scale).to(dtype))
    keys_ND = keys_MD.index_select(0, plan.key_index_N)
    tied = values_ME is keys_MD
    values_NE = keys_ND if tied else values_ME.index_select(0, plan.key_index_N)
    query_chunks = query_QD.split([tiles * positions for tiles, positions, _ in plan.buckets])
    key_chunks = keys_ND.split([tiles * rows for tiles, _, rows in plan.buckets])
    value_chunks = key_chunks if tied else values_NE.split([t * r for t, _, r in plan.buckets])
    outputs = []
    for (tiles, positions, rows), query, keys, values, bias_S1R in zip(
        plan.buckets, query_chunks, key_chunks, value_chunks, plan.bias_S1R, strict=True
    ):
        values_SRE = values.view(tiles, rows, -1)
        if rows == 1:  # one row: the softmax is 1, the output that row
            outputs.append(values_SRE.expand(tiles, positions, -1).flatten(0, 1))
            continue
        scores_STR = torch.baddbmm(
            bias_S1R.to(dtype),
            query.view(tiles, positions, -1),
            keys.view(tiles, rows, -1).transpose(1, 2),
        )
        softmax_dtype = torch.promote_types(scores_STR.dtype, torch.float32)
        weights_STR = torch.softmax(scores_STR, dim=-1, dtype=softmax_dtype).to(values.dtype)
        outputs.append(torch.bmm(weights_STR, values_SRE).flatten(0, 1))
    if not outputs:
        return values_ME.new_zeros(0, values_ME.shape[1])
    return torch.cat(outputs).index_select(0, plan.slot_of_P)
