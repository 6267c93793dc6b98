"""``embedkit bench train``: training throughput (tokens/s) and peak accelerator memory of
several recipes, measured side by side in one process so that their ratios are fair.

Each run is built as ``embedkit fit`` builds it (its recipes applied in order) and trains on a
fixed set of batches placed on the device once, so data loading is not timed. Every run is
warmed up first; then each round times ``steps`` steps of every run in turn, with only that
run's model, optimizer state and batches on the device.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader

from embedkit.accounting import inference_flops_per_token, parameter_counts
from embedkit.bench.timing import device_name, synchronize
from embedkit.commands.recipe_args import build_connected, config_args, pick_device
from embedkit.interfaces import AuxiliaryLosses
from embedkit.lm import LanguageModel

RUN_FORMAT = "NAME=CONFIG[,CONFIG...]"
GIB = 1 << 30


@dataclass
class Run:
    """One recipe's model, optimizer and training batches, ready to step, and its cost figures
    (parameters, inference FLOPs per token)."""

    name: str
    configs: list[str]
    model: LanguageModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: list[dict[str, torch.Tensor]]
    clip: float | None
    batch_size: int
    seq_len: int
    figures: dict


SETTLE_STEPS = 3  # untimed steps after each move onto the device (at most --warmup)


def parse_runs(specs: Sequence[str]) -> dict[str, list[str]]:
    """``NAME=CONFIG[,CONFIG...]`` entries as {name: recipe paths}, in order; checks them."""
    if not specs:
        raise ValueError(f"--runs is empty; valid: one or more {RUN_FORMAT}")
    runs: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, joined = spec.partition("=")
        configs = joined.split(",")
        if not sep or not name.strip() or not all(c.strip() for c in configs):
            raise ValueError(
                f"--runs entry {spec!r} is invalid; valid: {RUN_FORMAT}, "
                "e.g. dense=recipes/gpu/dense.yaml"
            )
        if name in runs:
            raise ValueError(f"--runs name {name!r} is given twice; valid: distinct names")
        for path in configs:
            if not os.path.isfile(path):
                raise ValueError(
                    f"--runs {name}: config {path!r} is not a file; valid: a recipe YAML file"
                )
        runs[name] = configs
    return runs


def _take(loader: DataLoader, count: int) -> list[dict[str, torch.Tensor]]:
    batches: list[dict[str, torch.Tensor]] = []
    while len(batches) < count:
        for batch in loader:
            batches.append(batch)
            if len(batches) == count:
                break
    return batches


def build_run(
    name: str,
    configs: list[str],
    *,
    overrides: list[str],
    num_batches: int,
    total_steps: int,
    device: torch.device,
) -> Run:
    """Model, data and optimizer of ``configs`` as ``embedkit fit`` builds them (the optimizer
    for ``device``, as Lightning configures it after moving the model; left on the CPU), with
    ``num_batches`` training batches."""
    cli, model, data = build_connected([*config_args(configs), *overrides])
    batches = _take(data.train_dataloader(), num_batches)
    # configure_optimizers reads the schedule's length from the trainer: the bench's steps.
    model.trainer = SimpleNamespace(estimated_stepping_batches=total_steps)
    model.to(device)
    optimization = model.configure_optimizers()
    model.to("cpu")
    model.trainer = None
    return Run(
        name=name,
        configs=configs,
        model=model.train(),
        optimizer=optimization["optimizer"],
        scheduler=optimization["lr_scheduler"]["scheduler"],
        batches=batches,
        clip=cli.config.trainer.gradient_clip_val,
        batch_size=data.batch_size,
        seq_len=data.seq_len,
        figures={
            "parameters": parameter_counts(model.decoder),
            "inference_flops_per_token": inference_flops_per_token(
                model.decoder, context=data.seq_len
            ),
        },
    )


def place(run: Run, device: torch.device) -> None:
    """Move the run's model, optimizer state and batches to ``device``."""
    run.model.to(device)
    run.batches = [{k: v.to(device) for k, v in batch.items()} for batch in run.batches]
    for state in run.optimizer.state.values():
        for key, value in state.items():
            # AdamW keeps its step count on the CPU unless capturable: leave it there.
            if key != "step" and torch.is_tensor(value):
                state[key] = value.to(device)


