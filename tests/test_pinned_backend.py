"""``PinnedCPUBackend`` beyond the conformance suite: persistence, the CPU path, the UVA kernel.

The CUDA tests run only where CUDA is available (the Triton kernel, the side-stream prefetch).
Tables hold random bit patterns (NaNs included), so rows are compared through integer views.

Legend: N = number of gathered rows, R = rows of the table, D = row width.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch import nn

from embedkit.backends.manifest import MANIFEST_NAME, read_manifest
from embedkit.backends.pinned import SMALL_PREFETCH_BYTES, TABLE_FILE, PinnedCPUBackend
from embedkit.dtypes import DTYPES
from tests.support.interpreter import needs_triton_interpreter, run_interpreted

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int16) if x.element_size() == 2 else x.view(torch.int32)


def _random_table(num_rows: int, dim: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Random bit patterns of ``dtype`` (NaNs and infinities included)."""
    g = torch.Generator().manual_seed(seed)
    word = torch.int16 if dtype.itemsize == 2 else torch.int32
    info = torch.iinfo(word)
    return torch.randint(info.min, info.max, (num_rows, dim), generator=g, dtype=word).view(dtype)


def _filled(num_rows: int, dim: int, name: str, device: str = "cpu"):
    backend = PinnedCPUBackend(num_rows=num_rows, dim=dim, dtype=name, device=device)
    values_RD = _random_table(num_rows, dim, DTYPES[name])
    backend.write(0, values_RD)
    return backend, values_RD


@pytest.fixture(params=list(DTYPES))
def name(request) -> str:
    return request.param


def test_new_table_is_zero_and_lands_on_cpu_when_asked():
    backend = PinnedCPUBackend(num_rows=5, dim=3, device="cpu")
    assert backend.device == torch.device("cpu")
    assert torch.equal(backend.gather(torch.arange(5)), torch.zeros(5, 3))


def test_cpu_gather_equals_embedding(name):
    backend, values_RD = _filled(50, 13, name)
    reference = nn.Embedding(50, 13, _weight=values_RD.clone())
    rows_N = torch.tensor([7, 7, 0, 49, 3, 7])
    assert torch.equal(_bits(backend.gather(rows_N)), _bits(reference(rows_N)))


def test_gather_fills_given_buffer():
    backend, values_RD = _filled(20, 4, "float32")
    out_ND = torch.empty(3, 4)
    result = backend.gather(torch.tensor([1, 2, 1]), out=out_ND)
    assert result.data_ptr() == out_ND.data_ptr()
    assert torch.equal(_bits(out_ND), _bits(values_RD[[1, 2, 1]]))
    with pytest.raises(ValueError, match="out must be"):
        backend.gather(torch.tensor([1, 2]), out=out_ND)


@pytest.mark.parametrize("rows", [[3, 3, 0, 19], [], [19]])
def test_prefetch_equals_gather(name, rows):
    backend, _ = _filled(20, 6, name)
    rows_N = torch.tensor(rows, dtype=torch.int64)
    handle = backend.prefetch(rows_N)
    assert torch.equal(_bits(handle.wait()), _bits(backend.gather(rows_N)))


def test_prefetch_copies_rows_and_write_waits_for_it():
    backend, values_RD = _filled(20, 6, "float32")
    rows_N = torch.tensor([4, 5])
    handle = backend.prefetch(rows_N)
    rows_N[0] = 9  # the caller reuses its buffer at once
    backend.write(4, torch.full((1, 6), 7.0))  # must not reach the rows in flight
    assert torch.equal(_bits(handle.wait()), _bits(values_RD[[4, 5]]))
    with pytest.raises(IndexError, match="20"):
        backend.prefetch(torch.tensor([20]))


def test_save_open_round_trip(tmp_path, name):
    backend, values_RD = _filled(33, 9, name)
    manifest = backend.save(str(tmp_path / "table"))
    raw = (tmp_path / "table" / TABLE_FILE).read_bytes()
    assert len(raw) == values_RD.numel() * values_RD.element_size()
    assert manifest == read_manifest(tmp_path / "table")
    assert (manifest.num_rows, manifest.dim, manifest.dtype) == (33, 9, name)
    assert (manifest.tier, manifest.codec) == ("pinned", "none")
    assert manifest.content_hash == hashlib.sha256(raw).hexdigest()
    opened = PinnedCPUBackend.open(str(tmp_path / "table"), device="cpu")
    assert (opened.num_rows, opened.dim, opened.dtype) == (33, 9, DTYPES[name])
    assert torch.equal(_bits(opened.gather(torch.arange(33))), _bits(values_RD))


