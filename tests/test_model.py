"""Numerics of the decoder's parts against plain references, and its injection points."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from embedkit.interfaces import InputEmbedding, Sublayer
from embedkit.model.attention import CausalSelfAttention
from embedkit.model.decoder import Decoder
from embedkit.model.rope import RotaryEmbedding
from embedkit_dense.swiglu import SwiGLU


def reference_rope(x_BHLE: torch.Tensor, base: float = 10_000.0) -> torch.Tensor:
    """RoPE as complex rotation of pairs (x_i, x_{i+E/2}) by position * base^(-2i/E)."""
    E = x_BHLE.shape[-1]
    half = E // 2
    out = torch.empty_like(x_BHLE)
    for pos in range(x_BHLE.shape[-2]):
        for i in range(half):
            angle = pos * base ** (-2 * i / E)
            z = complex(1, 0) * torch.complex(x_BHLE[..., pos, i], x_BHLE[..., pos, i + half])
            z = z * complex(math.cos(angle), math.sin(angle))
            out[..., pos, i], out[..., pos, i + half] = z.real, z.imag
    return out


def test_rope_matches_complex_rotation():
    x_BHLE = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    rope = RotaryEmbedding(head_dim=8, max_seq_len=4)  # grows past 4 on demand
    torch.testing.assert_close(
        rope(x_BHLE.float()).double(), reference_rope(x_BHLE), rtol=1e-5, atol=1e-5
    )


def test_rope_offset_continues_positions():
    x_BHLE = torch.randn(1, 1, 10, 8)
    rope = RotaryEmbedding(head_dim=8, max_seq_len=16)
    torch.testing.assert_close(rope(x_BHLE)[..., 6:, :], rope(x_BHLE[..., 6:, :], start=6))


def test_rope_preserves_relative_scores():
    rope = RotaryEmbedding(head_dim=16, max_seq_len=64)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    score = lambda i, j: (rope(q, start=i) * rope(k, start=j)).sum()  # noqa: E731
    torch.testing.assert_close(score(3, 1), score(40, 38), rtol=1e-4, atol=1e-5)


def reference_attention(attn: CausalSelfAttention, x_BLD: torch.Tensor) -> torch.Tensor:
    """Explicit softmax(QK^T / sqrt(E) + causal mask) V, head by head."""
    _, L, D = x_BLD.shape
    H = attn.num_heads
    E = D // H
    q, k, v = attn.qkv(x_BLD).split(D, dim=-1)
    heads = []
    for h in range(H):
        qh = attn.rotary(q[..., h * E : (h + 1) * E].unsqueeze(1)).squeeze(1)
        kh = attn.rotary(k[..., h * E : (h + 1) * E].unsqueeze(1)).squeeze(1)
        scores = qh @ kh.transpose(1, 2) / math.sqrt(E)
        mask = torch.ones(L, L, dtype=torch.bool).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
        heads.append(scores.softmax(-1) @ v[..., h * E : (h + 1) * E])
    return attn.out(torch.cat(heads, dim=-1))


def test_attention_matches_reference():
    torch.manual_seed(0)
    attn = CausalSelfAttention(dim=32, num_heads=4, max_seq_len=16, rope_base=10_000.0)
    x_BLD = torch.randn(2, 12, 32)
    torch.testing.assert_close(attn(x_BLD), reference_attention(attn, x_BLD), rtol=1e-4, atol=1e-5)


def test_swiglu_formula():
    torch.manual_seed(0)
    block = SwiGLU(16, hidden_dim=24)
    x = torch.randn(3, 16)
    g, u = x @ block.gate.weight.T, x @ block.up.weight.T
    expected = (g * torch.sigmoid(g) * u) @ block.down.weight.T
    torch.testing.assert_close(block(x), expected)


def _decoder(**overrides) -> Decoder:
    torch.manual_seed(0)
    args = dict(
        vocab_size=40, dim=32, num_layers=3, num_heads=4, feed_forward=SwiGLU, max_seq_len=16
    )
    return Decoder(**(args | overrides))


def test_decoder_is_causal():
    decoder = _decoder()
    ids_BL = torch.randint(0, 40, (2, 10))
    changed = ids_BL.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 40
    a, b = decoder.logits(decoder(ids_BL)), decoder.logits(decoder(changed))
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_tied_and_untied_heads():
    tied = _decoder(tie_embeddings=True)
    untied = _decoder(tie_embeddings=False)
    assert tied.head.weight is tied.token_embedding.weight
    assert untied.head.weight is not untied.token_embedding.weight
    assert untied.num_parameters() - tied.num_parameters() == 40 * 32


class AddBias(Sublayer):
    """A test sublayer that adds a learned vector to the residual stream."""

    def __init__(self, dim: int, vocab_size: int = 0, tables=None, *, before_layer: int = 1):
        super().__init__()
        self._before = before_layer
        self.bias = nn.Parameter(torch.ones(dim))
        self.calls = 0

    @property
    def before_layer(self) -> int:
        return self._before

    def forward(self, hidden_BLD, ids_BL):
        self.calls += 1
        return hidden_BLD + self.bias


def test_sublayer_is_inserted_and_placed():
    decoder = _decoder(sublayers=[AddBias])
    ids_BL = torch.randint(0, 40, (1, 5))
    plain = _decoder()
    out = decoder(ids_BL)
    assert decoder.sublayers["1"].calls == 1
    assert not torch.allclose(out, plain(ids_BL))


@pytest.mark.parametrize("position", [0, 3])
def test_sublayer_position_is_validated(position):
    with pytest.raises(ValueError, match=f"before_layer={position}.*1 .. 2"):
        _decoder(sublayers=[lambda dim, vocab, tables: AddBias(dim, before_layer=position)])


class ZeroSecondPosition(InputEmbedding):
    """A test input embedding that replaces position 1 with zeros where a feature says so."""

    def forward(self, embedded_BLD, ids_BL, token_embedding, features):
        mask_BL1 = features["replace"].unsqueeze(-1)
        return torch.where(mask_BL1, torch.zeros_like(embedded_BLD), embedded_BLD)


def test_input_embedding_replaces_positions():
    decoder = _decoder(input_embedding=lambda dim, vocab, tables: ZeroSecondPosition())
    ids_BL = torch.randint(0, 40, (1, 6))
    replace_BL = torch.zeros(1, 6, dtype=torch.bool)
    replace_BL[0, 1] = True
    out = decoder(ids_BL, {"replace": replace_BL})
    plain = decoder(ids_BL, {"replace": torch.zeros_like(replace_BL)})
    torch.testing.assert_close(out[:, :1], plain[:, :1])
    assert not torch.allclose(out[:, 1:], plain[:, 1:])
