"""Tests for the atari/ and crafter families and the Crafter score (bench/crafter_score.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reverie import envs
from reverie.envs import Space, make
from reverie.envs.wrappers import ActionRepeat, Wrapper

ROOT = Path(__file__).resolve().parent.parent


def one_hot(n: int, i: int) -> np.ndarray:
    return np.eye(n, dtype=np.float32)[i]


def assert_obs(env: envs.Env, obs: dict[str, np.ndarray]) -> None:
    for key, space in env.obs_space.items():
        assert obs[key].dtype == space.dtype and obs[key].shape == space.shape, key


def stack(env: envs.Env) -> list[type]:
    kinds = []
    while isinstance(env, Wrapper):
        kinds.append(type(env))
        env = env.env
    return kinds


# ---------------------------------------------------------------- atari


def test_atari_pong_contract() -> None:
    env = make("atari/pong")
    raw = env.unwrapped
    assert env.obs_space["image"] == Space(np.uint8, (64, 64, 3), 0, 255)
    assert set(env.obs_space) == {"image", "reward", "is_first", "is_last", "is_terminal"}
    assert env.act_space == Space(np.float32, (18,), 0, 1, discrete=True)  # full action set
    # The repeat happens inside the env (max-pooling), not in a second ActionRepeat.
    assert env.repeat == raw.repeat == 4 and ActionRepeat not in stack(env)
    assert envs.DEFAULT_REPEAT["atari"] == 4
    assert raw.ale.getFloat("repeat_action_probability") == pytest.approx(0.25)
    assert raw.length == 108_000 and raw.noops == 0 and not raw.life_done and not raw.gray
    obs = env.reset()
    assert obs["is_first"] and not obs["is_last"] and obs["reward"] == 0
    assert_obs(env, obs)
    frames = raw.ale.getEpisodeFrameNumber()
    for t in range(5):
        obs = env.step(one_hot(18, t % 18))
        assert_obs(env, obs)
        assert not obs["is_first"] and not obs["is_last"]
    assert raw.ale.getEpisodeFrameNumber() - frames == 5 * 4


def test_atari_action_repeat_and_options() -> None:
    env = make("atari/pong", action_repeat=2, gray=True, actions="minimal", sticky=0.0)
    raw = env.unwrapped
    assert env.repeat == 2 and ActionRepeat not in stack(env)
    assert raw.ale.getFloat("repeat_action_probability") == 0.0
    assert env.obs_space["image"] == Space(np.uint8, (64, 64, 1), 0, 255)
    assert env.act_space.shape == (6,) and raw.action_names[0] == "NOOP"
    env.reset()
    frames = raw.ale.getEpisodeFrameNumber()
    assert_obs(env, env.step(one_hot(6, 1)))
    assert raw.ale.getEpisodeFrameNumber() - frames == 2
    with pytest.raises(ValueError, match="action_repeat"):
        make("atari/pong", repeat=2)


def test_atari_observation_is_max_of_last_two_frames() -> None:
    from reverie.envs.atari import _resize

    env = make("atari/breakout", sticky=0.0)
    raw = env.unwrapped
    env.reset()
    for t in range(6):
        env.step(one_hot(18, 1 if t == 0 else 3))  # FIRE, then RIGHT
    state = raw.ale.cloneState()
    obs = env.step(one_hot(18, 4))  # LEFT
    raw.ale.restoreState(state)
    screens = []
    for _ in range(4):
        raw.ale.act(raw._actions[4])
        screens.append(raw.ale.getScreenRGB())
    np.testing.assert_array_equal(obs["image"], _resize(np.maximum(screens[2], screens[3]), (64, 64)))


def test_atari_frame_cut_is_last_not_terminal() -> None:
    env = make("atari/pong", length=40)  # 108,000 frames by default; 40 here = 10 agent steps
    env.reset()
    for t in range(1, 11):
        obs = env.step(one_hot(18, 0))
        assert bool(obs["is_last"]) == (t == 10)
    assert not obs["is_terminal"]
    # The agent-step time limit of the config (env.time_limit) still applies on top.
    env = make("atari/pong", time_limit=3)
    env.reset()
    assert [bool(env.step(one_hot(18, 0))["is_last"]) for _ in range(3)] == [False, False, True]


def test_atari_game_over_is_terminal() -> None:
    env = make("atari/pong", sticky=0.0)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(5000):
        obs = env.step(one_hot(18, int(rng.integers(18))))
        if obs["is_last"]:
            break
    assert obs["is_last"] and obs["is_terminal"] and env.unwrapped.ale.game_over()


def test_atari_life_loss() -> None:
    def first_end(**kwargs: object) -> tuple[int, dict[str, np.ndarray]]:
        env = make("atari/breakout", sticky=0.0, **kwargs)
        env.reset()
        env.step(one_hot(18, 1))  # FIRE launches the ball; NOOP then misses it
        for t in range(2000):
            obs = env.step(one_hot(18, 0))
            if obs["is_last"] or env.unwrapped.ale.lives() < 5:
                return t, obs
        raise AssertionError("no life lost")

    _, obs = first_end()  # default: a lost life is not the end
    assert not obs["is_last"] and not obs["is_terminal"]
    _, obs = first_end(life_done=True)
    assert obs["is_last"] and obs["is_terminal"]


def test_atari_reset_seed_reproduces() -> None:
    env = make("atari/pong")  # sticky actions make episodes depend on the seed
    actions = [one_hot(18, i) for i in np.random.default_rng(0).integers(0, 18, 60)]

    def episode(seed: int) -> np.ndarray:
        images = [env.reset(seed=seed)["image"]]
        images += [env.step(a)["image"] for a in actions]
        return np.stack(images)

    first, other, again = episode(7), episode(8), episode(7)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_atari_unknown_game_and_obs() -> None:
    with pytest.raises(ValueError, match="atari/pong"):
        make("atari/pongg")
    with pytest.raises(ValueError, match="observes only images"):
        make("atari/pong", obs="state")
    assert make("atari/james_bond").unwrapped.name == "jamesbond"


def test_atari100k_configs() -> None:
    from ale_py import roms

    from reverie.cli.config import compose
    from reverie.envs.atari import ATARI100K_GAMES

    assert len(ATARI100K_GAMES) == 26 and set(ATARI100K_GAMES) <= set(roms.get_all_rom_ids())
    files = sorted((ROOT / "configs" / "env" / "atari").glob("*.yaml"))
    assert [f.stem for f in files] == sorted(ATARI100K_GAMES)
    for path in files:
        assert path.read_text() == f"name: atari/{path.stem}\naction_repeat: 4\n"
    cfg = compose(["env=atari/ms_pacman"])
    assert (cfg.env.name, cfg.env.action_repeat, cfg.env.size) == ("atari/ms_pacman", 4, 64)
    assert compose(["env=crafter"]).env.name == "crafter/reward"
    assert "atari/pong" in envs.list_envs("atari") and envs.list_envs("crafter") == ["crafter/noreward", "crafter/reward"]


# ---------------------------------------------------------------- crafter


def test_crafter_contract() -> None:
    env = make("crafter")  # the same as crafter/reward
    assert env.unwrapped.name == "reward" and not hasattr(env, "repeat")
    assert env.obs_space["image"] == Space(np.uint8, (64, 64, 3), 0, 255)
    assert set(env.obs_space) == {"image", "reward", "is_first", "is_last", "is_terminal"}
    assert env.act_space == Space(np.float32, (17,), 0, 1, discrete=True)
    names = env.unwrapped.achievements
    assert len(names) == 22 and "collect_diamond" in names
    obs = env.reset()
    assert obs["is_first"] and not obs["is_last"]
    assert_obs(env, obs)
    keys = {f"log/achievement_{n}" for n in names}
    assert keys <= set(obs) and all(obs[k] == 0 and obs[k].dtype == np.int32 for k in keys)
    assert envs.model_keys(env.obs_space) == ["image"]
    obs = env.step(one_hot(17, 0))
    assert_obs(env, obs)
    assert not obs["is_first"] and keys <= set(obs) and obs["log/reward"].dtype == np.float32


def test_crafter_episode_end_achievements_and_stats(tmp_path: Path) -> None:
    stats = tmp_path / "stats.jsonl"
    env = make("crafter/reward", length=30, stats_file=stats)
    env.reset(seed=1)
    rng = np.random.default_rng(0)
    for t in range(1, 31):
        obs = env.step(one_hot(17, int(rng.integers(17))))
        assert bool(obs["is_last"]) == (t == 30)
    assert not obs["is_terminal"]  # the length cut is not a termination
    achieved = {k.removeprefix("log/achievement_"): int(v) for k, v in obs.items() if k.startswith("log/achievement_")}
    assert len(achieved) == 22
    (line,) = stats.read_text().splitlines()
    row = json.loads(line)
    assert row["length"] == 30 and {k.removeprefix("achievement_"): v for k, v in row.items() if k.startswith("achievement_")} == achieved


def test_crafter_death_is_terminal() -> None:
    env = make("crafter/reward")
    env.reset()
    env.unwrapped._env._player.health = 0
    obs = env.step(one_hot(17, 0))
    assert obs["is_last"] and obs["is_terminal"] and obs["reward"] < 0


def test_crafter_seed_noreward_and_names() -> None:
    env = make("crafter/noreward")
    a, b, c = env.reset(seed=3)["image"], env.reset(seed=4)["image"], env.reset(seed=3)["image"]
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, b)
    env.unwrapped._env._player.health = 0
    obs = env.step(one_hot(17, 0))
    assert obs["reward"] == 0 and obs["log/reward"] < 0  # the task reward stays visible
    with pytest.raises(ValueError, match="crafter/reward"):
        make("crafter/nope")
    assert envs.DEFAULT_REPEAT["crafter"] == 1


def test_unknown_family_lists_atari_and_crafter() -> None:
    with pytest.raises(ValueError) as info:
        make("nope/thing")
    assert "atari/" in str(info.value) and "crafter/" in str(info.value) and "coming later" not in str(info.value)


def test_import_stays_light() -> None:
    code = "import sys, reverie.envs; print('ale_py' in sys.modules, 'crafter' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(), check=True)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------- crafter score


def _score_module():
    spec = importlib.util.spec_from_file_location("crafter_score", ROOT / "bench" / "crafter_score.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_crafter_score_formula() -> None:
    cs = _score_module()
    assert len(cs.ACHIEVEMENTS) == 22
    import crafter

    assert list(cs.ACHIEVEMENTS) == list(crafter.constants.achievements)
    # Same rate everywhere: the score is that rate, exp(ln 11) - 1 = 10.
    assert cs.crafter_score([10.0] * 22) == pytest.approx(10.0)
    # Half at 0 %, half at 99 %: exp((11 ln 1 + 11 ln 100) / 22) - 1 = sqrt(100) - 1 = 9.
    assert cs.crafter_score([0.0] * 11 + [99.0] * 11) == pytest.approx(9.0)
    # By hand: one at 100 %, one at 50 %, 20 at 0 %: exp((ln 101 + ln 51) / 22) - 1.
    assert cs.crafter_score([100.0, 50.0] + [0.0] * 20) == pytest.approx(0.474763, abs=1e-6)
    assert cs.crafter_score([0.0] * 22) == 0.0 and cs.crafter_score([100.0] * 22) == pytest.approx(100.0)
    with pytest.raises(ValueError):
        cs.crafter_score([0.5, 101.0])


def test_crafter_score_from_logs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cs = _score_module()
    # 4 episodes: collect_wood unlocked in 3 (counts 1, 2, 0, 5), place_table in 1.
    counts = [(1, 0), (2, 1), (0, 0), (5, 0)]
    stats = tmp_path / "run" / "stats.jsonl"
    stats.parent.mkdir()
    stats.write_text(
        "".join(
            json.dumps(
                {
                    "length": 100,
                    "reward": 1.0,
                    **{f"achievement_{n}": 0 for n in cs.ACHIEVEMENTS},
                    "achievement_collect_wood": w,
                    "achievement_place_table": p,
                }
            )
            + "\n"
            for w, p in counts
        )
    )
    episodes = cs.read_episodes(stats.parent)
    rates = cs.success_rates(episodes)
    assert rates["collect_wood"] == 75.0 and rates["place_table"] == 25.0 and rates["wake_up"] == 0.0
    expected = np.exp((np.log(76) + np.log(26)) / 22) - 1
    assert cs.summarize(episodes)["score"] == pytest.approx(expected)
    assert len(cs.read_episodes(stats, steps=250)) == 2  # episodes ending at steps 100, 200
    # A trainer metrics.jsonl with episode/ keys among other lines.
    metrics = tmp_path / "metrics.jsonl"
    lines = [{"step": 50, "loss/total": 1.0}] + [
        {"step": 100 * (i + 1), "episode/return": 0.0, "episode/achievement_collect_wood": w} for i, (w, _) in enumerate(counts)
    ]
    metrics.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert cs.success_rates(cs.read_episodes(metrics))["collect_wood"] == 75.0
    cs.main([str(stats), str(metrics)])
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rows[0]["score"] == pytest.approx(expected) and rows[0]["episodes"] == 4
    assert rows[2]["runs"] == 2 and rows[2]["episodes"] == 8
    with pytest.raises(ValueError, match="achievement"):
        cs.read_episodes(tmp_path / "run" / ".." / "metrics.jsonl", prefix="eval/")


def test_atari_options_from_the_command_line() -> None:
    from reverie.cli.config import compose

    env = envs.from_config(compose(["env=atari/pong", "+env.options.sticky=0.0", "+env.options.gray=true"]), seed=0)
    assert env.unwrapped.sticky == 0.0 and env.obs_space["image"].shape == (64, 64, 1)
    env = envs.from_config(compose(["exp=atari100k", "env.options.noops=0"]), seed=0)
    raw = env.unwrapped
    assert (raw.sticky, raw.noops, len(raw.action_names)) == (0.0, 0, 6)  # pong's minimal action set
