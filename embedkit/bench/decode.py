"""``embedkit bench decode``: decode tokens/s, per-token latency and prefill time of recipes'
models with their lookup tables on each storage tier, measured side by side in one run.

Each run is built once from its recipes (random weights from the recipe's seed: speed does not
depend on them) and its weights are saved. A run whose parts own lookup tables (SCONE, L³) has
them exported to every tier of ``--tiers`` as ``embedkit export`` writes them, and one reading
model per tier is built with the tier's overlay and ``--model.decoder.init_args.tables``, as
``embedkit generate`` reads them, with the saved weights; off-device tiers are measured with
the decode loop's prefetch on and off. Runs without tables (dense, MoE) have all their weights
on the device: they are measured on the gpu tier only.

Every variant stays on the device for the whole run (each holds its own copy of the dense
weights; the tables of the pinned and Zarr tiers stay off it). Each round measures every
variant at every batch size in turn: an untimed greedy decode of ``warmup_tokens`` tokens, then
a timed one of ``new_tokens`` tokens of the same prompts.

Legend: B = batch rows, T = prompt positions.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from embedkit.bench.decode_variants import Variant, build_variants, overlay_paths
from embedkit.bench.timing import device_name, synchronize
from embedkit.bench.train import parse_runs
from embedkit.commands.recipe_args import pick_device
from embedkit.generation import Sampler, generate

TIERS = ("gpu", "pinned", "zarr")
GREEDY = Sampler(temperature=0)
FIGURES = ("tokens_per_s", "p50_ms", "p99_ms", "prefill_ms")


@dataclass
class Decoded:
    """One timed decode: the new tokens of every row, the seconds from the call to the first
    token (prefill and its sampling), and the seconds of every later step."""

    completions: list[list[int]]
    prefill_s: float
    step_s: list[float]


def check_options(
    *,
    tiers: Sequence[str],
    batch_sizes: Sequence[int],
    prompt_len: int,
    new_tokens: int,
    warmup_tokens: int,
    rounds: int,
) -> None:
    """Refuse option values no measurement can use, naming the option."""
    if not tiers:
        raise ValueError(f"--tiers is empty; valid: one or more of {', '.join(TIERS)}")
    for tier in tiers:
        if tier not in TIERS:
            raise ValueError(f"--tiers: {tier!r} is not a tier; valid: {', '.join(TIERS)}")
    if len(set(tiers)) < len(tiers):
        raise ValueError(f"--tiers={list(tiers)} names a tier twice; valid: distinct tiers")
    if not batch_sizes:
        raise ValueError("--batch_sizes is empty; valid: one or more sizes of at least 1")
    for size in batch_sizes:
        if size < 1:
            raise ValueError(f"--batch_sizes: {size} is invalid; valid: at least 1")
    for field, value, low, why in (
        ("--prompt_len", prompt_len, 1, ""),
        ("--new_tokens", new_tokens, 2, " (the first comes with the prefill)"),
        ("--warmup_tokens", warmup_tokens, 0, ""),
        ("--rounds", rounds, 1, ""),
    ):
        if value < low:
            raise ValueError(f"{field}={value} is invalid; valid: at least {low}{why}")


def random_prompts(
    vocab_size: int, *, batch_size: int, prompt_len: int, seed: int
) -> list[list[int]]:
    """``batch_size`` prompts of ``prompt_len`` random token ids (the same for a seed)."""
    generator = torch.Generator().manual_seed(seed)
    ids_BT = torch.randint(vocab_size, (batch_size, prompt_len), generator=generator)
    return ids_BT.tolist()


def decode(
    variant: Variant,
    prompts: list[list[int]],
    *,
    new_tokens: int,
    device: torch.device,
    cuda_graphs: bool = False,
) -> Decoded:
    """A greedy decode of ``new_tokens`` tokens per prompt, timed from an idle device; each
    step ends with the loop's host sync, when ``on_tokens`` is called."""
    stamps: list[float] = []
    synchronize(device)
    start = time.perf_counter()
    completions = generate(
        variant.decoder,
        prompts,
        max_new_tokens=new_tokens,
        sampler=GREEDY,
        stop_id=None,
        on_tokens=lambda _tokens: stamps.append(time.perf_counter()),
        prefetch=variant.prefetch,
        cuda_graphs=cuda_graphs,
    )
    steps = np.diff(stamps).tolist()
    return Decoded(completions, prefill_s=stamps[0] - start, step_s=steps)


