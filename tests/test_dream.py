"""The dream view: open-loop predictions (agent/openloop.py), their pictures (agent/dream_report.py), `reverie dream`, and the report during training."""

import json
import shutil
import threading

import numpy as np
import pytest
import torch
from conftest import TINY, chunk_of, wait_for
from PIL import Image

from reverie import envs
from reverie.agent import dream_report as dr
from reverie.agent.builder import build_agent
from reverie.agent.losses import world_model_losses
from reverie.agent.openloop import OpenLoop, open_loop
from reverie.agent.replay import DiskReplay, Manifest, Replay
from reverie.cli.config import compose
from reverie.cli.main import main
from reverie.world_model import dists

VERSIONS = ["dreamerv1", "dreamerv2", "dreamerv3"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: a second thread only costs synchronisation (and the runs in this file use threads=1 too)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_agent(algo, obs):
    cfg = compose([*TINY, f"algo={algo}", f"env=fake/{obs}", f"obs={obs}"])
    env = envs.from_config(cfg, 0)
    torch.manual_seed(0)
    return build_agent(cfg, env.obs_space, env.act_space), env


def recorded(env, episodes=2, seed=0):
    """Steps of ``episodes`` fake-env episodes under random actions, as replay stores them (``action`` taken after each step)."""
    rng = np.random.default_rng(seed)
    steps = []
    for episode in range(episodes):
        obs = env.reset(seed=episode)
        while True:
            action = rng.uniform(-1, 1, env.act_space.shape).astype(np.float32)
            steps.append({**obs, "action": action})
            if obs["is_last"]:
                break
            obs = env.step(action)
    return {k: np.stack([s[k] for s in steps]) for k in steps[0]}


def model_inputs(wm, env, B=2, T=7):
    """``obs {key: [B, T, ...]}`` and ``prev_actions [B, T, A]`` from the fake env, each sequence an episode start."""
    steps = recorded(env, episodes=B)
    starts = np.flatnonzero(steps["is_first"])[:B]
    seqs = {k: np.stack([v[s : s + T] for s in starts]) for k, v in steps.items()}
    obs = {k: torch.as_tensor(seqs[k]) for k in (*wm.obs_keys, "reward", "is_first", "is_terminal")}
    action = torch.as_tensor(seqs["action"])
    return obs, torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], 1)


def decoded_like_openloop(wm, feat):
    """What open_loop reports as the prediction: images clamped to [0, 1], vectors back from symlog."""
    out = {}
    for key, value in wm.decoder(feat).items():
        symlog = key in wm.decoder.vector_dims and wm.decoder.symlog_targets
        out[key] = dists.symexp(value) if symlog else value.clamp(0, 1) if key not in wm.decoder.vector_dims else value
    return out


