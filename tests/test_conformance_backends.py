"""Conformance of every registered ``EmbeddingBackend`` (third-party ones included).

Every backend is created empty through ``cls(num_rows=, dim=, dtype=)``; its rows are written
with ``write`` and compared with an ``nn.Embedding`` reference holding the same values.

Backends with storage are also reopened with ``open``, damaged and refused. A backend has
storage when it lives in it (a ``location`` attribute: where ``open`` finds it) or stores
itself on request (``save(location)``); the stored table carries the table manifest
(``embedkit.backends.manifest``). One whose ``open`` takes ``expected=`` checks it against the
manifest. The core tiers (``embedkit.backends``) all have storage and take ``expected=``:
their tests are never skipped.

Legend: N = number of requested rows, D = row width.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from embedkit import registry
from embedkit.backends.manifest import MANIFEST_NAME
from embedkit.dtypes import DTYPES

BACKENDS = registry.specs("EmbeddingBackend")
NUM_ROWS, DIM = 97, 24


def _integer_view(x: torch.Tensor) -> torch.Tensor:
    # Random 16-bit patterns include NaNs, so rows are compared bit for bit.
    return x.view(torch.int16) if x.element_size() == 2 else x.view(torch.int32)


@pytest.fixture(params=BACKENDS, ids=[s.short_name for s in BACKENDS])
def backend_cls(request) -> type:
    return request.param.load()


@pytest.fixture(params=list(DTYPES))
def dtype_name(request) -> str:
    return request.param


def _filled(backend_cls: type, dtype_name: str) -> tuple[object, nn.Embedding]:
    backend = backend_cls(num_rows=NUM_ROWS, dim=DIM, dtype=dtype_name)
    values = torch.randn(NUM_ROWS, DIM, generator=torch.Generator().manual_seed(0))
    values = values.to(DTYPES[dtype_name])
    backend.write(0, values)
    reference = nn.Embedding(NUM_ROWS, DIM, _weight=values.clone())
    return backend, reference


ROW_SETS = {
    "random": torch.randint(0, NUM_ROWS, (50,), generator=torch.Generator().manual_seed(1)),
    "repeated": torch.tensor([3, 3, 3, 0, 96, 0, 3]),
    "unsorted": torch.tensor([96, 5, 40, 1, 0, 77]),
    "empty": torch.tensor([], dtype=torch.int64),
}


def test_metadata(backend_cls, dtype_name):
    backend = backend_cls(num_rows=NUM_ROWS, dim=DIM, dtype=dtype_name)
    assert (backend.num_rows, backend.dim, backend.dtype) == (NUM_ROWS, DIM, DTYPES[dtype_name])
    assert isinstance(backend.device, torch.device)


@pytest.mark.parametrize("row_set", list(ROW_SETS))
def test_gather_equals_embedding(backend_cls, dtype_name, row_set):
    backend, reference = _filled(backend_cls, dtype_name)
    rows_N = ROW_SETS[row_set]
    gathered_ND = backend.gather(rows_N)
    expected_ND = reference(rows_N)
    assert gathered_ND.shape == (rows_N.numel(), DIM)
    assert gathered_ND.dtype == DTYPES[dtype_name]
    assert gathered_ND.device == backend.device
    assert torch.equal(_integer_view(gathered_ND.cpu()), _integer_view(expected_ND))


@pytest.mark.parametrize("row_set", list(ROW_SETS))
def test_prefetch_equals_gather(backend_cls, dtype_name, row_set):
    backend, _ = _filled(backend_cls, dtype_name)
    rows_N = ROW_SETS[row_set]
    handle = backend.prefetch(rows_N)
    assert torch.equal(
        _integer_view(handle.wait().cpu()), _integer_view(backend.gather(rows_N).cpu())
    )


@pytest.mark.parametrize("row_set", list(ROW_SETS))
def test_rows_on_the_device_give_the_host_rows_rows(backend_cls, dtype_name, row_set):
    """A backend that reads rows already on its device (``reads_device_rows``) gathers and
    prefetches from them what it gives for the same rows on the host."""
    backend, reference = _filled(backend_cls, dtype_name)
    assert isinstance(backend.reads_device_rows, bool)
    if not backend.reads_device_rows:
        return  # the default: callers give host rows, which the tests above cover
    rows_N = ROW_SETS[row_set]
    on_device_N = rows_N.to(backend.device)
    expected_ND = _integer_view(reference(rows_N))
    assert torch.equal(_integer_view(backend.gather(on_device_N).cpu()), expected_ND)
    assert torch.equal(_integer_view(backend.prefetch(on_device_N).wait().cpu()), expected_ND)


def test_a_gather_from_device_rows_queues_on_the_current_stream(backend_cls):
    """Callers with rows on a CUDA device may gather on a stream of their own (L³'s planning
    stream): the gather queues there, after the work that produced the rows on it."""
    backend, reference = _filled(backend_cls, "float32")
    if not (backend.reads_device_rows and backend.device.type == "cuda"):
        return  # host rows only, or no CUDA: the tests above cover it
    rows_N = ROW_SETS["random"]
    source_N = rows_N.to(backend.device)
    on_device_N = torch.zeros_like(source_N)  # row 0 until the side stream writes the rows
    side = torch.cuda.Stream(backend.device)
    side.wait_stream(torch.cuda.current_stream(backend.device))
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # a gather on another stream would run before the copy
        on_device_N.copy_(source_N)
        gathered_ND = backend.gather(on_device_N)
    torch.cuda.current_stream(backend.device).wait_stream(side)
    assert torch.equal(_integer_view(gathered_ND.cpu()), _integer_view(reference(rows_N)))


def test_partial_write_round_trips(backend_cls, dtype_name):
    backend, reference = _filled(backend_cls, dtype_name)
    block = torch.full((5, DIM), 1.5, dtype=DTYPES[dtype_name])
    backend.write(10, block)
    rows = torch.arange(8, 17)
    expected = reference(rows).clone()
    expected[2:7] = block
    assert torch.equal(_integer_view(backend.gather(rows).cpu()), _integer_view(expected))


@pytest.mark.parametrize("bad_row", [-1, NUM_ROWS])
def test_row_out_of_range_is_refused(backend_cls, bad_row):
    backend, _ = _filled(backend_cls, "float32")
    with pytest.raises(IndexError, match=str(bad_row)):
        backend.gather(torch.tensor([0, bad_row]))


@pytest.mark.parametrize(
    "values, message",
    [
        (torch.zeros(3, DIM + 1), "shape"),
        (torch.zeros(3, DIM, dtype=torch.float64), "dtype"),
        (torch.zeros(NUM_ROWS, DIM), "leaves the table"),
    ],
    ids=["shape", "dtype", "overflow"],
)
def test_bad_write_is_refused_and_leaves_rows(backend_cls, values, message):
    backend, reference = _filled(backend_cls, "float32")
    with pytest.raises(ValueError, match=message):
        backend.write(5, values)
    rows = torch.arange(NUM_ROWS)
    assert torch.equal(backend.gather(rows).cpu(), reference(rows))


def _store(backend, tmp_path: Path) -> str:
    """Where ``backend``'s table is stored; skips the test for tiers without storage."""
    location = getattr(backend, "location", None)
    if location is None and callable(getattr(backend, "save", None)):
        location = str(tmp_path / "table")
        backend.save(location)
    if location is None:
        assert not _is_core(type(backend)), f"{type(backend).__name__} lost its storage"
        pytest.skip(f"{type(backend).__name__} has no storage")
    return location


