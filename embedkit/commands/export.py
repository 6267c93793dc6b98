"""``embedkit export``: materialise a trained model's lookup tables into a storage tier."""

from __future__ import annotations

import hashlib
from pathlib import Path

from jsonargparse import ArgumentParser, Namespace

from embedkit.commands.recipe_args import (
    add_config_argument,
    build_connected,
    config_args,
    load_weights,
    require_checkpoint,
)

HELP = "Export a checkpoint's lookup tables (e.g. SCONE's f-gram table) to zarr, pinned or gpu."


def build_parser() -> ArgumentParser:
    """Arguments of ``embedkit export``."""
    parser = ArgumentParser(prog="embedkit export", description=HELP)
    add_config_argument(parser)
    parser.add_argument("--ckpt_path", type=str, required=True, help="The trained checkpoint.")
    parser.add_argument("--out", type=str, required=True, help="Folder for the tables.")
    parser.add_argument(
        "--to", type=str, default="zarr", help="Tier of the stored tables: zarr, pinned or gpu."
    )
    return parser


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def run(args: Namespace) -> None:
    """Build the model from its recipe, load the checkpoint, export every part's tables."""
    require_checkpoint(args.ckpt_path)
    _, model, _ = build_connected(config_args(args.config))
    load_weights(model, args.ckpt_path)
    model.eval()
    decoder = model.decoder
    parts = [m for m in decoder.modules() if hasattr(m, "export_tables")]
    if not parts:
        raise ValueError("the model of this recipe owns no lookup table to export")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    producer = {"checkpoint_sha256": file_sha256(args.ckpt_path)}
    for part in parts:
        for location in part.export_tables(
            args.out, to=args.to, token_embedding=decoder.token_embedding, producer=producer
        ):
            print(f"wrote {location} ({args.to})")
