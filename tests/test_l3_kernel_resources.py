"""L³'s forward kernel, as launched for each width and product type, fits an H100 (sm_90):
compiled ahead of time for that target on any machine (Triton bundles ``ptxas``), it keeps its
tiles in registers (at most ``MAX_LOCAL_BYTES`` per thread spilled to local memory) and within
the shared memory of one block. A launch that spills kilobytes per thread reads its tiles from
local memory, many times slower (the fp32 decode did, before its launches took 8 warps).

Legend: D = key width, E = value width.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.interpreter import needs_triton

pytestmark = needs_triton

# A few spilled registers; a spilled tile is kilobytes (the old 4-warp fp32 launch at width
# 512: 11,032). The bf16 launches spill 88-344 bytes by Triton version (344: Triton 3.6, width
# 512, untied; 128 with 3.9); the fp32 ones 0.
MAX_LOCAL_BYTES = 512
SM90_SHARED_BYTES = 232_448  # the most shared memory one block may use on an H100
POINTER_TYPES = {"Q": "*fp32", "ORDER": "*i64", "K": "*fp32", "V": "*fp32", "LSE": "*fp32"}


def _compiled(width: int, product: str, tied: bool):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from embedkit_l3.triton_lookup import TILE_POSITIONS, _forward, launches

    launch = launches(width, 2 if product == "bf16" else 4)["forward"]
    constants = {"D": width, "E": width, "BM": TILE_POSITIONS, "BN": launch.rows, "TIED": tied}
    signature = {}
    for name in _forward.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name == "OUT":
            signature[name] = f"*{product}"  # written in the product type
        elif name == "SCALE":
            signature[name] = "fp32"
        else:
            signature[name] = POINTER_TYPES.get(name, "*i64")  # the plan's work lists
    source = ASTSource(fn=_forward, signature=signature, constexprs=constants)
    options = {"num_warps": launch.warps, "num_stages": launch.stages}
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def _local_bytes(cubin: bytes, tmp_path: Path) -> int:
    """Bytes of local memory per thread (``STACK``) of the one kernel in ``cubin``."""
    import triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        pytest.skip(f"this Triton bundles no cuobjdump at {cuobjdump}")
    path = tmp_path / "kernel.cubin"
    path.write_bytes(cubin)
    usage = subprocess.run(
        [str(cuobjdump), "-res-usage", str(path)], capture_output=True, text=True, check=True
    ).stdout
    line = next(line for line in usage.splitlines() if "STACK:" in line)
    fields = dict(field.split(":", 1) for field in line.split())
    return int(fields["STACK"])


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("product", ["bf16", "fp32"])
@pytest.mark.parametrize("width", [512, 1024])
def test_forward_launch_fits_an_h100(width, product, tied, tmp_path):
    kernel = _compiled(width, product, tied)
    local = _local_bytes(kernel.asm["cubin"], tmp_path)
    assert local <= MAX_LOCAL_BYTES, f"D=E={width} {product}: {local} bytes spilled per thread"
    assert kernel.metadata.shared <= SM90_SHARED_BYTES, (width, product, kernel.metadata.shared)
