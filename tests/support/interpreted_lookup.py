"""Checks of L³'s three Triton kernels on the CPU, under Triton's interpreter: the fused lookup
(``triton_token_attention``) and its gradients equal the per-position reference
(``tests/support/l3_reference.py``), with tied and untied tables, a token of k = 512 rows
(several row blocks), a token of one row and a token over several position tiles.

Run as a script with ``TRITON_INTERPRET=1`` (``tests/test_l3_kernels.py`` does, in a subprocess:
Triton reads the flag when a kernel is defined). The interpreter runs the kernels' indexing and
arithmetic, not their launch settings (warps, stages): ``test_l3_kernel_resources`` and the
CUDA tests cover those.

Legend: P = positions, D = key width, E = value width, R = table rows, V = token ids.
"""

from __future__ import annotations

import os

import torch

from embedkit_l3.triton_lookup import plan_triton
from tests.support.l3_reference import assert_matches, fused_lookup, offsets, reference

NUM_V = 24
NUM_P = 120


def check(tied: bool) -> None:
    generator = torch.Generator().manual_seed(int(tied))
    dim, width = 32, 32 if tied else 16
    rows_V = torch.randint(1, 70, (NUM_V,), generator=generator)
    rows_V[0], rows_V[1], rows_V[2] = 512, 1, 33  # k rows, one row, across row blocks
    offsets_V1 = offsets(rows_V)
    num_r = int(offsets_V1[-1])
    keys_RD = torch.randn(num_r, dim, generator=generator).requires_grad_()
    values_RE = keys_RD if tied else torch.randn(num_r, width, generator=generator)
    values_RE.requires_grad_()
    ids_P = torch.randint(3, NUM_V, (NUM_P,), generator=generator)  # some tokens absent
    ids_P[:40] = 0  # one token over three position tiles
    ids_P[40] = 1
    ids_P[41:45] = 2
    ids_P = ids_P[torch.randperm(NUM_P, generator=generator)]
    query_PD = torch.randn(NUM_P, dim, generator=generator).requires_grad_()
    plan = plan_triton(ids_P, offsets_V1, num_rows=num_r, width=dim)
    fast_PE = fused_lookup(query_PD, plan, keys_RD, values_RE, tied=tied, scale=0.2)
    slow_PE = reference(query_PD, ids_P, offsets_V1, keys_RD, values_RE, 0.2)
    inputs = [query_PD, keys_RD] if tied else [query_PD, keys_RD, values_RE]
    assert_matches(fast_PE, slow_PE, inputs, generator, rtol=1e-5, atol=1e-5)


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    for tied in (True, False):
        check(tied)
    print("interpreted lookups: ok")


if __name__ == "__main__":
    main()
