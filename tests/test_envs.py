"""Tests for reverie.envs: spaces, wrappers, boundary checks, names."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from reverie import envs
from reverie.envs import BASIC_KEYS, Space, make, model_keys
from reverie.envs.fake import FakeEnv
from reverie.envs.wrappers import ActionRepeat, NormalizeAction, TimeLimit


def random_action(space: Space, rng: np.random.Generator) -> np.ndarray:
    if space.discrete:
        return np.eye(space.shape[0], dtype=np.float32)[rng.integers(space.shape[0])]
    return rng.uniform(-1, 1, space.shape).astype(np.float32)


def assert_matches(obs_space: dict[str, Space], obs: dict[str, np.ndarray]) -> None:
    assert set(obs) == set(obs_space)
    for key, space in obs_space.items():
        assert isinstance(obs[key], np.ndarray), key
        assert obs[key].dtype == space.dtype, key
        assert obs[key].shape == space.shape, key


SPACE_CASES = [
    ("fake/vector", "vector"),
    ("fake/pixels", "pixels"),
    ("fake/discrete", "vector"),
    ("dmc/cartpole_swingup", "vector"),
    ("dmc/cartpole_swingup", "pixels"),
    ("gym/Pendulum-v1", "vector"),
    ("gym/CartPole-v1", "vector"),
    ("gym/Hopper-v5", "vector"),
    ("gym/Hopper-v5", "pixels"),
]


@pytest.mark.parametrize("name,obs", SPACE_CASES)
def test_spaces_match_observations(name: str, obs: str) -> None:
    env = make(name, obs=obs)
    rng = np.random.default_rng(0)
    space = env.obs_space
    for key in BASIC_KEYS:
        assert key in space
    assert space["reward"] == Space(np.float32, ())
    for key in ("is_first", "is_last", "is_terminal"):
        assert space[key] == Space(bool, ())
    if obs == "pixels":
        assert model_keys(space) == ["image"]
        assert space["image"] == Space(np.uint8, (64, 64, 3), 0, 255)
    else:
        assert model_keys(space) and all(space[k].dtype == np.float32 and len(space[k].shape) == 1 for k in model_keys(space))
    act = env.act_space
    assert act.dtype == np.float32 and len(act.shape) == 1
    assert (act.low, act.high) == ((0.0, 1.0) if act.discrete else (-1.0, 1.0))
    first = env.reset()
    assert_matches(space, first)
    assert first["is_first"] and not first["is_last"] and first["reward"] == 0
    for _ in range(2):
        step = env.step(random_action(act, rng))
        assert_matches(space, step)
        assert not step["is_first"]
    if obs == "pixels":
        assert step["image"].std() > 0  # a real frame, not a blank buffer
    env.close()


def test_discrete_spaces() -> None:
    env = make("gym/CartPole-v1")
    assert env.act_space == Space(np.float32, (2,), 0, 1, discrete=True)
    fake = make("fake/discrete", act_dim=5)
    assert fake.act_space == Space(np.float32, (5,), 0, 1, discrete=True)


def test_space_sample_is_uniform_within_bounds_and_one_hot_when_discrete() -> None:
    rng = np.random.default_rng(0)
    box = Space(np.float32, (3,), -1, 1)
    draws = np.stack([box.sample(rng) for _ in range(4000)])
    assert draws.dtype == np.float32 and draws.shape == (4000, 3)
    assert draws.min() >= -1 and draws.max() <= 1
    # Uniform on [-1, 1]: mean 0, standard deviation 1/sqrt(3) (0.577); 4000 draws put the sample's within ±0.03.
    assert np.all(np.abs(draws.mean(0)) < 0.05) and np.all(np.abs(draws.std(0) - 3**-0.5) < 0.03)
    half = Space(np.float32, (2,), 0.0, None)  # an unbounded side counts as ±1
    assert np.stack([half.sample(rng) for _ in range(200)]).min() >= 0
    onehot = np.stack([Space(np.float32, (4,), 0, 1, discrete=True).sample(rng) for _ in range(4000)])
    assert np.all(onehot.sum(1) == 1) and set(np.unique(onehot)) == {0.0, 1.0}
    assert np.all(np.abs(onehot.mean(0) - 0.25) < 0.03)
    # The same generator state gives the same draw (the trainer's prefill depends on it to resume).
    assert np.array_equal(box.sample(np.random.default_rng(7)), box.sample(np.random.default_rng(7)))


def test_dmc_pixels_has_only_image() -> None:
    env = make("dmc/cartpole_swingup", obs="pixels", size=(32, 48))
    assert set(env.obs_space) == {"image", *BASIC_KEYS}
    assert env.reset()["image"].shape == (32, 48, 3)


def test_dmc_vector_keys_are_flat_float32() -> None:
    env = make("dmc/cartpole_swingup")
    assert env.obs_space["position"] == Space(np.float32, (3,))
    assert env.obs_space["velocity"] == Space(np.float32, (2,))


def test_dmc_episode_is_500_agent_steps() -> None:
    env = make("dmc/cartpole_swingup")  # action repeat 2, suite limit 1000
    env.reset()
    action = np.zeros(env.act_space.shape, np.float32)
    for t in range(1, 501):
        obs = env.step(action)
        assert bool(obs["is_last"]) == (t == 500), t
    assert not obs["is_terminal"]


def test_dmc_discount_zero_is_terminal() -> None:
    import dm_env

    env = make("dmc/cartpole_swingup")
    raw = env.unwrapped
    env.reset()
    observation = raw._env.task.get_observation(raw.physics)
    raw._env.step = lambda action: dm_env.termination(1.0, observation)
    obs = env.step(np.zeros(1, np.float32))
    assert obs["is_last"] and obs["is_terminal"]
    env.reset()
    raw._env.step = lambda action: dm_env.truncation(1.0, observation, 1.0)
    obs = env.step(np.zeros(1, np.float32))
    assert obs["is_last"] and not obs["is_terminal"]


def test_dmc_deterministic_with_seed() -> None:
    a, b = make("dmc/cartpole_swingup", seed=3), make("dmc/cartpole_swingup", seed=3)
    oa, ob = a.reset(), b.reset()
    for i in range(5):
        np.testing.assert_array_equal(oa["position"], ob["position"])
        action = np.array([np.sin(i)], np.float32)
        oa, ob = a.step(action), b.step(action)


@pytest.mark.parametrize("task,bound", [("cartpole_swingup", 1.0), ("reacher_easy", 3.0)])
def test_dmc_fast_render_matches_stock(task: str, bound: float) -> None:
    """Default frames (no shadows, no reflections) keep dm_control's lighting.

    Mean absolute difference per frame against stock ``physics.render`` (which
    has shadows and reflections) measured 0.3 (cartpole) and 1.9 (reacher, mostly
    the floor's reflection of the arm); turning the shadow flag off instead gave
    0.6 and 25 (a dimmer floor). Also checks that rendering options leave the
    physics alone.
    """
    from reverie.envs.dmc import DMC

    fast = DMC(task, obs="pixels", seed=0)
    stock = DMC(task, shadows=True, reflections=True, seed=0)  # model untouched
    fast.reset(), stock.reset()
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(4):
        action = rng.uniform(*fast.act_bounds).astype(np.float32)
        image = fast.step(action)["image"]
        stock.step(action)
        np.testing.assert_array_equal(fast.physics.get_state(), stock.physics.get_state())
        reference = stock.physics.render(64, 64, camera_id=0)
        diffs.append(np.abs(image.astype(np.int16) - reference.astype(np.int16)).mean())
    fast.close(), stock.close()
    assert max(diffs) < bound, diffs


@pytest.mark.parametrize(
    "name,expected",
    [
        ("cartpole_swingup", ("cartpole", "swingup")),
        ("ball_in_cup_catch", ("ball_in_cup", "catch")),
        ("cup_catch", ("ball_in_cup", "catch")),
        ("point_mass_easy", ("point_mass", "easy")),
        ("lqr_lqr_2_1", ("lqr", "lqr_2_1")),
        ("humanoid_CMU_run", ("humanoid_CMU", "run")),
    ],
)
def test_dmc_task_names(name: str, expected: tuple[str, str]) -> None:
    from reverie.envs.dmc import parse_task

    assert parse_task(name) == expected


def test_every_dmc_task_name_parses() -> None:
    from dm_control import suite

    from reverie.envs.dmc import parse_task

    for domain, task in suite.ALL_TASKS:
        assert parse_task(f"{domain}_{task}") == (domain, task)


def test_gym_terminated_and_truncated() -> None:
    env = make("gym/CartPole-v1")
    env.reset()
    push = np.array([1, 0], np.float32)
    for _ in range(200):  # always pushing left topples the pole quickly
        obs = env.step(push)
        if obs["is_last"]:
            break
    assert obs["is_last"] and obs["is_terminal"]

    env = make("gym/Pendulum-v1")  # gymnasium's own 200-step limit
    env.reset()
    for t in range(1, 201):
        obs = env.step(np.zeros(1, np.float32))
        assert bool(obs["is_last"]) == (t == 200)
    assert not obs["is_terminal"]


def _dict_env() -> object:
    import gymnasium
    from gymnasium import spaces

    class DictEnv(gymnasium.Env):
        observation_space = spaces.Dict({"pos": spaces.Box(-1, 1, (2, 2), np.float64), "mode": spaces.Discrete(3)})
        action_space = spaces.Discrete(3, start=1)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.t = 0
            return {"pos": np.zeros((2, 2)), "mode": 0}, {}

        def step(self, action):
            assert action in (1, 2, 3)
            self.t += 1
            return {"pos": np.full((2, 2), 0.5), "mode": self.t % 3}, float(action), False, self.t >= 3, {}

    return DictEnv()


def test_gym_dict_observations_and_discrete_start() -> None:
    import gymnasium

    if "reverie-test/DictEnv-v0" not in gymnasium.registry:
        gymnasium.register("reverie-test/DictEnv-v0", entry_point=_dict_env)
    env = make("gym/reverie-test/DictEnv-v0")
    assert env.obs_space["pos"] == Space(np.float32, (4,))
    assert env.obs_space["mode"] == Space(np.float32, (3,), 0, 1)
    assert env.act_space == Space(np.float32, (3,), 0, 1, discrete=True)
    obs = env.reset()
    np.testing.assert_array_equal(obs["mode"], [1, 0, 0])
    obs = env.step(np.array([0, 0, 1], np.float32))  # index 2 -> gym action 3
    assert obs["reward"] == 3.0
    np.testing.assert_array_equal(obs["mode"], [0, 1, 0])
    env.step(np.array([1, 0, 0], np.float32))
    obs = env.step(np.array([1, 0, 0], np.float32))
    assert obs["is_last"] and not obs["is_terminal"]


def test_gym_bounds() -> None:
    env = make("gym/Pendulum-v1")
    low, high = env.unwrapped.act_bounds
    np.testing.assert_array_equal(low, [-2])
    np.testing.assert_array_equal(high, [2])


def test_action_repeat_sums_rewards() -> None:
    inner = FakeEnv(length=20)
    ref = FakeEnv(length=20)
    env = ActionRepeat(inner, 3)
    env.reset()
    ref.reset()
    action = np.full(3, 0.25, np.float32)
    obs = env.step(action)
    expected = sum(float(ref.step(action)["reward"]) for _ in range(3))
    assert obs["reward"].dtype == np.float32 and obs["reward"].shape == ()
    assert obs["reward"] == pytest.approx(expected)
    assert not obs["is_first"]


def test_action_repeat_stops_at_is_last() -> None:
    inner = FakeEnv(length=5)
    env = ActionRepeat(inner, 2)
    env.reset()
    action = np.zeros(3, np.float32)
    assert not env.step(action)["is_last"]  # inner steps 1-2
    assert not env.step(action)["is_last"]  # 3-4
    assert env.step(action)["is_last"]  # 5, then stops
    assert inner._t == 5


def test_make_action_repeat_default() -> None:
    assert make("dmc/cartpole_swingup").repeat == 2
    assert not hasattr(make("gym/Pendulum-v1"), "repeat")
    assert make("gym/Pendulum-v1", action_repeat=4).repeat == 4


def test_time_limit_sets_last_not_terminal() -> None:
    env = make("fake/vector", length=100, time_limit=7)
    env.reset()
    for t in range(1, 8):
        obs = env.step(np.zeros(3, np.float32))
        assert bool(obs["is_last"]) == (t == 7)
    assert not obs["is_terminal"]
    # After reset the count starts again.
    env.reset()
    assert not env.step(np.zeros(3, np.float32))["is_last"]


def test_time_limit_keeps_inner_termination() -> None:
    env = TimeLimit(FakeEnv(length=3, terminal=True), 10)
    env.reset()
    for _ in range(3):
        obs = env.step(np.zeros(3, np.float32))
    assert obs["is_last"] and obs["is_terminal"]


def test_normalize_action_maps_to_bounds() -> None:
    env = make("fake/vector", bounds=(-2.0, 5.0))
    raw = env.unwrapped
    env.reset()
    env.step(np.full(3, -1, np.float32))
    np.testing.assert_array_equal(raw.last_action, np.full(3, -2.0, np.float32))
    env.step(np.full(3, 1, np.float32))
    np.testing.assert_array_equal(raw.last_action, np.full(3, 5.0, np.float32))
    env.step(np.zeros(3, np.float32))
    np.testing.assert_allclose(raw.last_action, np.full(3, 1.5))
    env.step(np.full(3, 3, np.float32))  # clipped to 1 -> high
    np.testing.assert_array_equal(raw.last_action, np.full(3, 5.0, np.float32))


class _Recorder:
    """Minimal raw env with per-dimension and infinite bounds."""

    obs_space = {"x": Space(np.float32, (1,))}
    act_space = Space(np.float32, (3,))
    act_bounds = (np.array([-0.4, 0.0, -np.inf], np.float32), np.array([0.4, 10.0, np.inf], np.float32))

    def step(self, action: np.ndarray) -> np.ndarray:
        self.action = action
        return action


def test_normalize_action_per_dim_and_unbounded() -> None:
    inner = _Recorder()
    env = NormalizeAction(inner)
    assert env.act_space == Space(np.float32, (3,), -1, 1)
    env.step(np.array([1, -1, 0.5], np.float32))
    assert inner.action.dtype == np.float32
    np.testing.assert_array_equal(inner.action, np.array([0.4, 0.0, 0.5], np.float32))
    env.step(np.array([-1, 1, -0.25], np.float32))
    np.testing.assert_array_equal(inner.action, np.array([-0.4, 10.0, -0.25], np.float32))


def test_one_hot_action() -> None:
    env = make("fake/discrete", act_dim=4)
    raw = env.unwrapped
    env.reset()
    env.step(np.array([0, 0, 1, 0], np.float32))
    assert int(raw.last_action) == 2
    env.step(np.array([0, 0.99999994, 1e-7, 0], np.float32))  # straight-through rounding
    assert int(raw.last_action) == 1
    with pytest.raises(ValueError, match="one-hot"):
        env.step(np.array([0, 0.5, 0.5, 0], np.float32))
    with pytest.raises(ValueError, match="one-hot"):
        env.step(np.array([0, 0, 0, 0], np.float32))
    with pytest.raises(ValueError, match="one-hot"):
        env.step(np.array([0, 0, -1, 1], np.float32))
    with pytest.raises(ValueError, match="one-hot"):
        env.step(np.array([0, 1, 1, 0], np.float32))


@pytest.mark.parametrize(
    "fault,at,pattern",
    [
        ("nan", 2, r"observation 'target' has non-finite values: \[ *nan"),
        ("nan", 0, r"observation 'target' has non-finite values"),
        ("dtype", 1, r"observation 'target': expected float32 \(3,\), got float64 \(3,\)"),
        ("shape", 1, r"observation 'target': expected float32 \(3,\), got float32 \(2,\)"),
        ("missing", 1, r"observation 'target' is missing"),
        ("extra", 1, r"undeclared keys \['surprise'\]"),
    ],
)
def test_check_spaces_rejects_bad_observations(fault: str, at: int, pattern: str) -> None:
    env = make("fake/vector", fault=fault, fault_at=at)
    action = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=pattern):
        env.reset()
        for _ in range(at):
            env.step(action)


def test_check_spaces_rejects_bad_pixels() -> None:
    env = make("fake/pixels", fault="dtype")
    env.reset()
    with pytest.raises(ValueError, match=r"observation 'image': expected uint8 \(64, 64, 3\), got float64"):
        env.step(np.zeros(3, np.float32))
    env = make("fake/pixels", fault="nan")
    env.reset()
    with pytest.raises(ValueError, match=r"observation 'reward' has non-finite"):
        env.step(np.zeros(3, np.float32))


@pytest.mark.parametrize(
    "action,pattern",
    [
        (np.zeros(3, np.float64), r"action: expected float32 \(3,\), got float64 \(3,\)"),
        (np.zeros(4, np.float32), r"action: expected float32 \(3,\), got float32 \(4,\)"),
        (np.zeros((1, 3), np.float32), r"action: expected float32 \(3,\), got float32 \(1, 3\)"),
        (np.array([0, np.nan, 0], np.float32), r"action has non-finite values"),
        (np.array([0, np.inf, 0], np.float32), r"action has non-finite values"),
        ([0.0, 0.0, 0.0], r"action: expected float32 \(3,\), got list"),
    ],
)
def test_check_spaces_rejects_bad_actions(action: object, pattern: str) -> None:
    env = make("fake/vector")
    env.reset()
    with pytest.raises(ValueError, match=pattern):
        env.step(action)


def test_check_spaces_protocol() -> None:
    env = make("fake/vector", length=2)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(3, np.float32))
    env.reset()
    env.step(np.zeros(3, np.float32))
    assert env.step(np.zeros(3, np.float32))["is_last"]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(3, np.float32))
    assert env.reset()["is_first"]


@pytest.mark.parametrize(
    "name,expected",
    [
        ("nope/thing", ["dmc/", "gym/", "fake/", "atari/", "crafter/"]),
        ("cartpole_swingup", ["dmc/", "gym/", "fake/"]),
        ("atari/pongg", ["atari/pong"]),
        ("crafter/nope", ["crafter/reward", "crafter/noreward"]),
        ("dmc/cartpole_swingupp", ["cartpole_swingup", "ball_in_cup_catch", "walker_walk"]),
        ("dmc/cup_catchh", ["ball_in_cup_catch"]),
        ("gym/NoSuchEnv-v0", ["NoSuchEnv-v0"]),
        ("fake/nope", ["fake/vector", "fake/pixels", "fake/discrete"]),
    ],
)
def test_unknown_names_list_valid_ones(name: str, expected: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        make(name)
    for text in expected:
        assert text in str(info.value)


def test_list_envs() -> None:
    names = envs.list_envs()
    for name in ("dmc/cartpole_swingup", "dmc/ball_in_cup_catch", "fake/vector", "gym/CartPole-v1", "gym/Hopper-v5"):
        assert name in names
    assert all(n.startswith("dmc/") for n in envs.list_envs("dmc"))


def test_fake_env_deterministic() -> None:
    rng = np.random.default_rng(1)
    for name in ("fake/vector", "fake/pixels", "fake/discrete"):
        a, b = make(name, seed=5), make(name, seed=5)
        oa, ob = a.reset(), b.reset()
        while True:
            for key in oa:
                np.testing.assert_array_equal(oa[key], ob[key])
            if oa["is_last"]:
                break
            action = random_action(a.act_space, rng)
            oa, ob = a.step(action), b.step(action)
    a, c = make("fake/vector", seed=5), make("fake/vector", seed=6)
    assert not np.array_equal(a.reset()["target"], c.reset()["target"])


@pytest.mark.parametrize("name", ["fake/vector", "dmc/cartpole_swingup", "gym/Pendulum-v1", "gym/Hopper-v5"])
def test_reset_seed_reproduces_episode(name: str) -> None:
    env = make(name)
    keys = model_keys(env.obs_space)
    action = np.full(env.act_space.shape, 0.3, np.float32)

    def episode(seed: int | None) -> list[np.ndarray]:
        obs = env.reset(seed=seed)
        out = [obs[k] for k in keys]
        for _ in range(3):
            obs = env.step(action)
            out += [obs[k] for k in keys]
        return out

    first, other, again = episode(7), episode(8), episode(7)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    episode(None)  # no seed: continues the stream


def test_fake_env_episode_and_learnable_reward() -> None:
    env = make("fake/vector", length=10)
    obs = env.reset()
    rewards = []
    for t in range(10):
        obs_next = env.step(obs["target"])  # the best action is observable
        rewards.append(float(obs_next["reward"]))
        assert bool(obs_next["is_last"]) == (t == 9)
        obs = obs_next
    assert max(rewards) == pytest.approx(0.0, abs=1e-6)

    # Uniform random actions a ~ U(−1, 1): E|a − c| = ((1 + c)² + (1 − c)²) / 4 = (1 + c²) / 2 ≥ ½ per dimension.
    # Var|a − c| = 1/3 + c² − ((1 + c²)/2)² ≤ 1/3, so one step's reward (mean of 3 dims) has variance ≤ 1/9 and the
    # mean of n steps a standard error ≤ 1 / (3√n): 0.006 for n = 3000; the margin 0.03 is 5 standard errors.
    n, rng = 3000, np.random.default_rng(0)
    probe = FakeEnv(length=n)
    probe.reset()
    random_rewards, expected = [], []
    for t in range(n):
        expected.append(-np.mean((1 + probe.target(t).astype(np.float64) ** 2) / 2))
        random_rewards.append(float(probe.step(rng.uniform(-1, 1, 3).astype(np.float32))["reward"]))
    assert max(expected) <= -0.5
    assert np.mean(random_rewards) == pytest.approx(np.mean(expected), abs=0.03)

    env = make("fake/discrete", length=10)
    obs = env.reset()
    for _ in range(10):
        obs = env.step(obs["target"])
        assert obs["reward"] == 1.0


def test_resize_image_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    from reverie.envs.gym import resize_image

    image = np.random.default_rng(0).integers(0, 255, (128, 192, 3), dtype=np.uint8)
    out = resize_image(image, (64, 64))  # 128 -> 64 divides evenly, 192 -> 64 too
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out[0, 0], image[:2, :3].reshape(-1, 3).mean(0), atol=0.51)
    odd = np.full((500, 500, 3), 77, np.uint8)
    assert (resize_image(odd, (64, 64)) == 77).all()
    monkeypatch.setitem(sys.modules, "PIL", None)  # Pillow absent: nearest
    out = resize_image(odd, (64, 64))
    assert out.shape == (64, 64, 3) and (out == 77).all()


def test_import_is_light() -> None:
    code = "import sys, reverie.envs; print('dm_control' in sys.modules, 'gymnasium' in sys.modules, 'mujoco' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(), check=True)
    assert out.stdout.split() == ["False", "False", "False"]


def test_exports() -> None:
    for name in ("make", "list_envs", "Space", "Env", "BASIC_KEYS", "model_keys"):
        assert hasattr(envs, name)
    assert isinstance(make("fake/vector"), envs.Env)


def test_env_options_that_are_not_a_mapping_are_refused_by_name():
    """A config.yaml read without the schema (an old checkpoint's, in load_trained) can hold a list there."""
    from omegaconf import OmegaConf

    from reverie.cli.config import compose

    cfg = compose(["env=fake/vector"])
    assert envs.from_config(cfg, 0).act_space is not None  # the composed config itself builds
    raw = OmegaConf.create(OmegaConf.to_container(cfg))
    raw.env.options = [1, 2]
    with pytest.raises(ValueError, match="env.options must be a mapping"):
        envs.from_config(raw, 0)
