"""``embedkit compare``: figures and deltas of run directories against a baseline, refusal of
runs whose validation losses are not comparable, clear errors for bad summaries."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from embedkit.cli import main
from embedkit.compare import compare_values, load_runs, pick_baseline
from embedkit.compare.report import training_flops
from tests.test_run_record import tiny_fit


def write_run(
    run_dir: Path,
    *,
    loss: float,
    params: int,
    tokens: int = 1000,
    tokenizer: str = "bpe-1",
    validation: str = "val-1",
) -> Path:
    """A run directory with a hand-written ``summary.json``."""
    run_dir.mkdir(parents=True)
    summary = {
        "schema_version": 1,
        "status": "finished",
        "data": {"tokenizer_fingerprint": tokenizer, "validation_hash": validation},
        "model": {
            "parameters_total": params,
            "parameters_active": params // 2,
            "inference_flops_per_token": 2 * params,
            "accelerator_parameter_bytes": 4 * params,
        },
        "tables": {"PinnedCPUBackend": {"tables": 1, "rows": 64, "bytes": 4096}},
        "training": {"steps": 10, "tokens_seen": tokens, "wall_time_s": 2.0, "tokens_per_s": 500},
        "validation": {
            "history": [
                {"step": 5, "tokens_seen": tokens // 2, "loss": loss + 0.5, "perplexity": 9.0},
                {"step": 10, "tokens_seen": tokens, "loss": loss, "perplexity": 5.0},
            ],
            "final_loss": loss,
            "final_perplexity": 5.0,
            "best_loss": loss,
            "best_perplexity": 5.0,
            "best_step": 10,
        },
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


@pytest.fixture
def two_runs(tmp_path) -> list[Path]:
    return [
        write_run(tmp_path / "dense" / "lightning_logs" / "version_0", loss=2.0, params=100),
        write_run(tmp_path / "l3" / "lightning_logs" / "version_0", loss=1.75, params=300),
    ]


def test_values_and_deltas_against_the_baseline(two_runs):
    runs = load_runs(two_runs)
    assert [run.name for run in runs] == ["dense/version_0", "l3/version_0"]
    base, other = compare_values(runs, pick_baseline(runs, None))
    assert base["final_val_loss_delta"] == 0 and base["parameters_total_ratio"] == 1
    assert other["final_val_loss"] == 1.75 and other["final_val_loss_delta"] == -0.25
    assert other["parameters_total_delta"] == 200 and other["parameters_total_ratio"] == 3
    assert other["training_flops"] == 3 * 600 * 1000  # 3 x inference FLOPs/token x tokens
    assert other["table_bytes"] == 4096 and other["tables"] == "PinnedCPUBackend: 64 rows"
    # Against the other baseline, by name or index.
    assert pick_baseline(runs, "l3/version_0") == pick_baseline(runs, "1") == 1
    assert compare_values(runs, 1)[0]["final_val_loss_delta"] == 0.25
    with pytest.raises(ValueError, match=r"--baseline='moe' names no run; valid: .*0=dense"):
        pick_baseline(runs, "moe")


def test_training_flops_add_the_recorded_training_only_work(tmp_path):
    path = write_run(tmp_path / "scone" / "lightning_logs" / "version_0", loss=2.0, params=100)
    summary = json.loads((path / "summary.json").read_text())
    summary["training"]["extra_training_flops"] = 5e5
    summary["validation"]["history"][0]["extra_training_flops"] = 2e5
    (path / "summary.json").write_text(json.dumps(summary))
    (run,) = load_runs([path])
    assert training_flops(run.summary) == 3 * 200 * 1000 + 5e5
    first, second = run.summary["validation"]["history"]
    assert training_flops(run.summary, first) == 3 * 200 * 500 + 2e5
    assert training_flops(run.summary, second) == 3 * 200 * 1000  # not recorded: none added


def test_command_writes_markdown_csv_and_plots(two_runs, tmp_path, capsys):
    out = tmp_path / "report"
    main(["compare", *map(str, two_runs), "--baseline", "1", "--output", str(out)])
    markdown = (out / "comparison.md").read_text()
    assert "| final val loss | 2.0000 (+0.25) | 1.7500 |" in markdown
    assert "| parameters (total) | 100 (0.333x) | 300 |" in markdown
    assert "l3/version_0 (baseline)" in markdown and markdown in capsys.readouterr().out
    with open(out / "comparison.csv", newline="") as table:
        rows = list(csv.DictReader(table))
    assert [row["run"] for row in rows] == ["dense/version_0", "l3/version_0"]
    assert float(rows[0]["best_val_loss_delta"]) == 0.25
    for name in ("val_loss_vs_tokens.png", "val_loss_vs_flops.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("field", ["tokenizer", "validation"])
def test_runs_of_other_data_are_refused_unless_allowed(field, tmp_path, capsys):
    first = write_run(tmp_path / "a", loss=2.0, params=100)
    second = write_run(tmp_path / "b", loss=1.0, params=100, **{field: "other"})
    args = ["compare", str(first), str(second), "--output", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("embedkit: error: runs 'a' and 'b' differ in data.") and "\n" not in err
    assert f"{field}_" in err and "--allow_mismatch" in err
    main([*args, "--allow_mismatch"])
    assert "Not comparable" in (tmp_path / "out" / "comparison.md").read_text()
    assert "embedkit: warning: runs 'a' and 'b' differ" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "summary.json: not found"),
        ("{not json", "summary.json: corrupt run summary, not valid JSON"),
        ('{"status": "finished"}', "summary.json: corrupt run summary, it has no integer"),
        ('{"schema_version": 99}', "schema_version=99 is newer than this embedkit reads (1)"),
    ],
    ids=["missing", "not-json", "no-schema-version", "newer-schema"],
)
def test_bad_summary_is_one_clear_line_naming_it(content, expected, tmp_path, capsys):
    good = write_run(tmp_path / "good", loss=2.0, params=100)
    bad = tmp_path / "bad"
    bad.mkdir()
    if content is not None:
        (bad / "summary.json").write_text(content)
    with pytest.raises(SystemExit):
        main(["compare", str(good), str(bad), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert f"embedkit: error: {bad / 'summary.json'}" in err and expected in err


def test_compare_two_tiny_fits(tmp_path, capsys):
    runs = [tiny_fit(tmp_path / f"seed{seed}", f"--seed_everything={seed}") for seed in (1, 2)]
    out = tmp_path / "report"
    main(["compare", *map(str, runs), "--output", str(out)])
    assert sorted(p.name for p in out.iterdir()) == [
        "comparison.csv",
        "comparison.md",
        "val_loss_vs_flops.png",
        "val_loss_vs_tokens.png",
    ]
    markdown = (out / "comparison.md").read_text()
    assert "seed1/version_0 (baseline)" in markdown and "| final val loss | " in markdown
    with open(out / "comparison.csv", newline="") as table:
        rows = list(csv.DictReader(table))
    assert rows[0]["parameters_total"] == rows[1]["parameters_total"]
    assert rows[0]["final_val_loss"] != rows[1]["final_val_loss"]  # other seeds, other losses