def round_figures(decoded: Decoded, batch_size: int) -> dict[str, float]:
    """Decode tokens/s (tokens after the first over their steps), p50 and p99 step ms, and
    prefill ms of one timed decode."""
    p50, p99 = np.percentile(np.asarray(decoded.step_s), [50, 99])
    return {
        "tokens_per_s": batch_size * len(decoded.step_s) / sum(decoded.step_s),
        "p50_ms": float(p50 * 1e3),
        "p99_ms": float(p99 * 1e3),
        "prefill_ms": decoded.prefill_s * 1e3,
    }


def run_decode_bench(
    *,
    runs: Sequence[str],
    tiers: Sequence[str],
    batch_sizes: Sequence[int],
    prompt_len: int,
    new_tokens: int,
    warmup_tokens: int,
    rounds: int,
    device: str,
    seed: int,
    storage_recipes: str,
    work_dir: str | None,
    cuda_graphs: bool | None = None,
) -> dict:
    """Build every run's variants, then ``rounds`` rounds over all of them at every batch
    size; the results as a dict (ratios against the same run's gpu tier)."""
    check_options(
        tiers=tiers, batch_sizes=batch_sizes, prompt_len=prompt_len, new_tokens=new_tokens,
        warmup_tokens=warmup_tokens, rounds=rounds,
    )  # fmt: skip
    specs = parse_runs(runs)
    overlays = overlay_paths(storage_recipes, tiers)
    if work_dir is not None:
        for name in specs:
            if (Path(work_dir) / name).exists():
                raise ValueError(
                    f"--work_dir={work_dir!r} already holds {name!r}; valid: a folder without "
                    "the runs' names (their tables are exported afresh)"
                )
    target = pick_device(device)
    graphs = target.type == "cuda" if cuda_graphs is None else cuda_graphs
    if graphs and target.type != "cuda":
        raise ValueError(
            f"--cuda_graphs=true needs a CUDA device, but --device={device} decodes on "
            f"{target}; valid: --cuda_graphs false, or --device cuda"
        )
    longest = prompt_len + max(new_tokens, warmup_tokens)
    log = lambda msg: print(f"[bench decode] {msg}", flush=True)  # noqa: E731

    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="embedkit-decode-"))
        variants: list[Variant] = []
        figures = []
        for name, configs in specs.items():
            built, run_figures = build_variants(
                name, configs, overlays=overlays, folder=Path(work_dir) / name,
                longest=longest, device=target,
            )  # fmt: skip
            variants += built
            figures.append(run_figures)
            log(f"{name}: {len(built)} variants from {', '.join(configs)}")
        measured = _measure(
            variants, batch_sizes=batch_sizes, prompt_len=prompt_len, new_tokens=new_tokens,
            warmup_tokens=warmup_tokens, rounds=rounds, seed=seed, device=target, log=log,
            cuda_graphs=graphs,
        )  # fmt: skip
    return {
        "device": device_name(target),
        "torch": torch.__version__,
        "dtype": str(variants[0].decoder.token_embedding.weight.dtype).removeprefix("torch."),
        "tiers": list(tiers),
        "batch_sizes": list(batch_sizes),
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "warmup_tokens": warmup_tokens,
        "rounds": rounds,
        "seed": seed,
        "cuda_graphs": graphs,
        "runs": figures,
        "variants": [
            {
                "run": v.run,
                "tier": v.tier,
                "prefetch": v.prefetch,
                "batch_size": size,
                **summarise(
                    measured[v.run, v.tier, v.prefetch, size],
                    measured.get((v.run, "gpu", True, size)),
                    size,
                ),
            }
            for run in specs
            for size in batch_sizes
            for v in variants
            if v.run == run
        ],
    }


