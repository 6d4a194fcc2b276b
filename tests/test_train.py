"""End-to-end `reverie train` runs: smoke, outputs, exact resume, config checks."""

import json

import numpy as np
import pytest
import torch

from reverie.agent.train import Trainer
from reverie.cli.config import compose
from reverie.cli.main import main


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_smoke_fake_env_writes_all_outputs(tiny_overrides, tmp_path):
    code = main(["train", "env=fake/vector", "env.time_limit=20", "steps=130", "eval_every=60", *tiny_overrides])
    assert code == 0
    logdir = tmp_path / "run"
    for name in ("metrics.jsonl", "config.yaml", "checkpoint.pt", "curve.png", "replay/replay.json", "policy.onnx", "policy.onnx.json"):
        assert (logdir / name).exists(), name
    assert list((logdir / "tensorboard").iterdir())
    lines = read_lines(logdir / "metrics.jsonl")
    assert all("step" in m for m in lines)
    assert any("episode/return" in m for m in lines)
    assert any("eval/return" in m for m in lines)
    losses = [m for m in lines if "loss/dyn" in m]
    assert losses and all("train/updates_per_s" in m for m in losses)
    finite = [v for m in losses for k, v in m.items() if k.startswith("loss/")]
    assert all(v is not None for v in finite)


def test_reverie_train_closes_its_environments(tiny_overrides, monkeypatch):
    """Training and evaluation env are freed when the command ends (simulators and GL contexts are not left to exit)."""
    from reverie import envs

    made = []

    def from_config(cfg, seed):
        env = real(cfg, seed)
        closed = env.close
        env.close = lambda: (made_closed.append(env), closed())
        made.append(env)
        return env

    real, made_closed = envs.from_config, []
    monkeypatch.setattr(envs, "from_config", from_config)
    assert main(["train", "env=fake/vector", "env.time_limit=20", "steps=40", *tiny_overrides]) == 0
    assert len(made) == 2 and made_closed == made


def test_smoke_fake_pixels_and_discrete(tiny_overrides, tmp_path):
    assert main(["train", "env=fake/pixels", "obs=pixels", "env.time_limit=10", "steps=40", *tiny_overrides]) == 0
    other = [o for o in tiny_overrides if not o.startswith("logdir=")] + [f"logdir={tmp_path / 'disc'}"]
    assert main(["train", "env=fake/discrete", "env.time_limit=10", "steps=40", *other]) == 0


def params(trainer):
    return {k: v.detach().clone() for k, v in trainer.agent.state_dict().items()}


def test_resume_matches_uninterrupted_run(tmp_path):
    from conftest import TINY

    common = ["env=fake/vector", "env.time_limit=15", "eval_episodes=0", "checkpoint_every=1000000", *TINY]
    # Episodes are 16 agent steps (the reset observation plus 15 steps).
    straight = Trainer(compose([*common, "steps=96", f"logdir={tmp_path / 'a'}"]))
    straight.run()
    first = Trainer(compose([*common, "steps=48", f"logdir={tmp_path / 'b'}"]))
    first.run()
    # As if the first process had gone on past its checkpoint and been killed mid-line:
    # the resumed run logs those steps again, so these lines must go.
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:
        f.write('{"step": 64, "episode/return": 1.0}\n{"step": 80, "episode/ret')
    resumed = Trainer(compose([*common, "steps=96", f"logdir={tmp_path / 'b'}"]))
    assert resumed.resumed and resumed.counters["agent_steps"] == 48
    resumed.run()
    assert resumed.counters["updates"] == straight.counters["updates"] > first.counters["updates"]
    a, b = params(straight), params(resumed)
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-6, worst
    # One line per episode end, as in the uninterrupted run.
    episodes = [[m["step"] for m in read_lines(tmp_path / run / "metrics.jsonl") if "episode/return" in m] for run in "ab"]
    assert episodes[0] == episodes[1] and len(set(episodes[1])) == len(episodes[1])


