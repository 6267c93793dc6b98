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
STANDALONE = [r for r in RECIPES if "storage" not in r.parts]


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
