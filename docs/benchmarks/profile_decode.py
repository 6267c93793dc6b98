"""Profile graphed decode steps of a GPU-size recipe (L³ by default, at batch 64), tables on
the gpu and pinned tiers: mean step, the CUDA kernels by time, and every host-sync call.

Run from the repository root on a CUDA machine (random weights, as `embedkit bench decode`):

    python docs/benchmarks/profile_decode.py [--run l3|scone] [--batch B]
        [--programs_per_sm N] [--trace DIR]

``--programs_per_sm`` overrides the pinned gather's ``PROGRAMS_PER_SM`` before the
tables are built (10**6: one program per block of rows, the grid before session 7);
``--trace`` writes each tier's timeline as ``DIR/decode-<tier>.json`` (Chrome trace format:
open it in Perfetto to see when the gathers run against the graphs' kernels).
"""

import argparse
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import embedkit.backends.pinned as pinned
from embedkit.bench.decode import decode, random_prompts
from embedkit.bench.decode_variants import build_variants, overlay_paths

SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
PROMPT, NEW = 32, 33
RUNS = {
    "l3": ["recipes/gpu/l3.yaml"],
    "scone": ["recipes/gpu/scone.yaml", "recipes/decode/scone-4x.yaml"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", choices=sorted(RUNS), default="l3")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--programs_per_sm", type=int, default=None)
    parser.add_argument("--trace", type=Path, default=None)
    args = parser.parse_args()
    if args.programs_per_sm is not None:
        pinned.PROGRAMS_PER_SM = args.programs_per_sm
    device = torch.device("cuda")
    overlays = overlay_paths("recipes/storage", ["gpu", "pinned"])
    with tempfile.TemporaryDirectory() as work:
        variants, _ = build_variants(
            args.run, RUNS[args.run], overlays=overlays, folder=Path(work) / args.run,
            longest=PROMPT + NEW, device=device,
        )  # fmt: skip
        for variant in (v for v in variants if v.prefetch):
            prompts = random_prompts(
                variant.decoder.vocab_size, batch_size=args.batch, prompt_len=PROMPT, seed=0
            )
            for _ in range(2):  # compile, capture, then a warm run
                decoded = decode(variant, prompts, new_tokens=NEW, device=device, cuda_graphs=True)
            mean_ms = 1e3 * sum(decoded.step_s) / len(decoded.step_s)
            print(f"== {variant.tier}: mean step {mean_ms:.3f} ms")
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                decode(variant, prompts, new_tokens=NEW, device=device, cuda_graphs=True)
            events = prof.key_averages()
            for event in events:
                if event.key in SYNCS:
                    print(f"  {event.key}: {event.count} calls over {NEW} tokens")
            print(events.table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
            if args.trace is not None:
                args.trace.mkdir(parents=True, exist_ok=True)
                prof.export_chrome_trace(str(args.trace / f"decode-{variant.tier}.json"))


if __name__ == "__main__":
    main()
