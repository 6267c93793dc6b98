"""What a model costs: parameters and inference FLOPs per token.

FLOPs follow the usual forward estimate: 2 per weight of every matrix a token passes through,
plus attention over the context (2 * 2 * layers * context * width for scores and values).
A part whose inference differs from its training (SCONE reads its f-gram embeddings from a
table instead of running the f-gram model) says so with ``inference_flops_per_token()``.
"""

from __future__ import annotations

from torch import nn

from embedkit.model.decoder import Decoder


def matrix_flops(module: nn.Module) -> int:
    """2 FLOPs per weight of every ``nn.Linear`` in ``module`` (one token through each)."""
    return sum(2 * m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def part_flops(part: nn.Module | None) -> int:
    """Inference FLOPs per token of a decoder part (its own estimate when it has one)."""
    if part is None:
        return 0
    own = getattr(part, "inference_flops_per_token", None)
    return int(own()) if callable(own) else matrix_flops(part)


def inference_flops_per_token(decoder: Decoder, *, context: int) -> int:
    """Forward FLOPs to produce one token's logits with ``context`` tokens of attention."""
    attention = 4 * len(decoder.layers) * context * decoder.dim
    # The feed-forward block may have its own estimate (a mixture of experts runs K of them).
    layers = sum(matrix_flops(layer.attn) + part_flops(layer.ffn) for layer in decoder.layers)
    sublayers = sum(part_flops(s) for s in decoder.sublayers.values())
    return (
        attention
        + layers
        + sublayers
        + part_flops(decoder.input_embedding)
        + matrix_flops(decoder.head)
    )


def extra_training_flops(decoder: Decoder) -> float:
    """FLOPs the parts spent in training beyond ``3 x`` their inference FLOPs per token so far
    (``TrainingCost``: SCONE's f-gram model); 0 when none does."""
    from embedkit.interfaces import TrainingCost

    return float(
        sum(p.extra_training_flops() for p in decoder.modules() if isinstance(p, TrainingCost))
    )


def lookup_parameters(decoder: Decoder) -> int:
    """Parameters a token does not multiply at inference: the lookup tables of the parts (a
    token reads only its own rows) and what produces a table only while training (SCONE's
    f-gram model). Parts declare them with ``lookup_parameters()``."""
    total = 0
    for part in decoder.modules():
        own = getattr(part, "lookup_parameters", None)
        if callable(own):
            total += int(own())
    return total


def parameter_counts(decoder: Decoder) -> dict[str, int]:
    """Parameters: total, trainable, without token embedding / output head, and active (what
    one token's forward multiplies at inference: total minus ``lookup_parameters``; the token
    embedding counts, as in dense models)."""
    unique = {id(p): p for p in decoder.parameters()}
    total = sum(p.numel() for p in unique.values())
    return {
        "total": total,
        "trainable": sum(p.numel() for p in unique.values() if p.requires_grad),
        "non_embedding": decoder.num_parameters(non_embedding=True),
        "active": total - lookup_parameters(decoder),
    }
