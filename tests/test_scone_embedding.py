"""``SconeEmbedding`` (SCONE): f-gram embeddings replace token embeddings exactly at the tagged
positions and depend on the f-gram alone, training counts the f-gram model's work, and the
vocabulary is fitted once and checked on reuse (the exported table: test_scone_table.py).

Legend: B = batch rows, L = positions, D = model width, S = f-grams, K = longest f-gram,
F = f-grams of one call, M = matched positions, N = tokens of a split.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from embedkit.accounting import extra_training_flops
from embedkit.data.datamodule import TextDataModule
from embedkit.model.decoder import Decoder
from embedkit_scone.embedding import FEATURE
from embedkit_scone.vocab import FGramVocab
from tests.support.scone_models import (
    CLOSE,
    SETTINGS,
    scone_data,
    scone_decoder,
    tagged_batch,
    trained_decoder,
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scone")


@pytest.fixture(scope="module")
def data(workspace: Path) -> TextDataModule:
    return scone_data(workspace)


@pytest.fixture(scope="module")
def trained(workspace: Path, data: TextDataModule) -> Decoder:
    return trained_decoder(workspace, data)


# 1. The f-gram model's output depends on the f-gram alone.


@torch.no_grad()
def test_fgram_embedding_is_the_same_alone_or_among_others(trained: Decoder):
    scone, token_embedding = trained.input_embedding, trained.token_embedding
    num_fgrams = scone.vocab.num_entries
    together_SD = scone.fgram_embeddings(torch.arange(num_fgrams), token_embedding)
    # The first and last f-gram of every length, alone.
    lengths_S = scone.lengths_S
    sample_F: list[int] = []
    for n in lengths_S.unique():
        of_length_n = torch.nonzero(lengths_S == n)[:, 0]
        sample_F += [int(of_length_n[0]), int(of_length_n[-1])]
    assert len(set(lengths_S[sample_F].tolist())) == SETTINGS["max_n"] - 1
    for s in sample_F:
        alone_D = scone.fgram_embeddings(torch.tensor([s]), token_embedding)[0]
        torch.testing.assert_close(alone_D, together_SD[s], **CLOSE)
    # A shuffled subset, and every f-gram twice in one call.
    shuffled_F = torch.randperm(num_fgrams, generator=torch.Generator().manual_seed(2))[:37]
    torch.testing.assert_close(
        scone.fgram_embeddings(shuffled_F, token_embedding), together_SD[shuffled_F], **CLOSE
    )
    twice_F = torch.arange(num_fgrams).repeat(2).flip(0)
    torch.testing.assert_close(
        scone.fgram_embeddings(twice_F, token_embedding), together_SD[twice_F], **CLOSE
    )


@torch.no_grad()
def test_fgram_model_never_reads_the_padding_after_the_last_token(trained: Decoder):
    scone, token_embedding = trained.input_embedding, trained.token_embedding
    tokens_FK, lengths_F = scone.tokens_SK, scone.lengths_S
    assert (lengths_F < tokens_FK.shape[1]).any(), "no f-gram shorter than K: nothing padded"
    padding_FK = torch.arange(tokens_FK.shape[1]) >= lengths_F[:, None]
    embedded_FKD = token_embedding(tokens_FK.clamp_min(0))
    other_FKD = embedded_FKD.clone()
    noise = torch.randn(int(padding_FK.sum()), embedded_FKD.shape[-1]) * 100
    other_FKD[padding_FK] = noise
    reference_FD = scone.fgram_model(embedded_FKD, lengths_F)
    assert torch.equal(scone.fgram_model(other_FKD, lengths_F), reference_FD)
    assert torch.equal(
        scone.fgram_embeddings(torch.arange(len(lengths_F)), token_embedding), reference_FD
    )


@torch.no_grad()
def test_matched_position_reads_its_fgram_whatever_surrounds_it(trained: Decoder):
    scone, token_embedding = trained.input_embedding, trained.token_embedding
    fgram = 7
    expected_D = scone.fgram_embeddings(torch.tensor([fgram]), token_embedding)[0]
    generator = torch.Generator().manual_seed(3)
    for rows, length, row, position in [(1, 5, 0, 0), (3, 9, 2, 4), (2, 16, 1, 15)]:
        ids_BL = torch.randint(0, 256, (rows, length), generator=generator)
        tags_BL = torch.randint(-1, scone.vocab.num_entries, (rows, length), generator=generator)
        tags_BL[row, position] = fgram
        out_BLD = scone(token_embedding(ids_BL), ids_BL, token_embedding, {FEATURE: tags_BL})
        torch.testing.assert_close(out_BLD[row, position], expected_D, **CLOSE)
        # Every occurrence within one call gets the very same row.
        same_M = tags_BL == fgram
        assert (out_BLD[same_M] == out_BLD[row, position]).all()


# 2. Replacement happens exactly at the matched positions.


@pytest.mark.parametrize("matched_fraction", [0.0, 0.6, 1.0])
@torch.no_grad()
def test_replacement_exactly_at_matched_positions(trained: Decoder, matched_fraction: float):
    scone, token_embedding = trained.input_embedding, trained.token_embedding
    generator = torch.Generator().manual_seed(4)
    ids_BL = torch.randint(0, 256, (3, 11), generator=generator)
    tags_BL = torch.randint(0, scone.vocab.num_entries, (3, 11), generator=generator)
    tags_BL[torch.rand(3, 11, generator=generator) >= matched_fraction] = -1
    tags_BL[0, :3] = tags_BL[0, 3] if matched_fraction else -1  # repeated f-grams too
    plain_BLD = token_embedding(ids_BL)
    out_BLD = scone(plain_BLD, ids_BL, token_embedding, {FEATURE: tags_BL})
    unmatched_BL = tags_BL < 0
    assert torch.equal(out_BLD[unmatched_BL], plain_BLD[unmatched_BL])
    fgrams_U, inverse_M = torch.unique(tags_BL[~unmatched_BL], return_inverse=True)
    expected_MD = scone.fgram_embeddings(fgrams_U, token_embedding)[inverse_M]
    assert torch.equal(out_BLD[~unmatched_BL], expected_MD)
    # Tags as a loader may give them (int32) select the same rows.
    out32_BLD = scone(plain_BLD, ids_BL, token_embedding, {FEATURE: tags_BL.int()})
    assert torch.equal(out32_BLD, out_BLD)


def test_training_counts_the_fgram_models_work_and_nothing_else(
    tmp_path: Path, data: TextDataModule
):
    """``extra_training_flops``: 3 x 2 x the f-gram model's matrix weights per token through it,
    every token of every distinct f-gram of a training forward; none in eval or no-grad."""
    decoder = scone_decoder(tmp_path / "v.npz")
    scone, token_embedding = decoder.input_embedding, decoder.token_embedding
    scone.connect(data)
    ids_BL, tags_BL = tagged_batch(data, start=0, rows=2, length=24)
    plain_BLD = token_embedding(ids_BL)
    assert scone.extra_training_flops() == 0.0
    scone.train()
    scone(plain_BLD, ids_BL, token_embedding, {FEATURE: tags_BL})
    fgrams_U = torch.unique(tags_BL[tags_BL >= 0])
    assert len(fgrams_U) > 3  # real text: the batch matches f-grams
    tokens = int(scone.lengths_S[fgrams_U].sum())
    weights = sum(m.weight.numel() for m in scone.fgram_model.modules() if isinstance(m, nn.Linear))
    assert scone.extra_training_flops() == 3 * 2 * weights * tokens
    with torch.no_grad():
        scone(plain_BLD, ids_BL, token_embedding, {FEATURE: tags_BL})
    scone.eval()
    scone(plain_BLD, ids_BL, token_embedding, {FEATURE: tags_BL})
    assert scone.extra_training_flops() == 3 * 2 * weights * tokens
    assert extra_training_flops(decoder) == scone.extra_training_flops()


def test_forward_before_connect_is_refused(tmp_path: Path):
    decoder = scone_decoder(tmp_path / "v.npz")
    with pytest.raises(RuntimeError, match=r"before connect"):
        decoder(torch.zeros(1, 4, dtype=torch.long))


# 3. connect: fit once, then load; refuse other settings or another tokenizer.


def test_connect_fits_and_saves_then_loads(tmp_path: Path, data: TextDataModule):
    vocab_path = tmp_path / "vocab" / "v.npz"
    first = scone_decoder(vocab_path)
    first.input_embedding.connect(data)
    assert vocab_path.is_file()
    fitted = first.input_embedding.vocab
    assert fitted.num_entries == SETTINGS["num_entries"]
    assert fitted.tokenizer_fingerprint == data.tokenizer.fingerprint
    assert FGramVocab.load(vocab_path).content_hash == fitted.content_hash
    assert first.input_embedding.tokens_SK.shape == (fitted.num_entries, SETTINGS["max_n"])
    assert FEATURE in data.features("val")
    mtime = os.stat(vocab_path).st_mtime_ns

    second = scone_decoder(vocab_path)
    second.input_embedding.connect(data)
    assert os.stat(vocab_path).st_mtime_ns == mtime
    loaded = second.input_embedding.vocab
    assert loaded.content_hash == fitted.content_hash
    assert torch.equal(second.input_embedding.tokens_SK, first.input_embedding.tokens_SK)
    assert torch.equal(second.input_embedding.lengths_S, first.input_embedding.lengths_S)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_n", 3),
        ("min_count", 4),
        ("num_entries", 400),
    ],
)
def test_connect_refuses_a_vocab_with_other_settings(
    workspace: Path, data: TextDataModule, trained: Decoder, field: str, value: int
):
    vocab_path = workspace / "v.npz"  # fitted with SETTINGS by ``trained``
    mtime = os.stat(vocab_path).st_mtime_ns
    decoder = scone_decoder(vocab_path, **{field: value})
    with pytest.raises(ValueError, match=re.escape(f"vocab_path={str(vocab_path)!r}")) as err:
        decoder.input_embedding.connect(data)
    assert f"{field}=" in str(err.value)
    assert os.stat(vocab_path).st_mtime_ns == mtime


def test_connect_refuses_a_vocab_of_another_tokenizer(
    tmp_path: Path, workspace: Path, data: TextDataModule, trained: Decoder
):
    vocab = FGramVocab.load(workspace / "v.npz")
    vocab.tokenizer_fingerprint = "bpe-2048-other"
    vocab_path = tmp_path / "other-tokenizer.npz"
    vocab.save(vocab_path)
    decoder = scone_decoder(vocab_path)
    with pytest.raises(ValueError, match=re.escape(f"vocab_path={str(vocab_path)!r}")) as err:
        decoder.input_embedding.connect(data)
    assert "bpe-2048-other" in str(err.value)
    assert data.tokenizer.fingerprint in str(err.value)


# 4. Tags from the data, and the fallback lookup within each row.


def test_data_tags_are_the_vocab_lookup_of_the_stream(data: TextDataModule, trained: Decoder):
    vocab = trained.input_embedding.vocab
    for split, tokens_N in (("train", data.shards.train_N), ("val", data.shards.val_N)):
        tags_N = data.features(split)[FEATURE]
        assert np.array_equal(np.asarray(tags_N, dtype=np.int64), vocab.lookup(tokens_N))
    assert (np.asarray(data.features("train")[FEATURE]) >= 0).mean() > 0.3


@torch.no_grad()
def test_untagged_forward_equals_tagged_where_the_fgram_lies_within_the_row(
    data: TextDataModule, trained: Decoder
):
    scone, token_embedding = trained.input_embedding, trained.token_embedding
    batch = next(iter(data.train_dataloader()))
    ids_BL, tags_BL = batch["input_ids"], batch[FEATURE]
    lengths_BL = torch.where(tags_BL >= 0, scone.lengths_S[tags_BL.clamp_min(0)], 1)
    within_BL = torch.arange(ids_BL.shape[1]) - lengths_BL + 1 >= 0
    assert within_BL.sum() > within_BL.numel() // 2
    assert torch.equal(scone.vocab.lookup_torch(ids_BL)[within_BL], tags_BL[within_BL])
    plain_BLD = token_embedding(ids_BL)
    tagged_BLD = scone(plain_BLD, ids_BL, token_embedding, {FEATURE: tags_BL})
    untagged_BLD = scone(plain_BLD, ids_BL, token_embedding, {})
    torch.testing.assert_close(untagged_BLD[within_BL], tagged_BLD[within_BL], **CLOSE)
