"""``embedkit bench storage`` end to end on a tiny table (CPU here; the H100 run is committed
under docs/benchmarks/)."""

from __future__ import annotations

import json

from embedkit.cli import main


def test_bench_storage_writes_json_markdown_and_png(tmp_path, capsys):
    out = tmp_path / "bench"
    main(
        [
            "bench", "storage", "--rows=5000", "--dim=64", "--dtype=float16",
            "--zarr_rows=3000", "--batch_sizes=[64, 512]", "--repeats=4", f"--output={out}",
            f"--zarr_path={tmp_path / 'store'}",
        ]
    )  # fmt: skip
    results = json.loads((out / "storage.json").read_text())
    methods = {r["method"] for r in results["results"]}
    assert {"GPUBackend", "PinnedCPUBackend", "ZarrBackend"} <= methods
    assert {r["rows"] for r in results["results"]} == {64, 512}
    assert all(r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] for r in results["results"])
    assert "| ZarrBackend | 512 |" in (out / "storage.md").read_text()
    assert (out / "storage.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out