def _is_core(cls: type) -> bool:
    return cls.__module__.startswith("embedkit.backends.")


def _manifest_path(location: str) -> Path:
    return Path(location) / MANIFEST_NAME


def test_reopened_store_gives_same_rows(backend_cls, dtype_name, tmp_path):
    backend, reference = _filled(backend_cls, dtype_name)
    reopened = backend_cls.open(_store(backend, tmp_path))
    assert (reopened.num_rows, reopened.dim, reopened.dtype) == (NUM_ROWS, DIM, DTYPES[dtype_name])
    rows_N = ROW_SETS["random"]
    assert torch.equal(
        _integer_view(reopened.gather(rows_N).cpu()), _integer_view(reference(rows_N))
    )


def test_truncated_store_is_refused_naming_the_file(backend_cls, tmp_path):
    backend, _ = _filled(backend_cls, "float32")
    location = _store(backend, tmp_path)
    files = [p for p in Path(location).rglob("*") if p.is_file() and p.name != MANIFEST_NAME]
    victim = max(files, key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(ValueError, match=re.escape(str(victim))):
        backend_cls.open(location).gather(torch.arange(NUM_ROWS))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda path: path.unlink(), "missing"),
        (lambda path: path.write_text("{not json"), "not a valid embedkit table manifest"),
        (lambda path: _edit(path, num_rows=NUM_ROWS + 1), None),
        (lambda path: _edit(path, dim=DIM - 1), None),
    ],
    ids=["missing", "corrupt", "num-rows-not-the-data", "dim-not-the-data"],
)
def test_manifest_not_describing_the_store_is_refused(backend_cls, tmp_path, damage, message):
    backend, _ = _filled(backend_cls, "float32")
    location = _store(backend, tmp_path)
    damage(_manifest_path(location))
    with pytest.raises(ValueError, match=message) as caught:
        backend_cls.open(location).gather(torch.arange(NUM_ROWS))
    assert location in str(caught.value)


def _edit(path: Path, **fields: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def test_store_not_matching_expectations_is_refused(backend_cls, tmp_path):
    if "expected" not in inspect.signature(backend_cls.open).parameters:
        assert not _is_core(backend_cls), f"{backend_cls.__name__}.open lost expected="
        pytest.skip(f"{backend_cls.__name__}.open takes no expected=")
    backend, _ = _filled(backend_cls, "float32")
    location = _store(backend, tmp_path)
    backend_cls.open(location, expected={"num_rows": NUM_ROWS, "dim": DIM, "dtype": "float32"})
    with pytest.raises(ValueError, match=rf"dim={DIM}, expected {DIM + 1}.*dtype='float32'"):
        backend_cls.open(location, expected={"dim": DIM + 1, "dtype": "bfloat16"})
