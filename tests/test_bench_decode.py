"""``embedkit bench decode`` on the tiny recipes (CPU here; the H100 run is committed under
docs/benchmarks/): every variant is reported with its ratio to the gpu tier, exported tables
decode the same tokens on every tier as the model that owned them, bad options are named."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from embedkit.bench import decode as bench_decode
from embedkit.bench.decode import GREEDY, TIERS, decode
from embedkit.bench.decode_variants import Variant, overlay_paths, table_parts, tier_variants
from embedkit.cli import main
from embedkit.commands.recipe_args import build_connected, config_args
from embedkit.generation import generate
from embedkit.run_environment import source_hash

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny"
STORAGE = str(ROOT / "recipes" / "storage")
CPU = torch.device("cpu")
OFF_DEVICE = [(tier, prefetch) for tier in ("pinned", "zarr") for prefetch in (True, False)]
# 2,000 f-grams instead of 20,000: the f-gram table is computed for every tier.
SMALL_SCONE = """
model:
  decoder:
    init_args:
      input_embedding:
        init_args:
          vocab:
            init_args:
              num_entries: 2000
"""


def recipes(name: str, folder: Path) -> list[str]:
    """The tiny recipe ``name``, SCONE's with ``SMALL_SCONE`` written into ``folder`` after it."""
    if name != "scone":
        return [str(TINY / f"{name}.yaml")]
    (folder / "small-scone.yaml").write_text(SMALL_SCONE)
    return [str(TINY / "scone.yaml"), str(folder / "small-scone.yaml")]


def test_bench_decode_writes_every_variant(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the SCONE vocabulary and L³ allocation are fitted here
    runs = [f"{name}={','.join(recipes(name, tmp_path))}" for name in ("dense", "scone", "l3")]
    main(
        [
            "bench", "decode", "--runs", *runs, "--batch_sizes", "1", "2", "--prompt_len", "4",
            "--new_tokens", "3", "--warmup_tokens", "1", "--rounds", "2", "--device", "cpu",
            "--storage_recipes", STORAGE, "--work_dir", "work", "--output", "out",
            "--name", "tiny",
        ]
    )  # fmt: skip
    results = json.loads((tmp_path / "out" / "tiny.json").read_text())
    assert results["command"].startswith("embedkit ")
    assert results["code"]["embedkit"]["source_hash"] == source_hash()  # which code ran
    assert {"torch", "triton"} <= results["code"]["packages"].keys()
    assert (results["tiers"], results["batch_sizes"], results["rounds"]) == (list(TIERS), [1, 2], 2)
    expected = [("dense", "gpu", True, size) for size in (1, 2)]
    for run in ("scone", "l3"):
        for size in (1, 2):
            expected += [(run, "gpu", True, size)]
            expected += [(run, tier, prefetch, size) for tier, prefetch in OFF_DEVICE]
    variants = results["variants"]
    assert [(v["run"], v["tier"], v["prefetch"], v["batch_size"]) for v in variants] == expected
    dense, scone, l3 = results["runs"]
    assert dense["table_bytes"] == {} and dense["parameter_bytes"] > 0
    for run in (scone, l3):
        assert sorted(run["table_bytes"]) == sorted(TIERS)
        assert min(run["table_bytes"].values()) > 0
        assert (tmp_path / "work" / run["name"] / "zarr").is_dir()  # --work_dir is kept
    gpu = {(v["run"], v["batch_size"]): v for v in variants if v["tier"] == "gpu"}
    for v in variants:
        assert len(v["tokens_per_s_rounds"]) == 2 and v["tokens_per_s"] > 0
        assert v["tokens_per_s_min"] <= v["tokens_per_s"] <= v["tokens_per_s_max"]
        assert 0 < v["p50_ms"] <= v["p99_ms"] and v["prefill_ms"] > 0
        assert v["tokens_match_gpu"] is True  # greedy, the same weights on every tier
        base = gpu[v["run"], v["batch_size"]]["tokens_per_s_rounds"]
        pairs = zip(v["tokens_per_s_rounds"], base, strict=True)
        rounds = [mine / gpu_rate for mine, gpu_rate in pairs]  # the round's variants in turn
        assert v["ratio_to_gpu_rounds"] == pytest.approx(rounds)
        assert v["ratio_to_gpu"] == pytest.approx(statistics.median(rounds))
        base_p50 = gpu[v["run"], v["batch_size"]]["p50_ms_rounds"]
        pairs = zip(v["p50_ms_rounds"], base_p50, strict=True)
        p50_rounds = [gpu_p50 / mine for mine, gpu_p50 in pairs]
        assert v["p50_ratio_to_gpu_rounds"] == pytest.approx(p50_rounds)
        assert v["p50_ratio_to_gpu"] == pytest.approx(statistics.median(p50_rounds))
        if v["tier"] == "gpu":
            assert v["ratio_to_gpu"] == v["p50_ratio_to_gpu"] == 1.0
    markdown = (tmp_path / "out" / "tiny.md").read_text()
    assert "| l3 | zarr | off | 2 |" in markdown and "| dense | gpu | on | 1 |" in markdown
    assert (tmp_path / "out" / "tiny.png").read_bytes()[:4] == b"\x89PNG"
    assert not list((tmp_path / "out").glob(".*.tmp"))
    printed = capsys.readouterr().out
    assert "| scone | pinned | on | 1 |" in printed and "wrote out/tiny.json" in printed


# Weights under which the rows read from the tables reach the greedy tokens: at the recipes'
# initialisation every row repeats its last token, and L³ layers add nothing (their output
# projection starts at zero).
LIVELY = "model:\n  decoder:\n    init_args:\n      init_std: 0.1\n"


def _make_tables_matter(decoder) -> None:
    for part in table_parts(decoder):
        if hasattr(part, "mix"):  # L³
            torch.nn.init.normal_(part.mix.weight, std=0.5)


@pytest.mark.parametrize("name", ["scone", "l3"])
def test_exported_tables_decode_the_same_tokens_on_every_tier(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lively.yaml").write_text(LIVELY)
    configs = [*recipes(name, tmp_path), str(tmp_path / "lively.yaml")]
    _, model, data = build_connected(config_args(configs))
    _make_tables_matter(model.decoder)
    model.eval()
    text_N = data.shards.val_N  # real text, so that SCONE's f-grams occur
    prompts = [[int(i) for i in text_N[row * 16 : row * 16 + 12]] for row in range(3)]
    reference = generate(model.decoder, prompts, max_new_tokens=6, sampler=GREEDY)

    variants, table_bytes = tier_variants(
        name, configs, model, overlays=overlay_paths(STORAGE, TIERS), folder=tmp_path / "work",
        device=CPU,
    )  # fmt: skip
    assert [(v.tier, v.prefetch) for v in variants] == [("gpu", True), *OFF_DEVICE]
    assert sorted(table_bytes) == sorted(TIERS)
    for variant in variants:
        decoded = decode(variant, prompts, new_tokens=6, device=CPU)
        assert decoded.completions == reference, (variant.tier, variant.prefetch)
        assert len(decoded.step_s) == 5 and decoded.prefill_s > 0

    # The comparison can fail: without the tables' rows, other tokens come.
    with torch.no_grad():
        for key, param in model.decoder.named_parameters():
            if "table" in key or "fgram_model" in key:
                param.zero_()
    assert generate(model.decoder, prompts, max_new_tokens=6, sampler=GREEDY) != reference


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tiers", "gpu", "tape"], "--tiers: 'tape' is not a tier; valid: gpu, pinned, zarr"),
        (["--tiers", "gpu", "gpu"], "--tiers=['gpu', 'gpu'] names a tier twice"),
        (["--batch_sizes", "1", "0"], "--batch_sizes: 0 is invalid; valid: at least 1"),
        (["--new_tokens", "1"], "--new_tokens=1 is invalid; valid: at least 2"),
        (["--prompt_len", "0"], "--prompt_len=0 is invalid; valid: at least 1"),
        (
            ["--storage_recipes", "nowhere"],
            "--storage_recipes='nowhere': 'nowhere/gpu.yaml' is not a file",
        ),
        (
            ["--prompt_len", "100"],  # + 64 new tokens, in a model of 128 positions
            "--prompt_len + --new_tokens (or --warmup_tokens) = 164 exceeds the "
            "max_seq_len=128 of run 'dense'; valid: at most 128",
        ),
    ],
    ids=["unknown-tier", "tier-twice", "batch-size", "new-tokens", "prompt-len", "overlays",
         "too-long"],
)  # fmt: skip
def test_bad_options_are_one_clear_line(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if "--storage_recipes" not in args:
        args = [*args, "--storage_recipes", STORAGE]
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["bench", "decode", "--runs", f"dense={TINY / 'dense.yaml'}", "--device", "cpu",
             "--output", "out", *args]
        )  # fmt: skip
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("embedkit: error: ") and message in last, last
    assert not (tmp_path / "out").exists()