# Checkpoints every 2 episodes, and a replay that wraps (capacity 40) in chunks of 8: a run of 96 steps has saved
# generations whose windows the replay has long moved past.
CHECKPOINTED = [
    "env=fake/vector",
    "env.time_limit=15",
    "eval_episodes=0",
    "checkpoint_every=32",
    "replay.capacity=40",
    "replay.chunk_size=8",
]


@pytest.fixture(scope="module")
def straight_96(tmp_path_factory):
    """An uninterrupted run of 96 agent steps with :data:`CHECKPOINTED` settings."""
    from conftest import TINY

    trainer = Trainer(compose([*TINY, *CHECKPOINTED, "steps=96", f"logdir={tmp_path_factory.mktemp('straight')}"]))
    trainer.run()
    return trainer


def replay_state(replay):
    held = replay.held_steps()
    rows = {k: v[held % replay.capacity].copy() for k, v in replay.data.items()}
    return replay.total, replay.rng.bit_generator.state, rows, held[replay.bad[held % replay.capacity]]


def assert_same_replay(a, b):
    assert a[0] == b[0] and a[1] == b[1] and np.array_equal(a[3], b[3])
    assert a[2].keys() == b[2].keys() and all(np.array_equal(a[2][k], b[2][k]) for k in a[2])


def assert_same_params(a, b):
    a, b = params(a), params(b)
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-6, worst


