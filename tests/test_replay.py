"""Replay: sequences, is_first handling, latent refresh, disk round trip."""

import numpy as np
import pytest

from reverie.agent.replay import Replay


def step(i, first=False):
    return {
        "position": np.full(3, i, np.float32),
        "reward": np.float32(i),
        "is_first": np.bool_(first),
        "is_last": np.bool_(False),
        "is_terminal": np.bool_(False),
        "action": np.full(2, -i, np.float32),
        "deter": np.full(4, i, np.float16),
        "stoch": np.full(3, i % 7, np.uint8),
    }


def fill(replay, n, episode=10):
    for i in range(n):
        replay.add(step(i, first=i % episode == 0))


def test_sequences_are_consecutive_and_keep_is_first():
    replay = Replay(capacity=1000, seq_len=8, seed=0)
    fill(replay, 100)
    batch, pos = replay.sample(16)
    assert batch["position"].shape == (16, 8, 3) and batch["stoch"].shape == (16, 8, 3)
    ids = batch["reward"].astype(int)
    assert np.all(np.diff(ids, axis=1) == 1)
    assert np.array_equal(batch["is_first"], ids % 10 == 0)
    assert np.array_equal(pos, ids)


def test_ring_drops_oldest_and_never_samples_across_the_seam():
    replay = Replay(capacity=50, seq_len=8, seed=0)
    fill(replay, 120)
    assert len(replay) == 50
    for _ in range(20):
        batch, _ = replay.sample(8)
        ids = batch["reward"].astype(int)
        assert ids.min() >= 70 and np.all(np.diff(ids, axis=1) == 1)


def test_too_few_steps_raises():
    replay = Replay(capacity=100, seq_len=8)
    fill(replay, 5)
    with pytest.raises(ValueError, match="need at least 8"):
        replay.sample(1)


def test_update_latents():
    replay = Replay(capacity=100, seq_len=4, seed=0)
    fill(replay, 20)
    batch, pos = replay.sample(2)
    replay.update_latents(pos[:, 1:], {"deter": np.full((2, 3, 4), -1, np.float16), "stoch": np.zeros((2, 3, 3), np.uint8)})
    assert np.all(replay.data["deter"][pos[:, 1:]] == -1)


def test_disk_round_trip_restores_data_and_sampling(tmp_path):
    a = Replay(capacity=300, seq_len=8, directory=tmp_path, chunk_size=32, seed=3)
    fill(a, 250)
    a.update_latents(np.array([[5, 6]]), {"deter": np.full((1, 2, 4), 9, np.float16), "stoch": np.full((1, 2, 3), 2, np.uint8)})
    a.save()
    fill(a, 10)  # steps after the save are not part of the saved state
    b = Replay(capacity=300, seq_len=8, directory=tmp_path, chunk_size=32, seed=99)
    assert b.load()
    assert b.total == 250 and len(b) == 250
    for key in a.data:
        assert np.array_equal(a.data[key][:250], b.data[key][:250]), key
    # Sampling continues exactly where the saved generator stood.
    c = Replay(capacity=300, seq_len=8, directory=tmp_path, chunk_size=32, seed=0)
    c.load()
    assert np.array_equal(b.sample(4)[1], c.sample(4)[1])


def test_disk_round_trip_after_wrapping(tmp_path):
    a = Replay(capacity=64, seq_len=8, directory=tmp_path, chunk_size=16, seed=0)
    fill(a, 200)
    a.save()
    b = Replay(capacity=64, seq_len=8, directory=tmp_path, chunk_size=16, seed=0)
    b.load()
    assert b.total == 200
    for key in a.data:
        assert np.array_equal(a.data[key], b.data[key]), key
    # Chunk i (steps 16i … 16i+15) is written when total reaches 16(i+1): 0 … 11 for 200 steps. Each write deletes
    # the chunks below (total − capacity) // chunk_size, so after the last one (total 192) only the ones holding the
    # capacity window remain: (192 − 64) // 16 = 8 up to 11, exactly the chunks load() reads, 200 − 64 = 136 → 8 … 11.
    assert sorted(p.name for p in tmp_path.glob("chunk_*.npz")) == [f"chunk_{i:08d}.npz" for i in range(8, 12)]
