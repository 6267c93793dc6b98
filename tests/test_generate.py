"""Decoding with a KV cache: incremental logits equal the full forward's at every position for
dense, MoE, SCONE and L³ decoders and for prompts of different lengths in one batch; the
samplers keep to their sets; the decode loop stops where it should.

Legend: B = batch rows, L = positions, T = new positions, V = vocabulary size.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from embedkit.data.datamodule import TextDataModule
from embedkit.data.tokenizers import ByteTokenizer
from embedkit.generation import KVCache, Sampler, TextStream, generate
from embedkit.generation.sampling import greedy, top_k_filter, top_p_filter
from embedkit.model.decoder import Decoder
from embedkit.model.token_table import TokenTableEmbedding
from embedkit_dense.swiglu import SwiGLU
from embedkit_l3.allocation import LZWAllocation
from embedkit_l3.layer import L3Layer
from embedkit_moe.feed_forward import MoEFeedForward
from embedkit_scone.embedding import SconeEmbedding
from embedkit_scone.vocab import FGramVocab

# fp32 on the CPU: a matmul's rows depend in their last bits on how many rows it has, so one
# position computed among others of another count agrees to rounding, not bit for bit.
CLOSE = {"cpu": {"rtol": 1e-5, "atol": 1e-5}, "cuda": {"rtol": 1e-4, "atol": 1e-4}}
PROMPT_LENGTHS = [5, 12, 1, 9]
STEPS = [1, 3, 1, 2]  # tokens per decode call after the prefill: single and chunked steps


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> TextDataModule:
    data = TextDataModule(
        tokenizer=ByteTokenizer(),
        cache_dir=str(tmp_path_factory.mktemp("generate")),
        seq_len=32,
        batch_size=4,
    )
    data.prepare_data()
    data.setup("fit")
    return data


def _decoder(**parts) -> Decoder:
    torch.manual_seed(0)
    return Decoder(vocab_size=256, dim=32, num_layers=3, num_heads=4, max_seq_len=64, **parts)


def _randomized(decoder: Decoder) -> Decoder:
    """Non-trivial weights everywhere (a stand-in for training), in eval mode."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in decoder.named_parameters():
            std = 1.0 if "table" in name else 0.3
            param.normal_(generator=generator).mul_(std)
    return decoder.eval()


def _build(kind: str, data: TextDataModule, workspace: Path) -> Decoder:
    if kind == "dense":
        return _randomized(_decoder(feed_forward=SwiGLU))
    if kind == "moe":
        moe = partial(MoEFeedForward, num_experts=4, top_k=2)
        return _randomized(_decoder(feed_forward=moe))
    if kind == "token-table":
        return _randomized(_decoder(feed_forward=SwiGLU, input_embedding=TokenTableEmbedding))
    if kind == "scone":
        vocab = FGramVocab(max_n=4, min_count=3, num_entries=500)
        scone = partial(SconeEmbedding, vocab=vocab, vocab_path=str(workspace / "v.npz"))
        decoder = _decoder(feed_forward=SwiGLU, input_embedding=scone)
        decoder.input_embedding.connect(data)
        return _randomized(decoder)
    assert kind == "l3"
    allocation = LZWAllocation(num_rows=2048, max_rows_per_token=64)
    l3 = partial(
        L3Layer, before_layer=2, allocation=allocation, allocation_path=str(workspace / "a.npz"),
        d_up=48,
    )  # fmt: skip
    decoder = _decoder(feed_forward=SwiGLU, sublayers=[l3])
    decoder.sublayers["2"].connect(data)
    return _randomized(decoder)


def _sequences(data: TextDataModule, total: int) -> list[torch.Tensor]:
    """Rows of real text (so SCONE's f-grams match), one per prompt length."""
    text_N = torch.from_numpy(data.shards.val_N[:4096].astype(np.int64))
    return [
        text_N[97 * row : 97 * row + length + total] for row, length in enumerate(PROMPT_LENGTHS)
    ]


def incremental_logits(decoder: Decoder, rows: list[torch.Tensor]) -> list[torch.Tensor]:
    """Logits [L, V] of every row: its prompt prefilled in one right-padded batch, then the
    rest of the row fed ``STEPS`` tokens at a time."""
    cache = decoder.new_cache(batch_size=len(rows), max_len=max(map(len, rows)) + 4)
    prompts_BT = torch.zeros(
        len(rows), max(PROMPT_LENGTHS), dtype=torch.long, device=rows[0].device
    )
    for row, length in enumerate(PROMPT_LENGTHS):
        prompts_BT[row, :length] = rows[row][:length]
    hidden_BTD = decoder.decode(prompts_BT, cache, lengths=PROMPT_LENGTHS)
    logits = [
        [decoder.logits(hidden_BTD[row, :length])] for row, length in enumerate(PROMPT_LENGTHS)
    ]
    done = 0
    for step in STEPS:
        ids_BT = torch.stack(
            [rows[r][n + done : n + done + step] for r, n in enumerate(PROMPT_LENGTHS)]
        )
        logits_BTV = decoder.logits(decoder.decode(ids_BT, cache))
        for row in range(len(rows)):
            logits[row].append(logits_BTV[row])
        done += step
    return [torch.cat(parts) for parts in logits]


