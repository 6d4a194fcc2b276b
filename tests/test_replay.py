"""Replay: sequences, is_first handling, latent refresh, disk round trip, crash safety."""

import json

import numpy as np
import pytest

from reverie.agent.replay import LEGACY, PARTS, DiskReplay, Manifest, Replay


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


def test_uniform_draws_are_those_of_the_seeded_generator():
    """recent_fraction 0 (the default) draws exactly what a uniform replay drew before the option existed."""
    replay = Replay(capacity=1000, seq_len=8, seed=3, recent_steps=50)
    fill(replay, 300)
    _, pos = replay.sample(16)
    assert np.array_equal(pos[:, 0], np.random.default_rng(3).integers(0, 300 - 8 + 1, size=16))


def test_recent_fraction_draws_that_share_from_the_newest_steps():
    replay = Replay(capacity=5000, seq_len=8, seed=0, recent_fraction=0.25, recent_steps=100)
    fill(replay, 3000)
    starts = np.concatenate([replay.sample(16)[0]["reward"][:, 0] for _ in range(200)]).reshape(200, 16).astype(int)
    recent, uniform = starts[:, 12:], starts[:, :12]  # round(0.25 × 16) = 4, the last of each batch
    # The window: sequences that lie inside the newest 100 steps, i.e. start in [2900, 2992].
    assert recent.min() >= 3000 - 100 and recent.max() <= 3000 - 8
    assert len(np.unique(recent)) > 50  # spread over the window, not one sequence
    # The rest stay uniform over the whole replay: 1 in 30 of them fall in that window.
    assert 0.01 < np.mean(uniform >= 2900) < 0.07 and uniform.min() < 300
    # A window larger than the replay is the whole replay.
    small = Replay(capacity=5000, seq_len=8, seed=0, recent_fraction=1.0, recent_steps=10_000)
    fill(small, 40)
    assert small.sample(64)[0]["reward"][:, 0].min() >= 0


def test_recent_fraction_is_checked():
    with pytest.raises(ValueError, match="recent_fraction must lie in"):
        Replay(capacity=100, seq_len=8, recent_fraction=1.5)
    with pytest.raises(ValueError, match="recent_steps"):
        Replay(capacity=100, seq_len=8, recent_fraction=0.5, recent_steps=4)


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


# ------------------------------------------------------------------ crash safety
def snapshot(replay):
    """Everything load() restores: the held rows (latents included), total, sampler state, quarantined steps."""
    held = replay.held_steps()
    return {
        "total": replay.total,
        "rng": replay.rng.bit_generator.state,
        "rows": {k: v[held % replay.capacity].copy() for k, v in replay.data.items()},
        "quarantined": held[replay.bad[held % replay.capacity]],
    }


def assert_same(a, b):
    assert a["total"] == b["total"] and a["rng"] == b["rng"]
    assert np.array_equal(a["quarantined"], b["quarantined"])
    for key in a["rows"]:
        assert np.array_equal(a["rows"][key], b["rows"][key]), key


def change_latents_and_quarantine(replay, value):
    pos = np.array([[replay.total % replay.capacity - 1]])
    replay.update_latents(pos, {"deter": np.full((1, 1, 4), value, np.float16), "stoch": np.full((1, 1, 3), 5, np.uint8)})
    replay.quarantine(np.array([(replay.total - 3) % replay.capacity]))