# ------------------------------------------------------------ the numbers
@pytest.mark.parametrize("obs_kind", ["vector", "pixels"])
@pytest.mark.parametrize("algo", VERSIONS)
def test_full_context_is_the_posterior_reconstruction_of_the_loss(algo, obs_kind):
    agent, env = tiny_agent(algo, obs_kind)
    wm = agent.wm
    obs, prev = model_inputs(wm, env)
    B, T = obs["is_first"].shape
    torch.manual_seed(3)
    noise = torch.rand(B, T, wm.rssm.noise_dim)
    result = open_loop(wm, obs, prev, context=T, noise=noise)
    # The training path, drawing the same noise from the same seed: its reconstruction terms are the errors.
    torch.manual_seed(3)
    with torch.no_grad():
        losses, post, _ = world_model_losses(wm, obs, prev, wm.rssm.initial(B))
        expected = decoded_like_openloop(wm, wm.rssm.features(post))
    for key in wm.obs_keys:
        torch.testing.assert_close(result.error[key], losses[f"rec/{key}"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(result.pred[key], expected[key], rtol=1e-5, atol=1e-5)
    assert result.horizon == 0 and result.context == T


@pytest.mark.parametrize("algo, obs_kind", [("dreamerv3", "pixels"), ("dreamerv1", "vector"), ("dreamerv2", "vector")])
def test_context_one_is_pure_imagination_from_the_first_state(algo, obs_kind):
    agent, env = tiny_agent(algo, obs_kind)
    wm, rssm = agent.wm, agent.wm.rssm
    obs, prev = model_inputs(wm, env)
    B, T = obs["is_first"].shape
    noise = torch.rand(B, T, rssm.noise_dim, generator=torch.Generator().manual_seed(5))
    result = open_loop(wm, obs, prev, context=1, noise=noise)
    with torch.no_grad():  # one posterior step, then the prior alone, step by step
        token = wm.encoder({k: obs[k][:, 0] for k in wm.obs_keys})
        state, _ = rssm.obs_step(rssm.initial(B), prev[:, 0], token, obs["is_first"][:, 0], noise=noise[:, 0])
        feats = [rssm.features(state)]
        for t in range(1, T):
            state, _ = rssm.img_step(state, prev[:, t], noise=noise[:, t])
            feats.append(rssm.features(state))
        expected = decoded_like_openloop(wm, torch.stack(feats, 1))
    for key in wm.obs_keys:
        torch.testing.assert_close(result.pred[key], expected[key], rtol=1e-4, atol=1e-5)
    # Observations after the context cannot matter; the first one does.
    later = {k: (v.clone() if k in wm.obs_keys else v) for k, v in obs.items()}
    first = {k: (v.clone() if k in wm.obs_keys else v) for k, v in obs.items()}
    for key in wm.obs_keys:
        later[key][:, 1:] = later[key][:, 1:].flip(1)
        first[key][:, 0] = first[key][:, 3]
    assert all(torch.equal(open_loop(wm, later, prev, context=1, noise=noise).pred[k], result.pred[k]) for k in wm.obs_keys)
    assert not all(torch.equal(open_loop(wm, first, prev, context=1, noise=noise).pred[k], result.pred[k]) for k in wm.obs_keys)
    assert result.error_by_horizon()["total"].shape == (T - 1,)


def test_an_episode_start_inside_the_imagination_or_a_bad_context_is_refused():
    agent, env = tiny_agent("dreamerv3", "vector")
    obs, prev = model_inputs(agent.wm, env)
    with pytest.raises(ValueError, match="context=0 must lie in"):
        open_loop(agent.wm, obs, prev, context=0)
    obs["is_first"][1, 4] = True
    with pytest.raises(ValueError, match="sequence 1 starts an episode at step 4, inside the imagined steps"):
        open_loop(agent.wm, obs, prev, context=2)
    open_loop(agent.wm, obs, prev, context=5)  # within the context it is a reset, as in training


# ------------------------------------------------------------ the pictures
def known_result(B=2, K=3, H=4, size=8):
    """A fake-env pixel sequence with the model's prediction set to the negative image (so every row is known)."""
    from reverie.envs.fake import FakeEnv

    env = FakeEnv(obs="pixels", size=(size, size), length=K + H + 2)
    steps = recorded(env, episodes=B)
    starts = np.flatnonzero(steps["is_first"])
    truth = np.stack([steps["image"][s : s + K + H] for s in starts])  # [B, T, H, W, 3]
    pred = (255 - truth).astype(np.float32) / 255.0
    zeros = torch.zeros(B, K + H)
    result = OpenLoop(
        context=K,
        truth={"image": torch.as_tensor(truth)},
        pred={"image": torch.as_tensor(pred)},
        error={"image": torch.arange(K + H, dtype=torch.float32).repeat(B, 1)},
        reward=zeros,
        reward_pred=zeros + 0.5,
        cont=None,
        cont_pred=None,
    )
    return result, truth


def test_grid_png_rows_context_marking_and_gif_frames(tmp_path):
    B, K, H, size = 2, 3, 4, 8
    result, truth = known_result(B, K, H, size)
    out = dr.write_report(dr.build_report(result), tmp_path / "dream")
    png = np.asarray(Image.open(out / "openloop_image.png").convert("RGB"))
    cell = size + 2 * dr.PAD
    assert png.shape == (dr.HEADER_PX + B * 3 * cell, dr.LABEL_PX + (K + H) * cell, 3)
    grid = png[dr.HEADER_PX :, dr.LABEL_PX :]
    for b in range(B):
        for t in range(K + H):
            frame = truth[b, t]
            rows = [frame, 255 - frame, np.abs(255 - 2 * frame.astype(int))]  # truth, model, |model − truth|
            for r, expected in enumerate(rows):
                y, x = (b * 3 + r) * cell, t * cell
                np.testing.assert_array_equal(grid[y + dr.PAD : y + cell - dr.PAD, x + dr.PAD : x + cell - dr.PAD], expected)
                border = dr.CONTEXT_RGB if t < K else dr.IMAGINED_RGB
                assert tuple(grid[y, x]) == border and tuple(grid[y + cell - 1, x + cell - 1]) == border
    gif = Image.open(out / "openloop_image.gif")
    assert gif.n_frames == K + H
    assert gif.size == (B * cell, 3 * cell)
    numbers = json.loads((out / "openloop.json").read_text())
    assert numbers["error_by_horizon"]["total"] == [3.0, 4.0, 5.0, 6.0] and numbers["table"] == {"h1": 3.0}
    assert sorted(p.name for p in out.iterdir()) == ["error.png", "openloop.json", "openloop_image.gif", "openloop_image.png", "reward.png"]


def test_a_failed_write_leaves_the_earlier_report(tmp_path, monkeypatch):
    result, _ = known_result()
    report = dr.build_report(result)
    out = dr.write_report(report, tmp_path / "dream")
    before = sorted(p.name for p in out.iterdir())
    monkeypatch.setattr(dr.DreamReport, "files", lambda self: {"openloop.json": b"{}", "a/b.png": b""})  # the second cannot be written
    with pytest.raises(OSError):
        dr.write_report(report, out)
    assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["dream"]  # no temporary folder left


# ------------------------------------------------------------ sequences
def test_recent_episodes_from_memory_and_disk_replay_agree(tmp_path):
    from reverie.envs.fake import FakeEnv

    env = FakeEnv(obs="vector", length=9)
    steps = recorded(env, episodes=5)  # 5 episodes of 10 steps
    steps |= {"deter": np.zeros((50, 4), np.float16), "stoch": np.zeros((50, 2), np.uint8)}
    replay = Replay(capacity=32, seq_len=4, directory=tmp_path / "replay", chunk_size=8)
    for part in (slice(0, 30), slice(30, 45)):  # the last episode still running
        replay.extend({k: v[part] for k, v in steps.items()})
    replay.save()
    disk = DiskReplay(tmp_path / "replay")
    assert (disk.first, disk.total) == (replay.first, replay.total) == (13, 45)
    keys = ["target", "prev_action", "progress"]
    mem = dr.recent_sequences(replay, length=5, count=3, keys=keys)
    assert all(np.array_equal(mem[k], v) for k, v in dr.recent_sequences(disk, length=5, count=3, keys=keys).items())
    # Finished episodes first, newest first (started at 30 and 20); the running one (40) fills up; the cut one (13…19) never.
    np.testing.assert_array_equal(mem["progress"][:, 0, 0], 0.0)
    np.testing.assert_array_equal(mem["target"], np.stack([steps["target"][s : s + 5] for s in (30, 20, 40)]))
    with pytest.raises(ValueError, match="no episode holds context \\+ horizon = 11 steps \\(longest: 10"):
        dr.recent_sequences(replay, length=11, count=3, keys=keys)
    with pytest.raises(ValueError, match="replay holds 32 steps, fewer than context \\+ horizon = 40"):
        dr.recent_sequences(disk, length=40, count=3, keys=keys)


# ------------------------------------------------------------ training and the command
K, H = 3, 8
PIXEL_RUN = [
    *TINY,
    "env=fake/pixels",
    "obs=pixels",
    "env.size=16",
    "env.time_limit=20",
    "eval_episodes=0",
    "report_every=100",
    f"report_context={K}",
    f"report_horizon={H}",
    "report_sequences=3",
    # A learning rate that shows in ~100 updates.
    "algo.optimizer.lr=1e-3",
    "algo.optimizer.warmup=0",
]


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory):
    """A short `reverie train` on the pixel fake env with dream reports (shared by the tests below; they only read it)."""
    logdir = tmp_path_factory.mktemp("dream") / "run"
    assert main(["train", *PIXEL_RUN, "steps=120", f"logdir={logdir}"]) == 0
    return logdir


def tensorboard_tags(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    return acc


def test_training_reports_to_files_metrics_and_tensorboard(pixel_run):
    lines = [json.loads(line) for line in (pixel_run / "metrics.jsonl").read_text().splitlines()]
    reports = [m for m in lines if "report/openloop_error_h1" in m]
    assert [m["step"] for m in reports] == [100]  # mid-episode (episodes of 21 steps): any step, not only episode ends
    assert all({"report/openloop_error_h5", "report/seconds"} <= m.keys() for m in reports)
    assert "report/openloop_error_h15" not in reports[0]  # beyond the horizon of 8
    folder = pixel_run / "dream" / f"step_{reports[0]['step']:08d}"
    assert {"openloop_image.png", "openloop_image.gif", "reward.png", "error.png", "openloop.json"} <= {p.name for p in folder.iterdir()}
    acc = tensorboard_tags(pixel_run)
    assert {"dream/openloop_image", "dream/openloop_image_video", "dream/reward", "dream/error"} <= set(acc.Tags()["images"])
    video = acc.Images("dream/openloop_image_video")[0]
    gif = Image.open(__import__("io").BytesIO(video.encoded_image_string))
    assert gif.format == "GIF" and gif.n_frames == K + H
    assert video.step == reports[0]["step"]


def dream_numbers(out):
    return json.loads((out / "openloop.json").read_text())


def test_dream_command_trained_beats_untrained_at_horizon_1(pixel_run, tmp_path, capsys):
    args = [str(pixel_run), "--context", str(K), "--horizon", str(H), "--sequences", "3"]
    assert main(["dream", *args, "-o", str(tmp_path / "trained")]) == 0
    assert main(["dream", *args, "--untrained", "-o", str(tmp_path / "untrained")]) == 0
    assert "h1=" in capsys.readouterr().out
    trained, untrained = dream_numbers(tmp_path / "trained"), dream_numbers(tmp_path / "untrained")
    assert trained["source"] == untrained["source"] and untrained["weights"].startswith("untrained")
    assert trained["table"]["h1"] < 0.8 * untrained["table"]["h1"], (trained["table"], untrained["table"])
    assert Image.open(tmp_path / "trained" / "openloop_image.gif").n_frames == K + H


def test_dream_command_refuses_bad_input_and_writes_nothing(pixel_run, tmp_path, capsys):
    def refused(logdir, *extra):
        code = main(["dream", str(logdir), "--context", str(K), "--horizon", str(H), *extra])
        assert code == 2
        assert not (logdir / "dream").exists() or logdir == pixel_run
        return capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no checkpoint at" in refused(empty)
    copy = tmp_path / "copy"
    shutil.copytree(pixel_run, copy, ignore=shutil.ignore_patterns("dream", "tensorboard"))
    before = sorted(p.name for p in copy.iterdir())
    assert "no episode holds context + horizon = 31 steps (longest: 21" in refused(copy, "--horizon", "28")
    assert "fewer than context + horizon = 1003" in refused(copy, "--horizon", "1000")
    shutil.rmtree(copy / "replay")
    assert "no saved replay in" in refused(copy)
    (copy / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert "cannot read checkpoint" in refused(copy)
    assert sorted(p.name for p in copy.iterdir()) == [n for n in before if n != "replay"]
    assert main(["dream", "--help"]) == 0 and "--untrained" in capsys.readouterr().out


def test_dream_command_on_a_vector_run_with_an_episode_file(tmp_path):
    logdir = tmp_path / "vec"
    assert main(["train", *TINY, "env=fake/vector", "env.time_limit=20", "steps=25", "eval_episodes=0", f"logdir={logdir}"]) == 0
    episode = logdir / "replay" / Manifest.read(logdir / "replay").latest.files["partial"]  # a replay file is an .npz of consecutive steps
    assert main(["dream", str(logdir), "--episode", str(episode), "--context", "2", "--horizon", "6", "-o", str(tmp_path / "out")]) == 0
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert names == {"vector_target.png", "vector_prev_action.png", "vector_progress.png", "reward.png", "error.png", "openloop.json"}
    numbers = dream_numbers(tmp_path / "out")
    assert numbers["sequences"] == 1 and numbers["source"] == str(episode)
    assert set(numbers["error_by_horizon"]) == {"target", "prev_action", "progress", "total"}
    assert len(numbers["cont_abs_error_by_horizon"]) == 6


def test_a_training_report_leaves_the_global_generators_alone(tmp_path):
    """Exact resume replays torch's, numpy's and Python's generators: a report must not draw from them."""
    import random

    agent, env = tiny_agent("dreamerv3", "vector")
    steps = recorded(env, episodes=2)
    replay = Replay(capacity=200, seq_len=4)
    replay.extend(steps)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    metrics = dr.training_report(agent, replay, context=2, horizon=5, sequences=2, step=7, out_dir=tmp_path / "step_7")
    assert torch.equal(torch.get_rng_state(), before[0]) and np.array_equal(np.random.get_state()[1], before[1])
    assert random.getstate() == before[2]
    assert set(metrics) == {"report/openloop_error_h1", "report/openloop_error_h5", "report/seconds"}
    assert (tmp_path / "step_7" / "vector_target.png").exists()


def test_the_learner_reports_too(tmp_path):
    from reverie.realtime.learner import Learner

    cfg = compose(
        [*TINY, "env=fake/vector", f"logdir={tmp_path / 'run'}", f"realtime.ipc_dir={tmp_path / 'ipc'}", "eval_episodes=0"]
        + ["steps=1000", "report_every=20", "report_context=2", "report_horizon=4", "realtime.publish_every=100000"]
    )
    learner = Learner(cfg)
    schema = learner.receiver.schema
    for seq in range(3):
        learner.ingest(dr_experience(schema, seq))
    thread = threading.Thread(target=learner.run, kwargs={"handle_signals": False}, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: (tmp_path / "run" / "dream" / "step_00000030" / "openloop.json").exists(), timeout=60)
    finally:
        learner.stop()
        thread.join(60)
    assert any("report/openloop_error_h1" in line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())


def dr_experience(schema, seq):
    from reverie.realtime.protocol import Experience

    return Experience("a", seq, seq, 1, chunk_of(schema, 10, first=True, last=True), session=1)