# 1. Incremental decoding equals the full forward, row by row, for every kind of model.


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@contextmanager
def full_fp32_matmuls():
    """fp32 matmuls without TF32 (which a CLI run in this process may have turned on)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
@pytest.mark.parametrize("kind", ["dense", "moe", "scone", "l3", "token-table"])
@torch.no_grad()
def test_incremental_logits_equal_full_forward(kind, device, data, tmp_path):
    # L³ runs its bucket lookup on the CPU and its Triton kernels on CUDA.
    decoder = _build(kind, data, tmp_path).to(device)
    rows = [row.to(device) for row in _sequences(data, sum(STEPS))]
    with full_fp32_matmuls():
        incremental = incremental_logits(decoder, rows)
        for row, ids_L in enumerate(rows):
            full_LV = decoder.logits(decoder(ids_L[None]))[0]  # the row alone, unpadded
            torch.testing.assert_close(incremental[row], full_LV, **CLOSE[device])
    if kind == "scone":  # the windows matter: f-grams end at decoded positions
        fgrams_L = decoder.input_embedding.vocab.lookup_torch(rows[0])
        assert (fgrams_L[PROMPT_LENGTHS[0] :] >= 0).any()


@torch.no_grad()
def test_decoding_does_not_change_the_forward(data, tmp_path):
    decoder = _build("dense", data, tmp_path)
    ids_BL = torch.randint(0, 256, (2, 20))
    before_BLD = decoder(ids_BL)
    incremental_logits(decoder, _sequences(data, sum(STEPS)))
    torch.testing.assert_close(decoder(ids_BL), before_BLD, rtol=0, atol=0)


def test_cache_refuses_positions_past_its_end():
    cache = KVCache(
        num_layers=1, batch_size=1, num_heads=1, max_len=4, head_dim=2,
        dtype=torch.float32, device="cpu",
    )  # fmt: skip
    cache.advance(None, 3)
    with pytest.raises(ValueError, match=r"exceed the cache's max_len=4"):
        cache.positions(2)


# 2. The decode loop: a row's tokens do not depend on the others; it stops at the stop id.


def test_batched_generation_equals_each_prompt_alone(data, tmp_path):
    decoder = _build("scone", data, tmp_path)
    rows = _sequences(data, 0)
    prompts = [row.tolist() for row in rows]
    greedy_sampler = Sampler(temperature=0)
    together = generate(decoder, prompts, max_new_tokens=8, sampler=greedy_sampler)
    alone = [generate(decoder, [p], max_new_tokens=8, sampler=greedy_sampler)[0] for p in prompts]
    assert together == alone
    assert all(len(tokens) == 8 for tokens in together)


def test_generation_stops_at_the_stop_id_and_reports_each_step(data, tmp_path):
    decoder = _build("dense", data, tmp_path)
    prompts = [row.tolist() for row in _sequences(data, 0)[:2]]
    free = generate(decoder, prompts, max_new_tokens=10, sampler=Sampler(temperature=0))
    stop_id = free[0][3]
    steps = []
    stopped = generate(
        decoder, prompts, max_new_tokens=10, sampler=Sampler(temperature=0), stop_id=stop_id,
        on_tokens=steps.append,
    )  # fmt: skip
    for row in range(2):
        expected = free[row][: free[row].index(stop_id)] if stop_id in free[row] else free[row]
        assert stopped[row] == expected
    assert [step[0] for step in steps[: len(stopped[0])]] == stopped[0]
    assert steps[len(stopped[0])][0] is None  # the stop id ends the row and is not reported


def test_seeded_sampling_is_reproducible(data, tmp_path):
    decoder = _build("dense", data, tmp_path)
    prompts = [row.tolist() for row in _sequences(data, 0)]
    sampler = Sampler(temperature=1.0, top_k=20, top_p=0.9)

    def draw(seed: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(seed)
        return generate(decoder, prompts, max_new_tokens=6, sampler=sampler, generator=generator)

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"max_new_tokens": 0}, r"max_new_tokens=0 is invalid"),
        ({"max_new_tokens": 60}, r"valid: max_new_tokens <= 52"),  # prompt 2 has 12 tokens
    ],
)
def test_lengths_are_checked(settings, message, data, tmp_path):
    decoder = _build("dense", data, tmp_path)
    prompts = [row.tolist() for row in _sequences(data, 0)]
    with pytest.raises(ValueError, match=message):
        generate(decoder, prompts, sampler=Sampler(temperature=0), **settings)
    with pytest.raises(ValueError, match=r"prompt 1 has 70 tokens, more than the model's"):
        generate(decoder, [[1] * 70], max_new_tokens=1, sampler=Sampler())
    with pytest.raises(ValueError, match=r"prompt 2 has no tokens"):
        generate(decoder, [[1], []], max_new_tokens=1, sampler=Sampler())


# 3. The samplers, on hand-made logits.

PROBS_V = torch.tensor([0.05, 0.5, 0.15, 0.3])  # ranked: 1, 3, 2, 0


def _kept(logits_BV: torch.Tensor) -> set[int]:
    return set(torch.nonzero(logits_BV[0] > float("-inf")).flatten().tolist())


@pytest.mark.parametrize(
    "p, kept",
    [(0.5, {1}), (0.51, {1, 3}), (0.8, {1, 3}), (0.81, {1, 3, 2}), (0.96, {0, 1, 2, 3})],
)
def test_top_p_keeps_the_smallest_set_reaching_p(p, kept):
    assert _kept(top_p_filter(PROBS_V.log()[None], p)) == kept


def test_top_p_keeps_the_best_token_even_when_it_alone_exceeds_p():
    assert _kept(top_p_filter(torch.tensor([[0.0, 10.0, 0.0]]), 0.1)) == {1}


def test_top_k_never_draws_outside_the_k_best():
    logits_BV = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    best_Bk = logits_BV.topk(5, dim=-1).indices
    for row in range(3):
        assert _kept(top_k_filter(logits_BV[row : row + 1], 5)) == set(best_Bk[row].tolist())
    sampler = Sampler(temperature=2.0, top_k=5)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        drawn_B = sampler(logits_BV, generator)
        assert (best_Bk == drawn_B[:, None]).any(dim=-1).all()


def test_temperature_zero_and_top_k_one_are_greedy():
    logits_BV = torch.randn(8, 30, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(Sampler(temperature=0)(logits_BV), greedy(logits_BV))
    for _ in range(20):
        assert torch.equal(Sampler(temperature=1e-4)(logits_BV, generator), greedy(logits_BV))
        assert torch.equal(Sampler(top_k=1)(logits_BV, generator), greedy(logits_BV))


def test_draws_follow_the_probabilities():
    logits_BV = PROBS_V.log().expand(20_000, -1)
    drawn_B = Sampler()(logits_BV, torch.Generator().manual_seed(0))
    frequencies_V = torch.bincount(drawn_B, minlength=4) / len(drawn_B)
    torch.testing.assert_close(frequencies_V, PROBS_V, rtol=0, atol=0.015)
    nucleus_B = Sampler(top_p=0.8)(logits_BV, torch.Generator().manual_seed(0))
    frequencies_V = torch.bincount(nucleus_B, minlength=4) / len(nucleus_B)
    torch.testing.assert_close(
        frequencies_V, torch.tensor([0.0, 0.625, 0.0, 0.375]), rtol=0, atol=0.015
    )


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"temperature": -1.0}, r"temperature=-1.0 is invalid"),
        ({"top_k": 0}, r"top_k=0 is invalid"),
        ({"top_p": 0.0}, r"top_p=0.0 is invalid; valid: 0 < top_p <= 1"),
        ({"top_p": 1.5}, r"top_p=1.5 is invalid"),
    ],
)
def test_bad_sampler_settings_name_the_field(settings, message):
    with pytest.raises(ValueError, match=message):
        Sampler(**settings)


# 4. Streamed text: a character split over tokens is handed out once it is complete.


def test_text_stream_waits_for_whole_characters():
    tokenizer = ByteTokenizer()
    stream = TextStream(tokenizer, list("Où ".encode()))
    pieces = [stream.push([byte]) for byte in "déjà".encode()]
    assert pieces == ["d", "", "é", "j", "", "à"]
    assert stream.push(list("\xe9".encode())[:1]) == ""
    assert stream.flush() == "\ufffd"


# 5. The command sets the recipe's own options apart (``--model...``, ``--data...``).


def test_command_passes_recipe_options_to_the_recipe():
    from embedkit.commands.generate import build_parser

    args = build_parser().parse_args(
        ["--config", "a.yaml", "--model.decoder.init_args.tables", "out", "--config", "b.yaml",
         "--ckpt_path", "c.ckpt", "--prompt", "x", "--data.batch_size=2", "--prompt", "y"]
    )  # fmt: skip
    assert args.config == ["a.yaml", "b.yaml"] and args.prompt == ["x", "y"]
    assert args.recipe_overrides == [
        "--model.decoder.init_args.tables", "out", "--data.batch_size=2"
    ]  # fmt: skip
