"""Windows: random training windows are deterministic; validation windows tile every target."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from embedkit.data import IGNORE_INDEX, EpochSampler, RandomWindows, ValidationWindows


@given(num_tokens=st.integers(2, 300), seq_len=st.integers(1, 40))
def test_validation_windows_target_every_token_after_the_first_exactly_once(num_tokens, seq_len):
    tokens_N = np.arange(num_tokens, dtype=np.uint16)  # token value == position
    windows = ValidationWindows(tokens_N, seq_len=seq_len)
    targets = torch.cat([windows[i]["targets"] for i in range(len(windows))])
    targets = targets[targets != IGNORE_INDEX]
    assert sorted(targets.tolist()) == list(range(1, num_tokens))
    assert len(windows) == -(-(num_tokens - 1) // seq_len), "no window without targets"
    for i in range(len(windows)):
        item = windows[i]
        valid = item["targets"] != IGNORE_INDEX
        assert item["input_ids"].shape == item["targets"].shape == (seq_len,)
        assert torch.equal(item["targets"][valid], item["input_ids"][valid] + 1)
        assert (item["input_ids"][~valid] == 0).all()
        assert valid[0] and valid.tolist() == sorted(valid.tolist(), reverse=True), "pad at end"


def test_validation_windows_padding():
    windows = ValidationWindows(np.array([5, 6, 7, 8, 9], dtype=np.uint16), seq_len=3)
    assert len(windows) == 2
    assert windows[0]["input_ids"].tolist() == [5, 6, 7]
    assert windows[0]["targets"].tolist() == [6, 7, 8]
    assert windows[1]["input_ids"].tolist() == [8, 0, 0]
    assert windows[1]["targets"].tolist() == [9, IGNORE_INDEX, IGNORE_INDEX]
    assert windows[1]["input_ids"].dtype == torch.int64
    with pytest.raises(IndexError):
        windows[2]


def test_validation_windows_need_two_tokens():
    with pytest.raises(ValueError, match="validation split has 1 tokens"):
        ValidationWindows(np.array([3], dtype=np.uint16), seq_len=4)


def test_random_windows_are_deterministic_shifted_slices():
    tokens_N = np.arange(1000, dtype=np.uint16)
    windows = RandomWindows(tokens_N, seq_len=16, num_samples=50, seed=3)
    again = RandomWindows(tokens_N, seq_len=16, num_samples=50, seed=3)
    other = RandomWindows(tokens_N, seq_len=16, num_samples=50, seed=4)
    starts = []
    for i in range(200):  # past len: later epochs
        item = windows[i]
        assert item["input_ids"].dtype == torch.int64 and item["input_ids"].shape == (16,)
        assert torch.equal(item["input_ids"], again[i]["input_ids"])
        start = int(item["input_ids"][0])
        assert torch.equal(item["input_ids"], torch.arange(start, start + 16))
        assert torch.equal(item["targets"], torch.arange(start + 1, start + 17))
        starts.append(start)
    assert min(starts) >= 0 and max(starts) <= 1000 - 17
    assert len(set(starts)) > 150, "positions must spread over the array"
    assert [int(other[i]["input_ids"][0]) for i in range(20)] != starts[:20]


def test_random_windows_reach_both_ends():
    windows = RandomWindows(np.arange(6, dtype=np.uint16), seq_len=4, num_samples=1, seed=0)
    assert {int(windows[i]["input_ids"][0]) for i in range(100)} == {0, 1}


def test_random_windows_need_more_tokens_than_seq_len():
    with pytest.raises(ValueError, match=r"data\.seq_len=8 needs at least 9 tokens"):
        RandomWindows(np.arange(8, dtype=np.uint16), seq_len=8, num_samples=1, seed=0)


def test_epoch_sampler_gives_each_epoch_fresh_indices():
    sampler = EpochSampler(num_samples=4)
    assert len(sampler) == 4 and list(sampler) == [0, 1, 2, 3]
    sampler.set_epoch(2)
    assert list(sampler) == [8, 9, 10, 11]


def test_memmap_windows_pickle_by_reference(tmp_path):
    path = tmp_path / "tokens.bin"
    np.arange(100_000, dtype="<u2").tofile(path)
    tokens_N = np.memmap(path, dtype="<u2", mode="r", shape=(100_000,))
    for windows in (
        ValidationWindows(tokens_N, seq_len=8),
        RandomWindows(tokens_N, seq_len=8, num_samples=4, seed=0),
    ):
        payload = pickle.dumps(windows)
        assert len(payload) < 2_000, "the worker must reopen the file, not receive its content"
        copy = pickle.loads(payload)
        assert isinstance(copy.tokens_N, np.memmap)
        assert torch.equal(copy[3]["input_ids"], windows[3]["input_ids"])
    view = RandomWindows(tokens_N[50_000:], seq_len=8, num_samples=4, seed=0)
    assert torch.equal(pickle.loads(pickle.dumps(view))[1]["targets"], view[1]["targets"])
