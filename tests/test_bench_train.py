"""``embedkit bench train`` end to end on two tiny recipes (CPU here; the H100 run is committed
under docs/benchmarks/), and its checks of ``--runs``."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from embedkit.bench.train import parse_runs
from embedkit.cli import main
from embedkit.commands.info import describe
from embedkit.run_environment import source_hash

TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny"


def test_bench_train_writes_json_markdown_and_png(tmp_path, capsys):
    out = tmp_path / "bench"
    dense, table = str(TINY / "dense.yaml"), str(TINY / "token-table.yaml")
    main(
        [
            "bench", "train", "--runs", f"dense={dense}", f"table={table}", "--steps=2",
            "--warmup=1", "--rounds=2", "--batch_size=2", "--seq_len=32", "--device=cpu",
            f"--output={out}", "--name=tiny",
        ]
    )  # fmt: skip
    results = json.loads((out / "tiny.json").read_text())
    assert results["command"].startswith("embedkit ")
    assert results["code"]["embedkit"]["source_hash"] == source_hash()
    assert results["baseline"] == "dense" and results["precision"] == "32-true"
    assert [r["name"] for r in results["runs"]] == ["dense", "table"]
    baseline, other = results["runs"]
    assert baseline["ratio"] == 1.0
    pairs = zip(other["tokens_per_s_rounds"], baseline["tokens_per_s_rounds"], strict=True)
    rounds = [mine / base for mine, base in pairs]  # each round's runs ran back to back
    assert other["ratio_rounds"] == pytest.approx(rounds)
    assert other["ratio"] == pytest.approx(statistics.median(rounds))
    for run, recipe in ((baseline, dense), (other, table)):
        assert run["configs"] == [recipe]
        assert (run["batch_size"], run["seq_len"], run["tokens_per_step"]) == (2, 32, 64)
        assert len(run["tokens_per_s_rounds"]) == 2
        assert 0 < run["tokens_per_s_min"] <= run["tokens_per_s"] <= run["tokens_per_s_max"]
        assert run["peak_memory_gib"] is None and run["gradient_clip_val"] == 1.0
        assert run["parameters"]["active"] == describe([recipe])["parameters_active"]
        assert run["inference_flops_per_token"] > 0 and run["loss"] > 0
    assert "| dense |" in (out / "tiny.md").read_text()
    assert (out / "tiny.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob(".*.tmp"))
    printed = capsys.readouterr().out
    assert "| table |" in printed and f"wrote {out / 'tiny.json'}" in printed


@pytest.mark.parametrize(
    ("runs", "message"),
    [
        ([], "--runs is empty"),
        (["dense"], "--runs entry 'dense' is invalid; valid: NAME=CONFIG"),
        (["=recipes/tiny/dense.yaml"], "is invalid"),
        ([f"a={TINY / 'dense.yaml'},"], "is invalid"),
        ([f"a={TINY / 'dense.yaml'}", f"a={TINY / 'dense.yaml'}"], "'a' is given twice"),
        (["a=missing.yaml"], "config 'missing.yaml' is not a file"),
    ],
)
def test_bad_runs_are_named(runs, message):
    with pytest.raises(ValueError, match=message):
        parse_runs(runs)


def test_bad_run_is_a_cli_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "train", "--runs", "dense:recipes/tiny/dense.yaml", f"--output={tmp_path}"])
    assert exit_info.value.code == 2
    assert (
        "embedkit: error: --runs entry 'dense:recipes/tiny/dense.yaml'" in capsys.readouterr().err
    )