def _measure(
    variants: list[Variant],
    *,
    batch_sizes: Sequence[int],
    prompt_len: int,
    new_tokens: int,
    warmup_tokens: int,
    rounds: int,
    seed: int,
    device: torch.device,
    log: Callable[[str], None],
    cuda_graphs: bool = False,
) -> dict[tuple[str, str, bool, int], list[Decoded]]:
    """Every round's timed decode of every variant at every batch size, by (run, tier,
    prefetch, batch size). Each round starts one variant later in the list than the last, so
    that no variant always runs first (right after another model) or last. Before the rounds,
    one untimed decode of every variant at every batch size compiles its kernels and
    captures its graphs."""
    prompts = {
        (v.run, size): random_prompts(
            v.decoder.vocab_size, batch_size=size, prompt_len=prompt_len, seed=seed
        )
        for v in variants
        for size in batch_sizes
    }
    run = partial(decode, device=device, cuda_graphs=cuda_graphs)
    for size in batch_sizes:
        for variant in variants:
            run(variant, prompts[variant.run, size], new_tokens=new_tokens)
    measured: dict[tuple[str, str, bool, int], list[Decoded]] = {}
    for index in range(rounds):
        shift = index % len(variants)
        for size in batch_sizes:
            for variant in variants[shift:] + variants[:shift]:
                rows = prompts[variant.run, size]
                if warmup_tokens:
                    run(variant, rows, new_tokens=warmup_tokens)
                decoded = run(variant, rows, new_tokens=new_tokens)
                key = (variant.run, variant.tier, variant.prefetch, size)
                measured.setdefault(key, []).append(decoded)
                rate = round_figures(decoded, size)["tokens_per_s"]
                log(
                    f"round {index + 1}/{rounds} {variant.run} {variant.tier} prefetch="
                    f"{'on' if variant.prefetch else 'off'} batch {size}: {rate:,.0f} tokens/s"
                )
    return measured


def summarise(rounds: list[Decoded], gpu_rounds: list[Decoded] | None, batch_size: int) -> dict:
    """Medians over the rounds of one variant at one batch size (and each round's figures);
    its tokens/s over the gpu variant's (median of the rounds' ratios: the variants of one
    round ran back to back) and whether it decoded the same tokens (``None`` without one)."""
    figures = [round_figures(decoded, batch_size) for decoded in rounds]
    series = {field: [f[field] for f in figures] for field in FIGURES}
    summary = {field: statistics.median(values) for field, values in series.items()}
    summary["tokens_per_s_min"] = min(series["tokens_per_s"])
    summary["tokens_per_s_max"] = max(series["tokens_per_s"])
    summary |= {f"{field}_rounds": values for field, values in series.items()}
    summary |= dict.fromkeys(
        ("ratio_to_gpu", "ratio_to_gpu_rounds", "p50_ratio_to_gpu", "p50_ratio_to_gpu_rounds",
         "tokens_match_gpu")
    )  # fmt: skip
    if gpu_rounds is not None:
        gpu_figures = [round_figures(decoded, batch_size) for decoded in gpu_rounds]
        ratios = [
            mine / gpu["tokens_per_s"]
            for mine, gpu in zip(series["tokens_per_s"], gpu_figures, strict=True)
        ]
        summary["ratio_to_gpu"] = statistics.median(ratios)
        summary["ratio_to_gpu_rounds"] = ratios
        # The same from the typical step (gpu's p50 over this one's): a stall of the machine
        # in one round moves the mean rate but not the median step.
        p50_ratios = [
            gpu["p50_ms"] / mine for mine, gpu in zip(series["p50_ms"], gpu_figures, strict=True)
        ]
        summary["p50_ratio_to_gpu"] = statistics.median(p50_ratios)
        summary["p50_ratio_to_gpu_rounds"] = p50_ratios
        summary["tokens_match_gpu"] = all(
            mine.completions == gpu.completions
            for mine, gpu in zip(rounds, gpu_rounds, strict=True)
        )
    return summary
