"""Domain randomisation (envs/randomize.py): physics read back from the MuJoCo model, delay, noise, dropout, logging."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reverie import envs
from reverie.envs.base import RawEnv, Space, basic_spaces
from reverie.envs.randomize import ActionPipe, PhysicsRandomizer, Randomize, RandomizeSpec, SensorNoise, mujoco_model

#: The model arrays a parameter scales, as (attribute, column or None).
ARRAYS = {
    "mass": [("body_mass", None), ("body_inertia", None)],
    "friction": [("geom_friction", None)],
    "damping": [("dof_damping", None)],
    "gain": [("actuator_gainprm", 0)],
}
ALL_ARRAYS = ("body_mass", "body_inertia", "geom_friction", "dof_damping", "actuator_gainprm", "actuator_biasprm")
TASKS = ["dmc/cartpole_swingup", "gym/InvertedPendulum-v5"]


def snapshot(model) -> dict[str, np.ndarray]:
    return {name: getattr(model, name).copy() for name in ALL_ARRAYS}


def element_factors(model, nominal, param) -> np.ndarray:
    """The factor each element of ``param`` has now, read back from the model (nan where the nominal is 0)."""
    attr, col = ARRAYS[param][0]
    now, base = getattr(model, attr), nominal[attr]
    if col is not None:
        now, base = now[:, col], base[:, col]
    elif now.ndim == 2:
        now, base = now[:, 0], base[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(base != 0, now / base, np.nan)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("param", list(ARRAYS))
def test_each_physics_parameter_scales_the_model(task, param):
    spec = RandomizeSpec(**{param: (0.5, 2.0)})
    env = envs.make(task, seed=7, randomize=spec)
    nominal_env = envs.make(task, seed=7)
    model = mujoco_model(env)
    nominal = snapshot(mujoco_model(nominal_env))
    seen = []
    for episode in range(3):
        env.reset(seed=100 + episode)
        randomize = env.env
        assert isinstance(randomize, Randomize)
        logged = randomize.episode_values
        factors = element_factors(model, nominal, param)
        assert logged and all(k.startswith(f"{param}/") for k in logged)
        names = randomize.physics.names[param]
        for key, value in logged.items():  # the logged factor is the one in the model
            assert factors[names.index(key.split("/", 1)[1])] == pytest.approx(value, rel=1e-6)
        used = factors[~np.isnan(factors)]
        assert np.all((used >= 0.5) & (used <= 2.0)) and not np.allclose(used, 1.0)
        for attr, _ in ARRAYS[param][1:]:  # the inertia goes with the mass (the world body's is 0)
            ratio = getattr(model, attr)[1:] / nominal[attr][1:]
            np.testing.assert_allclose(ratio, np.repeat(factors[1:, None], ratio.shape[1], 1), rtol=1e-6)
        # Everything else is nominal.
        touched = {a for a, _ in ARRAYS[param]} | ({"actuator_biasprm"} if param == "gain" else set())
        for attr in set(ALL_ARRAYS) - touched:
            np.testing.assert_array_equal(getattr(model, attr), nominal[attr], err_msg=attr)
        seen.append(used.copy())
    assert not np.allclose(seen[0], seen[1]) and not np.allclose(seen[1], seen[2])  # differs between episodes

    # The same seeds give the same draws; another environment seed gives others.
    again = envs.make(task, seed=7, randomize=spec)
    other = envs.make(task, seed=8, randomize=spec)
    for episode in range(3):
        again.reset(seed=100 + episode)
        other.reset(seed=100 + episode)
        mine = element_factors(mujoco_model(again), nominal, param)
        theirs = element_factors(mujoco_model(other), nominal, param)
        np.testing.assert_array_equal(mine[~np.isnan(mine)], seen[episode])
        assert not np.allclose(theirs[~np.isnan(theirs)], seen[episode])
    # Unseeded resets continue one stream: the same for the same seed.
    a, b = envs.make(task, seed=3, randomize=spec), envs.make(task, seed=3, randomize=spec)
    for _ in range(2):
        a.reset()
        b.reset()
        np.testing.assert_array_equal(snapshot(mujoco_model(a))[ARRAYS[param][0][0]], snapshot(mujoco_model(b))[ARRAYS[param][0][0]])
    # Restored: on close, and before every draw (a draw starts from the nominal values, not the last draw).
    randomize = env.env
    randomize.physics.restore()
    for attr in ALL_ARRAYS:
        np.testing.assert_array_equal(getattr(model, attr), nominal[attr])
    for env_ in (env, nominal_env, again, other, a, b):
        env_.close()


def test_draws_start_from_nominal_and_off_changes_nothing():
    spec = RandomizeSpec(mass=(2.0, 2.0))  # a fixed factor: a draw on top of the last would give 4, 8, ...
    env = envs.make("dmc/cartpole_swingup", seed=0, randomize=spec)
    nominal = snapshot(mujoco_model(envs.make("dmc/cartpole_swingup", seed=0)))
    for _ in range(3):
        env.reset()
        np.testing.assert_allclose(mujoco_model(env).body_mass, 2.0 * nominal["body_mass"])
    # Off (the config default): no wrapper, and the model is the simulator's own.
    from reverie.cli.config import compose

    cfg = compose(["env=dmc/cartpole_swingup"])
    assert not envs.RandomizeSpec.from_config(cfg.env.randomize).enabled
    plain = envs.from_config(cfg, 0)
    assert "Randomize" not in repr(plain)
    plain.reset()
    for attr, value in snapshot(mujoco_model(plain)).items():
        np.testing.assert_array_equal(value, nominal[attr])


def test_gain_scales_a_servos_mirrored_bias_and_leaves_a_motors_alone():
    mujoco = pytest.importorskip("mujoco")
    model = mujoco.MjModel.from_xml_string(
        """
        <mujoco><worldbody><body><joint name="hinge" type="hinge"/><geom size="0.1" mass="1"/></body></worldbody>
        <actuator><position joint="hinge" kp="20" kv="3"/><velocity joint="hinge" kv="5"/><motor joint="hinge" gear="2"/></actuator>
        </mujoco>"""
    )
    bias = model.actuator_biasprm.copy()
    assert bias[0, 1] == -20 and bias[1, 2] == -5  # position: [0, -kp, -kv]; velocity: [0, 0, -kv]
    randomizer = PhysicsRandomizer(model, RandomizeSpec(gain=(1.5, 1.5)))
    values = randomizer.sample(np.random.default_rng(0))
    assert set(values) == {"gain/actuator0", "gain/actuator1", "gain/actuator2"}
    np.testing.assert_allclose(model.actuator_gainprm[:, 0], [30, 7.5, 1.5])
    # The position servo: kp·ctrl − kp·q keeps its set point (ctrl = q), only its stiffness changes; its damping kv stays.
    np.testing.assert_allclose(model.actuator_biasprm[0, :3], [0, -30, -3])
    np.testing.assert_allclose(model.actuator_biasprm[1, :3], [0, 0, -7.5])
    np.testing.assert_array_equal(model.actuator_biasprm[2], bias[2])  # a motor has no bias
    randomizer.restore()
    np.testing.assert_array_equal(model.actuator_biasprm, bias)


class Recorder(RawEnv):
    """Constant observation ``x`` (float32 (4,)) and an ``image``; records every action it gets."""

    def __init__(self, discrete: bool = False, length: int = 10_000) -> None:
        self.actions: list[np.ndarray] = []
        self.length = length
        self.t = 0
        self._act = Space(np.float32, (3,), 0.0, 1.0, discrete=True) if discrete else Space(np.float32, (2,), -1.0, 1.0)

    @property
    def obs_space(self):
        return {"x": Space(np.float32, (4,)), "image": Space(np.uint8, (2, 2, 3), 0, 255), **basic_spaces()}

    @property
    def act_space(self):
        return self._act

    def reset(self, seed=None):
        self.t = 0
        return self._obs(True)

    def step(self, action):
        self.actions.append(np.array(action))
        self.t += 1
        return self._obs(False)

    def _obs(self, first):
        return {
            "x": np.full(4, float(self.t), np.float32),
            "image": np.full((2, 2, 3), self.t % 256, np.uint8),
            "reward": np.float32(0),
            "is_first": np.array(first),
            "is_last": np.array(self.t >= self.length),
            "is_terminal": np.array(False),
        }


@pytest.mark.parametrize("k", [0, 1, 3])
def test_action_delay_is_exact(k):
    raw = Recorder()
    env = Randomize(raw, RandomizeSpec(act_delay=k), seed=0)
    for episode in range(2):
        raw.actions.clear()
        env.reset()
        computed = [np.array([t / 100, -t / 100], np.float32) + episode for t in range(20)]
        for a in computed:
            env.step(a)
        for t, applied in enumerate(raw.actions):
            expected = computed[t - k] if t >= k else np.zeros(2, np.float32)  # zeros before the first k-old action
            np.testing.assert_array_equal(applied, expected, err_msg=f"episode {episode} tick {t}")


def test_action_delay_on_a_discrete_space_starts_with_index_zero():
    pipe = ActionPipe(Space(np.float32, (3,), 0.0, 1.0, discrete=True), RandomizeSpec(act_delay=2))
    rng = np.random.default_rng(0)
    one = np.array([0, 1, 0], np.float32)
    applied = [pipe.push(one, rng) for _ in range(3)]
    assert [a.tolist() for a in applied] == [[1, 0, 0], [1, 0, 0], [0, 1, 0]]
    with pytest.raises(ValueError, match="act_noise needs continuous"):
        ActionPipe(Space(np.float32, (3,), 0.0, 1.0, discrete=True), RandomizeSpec(act_noise=0.1))


def test_observation_noise_has_the_configured_std_and_bias():
    """20,000 noisy values (5,000 ticks × 4): the sample std of N(0, σ²) has a relative standard error of
    1/sqrt(2N) = 0.5 %, so a 3 % tolerance is 6 standard errors; the sample mean's standard error is
    σ/sqrt(N) = 0.0007·σ/0.1, so 0.01 is 14 of them."""
    sigma, bias = 0.1, 0.25
    raw = Recorder()
    env = Randomize(raw, RandomizeSpec(obs_noise=sigma, obs_bias=(bias, bias)), seed=1)
    obs = env.reset()
    errors = [obs["x"] - 0.0]
    for t in range(1, 5000):
        obs = env.step(np.zeros(2, np.float32))
        assert obs["x"].dtype == np.float32 and obs["image"].dtype == np.uint8
        errors.append(obs["x"] - t)
    errors = np.concatenate(errors)
    assert errors.std() == pytest.approx(sigma, rel=0.03)
    assert errors.mean() == pytest.approx(bias, abs=0.01)
    np.testing.assert_array_equal(obs["image"], np.full((2, 2, 3), 4999 % 256, np.uint8))  # images get no noise
    # Noise actions: σ around the action, clipped to [-1, 1].
    pipe = ActionPipe(Space(np.float32, (2,), -1.0, 1.0), RandomizeSpec(act_noise=0.2))
    rng = np.random.default_rng(0)
    pushed = np.stack([pipe.push(np.zeros(2, np.float32), rng) for _ in range(10_000)])
    assert pushed.std() == pytest.approx(0.2, rel=0.03) and pushed.dtype == np.float32


def test_sensor_dropout_holds_the_previous_value():
    p = 0.3
    noise = SensorNoise(Recorder().obs_space, RandomizeSpec(dropout=p))
    rng = np.random.default_rng(0)
    noise.begin(rng)
    raw = Recorder()
    delivered = [noise.apply(raw.reset(), rng)]
    np.testing.assert_array_equal(delivered[0]["x"], 0)  # the first observation is never held
    for _ in range(1, 4001):
        delivered.append(noise.apply(raw.step(np.zeros(2, np.float32)), rng))
    held = {"x": 0, "image": 0}
    for t in range(1, len(delivered)):
        for key in held:
            fresh = delivered[t][key].flat[0] == (t if key == "x" else t % 256)
            if not fresh:
                held[key] += 1
                np.testing.assert_array_equal(delivered[t][key], delivered[t - 1][key])  # the previous delivered value
    # 4,000 Bernoulli(0.3) draws per key: standard error 0.0072, tolerance 0.03 (4 of them).
    for key, count in held.items():
        assert count / 4000 == pytest.approx(p, abs=0.03), key


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="randomize.mass"):
        RandomizeSpec(mass=(2.0, 1.0))
    with pytest.raises(ValueError, match="randomize.gain: factors must be positive"):
        RandomizeSpec(gain=(0.0, 1.0))
    with pytest.raises(ValueError, match="randomize.dropout"):
        RandomizeSpec(dropout=1.0)
    with pytest.raises(ValueError, match="randomize.act_delay"):
        RandomizeSpec(act_delay=1.5)
    with pytest.raises(ValueError, match="randomize: unknown keys"):
        RandomizeSpec.from_config({"mas": [1, 2]})
    with pytest.raises(ValueError, match="need a MuJoCo task"):
        envs.make("fake/vector", randomize=RandomizeSpec(mass=(0.5, 2.0)))


def test_train_logs_the_drawn_values_per_episode(tiny_overrides, tmp_path):
    from reverie.cli.main import main

    args = ["train", "env=dmc/cartpole_swingup", "env.time_limit=10", "steps=66", "eval_episodes=0", "report_every=0"]
    args += ["env.randomize.mass=[0.5,2.0]", "env.randomize.obs_noise=0.01", *tiny_overrides]
    assert main(args) == 0
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    episodes = [m for m in lines if "episode/return" in m]
    assert len(episodes) == 3  # 11 agent steps (22 env steps) an episode
    masses = [m["randomize/mass/cart"] for m in episodes]
    assert all(0.5 <= x <= 2.0 for x in masses) and len(set(masses)) == 3 and "randomize/mass/pole_1" in episodes[0]
