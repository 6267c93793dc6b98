"""Checks of the UVA gather kernel's indexing on the CPU, under Triton's interpreter.

Run as a script with ``TRITON_INTERPRET=1`` (``tests/test_pinned_backend.py`` does, in a
subprocess: Triton reads the flag when a kernel is defined). Every width class (8-, 4- and
2-byte words; rows narrower and wider than a program's 4 KiB), out-of-range rows and grids
capped below the number of row blocks are compared with a plain ``index_select``.

Legend: N = number of gathered rows, R = rows of the table, D = row width.
"""

from __future__ import annotations

import os

import torch

from embedkit.backends.uva_gather import gather_rows, plan_for

NUM_R = 500


def check(dim: int, dtype: torch.dtype, num_n: int, max_programs: int | None) -> None:
    generator = torch.Generator().manual_seed(dim * 1000 + num_n)
    table_RD = torch.randn(NUM_R, dim, generator=generator).to(dtype)
    rows_N = torch.randint(-3, NUM_R + 3, (num_n,), generator=generator)  # some out of range
    out_ND = torch.full((num_n, dim), 7, dtype=dtype)
    gather_rows(table_RD, rows_N, out_ND, max_programs=max_programs)
    valid_N = (rows_N >= 0) & (rows_N < NUM_R)
    want_ND = torch.zeros(num_n, dim, dtype=dtype)
    want_ND[valid_N] = table_RD[rows_N[valid_N]]
    word = torch.int16 if dtype.itemsize == 2 else torch.int32
    if not torch.equal(out_ND.view(word), want_ND.view(word)):
        raise AssertionError(f"dim={dim} {dtype} N={num_n} max_programs={max_programs}")


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    cases = [(512, torch.float32), (1536, torch.float32), (3, torch.float16), (24, torch.bfloat16)]
    for dim, dtype in cases:
        plan = plan_for(dim * dtype.itemsize)
        for num_n in (1, 2 * plan.block_n + 1, 37):
            for max_programs in (None, 1, 2 * plan.num_w_blocks + 1):
                check(dim, dtype, num_n, max_programs)
    print("interpreted gathers: ok")


if __name__ == "__main__":
    main()