def test_a_kill_between_the_replay_save_and_the_checkpoint_resumes_exactly(tmp_path, monkeypatch, straight_96):
    """Killed after the replay of the 64-step checkpoint is written but before the checkpoint: the resume takes
    the 32-step checkpoint with the replay saved with it, and ends where the uninterrupted run does."""
    from conftest import TINY

    import reverie.agent.checkpoint as checkpoint_module

    overrides = [*TINY, *CHECKPOINTED, "steps=96", f"logdir={tmp_path}"]
    crashed = Trainer(compose(overrides))
    save, saved = checkpoint_module.save, []

    def save_then_die(logdir, agent, counters, extra=None):
        if saved:
            raise KeyboardInterrupt("killed")  # not an Exception: nothing on the way out may save
        saved.append((dict(counters), replay_state(crashed.replay)))
        return save(logdir, agent, counters, extra)

    monkeypatch.setattr(checkpoint_module, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        crashed.run()
    monkeypatch.undo()
    assert crashed.counters["agent_steps"] == 64
    counters, replay = saved[0]
    resumed = Trainer(compose(overrides))
    assert resumed.resumed and resumed.counters == counters and counters["agent_steps"] == 32
    assert_same_replay(replay_state(resumed.replay), replay)
    resumed.run()
    assert resumed.counters["updates"] == straight_96.counters["updates"]
    assert_same_params(resumed, straight_96)
    assert_same_replay(replay_state(resumed.replay), replay_state(straight_96.replay))


def test_a_run_saved_before_replay_generations_resumes_exactly(tmp_path, straight_96):
    """A logdir of the code before generations (plain replay file names, no generation in the checkpoint) resumes."""
    from conftest import TINY

    from reverie.agent.replay import PARTS, Manifest

    overrides = [*TINY, *CHECKPOINTED, f"logdir={tmp_path}"]
    Trainer(compose([*overrides, "steps=48"])).run()
    # Rewrite the logdir into that code's layout.
    directory, manifest = tmp_path / "replay", Manifest.read(tmp_path / "replay")
    (saved,) = manifest.generations
    for part in PARTS:
        (directory / saved.files[part]).rename(directory / f"{part}.npz")
    meta = {"total": saved.total, "capacity": manifest.capacity, "chunk_size": manifest.chunk_size, "rng": saved.rng}
    (directory / "replay.json").write_text(json.dumps(meta))
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    del payload["replay_generation"]
    torch.save(payload, tmp_path / "checkpoint.pt")

    resumed = Trainer(compose([*overrides, "steps=96"]))
    assert resumed.resumed and resumed.counters["agent_steps"] == 48 and resumed.replay.total == 48
    resumed.run()
    assert_same_params(resumed, straight_96)
    assert not any((directory / f"{part}.npz").exists() for part in PARTS)  # its first checkpoint left the old files behind


def test_resume_with_another_config_is_refused(tiny_overrides):
    assert main(["train", "env=fake/vector", "env.time_limit=10", "steps=20", *tiny_overrides]) == 0
    with pytest.raises(ValueError, match="differs in: seed"):
        Trainer(compose(["env=fake/vector", "env.time_limit=10", "steps=20", "seed=5", *tiny_overrides]))
    # More steps is fine: that is how a run is extended.
    Trainer(compose(["env=fake/vector", "env.time_limit=10", "steps=40", *tiny_overrides]))
    # So is more weight on recent steps (a run deployed to a robot keeps learning); it reaches the replay.
    resumed = Trainer(compose(["env=fake/vector", "env.time_limit=10", "steps=40", "replay.recent_fraction=0.5", *tiny_overrides]))
    assert resumed.replay.recent_fraction == 0.5 and resumed.replay.recent_steps == 10_000
    # And precision, which follows the device under auto: a run of the old fp32 default resumes under it,
    # and the resumed run computes as now asked.
    for precision in ("fp32", "bf16"):
        resumed = Trainer(compose(["env=fake/vector", "env.time_limit=10", "steps=40", f"precision={precision}", *tiny_overrides]))
        assert resumed.updater.precision == precision


def test_corrupted_checkpoint_is_a_clear_error(tiny_overrides, tmp_path):
    assert main(["train", "env=fake/vector", "env.time_limit=10", "steps=20", *tiny_overrides]) == 0
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        Trainer(compose(["env=fake/vector", "env.time_limit=10", "steps=20", *tiny_overrides]))


@pytest.mark.slow
def test_smoke_dmc_pixels(tiny_overrides, tmp_path):
    assert main(["train", "env=dmc/cartpole_swingup", "obs=pixels", "steps=120", "eval_episodes=0", *tiny_overrides]) == 0
    lines = read_lines(tmp_path / "run" / "metrics.jsonl")
    assert any("loss/rec/image" in m for m in lines)


@pytest.mark.slow
def test_smoke_dmc_cartpole_swingup(tiny_overrides, tmp_path):
    assert main(["train", "env=dmc/cartpole_swingup", "steps=400", "eval_every=400", *tiny_overrides]) == 0
    lines = read_lines(tmp_path / "run" / "metrics.jsonl")
    assert any("loss/dyn" in m for m in lines)
    assert any("eval/return" in m for m in lines)
    # agent/logger.py writes a non-finite value as null: a null loss is a NaN/inf loss, so it must fail here.
    losses = [v for m in lines for k, v in m.items() if k.startswith("loss/")]
    assert losses and all(v is not None for v in losses)
    assert torch.isfinite(torch.tensor(losses)).all()


@pytest.mark.slow
@pytest.mark.parametrize("env", ["gym/Pendulum-v1", "gym/CartPole-v1"])
def test_smoke_gym_continuous_and_discrete(env, tiny_overrides, tmp_path):
    assert main(["train", f"env={env}", "env.time_limit=30", "steps=70", "eval_every=60", *tiny_overrides]) == 0
    lines = read_lines(tmp_path / "run" / "metrics.jsonl")
    assert any("loss/rec/vector" in m for m in lines) and any("eval/return" in m for m in lines)
    assert (tmp_path / "run" / "policy.onnx").exists()


SMOKE_ENVS = {
    "dmc_vector": ["env=dmc/cartpole_swingup", "steps=200"],
    "dmc_pixels": ["env=dmc/cartpole_swingup", "obs=pixels", "steps=120"],
    "gym_discrete": ["env=gym/CartPole-v1", "steps=200"],
    "atari": ["env=atari/pong", "steps=400"],  # 100 agent steps at action repeat 4
    "crafter": ["env=crafter", "steps=100"],  # a Crafter update on 64×64 images is the suite's slowest; 100 steps still end an episode
}


@pytest.mark.slow
@pytest.mark.parametrize("env", list(SMOKE_ENVS))
@pytest.mark.parametrize("algo", ["dreamerv1", "dreamerv2", "dreamerv3"])
def test_smoke_every_algo_on_every_family(algo, env, tiny_overrides, tmp_path):
    """A few hundred environment steps of each version on each kind of task: trains, evaluates, exports."""
    assert main(["train", f"algo={algo}", *SMOKE_ENVS[env], "env.time_limit=60", "eval_every=100000", *tiny_overrides]) == 0
    lines = read_lines(tmp_path / "run" / "metrics.jsonl")
    losses = [v for m in lines for k, v in m.items() if k.startswith("loss/")]
    assert losses and torch.isfinite(torch.tensor(losses)).all()
    kl_key = "loss/kl" if algo == "dreamerv1" else "loss/dyn"
    assert any(kl_key in m for m in lines) and any("eval/return" in m for m in lines)
    assert (tmp_path / "run" / "policy.onnx").exists()
    if env == "crafter":  # achievements per episode, from which bench/crafter_score.py computes the Crafter score
        import importlib.util
        from pathlib import Path

        episodes = [m for m in lines if "episode/return" in m]
        assert episodes and all("episode/achievement_collect_wood" in m for m in episodes)
        spec = importlib.util.spec_from_file_location("crafter_score", Path(__file__).parent.parent / "bench" / "crafter_score.py")
        crafter_score = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(crafter_score)
        assert len(crafter_score.read_episodes(tmp_path / "run")) == len(episodes)


@pytest.mark.parametrize(
    ("algo", "env", "uniform"),
    [("dreamerv1", "fake/vector", True), ("dreamerv2", "fake/discrete", True), ("dreamerv3", "fake/vector", False)],
)
def test_prefill_acts_uniformly_at_random_in_v1_and_v2_and_with_the_policy_in_v3(algo, env, uniform, tmp_path):
    """Until replay holds train_start steps, V1 and V2 act uniformly at random (as their official code's random
    agent), each action drawn from (seed, agent step); V3 acts with its initial policy, and so do V1 and V2 after."""
    from conftest import TINY

    trainer = Trainer(
        compose([f"algo={algo}", f"env={env}", "env.time_limit=15", "eval_episodes=0", "steps=40", *TINY, f"logdir={tmp_path}"])
    )
    assert trainer.cfg.algo.prefill == ("uniform" if uniform else "policy")
    trainer.run()
    actions = trainer.replay.data["action"][: trainer.replay.total]
    size = actions.shape[1]

    def draw(step):
        rng = np.random.default_rng((0, step))
        return np.eye(size, dtype=np.float32)[rng.integers(size)] if env == "fake/discrete" else rng.uniform(-1, 1, size)

    start = trainer.ratio.start
    matches = [np.allclose(actions[i], draw(i), atol=1e-6) for i in range(len(actions))]
    if uniform:
        assert all(matches[:start]) and not all(matches[start:]), matches
    else:
        assert not any(matches[:start])
    if env == "fake/vector":  # continuous: spread over [-1, 1], not only at the bounds
        assert np.abs(actions[:start]).min() < 0.5


def test_an_unknown_prefill_is_a_clear_error(tmp_path):
    from conftest import TINY

    with pytest.raises(ValueError, match="unknown algo.prefill 'random'; valid: policy, uniform"):
        Trainer(compose(["env=fake/vector", "algo.prefill=random", *TINY, f"logdir={tmp_path}"]))