def test_work_dir_holding_a_run_is_refused(tmp_path, capsys):
    (tmp_path / "dense").mkdir()
    with pytest.raises(SystemExit):
        main(
            ["bench", "decode", "--runs", f"dense={TINY / 'dense.yaml'}", "--storage_recipes",
             STORAGE, "--work_dir", str(tmp_path), "--output", str(tmp_path / "out")]
        )  # fmt: skip
    assert f"--work_dir='{tmp_path}' already holds 'dense'" in capsys.readouterr().err


def test_each_round_starts_one_variant_later(monkeypatch):
    timed: list[str] = []

    def fake_decode(variant, rows, *, new_tokens, device, cuda_graphs):
        if new_tokens == 3:  # full-length decodes (warm-up decodes take 1 token)
            timed.append(variant.tier)
        return bench_decode.Decoded([[0]] * len(rows), prefill_s=0.1, step_s=[0.01, 0.01])

    monkeypatch.setattr(bench_decode, "decode", fake_decode)
    decoder = torch.nn.Module()
    decoder.vocab_size = 8
    variants = [Variant("run", tier, True, decoder) for tier in ("a", "b", "c")]
    bench_decode._measure(
        variants, batch_sizes=[1], prompt_len=2, new_tokens=3, warmup_tokens=1, rounds=4,
        seed=0, device=CPU, log=lambda _msg: None,
    )  # fmt: skip
    # One untimed pass over every variant (kernels, graphs), then the rounds.
    assert timed == [*"abc", *"abc", *"bca", *"cab", *"abc"]
