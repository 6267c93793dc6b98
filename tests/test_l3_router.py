"""``StaticTokenRouter`` (``embedkit_l3``) against a per-position Python reference.

Legend: B = batch, L = sequence length, P = positions, N = routed rows, V = token ids.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import embedkit_l3


def _allocation(num_v: int = 30, v: int = 200, k: int = 16):
    alloc = embedkit_l3.LZWAllocation(num_rows=v, max_rows_per_token=k, vocab_size=num_v)
    rng = np.random.default_rng(0)
    alloc.fit([rng.zipf(1.3, 3000) % num_v, np.tile(np.arange(4), 100)])
    return alloc


def reference_route(offsets_V1: np.ndarray, ids_BL: torch.Tensor) -> tuple[list, list]:
    rows, offsets = [], [0]
    for t in ids_BL.reshape(-1).tolist():
        rows.extend(range(int(offsets_V1[t]), int(offsets_V1[t + 1])))
        offsets.append(len(rows))
    return rows, offsets


@pytest.mark.parametrize("seed", range(5))
def test_route_matches_reference(seed):
    alloc = _allocation()
    router = embedkit_l3.StaticTokenRouter(allocation=alloc)
    assert router.static and router.num_rows == 200 and router.vocab_size == 30
    assert (alloc.rows_per_token() == 16).any(), "the test needs tokens at the cap k"
    gen = torch.Generator().manual_seed(seed)
    ids_BL = torch.randint(0, 30, (4, 9), generator=gen)
    ids_BL[0, :3] = ids_BL[1, 0]  # repeated tokens
    ids_BL[2, 0] = int(np.argmax(alloc.rows_per_token()))  # a token holding k rows
    routes = router.route(ids_BL)
    rows, offsets = reference_route(alloc.offsets(), ids_BL)
    assert routes.rows_N.tolist() == rows and routes.offsets_P1.tolist() == offsets
    assert routes.weights_N is None and routes.rows_N.dtype == torch.int64


def test_every_token_is_routed_and_rows_partition_the_table():
    alloc = _allocation()
    routes = embedkit_l3.StaticTokenRouter(allocation=alloc).route(torch.arange(30)[None])
    assert routes.rows_N.tolist() == list(range(200))
    assert (routes.counts_P() >= 1).all()


def test_empty_batch():
    routes = embedkit_l3.StaticTokenRouter(allocation=_allocation()).route(
        torch.empty(0, 5, dtype=torch.int64)
    )
    assert routes.rows_N.numel() == 0 and routes.offsets_P1.tolist() == [0]


def test_unfitted_allocation_is_refused():
    with pytest.raises(ValueError, match="not fitted"):
        embedkit_l3.StaticTokenRouter(allocation=embedkit_l3.LZWAllocation(num_rows=10))
