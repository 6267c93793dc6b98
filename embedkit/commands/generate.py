"""``embedkit generate``: continue prompts with a trained checkpoint, decoding with a KV cache."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from jsonargparse import ArgumentParser, Namespace

from embedkit.commands.recipe_args import (
    RecipeCommandParser,
    add_config_argument,
    add_device_argument,
    build_connected,
    config_args,
    load_weights,
    pick_device,
    require_checkpoint,
)

HELP = "Continue prompts with a trained checkpoint (KV cache; greedy, temperature, top-k, top-p)."


def build_parser() -> ArgumentParser:
    """Arguments of ``embedkit generate``."""
    parser = RecipeCommandParser(
        prog="embedkit generate",
        description=HELP + " Recipe options (--model..., --data...) apply as in `embedkit "
        "validate`, e.g. --model.decoder.init_args.tables DIR and storage overlays.",
    )
    add_config_argument(parser)
    parser.add_argument("--ckpt_path", type=str, required=True, help="The trained checkpoint.")
    parser.add_argument(
        "--prompt",
        type=str,
        nargs="+",
        action="extend",
        default=[],
        help="A prompt (repeat for a batch of prompts).",
    )
    parser.add_argument(
        "--prompt_file", type=str | None, default=None, help="A file of prompts, one per line."
    )
    parser.add_argument(
        "--max_new_tokens", type=int, default=100, help="Most tokens added to a prompt."
    )
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="Divides the logits; 0 is greedy."
    )
    parser.add_argument(
        "--top_k", type=int | None, default=None, help="Draw among the k most likely tokens."
    )
    parser.add_argument(
        "--top_p",
        type=float,
        default=1.0,
        help="Draw among the most likely tokens up to this probability mass (0 < p <= 1).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sampler.")
    add_device_argument(parser, "Where to decode")
    parser.add_argument(
        "--no_stream",
        action="store_true",
        help="Print a prompt's completion when it is done, not as it is produced.",
    )
    parser.add_argument(
        "--no_prefetch",
        action="store_true",
        help="Read every table row when its part runs, instead of fetching the next tokens' "
        "rows as soon as they are sampled (planned lookups; to measure what they buy).",
    )
    parser.add_argument(
        "--cuda_graphs",
        action="store_true",
        help="Replay each step's decoder layers as CUDA graphs (a CUDA device; the parts that "
        "read lookup tables run between them): far fewer launches per token.",
    )
    return parser


def read_prompts(args: Namespace) -> list[str]:
    """The prompts of ``--prompt`` then ``--prompt_file`` (its non-empty lines)."""
    prompts = list(args.prompt)
    if args.prompt_file is not None:
        if not os.path.isfile(args.prompt_file):
            raise ValueError(f"--prompt_file={args.prompt_file!r} does not exist")
        with open(args.prompt_file, encoding="utf-8") as handle:
            prompts += [line.rstrip("\n") for line in handle if line.strip()]
    if not prompts:
        raise ValueError("no prompt; give --prompt TEXT (repeatable) or --prompt_file FILE")
    for index, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompt {index + 1} is empty; give a non-empty --prompt")
    return prompts


def load_model(configs: Sequence[str], overrides: Sequence[str], ckpt_path: str):
    """The recipe's model with the checkpoint's weights, connected to its data, in eval mode;
    and the data module (whose tokenizer is the run's)."""
    _, model, data = build_connected([*config_args(configs), *overrides])
    load_weights(model, ckpt_path)
    return model.eval(), data


def run(args: Namespace) -> None:
    """Load the model, encode the prompts, decode, and print the text."""
    from embedkit.generation import Sampler, TextStream, generate

    require_checkpoint(args.ckpt_path)
    prompts = read_prompts(args)
    sampler = Sampler(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    device = pick_device(args.device)
    model, data = load_model(args.config, args.recipe_overrides, args.ckpt_path)
    decoder = model.decoder.to(device)
    tokenizer = data.tokenizer
    prompt_ids = [[int(i) for i in ids] for ids in tokenizer.encode_batch(prompts)]
    streams = [TextStream(tokenizer, ids) for ids in prompt_ids]
    printer = None
    if len(prompts) == 1 and not args.no_stream:
        printer = StreamPrinter(prompts[0], streams[0])
    completions = generate(
        decoder,
        prompt_ids,
        max_new_tokens=args.max_new_tokens,
        sampler=sampler,
        stop_id=tokenizer.eot_id,
        generator=torch.Generator(device=device).manual_seed(args.seed),
        on_tokens=printer,
        prefetch=not args.no_prefetch,
        cuda_graphs=args.cuda_graphs,
    )
    if printer is not None:
        printer.close()
        return
    for index, (prompt, stream, completion) in enumerate(
        zip(prompts, streams, completions, strict=True)
    ):
        if index:
            print("---")
        print(prompt + stream.push(completion) + stream.flush())


class StreamPrinter:
    """Prints one prompt and its completion as the tokens come; the prompt with the first one,
    so that an error in the input comes before any output."""

    def __init__(self, prompt: str, stream) -> None:
        self.pending = prompt
        self.stream = stream

    def __call__(self, tokens: list[int | None]) -> None:
        text = self.stream.push([tokens[0]]) if tokens[0] is not None else ""
        print(self.pending + text, end="", flush=True)
        self.pending = ""

    def close(self) -> None:
        """Print what is left, and end the line."""
        print(self.pending + self.stream.flush())