@pytest.mark.parametrize("writes_done", [1, 2, 3])
def test_a_crash_inside_save_leaves_the_previous_save_whole(tmp_path, monkeypatch, writes_done):
    """Killed after any of the files of a save (partial, latents, quarantine) but before the last: load() gives the previous save."""
    import reverie.agent.replay as replay_module

    a = Replay(capacity=64, seq_len=8, directory=tmp_path, chunk_size=16, seed=0)
    fill(a, 100)
    change_latents_and_quarantine(a, 7)
    a.sample(3)  # move the sampler off its seed
    a.save()
    saved = snapshot(a)
    for i in range(100, 107):  # 107 steps: a partial chunk of another length than the saved one's
        a.add(step(i))
    change_latents_and_quarantine(a, 9)
    a.sample(3)
    writes = []

    def crashing(write):
        def wrapped(*args):
            if len(writes) == writes_done:
                raise KeyboardInterrupt("killed")  # not an Exception: nothing may catch it on the way
            writes.append(args[0])
            return write(*args)

        return wrapped

    monkeypatch.setattr(replay_module, "_atomic_savez", crashing(replay_module._atomic_savez))
    monkeypatch.setattr(replay_module, "write_text_atomic", crashing(replay_module.write_text_atomic))
    with pytest.raises(KeyboardInterrupt):
        a.save()
    assert len(writes) == writes_done
    monkeypatch.undo()
    b = Replay(capacity=64, seq_len=8, directory=tmp_path, chunk_size=16, seed=5)
    assert b.load()
    assert_same(snapshot(b), saved)


