"""Every recipe under recipes/ parses and validates, and --print_config round-trips."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from embedkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
OVERLAY_FOLDERS = ("storage", "scale", "decode")  # applied on top of another recipe
STANDALONE = [r for r in RECIPES if not set(OVERLAY_FOLDERS) & set(r.parts)]
SCALE_BASES = {"wide.yaml": "gpu/dense.yaml", "l3-wide.yaml": "gpu/l3.yaml"}


def print_config(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as info:
        main(["fit", *args, "--print_config"])
    assert info.value.code in (0, None), out.getvalue()
    return out.getvalue()


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(r.relative_to(ROOT)) for r in RECIPES])
def test_recipe_starts_with_its_command(recipe):
    first = recipe.read_text().splitlines()[0]
    assert first.startswith("# embedkit "), f"{recipe} must start with the command that runs it"


@pytest.mark.parametrize("recipe", STANDALONE, ids=[str(r.relative_to(ROOT)) for r in STANDALONE])
def test_recipe_validates_and_round_trips(recipe, tmp_path):
    printed = print_config("--config", str(recipe))
    assert yaml.safe_load(printed)["model"]["decoder"]["class_path"]
    saved = tmp_path / "resolved.yaml"
    saved.write_text(printed)
    assert print_config("--config", str(saved)) == printed


OVERLAYS = sorted((ROOT / "recipes" / "storage").glob("*.yaml"))
TIER_CLASSES = {"gpu": "GPUBackend", "pinned": "PinnedCPUBackend", "zarr": "ZarrBackend"}


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[o.stem for o in OVERLAYS])
@pytest.mark.parametrize("recipe", STANDALONE, ids=[r.stem for r in STANDALONE])
def test_storage_overlay_moves_every_table(recipe, overlay):
    printed = yaml.safe_load(print_config("--config", str(recipe), "--config", str(overlay)))
    backend = printed["model"]["decoder"]["init_args"]["table_backend"]["class_path"]
    assert backend.endswith("." + TIER_CLASSES[overlay.stem])


@pytest.mark.parametrize("overlay", sorted(SCALE_BASES))
def test_scale_overlay_validates_on_its_base(overlay):
    base = ROOT / "recipes" / SCALE_BASES[overlay]
    printed = yaml.safe_load(
        print_config("--config", str(base), "--config", str(ROOT / "recipes" / "scale" / overlay))
    )
    assert printed["model"]["decoder"]["init_args"]["dim"] == 1024
    assert str(base.relative_to(ROOT)) in (ROOT / "recipes" / "scale" / overlay).read_text()


def test_decode_overlay_makes_the_fgram_table_four_times_the_dense_parameters():
    overlay = ROOT / "recipes" / "decode" / "scone-4x.yaml"
    base = ROOT / "recipes" / "gpu" / "scone.yaml"
    printed = yaml.safe_load(print_config("--config", str(base), "--config", str(overlay)))
    decoder = printed["model"]["decoder"]["init_args"]
    scone = decoder["input_embedding"]["init_args"]
    assert scone["vocab"]["init_args"]["max_n"] == 5  # the base's, kept
    dense = 30_000_000  # recipes/gpu/dense.yaml: 29,893,120 (embedkit info)
    assert scone["vocab"]["init_args"]["num_entries"] * decoder["dim"] >= 4 * dense
    assert str(base.relative_to(ROOT)) in overlay.read_text()


def test_commands_take_repeated_config_flags():
    from embedkit.commands import export, info

    for command in (info, export):
        parsed = command.build_parser().parse_args(
            ["--config", "a.yaml", "--config", "b.yaml", "c.yaml"]
            + (["--ckpt_path", "x", "--out", "y"] if command is export else [])
        )
        assert parsed.config == ["a.yaml", "b.yaml", "c.yaml"]
