"""``generate``: continue a batch of prompts token by token with a KV cache.

The prompts are right-padded and run once (prefill); then every step samples one token per row
from the last logits and runs only those tokens through the decoder, which reads the earlier
positions from the cache. A row stops at the stop id (e.g. end-of-text) or after
``max_new_tokens``; the batch stops when every row has.

Legend: B = batch rows, T = positions of the longest prompt, D = model width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from embedkit.generation.lookup_plan import plan_lookups
from embedkit.generation.sampling import Sampler
from embedkit.generation.step_graphs import graphed_steps

if TYPE_CHECKING:
    from embedkit.model.decoder import Decoder

TokensCallback = Callable[[list[int | None]], None]


def check_lengths(prompts: Sequence[Sequence[int]], *, max_new_tokens: int, max_seq_len: int):
    """Refuse an empty prompt, or one that leaves no room for ``max_new_tokens`` within the
    model's ``max_seq_len``."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} is invalid; valid: at least 1")
    for index, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {index + 1} has no tokens; give a non-empty prompt")
        if len(prompt) > max_seq_len:
            raise ValueError(
                f"prompt {index + 1} has {len(prompt)} tokens, more than the model's "
                f"max_seq_len={max_seq_len}; shorten it"
            )
    longest = max(range(len(prompts)), key=lambda index: len(prompts[index]))
    room = max_seq_len - len(prompts[longest])
    if max_new_tokens > room:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} after prompt {longest + 1} of "
            f"{len(prompts[longest])} tokens exceeds the model's max_seq_len={max_seq_len}; "
            f"valid: max_new_tokens <= {room}"
        )


@torch.no_grad()
def generate(
    decoder: Decoder,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    sampler: Sampler,
    stop_id: int | None = None,
    generator: torch.Generator | None = None,
    on_tokens: TokensCallback | None = None,
    prefetch: bool = True,
    cuda_graphs: bool = False,
) -> list[list[int]]:
    """The new tokens of every prompt (the stop id excluded).

    Args:
        decoder: The model, in eval mode, on the device to decode on.
        prompts: Token ids of each prompt (rows of the batch; lengths may differ).
        max_new_tokens: Most tokens to add to a prompt.
        sampler: Picks each next token from the logits.
        stop_id: A row ends when it draws this id (``None``: only at ``max_new_tokens``).
        generator: Random numbers of the sampler, on the decoder's device (seeded).
        on_tokens: Called after every step with each row's new token (``None`` for rows that
            have ended), e.g. to stream text.
        prefetch: Plan the lookups: as soon as the next tokens are known, parts with static
            routing start fetching their table rows (side stream or reader thread), hidden
            behind the layers before their first use (``lookup_plan``). ``False``: each part
            reads its rows when it runs (to measure what planning buys).
        cuda_graphs: Replay the decoder layers of each step as CUDA graphs (``step_graphs``;
            the model must be on a CUDA device): the parts that read lookup tables run
            eagerly between them. Captured on the first call for a batch size and length,
            then reused.
    """
    check_lengths(prompts, max_new_tokens=max_new_tokens, max_seq_len=decoder.max_seq_len)
    device = decoder.token_embedding.weight.device
    lengths = [len(prompt) for prompt in prompts]
    ids_BT = torch.zeros(len(prompts), max(lengths), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids_BT[row, : len(prompt)] = torch.as_tensor(prompt, dtype=torch.long)
    needed = max(lengths) + max_new_tokens
    steps = None
    if cuda_graphs:
        steps = graphed_steps(decoder, batch_size=len(prompts), needed=needed)
        cache = steps.cache
    else:
        cache = decoder.new_cache(batch_size=len(prompts), max_len=needed)
    history = [[] for _ in prompts]  # each row's ids before the new ones (host), for planning
    plan = plan_lookups(decoder, ids_BT, history) if prefetch else None
    ids_BT = ids_BT.to(device, non_blocking=True)
    hidden_BTD = decoder.decode(ids_BT, cache, lengths=lengths, plan=plan)
    history = [list(prompt) for prompt in prompts]
    last_B = torch.as_tensor(lengths).to(device, non_blocking=True) - 1
    logits_BV = decoder.logits(hidden_BTD[torch.arange(len(prompts), device=device), last_B])
    completions: list[list[int]] = [[] for _ in prompts]
    ended = [False] * len(prompts)
    for step in range(max_new_tokens):
        next_B = sampler(logits_BV, generator)
        drawn = next_B.tolist()  # the step's one host sync: to stream the text and to stop
        tokens = list(drawn)  # None where a row has ended
        for row, token in enumerate(drawn):
            ended[row] = ended[row] or token == stop_id
            if ended[row]:
                tokens[row] = None
            else:
                completions[row].append(token)
        if on_tokens is not None:
            on_tokens(tokens)
        if all(ended) or step + 1 == max_new_tokens:
            break
        # The next tokens are known here, before the forward that reads them: their rows
        # start moving now, while the layers before their first use run. Graphed steps start
        # the sublayers' fetches once the layers before them are queued (``lookup_plan``).
        if prefetch:
            plan = plan_lookups(
                decoder, torch.as_tensor(drawn)[:, None], history, defer_sublayers=steps is not None
            )
        if steps is not None:
            logits_BV = steps.step(next_B[:, None], plan)
        else:
            logits_BV = decoder.logits(decoder.decode(next_B[:, None], cache, plan=plan)[:, 0])
        for row, token in enumerate(drawn):  # ended rows are fed too: their ids come next
            history[row].append(token)
    return completions