def test_a_kill_between_saves_after_the_replay_wrapped_loads_the_last_save(tmp_path):
    """Chunks that the last save's window needs stay on disk while the replay fills past them."""
    a = Replay(capacity=64, seq_len=8, directory=tmp_path, chunk_size=8, seed=0)
    fill(a, 100)
    a.save()
    saved = snapshot(a)
    for i in range(100, 200):  # 100 more steps: the whole window of the save has been overwritten in memory
        a.add(step(i))
    b = Replay(capacity=64, seq_len=8, directory=tmp_path, chunk_size=8, seed=5)  # the process was killed; a new one starts
    assert b.load()
    assert_same(snapshot(b), saved)
    # Once a save no longer needs them, the chunks go: only those of the newest window stay.
    a.save()
    assert sorted(p.name for p in tmp_path.glob("chunk_*.npz")) == [f"chunk_{i:08d}.npz" for i in range(136 // 8, 200 // 8)]


def test_the_generation_a_checkpoint_names_stays_until_pruned_and_at_most_two_are_kept(tmp_path):
    """The order RunBook.save keeps: save, (checkpoint), prune; a crash before the prune keeps the checkpoint's generation."""
    a = Replay(capacity=64, seq_len=8, directory=tmp_path, chunk_size=8, seed=0)
    fill(a, 50)
    first = a.save()
    a.prune(first)  # a checkpoint names `first`
    at_first = snapshot(a)
    for i in range(50, 130):
        a.add(step(i))
    orphan = a.save()  # … and the process is killed before the checkpoint that would name `orphan`
    assert [g.number for g in Manifest.read(tmp_path).generations] == [first, orphan]
    b = Replay(capacity=64, seq_len=8, directory=tmp_path, chunk_size=8, seed=5)
    assert b.load(first)  # the resume loads what the checkpoint names, not the newest
    assert_same(snapshot(b), at_first)
    for i in range(50, 140):
        b.add(step(i, first=True))  # the resumed run goes on with other data
    newest = b.save()
    assert newest not in (first, orphan)
    assert [g.number for g in Manifest.read(tmp_path).generations] == [first, newest]  # the orphan is gone
    assert not any(orphan_file.exists() for orphan_file in (tmp_path / f"{part}-{orphan}.npz" for part in PARTS))
    b.prune(newest)
    assert [g.number for g in Manifest.read(tmp_path).generations] == [newest]
    names = sorted(p.name for p in tmp_path.iterdir())
    chunks = [f"chunk_{i:08d}.npz" for i in range((140 - 64) // 8, 140 // 8)]
    assert names == sorted([*chunks, *(f"{part}-{newest}.npz" for part in PARTS), "replay.json"])
    c = Replay(capacity=64, seq_len=8, directory=tmp_path, chunk_size=8, seed=5)
    assert c.load()
    assert_same(snapshot(c), snapshot(b))


def save_in_the_layout_before_generations(replay):
    """What Replay.save wrote before generations existed (the layout of runs started by that code)."""
    directory, total = replay.directory, replay.total
    partial = replay._positions(total // replay.chunk_size * replay.chunk_size, total)
    np.savez(directory / "partial.npz", **{k: v[partial] for k, v in replay.data.items() if k not in ("deter", "stoch")})
    held = replay.held_steps()
    np.savez(directory / "latents.npz", **{k: replay.data[k][held % replay.capacity] for k in ("deter", "stoch")})
    np.savez(directory / "quarantine.npz", steps=held[replay.bad[held % replay.capacity]])
    meta = {"total": total, "capacity": replay.capacity, "chunk_size": replay.chunk_size, "rng": replay.rng.bit_generator.state}
    (directory / "replay.json").write_text(json.dumps(meta))


def test_a_replay_saved_before_generations_loads_and_moves_on(tmp_path):
    a = Replay(capacity=64, seq_len=8, directory=tmp_path, chunk_size=8, seed=0)
    fill(a, 100)
    change_latents_and_quarantine(a, 7)
    a.sample(2)
    save_in_the_layout_before_generations(a)
    old = snapshot(a)
    b = Replay(capacity=64, seq_len=8, directory=tmp_path, chunk_size=8, seed=5)
    assert b.load() and b.generation == LEGACY
    assert_same(snapshot(b), old)
    c = Replay(capacity=64, seq_len=8, directory=tmp_path, chunk_size=8, seed=5)
    assert c.load(LEGACY)  # what a resume from a checkpoint of that code asks for
    assert_same(snapshot(c), old)
    disk = DiskReplay(tmp_path)
    assert disk.total == 100 and np.array_equal(disk.read(40, 100)["reward"], np.arange(40, 100, dtype=np.float32))
    for i in range(100, 120):
        b.add(step(i))
    number = b.save()
    assert [g.number for g in Manifest.read(tmp_path).generations] == [LEGACY, number]  # a checkpoint still names LEGACY
    b.prune(number)
    assert not any((tmp_path / name).exists() for name in ("partial.npz", "latents.npz", "quarantine.npz"))
    d = Replay(capacity=64, seq_len=8, directory=tmp_path, chunk_size=8, seed=5)
    assert d.load(number)
    assert_same(snapshot(d), snapshot(b))


def test_disk_replay_reads_the_generation_asked_for(tmp_path):
    a = Replay(capacity=64, seq_len=8, directory=tmp_path, chunk_size=8, seed=0)
    fill(a, 30)
    first = a.save()
    for i in range(30, 45):
        a.add(step(i))
    a.save()
    assert DiskReplay(tmp_path).total == 45 and np.array_equal(DiskReplay(tmp_path).read(40, 45)["reward"], np.arange(40, 45))
    # A first save's generation is only named while a checkpoint pairs with it (prune was not called here).
    with pytest.raises(ValueError, match=f"not generation {first}"):
        DiskReplay(tmp_path, generation=first)


@pytest.mark.parametrize("damage", ["truncated partial", "missing chunk", "garbage latents"])
def test_a_damaged_replay_file_is_a_one_line_error_naming_it(tmp_path, damage):
    """Disk faults or hand edits (never a kill: every file is written atomically) give a ValueError naming the file."""
    a = Replay(capacity=300, seq_len=8, directory=tmp_path, chunk_size=32, seed=3)
    fill(a, 100)
    a.save()
    (generation,) = Manifest.read(tmp_path).generations
    if damage == "truncated partial":
        path = tmp_path / generation.files["partial"]
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "missing chunk":
        path = tmp_path / "chunk_00000001.npz"
        path.unlink()
    else:
        path = tmp_path / generation.files["latents"]
        path.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match=f"cannot read replay file .*{path.name}"):
        Replay(capacity=300, seq_len=8, directory=tmp_path, chunk_size=32).load()
    if damage != "garbage latents":  # the disk reader never opens latents
        with pytest.raises(ValueError, match=f"cannot read replay file .*{path.name}"):
            DiskReplay(tmp_path).read(0, 100)