def test_save_keeps_given_hash_and_replaces_a_table(tmp_path):
    backend, _ = _filled(4, 2, "float32")
    backend.save(str(tmp_path / "t"))
    backend.write(0, torch.ones(4, 2))
    manifest = backend.save(str(tmp_path / "t"), content_hash="abc", producer={"vocab_hash": "v"})
    assert (manifest.content_hash, manifest.producer) == ("abc", {"vocab_hash": "v"})
    opened = PinnedCPUBackend.open(str(tmp_path / "t"))
    assert torch.equal(opened.gather(torch.arange(4)).cpu(), torch.ones(4, 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"], "no staging left behind"


def test_save_refuses_to_replace_other_files(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "notes.txt").write_text("mine")
    backend, _ = _filled(4, 2, "float32")
    with pytest.raises(ValueError, match="holds no embedkit table"):
        backend.save(str(tmp_path / "t"))
    assert (tmp_path / "t" / "notes.txt").read_text() == "mine"


def test_open_truncated_table_names_path_and_sizes(tmp_path):
    backend, _ = _filled(10, 8, "bfloat16")
    backend.save(str(tmp_path / "t"))
    path = tmp_path / "t" / TABLE_FILE
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"{TABLE_FILE} holds 100 bytes, expected 160"):
        PinnedCPUBackend.open(str(tmp_path / "t"))


def test_open_refuses_another_tier(tmp_path):
    backend, _ = _filled(4, 2, "float32")
    backend.save(str(tmp_path / "t"))
    manifest_path = tmp_path / "t" / MANIFEST_NAME
    manifest_path.write_text(json.dumps({**json.loads(manifest_path.read_text()), "tier": "zarr"}))
    with pytest.raises(ValueError, match="tier='zarr', expected 'pinned'"):
        PinnedCPUBackend.open(str(tmp_path / "t"))


def test_unknown_device_is_refused():
    with pytest.raises(ValueError, match="device='tpu'"):
        PinnedCPUBackend(num_rows=2, dim=2, device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only machines")
def test_cuda_device_without_cuda_is_refused():
    with pytest.raises(ValueError, match="CUDA is not available"):
        PinnedCPUBackend(num_rows=2, dim=2, device="cuda")


# --- CUDA: the UVA kernel and the side-stream prefetch -------------------------------------


@needs_cuda
@pytest.mark.parametrize("num_n", [0, 1, 64, 65_536])
@pytest.mark.parametrize("dim", [1, 7, 64, 1024, 4096])
def test_uva_gather_is_bit_exact(name, dim, num_n):
    backend, values_RD = _filled(1000, dim, name, device="cuda")
    assert backend._table_RD.is_pinned()
    g = torch.Generator().manual_seed(num_n + dim)
    rows_N = torch.randint(0, 1000, (num_n,), generator=g)
    rows_N[: num_n // 2] = rows_N[num_n // 2 : 2 * (num_n // 2)]  # plenty of repeats
    expected_ND = values_RD.cuda().index_select(0, rows_N.cuda())
    got_ND = backend.gather(rows_N)
    assert got_ND.device == backend.device and got_ND.shape == (num_n, dim)
    assert torch.equal(_bits(got_ND), _bits(expected_ND))
    out_ND = torch.full_like(expected_ND, float("nan"))
    backend.gather(rows_N.int(), out=out_ND)  # int32 rows, into a given buffer
    assert torch.equal(_bits(out_ND), _bits(expected_ND))


@needs_cuda
def test_uva_gather_on_another_stream_in_every_specialisation(name):
    """Repeated gathers on a side stream (as L³'s planning stream issues them) queue there,
    and read the right rows with each row dtype and pointer alignment (rows and output at
    odd offsets), each of which Triton compiles apart."""
    from embedkit.backends.uva_gather import gather_rows

    backend, values_RD = _filled(1000, 25, name, device="cuda")
    rows_N = torch.randint(0, 1000, (301,), generator=torch.Generator().manual_seed(1))
    side = torch.cuda.Stream()
    for _ in range(3):
        for dtype in (torch.int64, torch.int32):
            for shift in (0, 1):  # 1: rows and output one element / row past 16-byte alignment
                rows_dev_N = torch.cat((rows_N[:shift], rows_N)).to(dtype).cuda()[shift:]
                out_ND = torch.empty((302, 25), dtype=values_RD.dtype, device="cuda")
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # a gather on another stream would pass the fill
                    torch.cuda._sleep(1_000_000)
                    out_ND.fill_(float("nan"))
                    gather_rows(backend.host_table, rows_dev_N, out_ND[shift : shift + 301])
                torch.cuda.current_stream().wait_stream(side)
                got_ND = out_ND[shift : shift + 301].cpu()
                assert torch.equal(_bits(got_ND), _bits(values_RD[rows_N])), (dtype, shift)


@needs_triton_interpreter
def test_uva_gather_indexing_in_the_triton_interpreter():
    """The kernel's indexing on the CPU (every word size, capped grids, rows out of range)."""
    run_interpreted("tests.support.interpreted_gather", "interpreted gathers: ok")


@needs_cuda
@pytest.mark.parametrize("max_programs", [1, 5, 264])
@pytest.mark.parametrize("dim", [7, 1024, 4096])
def test_uva_gather_with_a_capped_grid_is_bit_exact(name, dim, max_programs):
    from embedkit.backends.uva_gather import gather_rows

    backend, values_RD = _filled(1000, dim, name, device="cuda")
    rows_N = torch.randint(0, 1000, (5000,), generator=torch.Generator().manual_seed(dim))
    out_ND = torch.full((5000, dim), float("nan"), dtype=values_RD.dtype, device="cuda")
    gather_rows(backend.host_table, rows_N.cuda(), out_ND, max_programs=max_programs)
    assert torch.equal(_bits(out_ND.cpu()), _bits(values_RD[rows_N]))


@needs_cuda
def test_uva_gather_with_rows_on_the_gpu(name):
    backend, values_RD = _filled(300, 24, name, device="cuda")
    rows_N = torch.tensor([5, 299, 5, 0], device="cuda")
    assert torch.equal(_bits(backend.gather(rows_N).cpu()), _bits(values_RD[[5, 299, 5, 0]]))
    strided_N = torch.arange(0, 300, 2, device="cuda")[::3]  # not contiguous
    assert torch.equal(_bits(backend.gather(strided_N).cpu()), _bits(values_RD[0:300:6]))
    # GPU rows are not validated (no host sync): out of range reads nothing and yields zeros.
    bad_ND = backend.gather(torch.tensor([-1, 300, 7], device="cuda")).cpu()
    assert not _bits(bad_ND[:2]).any() and torch.equal(_bits(bad_ND[2]), _bits(values_RD[7]))


@needs_cuda
def test_prefetch_runs_beside_a_busy_default_stream(name):
    backend, values_RD = _filled(4096, 1024, name, device="cuda")
    rows_N = torch.randint(0, 4096, (8192,), generator=torch.Generator().manual_seed(3))
    expected_ND = values_RD[rows_N]
    # Warm up: compile the kernel and let the allocators cache pinned and device blocks; a
    # first-time cudaHostAlloc serialises the streams (CUDA's implicit synchronisation).
    backend.prefetch(rows_N).wait()
    torch.cuda.synchronize()
    busy_MM = torch.randn(4096, 4096, device="cuda")
    for _ in range(60):  # some 100 ms of work queued on the default stream
        busy_MM = torch.tanh(busy_MM @ busy_MM)
    handle = backend.prefetch(rows_N)
    handle._ready.synchronize()  # the side stream finished while the default one still runs
    assert not torch.cuda.current_stream().query(), "prefetch waited for the default stream"
    got_ND = handle.wait().clone()  # queued on the default stream after the prefetch
    # Rows computed on the default stream: the prefetch must wait for them.
    rows_dev_N = rows_N.cuda() + (busy_MM.sum() * 0).nan_to_num().long()
    got_dev_ND = backend.prefetch(rows_dev_N).wait()
    torch.cuda.synchronize()
    assert torch.equal(_bits(got_ND.cpu()), _bits(expected_ND))
    assert torch.equal(_bits(got_dev_ND.cpu()), _bits(expected_ND))


@needs_cuda
def test_write_waits_for_gathers_in_flight():
    backend, values_RD = _filled(2048, 512, "float32", device="cuda")
    rows_N = torch.arange(2048).repeat(16)
    handle = backend.prefetch(rows_N)
    gathered_ND = backend.gather(rows_N)
    backend.write(0, torch.zeros(2048, 512))
    expected_ND = _bits(values_RD.repeat(16, 1))
    assert torch.equal(_bits(handle.wait().cpu()), expected_ND)
    assert torch.equal(_bits(gathered_ND.cpu()), expected_ND)


@needs_cuda
# DIRECT_COPY_ROWS (4) rows: copied from the table; 64 rows of 4 KiB: the CPU gather's limit
@pytest.mark.parametrize("num_n", [1, 4, 5, 64, 65])
def test_small_prefetch_is_copied_on_the_stream_and_kept_from_later_writes(num_n):
    backend, values_RD = _filled(1024, 1024, "float32", device="cuda")
    rows_N = torch.randint(0, 1024, (num_n,), generator=torch.Generator().manual_seed(4))
    busy_MM = torch.randn(2048, 2048, device="cuda")
    for _ in range(30):  # the prefetch's copies queue behind some 10 ms of work
        busy_MM = torch.tanh(busy_MM @ busy_MM)
    handle = backend.prefetch(rows_N)
    assert (type(handle).__name__ == "ReadyRows") == (num_n * 1024 * 4 <= SMALL_PREFETCH_BYTES)
    backend.write(0, torch.zeros(1024, 1024))  # the prefetched rows are those read before it
    got_ND = handle.wait()
    assert got_ND.device.type == "cuda"
    assert torch.equal(_bits(got_ND.cpu()), _bits(values_RD[rows_N]))
