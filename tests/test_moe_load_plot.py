"""``embedkit_moe.load_plot``: expert shares read from a Lightning metrics CSV, in layer order,
drawn one panel per layer."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from embedkit_moe.load_plot import main, read_expert_load

LAYERS = ("layers.10.ffn", "layers.2.ffn")  # the CSV header sorts them as text


def write_metrics(path, *, layers=LAYERS, num_experts=2) -> None:
    load = [f"train/{layer}/load/expert_{e}" for layer in layers for e in range(num_experts)]
    header = ["epoch", "step", "train/loss", *load, "val/perplexity"]
    skewed = dict(zip(load, [0.75, 0.25] * len(layers), strict=True))
    rows = [
        {"epoch": 0, "step": 9, "train/loss": 5.0, **dict.fromkeys(load, 0.5)},
        {"epoch": 0, "step": 14, "val/perplexity": 90.0},  # a validation row: no load
        {"epoch": 0, "step": 19, "train/loss": 4.0, **skewed},
    ]
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def test_reads_each_layers_shares_in_layer_order(tmp_path):
    write_metrics(tmp_path / "metrics.csv")
    loads = read_expert_load(tmp_path / "metrics.csv")
    assert list(loads) == ["layers.2.ffn", "layers.10.ffn"]
    np.testing.assert_array_equal(loads["layers.2.ffn"].steps_S, [9, 19])
    np.testing.assert_allclose(loads["layers.2.ffn"].shares_SE, [[0.5, 0.5], [0.75, 0.25]])


def test_draws_a_png_from_the_command_line(tmp_path, capsys):
    write_metrics(tmp_path / "metrics.csv", layers=("layers.0.ffn", "layers.1.ffn", "layers.2.ffn"))
    output = tmp_path / "images" / "load.png"
    main([str(tmp_path / "metrics.csv"), "--output", str(output)])
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(output) in capsys.readouterr().out


def test_a_csv_without_moe_layers_is_refused(tmp_path):
    write_metrics(tmp_path / "metrics.csv", layers=())
    with pytest.raises(ValueError, match=r"has no train/<layer>/load/expert_<e> columns"):
        read_expert_load(tmp_path / "metrics.csv")
