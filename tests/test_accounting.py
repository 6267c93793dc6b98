"""Parameter and FLOP accounting: SCONE's inference costs the dense model's FLOPs."""

from __future__ import annotations

from pathlib import Path

from embedkit.commands.info import describe

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "tiny"


def test_scone_inference_flops_equal_dense_and_table_adds_its_projection():
    dense = describe([str(RECIPES / "dense.yaml")])
    scone = describe([str(RECIPES / "scone.yaml")])
    table = describe([str(RECIPES / "token-table.yaml")])
    assert scone["inference_flops_per_token"] == dense["inference_flops_per_token"]
    assert scone["parameters_total"] > dense["parameters_total"]  # the f-gram model trains
    assert scone["parameters_active"] == dense["parameters_active"] == dense["parameters_total"]
    projection = 2 * 64 * 128  # TokenTableEmbedding: table_dim 64 -> width 128
    assert table["inference_flops_per_token"] == dense["inference_flops_per_token"] + projection


def test_dense_flops_match_the_closed_form():
    dense = describe([str(RECIPES / "dense.yaml")])
    layers, dim, vocab, context = 4, 128, 1024, 128
    hidden = 384  # SwiGLU default: 8/3 * 128 rounded up to 64
    per_layer = 2 * (4 * dim * dim + 3 * dim * hidden)
    expected = layers * per_layer + 2 * vocab * dim + 4 * layers * context * dim
    assert dense["inference_flops_per_token"] == expected