def train_steps(run: Run, steps: int, autocast: contextlib.AbstractContextManager) -> torch.Tensor:
    """``steps`` optimizer steps, each as ``LanguageModel.training_step`` under Lightning (the
    parts' auxiliary losses included); the last loss (not synchronised)."""
    for i in range(steps):
        batch = run.batches[i % len(run.batches)]
        with autocast:
            nll_sum, count = run.model._summed_loss(batch)
            loss = nll_sum / count.clamp_min(1)
            for part in run.model.decoder.modules():  # e.g. an MoE's balancing losses
                if isinstance(part, AuxiliaryLosses):
                    loss = loss + sum(part.auxiliary_losses().values())
        loss.backward()
        if run.clip is not None:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.clip)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def _timed(
    run: Run,
    steps: int,
    autocast: contextlib.AbstractContextManager,
    device: torch.device,
    *,
    settle: int = 0,
) -> tuple[float, int | None, float]:
    """Seconds of ``steps`` steps of ``run`` with only it on ``device`` (from an idle device to
    completion), its peak allocated bytes there (``None`` off CUDA) and its last loss. The
    ``settle`` untimed steps first rebuild what moving the model invalidates (CUDA graphs
    recorded at the parameters' old addresses, allocator caches)."""
    place(run, device)
    if settle:
        train_steps(run, settle, autocast)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    loss = train_steps(run, steps, autocast)
    synchronize(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    place(run, torch.device("cpu"))
    return elapsed, peak, float(loss)


def run_train_bench(
    *,
    runs: Sequence[str],
    steps: int,
    warmup: int,
    rounds: int,
    batch_size: int | None,
    seq_len: int | None,
    device: str,
) -> dict:
    """Build every run, warm each up, time ``rounds`` rounds of ``steps`` steps of every run in
    turn; return the results as a dict (the first run is the baseline of the ratios)."""
    for field, value, low in (
        ("--steps", steps, 1),
        ("--warmup", warmup, 0),
        ("--rounds", rounds, 1),
    ):
        if value < low:
            raise ValueError(f"{field}={value} is invalid; valid: at least {low}")
    specs = parse_runs(runs)
    target = pick_device(device)
    on_cuda = target.type == "cuda"
    if on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else contextlib.nullcontext()
    overrides = [f"--data.batch_size={batch_size}"] if batch_size is not None else []
    overrides += [f"--data.seq_len={seq_len}"] if seq_len is not None else []
    log = lambda msg: print(f"[bench train] {msg}", flush=True)  # noqa: E731

    built = []
    for name, configs in specs.items():
        run = build_run(
            name, configs, overrides=overrides, num_batches=steps,
            total_steps=warmup + rounds * steps, device=target,
        )  # fmt: skip
        built.append(run)
        log(f"{name}: built from {', '.join(configs)} ({run.batch_size} x {run.seq_len} tokens)")
    if warmup:
        for run in built:
            _timed(run, warmup, autocast, target)
            log(f"{run.name}: warmed up ({warmup} steps)")
    seconds: dict[str, list[float]] = {run.name: [] for run in built}
    peaks: dict[str, list[int | None]] = {run.name: [] for run in built}
    losses: dict[str, float] = {}
    for index in range(rounds):
        for run in built:
            elapsed, peak, losses[run.name] = _timed(
                run, steps, autocast, target, settle=min(warmup, SETTLE_STEPS)
            )
            seconds[run.name].append(elapsed)
            peaks[run.name].append(peak)
            rate = steps * run.batch_size * run.seq_len / elapsed
            log(f"round {index + 1}/{rounds} {run.name}: {rate:,.0f} tokens/s")

    results = []
    for run in built:
        tokens = run.batch_size * run.seq_len
        rates = [steps * tokens / s for s in seconds[run.name]]
        median = statistics.median(rates)
        peak_gib = [peak / GIB for peak in peaks[run.name] if peak is not None]
        baseline = results[0]["tokens_per_s_rounds"] if results else rates
        # Runs of one round ran back to back: their ratio cancels drift of the machine.
        round_ratios = [rate / base for rate, base in zip(rates, baseline, strict=True)]
        results.append(
            {
                "name": run.name,
                "configs": run.configs,
                "batch_size": run.batch_size,
                "seq_len": run.seq_len,
                "tokens_per_step": tokens,
                "tokens_per_s": median,
                "tokens_per_s_min": min(rates),
                "tokens_per_s_max": max(rates),
                "tokens_per_s_rounds": rates,
                "ratio": statistics.median(round_ratios),
                "ratio_rounds": round_ratios,
                "step_ms": statistics.median(seconds[run.name]) / steps * 1e3,
                "peak_memory_gib": max(peak_gib, default=None),
                "gradient_clip_val": run.clip,
                "loss": losses[run.name],
                **run.figures,
            }
        )
    return {
        "device": device_name(target),
        "torch": torch.__version__,
        "precision": "bf16-mixed" if on_cuda else "32-true",
        "steps": steps,
        "warmup": warmup,
        "rounds": rounds,
        "baseline": results[0]["name"],
        "runs": results,
    }
