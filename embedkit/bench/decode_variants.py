"""The variants ``embedkit bench decode`` measures: each run's model built from its recipes,
its tables exported to every tier and read back as ``embedkit generate`` reads them.

Legend: B = batch rows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from embedkit.commands.export import file_sha256
from embedkit.commands.recipe_args import build_connected, config_args, load_weights
from embedkit.lm import LanguageModel
from embedkit.model.decoder import Decoder


@dataclass
class Variant:
    """A run's decoder with its tables on one tier, decoded with or without prefetch."""

    run: str
    tier: str
    prefetch: bool
    decoder: Decoder


def overlay_paths(storage_recipes: str, tiers: Sequence[str]) -> dict[str, str]:
    """The overlay recipe of every tier, ``<storage_recipes>/<tier>.yaml``; each must exist."""
    paths = {tier: os.path.join(storage_recipes, f"{tier}.yaml") for tier in tiers}
    for path in paths.values():
        if not os.path.isfile(path):
            raise ValueError(
                f"--storage_recipes={storage_recipes!r}: {path!r} is not a file; valid: a "
                f"folder holding {', '.join(f'{t}.yaml' for t in tiers)} (the repository's "
                "recipes/storage)"
            )
    return paths


def table_parts(decoder: Decoder) -> list[nn.Module]:
    """The parts of ``decoder`` that own lookup tables (what ``embedkit export`` writes)."""
    return [part for part in decoder.modules() if hasattr(part, "export_tables")]


def folder_bytes(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def parameter_bytes(decoder: Decoder) -> int:
    """Bytes of the decoder's parameters (tied ones once; exported tables are not among them)."""
    return sum(p.numel() * p.element_size() for p in decoder.parameters())


def build_variants(
    name: str,
    configs: list[str],
    *,
    overlays: dict[str, str],
    folder: Path,
    longest: int,
    device: torch.device,
) -> tuple[list[Variant], dict]:
    """The variants of one run, on ``device`` and in eval mode, and its figures (recipes,
    parameter and table bytes). A model shorter than ``longest`` positions is refused."""
    _, model, _ = build_connected(config_args(configs))
    max_seq_len = model.decoder.max_seq_len
    if longest > max_seq_len:
        raise ValueError(
            f"--prompt_len + --new_tokens (or --warmup_tokens) = {longest} exceeds the "
            f"max_seq_len={max_seq_len} of run {name!r}; valid: at most {max_seq_len}"
        )
    figures = {"name": name, "configs": configs, "table_bytes": {}}
    if not table_parts(model.decoder):
        variants = [Variant(name, "gpu", True, model.decoder.eval().to(device))]
    else:
        variants, figures["table_bytes"] = tier_variants(
            name, configs, model, overlays=overlays, folder=folder, device=device
        )
    figures["parameter_bytes"] = parameter_bytes(variants[0].decoder)
    return variants, figures


def tier_variants(
    name: str,
    configs: list[str],
    model: LanguageModel,
    *,
    overlays: dict[str, str],
    folder: Path,
    device: torch.device,
) -> tuple[list[Variant], dict[str, int]]:
    """``model`` (built from ``configs``, owning tables) read back on every tier of
    ``overlays``: its weights saved and its tables exported into ``folder`` as ``embedkit
    export`` writes them, then one model per tier built with the overlay and
    ``--model.decoder.init_args.tables``, as ``embedkit generate`` reads them. The variants
    (off the gpu tier, with prefetch on and off), on ``device`` and in eval mode, and the bytes
    of each tier's exported tables. The tables are computed on ``device`` (``model`` is left
    there)."""
    folder.mkdir(parents=True)
    weights = str(folder / "weights.pt")
    torch.save({"state_dict": model.state_dict()}, weights)
    producer = {"checkpoint_sha256": file_sha256(weights)}
    model.to(device)  # SCONE's f-gram model runs over every f-gram
    token_embedding = model.decoder.token_embedding
    variants, table_bytes = [], {}
    for tier, overlay in overlays.items():
        tables = folder / tier
        tables.mkdir()
        for part in table_parts(model.decoder):
            part.export_tables(
                str(tables), to=tier, token_embedding=token_embedding, producer=producer
            )
        table_bytes[tier] = folder_bytes(tables)
        _, reader, _ = build_connected(
            [*config_args([*configs, overlay]), "--model.decoder.init_args.tables", str(tables)]
        )
        load_weights(reader, weights)
        decoder = reader.decoder.eval().to(device)
        prefetches = (True,) if tier == "gpu" else (True, False)  # gpu: nothing to prefetch
        variants += [Variant(name, tier, prefetch, decoder) for prefetch in prefetches]
    return variants, table_bytes
