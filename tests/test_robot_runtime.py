"""The robot side without torch: what it imports, the actor and the policy runtime on committed models, bad input.

Every test here also runs in the robot-only install (``make test-robot``: a
venv with ``pip install .`` and no torch), so none may import torch, the
agent, the world model or a simulator. The policies come from
``tests/robot_models/`` (see ``tests/make_robot_models.py``).
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROBOT_MODELS as MODELS
from conftest import copy_robot_model

from reverie import envs
from reverie.realtime.runtime import PolicyRuntime

pytestmark = pytest.mark.robot

#: Makes ``import torch`` fail in a subprocess (ModuleNotFoundError), as in an install without it.
NO_TORCH = "import sys\nsys.modules['torch'] = None\n"

#: Every module the robot side runs.
ROBOT_MODULES = (
    "reverie.cli.main",
    "reverie.cli.config",
    "reverie.envs",
    "reverie.envs.randomize",
    "reverie.envs.robot",
    "reverie.realtime.actor",
    "reverie.realtime.channels",
    "reverie.realtime.endpoints",
    "reverie.realtime.evaluate",
    "reverie.realtime.loop",
    "reverie.realtime.protocol",
    "reverie.realtime.recorder",
    "reverie.realtime.runtime",
    "reverie.realtime.security",
    "reverie.realtime.signature",
    "reverie.realtime.status",
)


def run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter of this environment; returns the finished process (output captured)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


def test_robot_side_imports_no_torch_and_no_world_model():
    """Fails when anyone adds a torch (or agent, world-model) import back to the robot side."""
    code = f"""
import importlib, json, sys
for name in {ROBOT_MODULES!r}:
    importlib.import_module(name)
from reverie.cli.config import compose
from reverie import envs
cfg = compose(["env=fake/vector"])
envs.from_config(cfg, 0)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "dm_control", "gymnasium")
               or m.startswith(("reverie.agent", "reverie.world_model")))
print(json.dumps(heavy))
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_actor_runs_and_swaps_in_a_policy_without_torch(tmp_path):
    """An actor (config, env, sockets, loop) takes a published policy and runs it where ``import torch`` fails."""
    code = (
        NO_TORCH
        + f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest import TINY
from pathlib import Path
from reverie.cli.config import compose
from reverie.realtime.actor import Actor
tmp = Path({str(tmp_path)!r})
cfg = compose([*TINY, "env=fake/vector", f"logdir={{tmp / 'run'}}", f"realtime.ipc_dir={{tmp / 'ipc'}}", "realtime.rate_hz=200"])
actor = Actor(cfg)
models = Path({str(MODELS)!r})
sidecar = json.loads((models / "vector.onnx.json").read_text())
from reverie.realtime.signature import read_payload
actor._offer(1, actor._build(read_payload(models / "vector.onnx", sidecar), sidecar))
status = actor.run(steps=60, handle_signals=False)
print(json.dumps({{k: status[k] for k in ("ticks", "swaps", "policy_version", "exceptions", "advances")}}))
print(json.dumps(sorted(m for m, module in sys.modules.items() if module is not None and m.split(".")[0] == "torch")))
"""
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    *_, status, torch_modules = done.stdout.splitlines()
    status = json.loads(status)
    assert status["ticks"] == 60 and status["swaps"] == 1 and status["policy_version"] == 1
    assert status["advances"] >= 58  # the two-part model's advance ran between the ticks
    assert status["exceptions"] == 0 and json.loads(torch_modules) == []
    assert (tmp_path / "run" / "actors" / "actor0" / "status.json").exists()


def test_train_without_torch_says_how_to_install_the_full_set():
    code = NO_TORCH + 'from reverie.cli.main import main\nraise SystemExit(main(["train", "env=fake/vector"]))\n'
    done = run_python(code)
    assert done.returncode == 3, done.stderr
    (line,) = done.stderr.strip().splitlines()  # one line, no traceback
    assert "'torch' is not installed" in line and "pip install '.[full]'" in line


def test_eval_of_a_committed_policy(tmp_path, capsys):
    from reverie.cli.main import main

    copy_robot_model("vector", tmp_path / "p.onnx")
    assert main(["eval", str(tmp_path / "p.onnx"), "episodes=2", "rate_hz=1000", f"out={tmp_path / 'eval'}"]) == 0
    summary = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert summary["episodes"] == 2 and summary["exceptions"] == 0


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A folder holding ``p.onnx`` and its sidecar: the committed tiny fake/vector policy."""
    tmp = tmp_path_factory.mktemp("exp")
    copy_robot_model("vector", tmp / "p.onnx")
    return tmp


def edited_sidecar(exported, tmp_path, edit):
    shutil.copy(exported / "p.onnx", tmp_path / "p.onnx")
    shutil.copy(exported / "p.advance.onnx", tmp_path / "p.advance.onnx")
    meta = json.loads((exported / "p.onnx.json").read_text())
    edit(meta)
    (tmp_path / "p.onnx.json").write_text(json.dumps(meta))
    return tmp_path / "p.onnx"


def test_sidecar_hash_mismatch_refused(exported, tmp_path):
    path = edited_sidecar(exported, tmp_path, lambda m: m.update(sha256="0" * 64))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        PolicyRuntime(path)


def test_sidecar_shape_dtype_and_missing_key_refused(exported, tmp_path):
    def shape(m):
        m["inputs"][0]["shape"] = [1, 99]

    def dtype(m):
        m["inputs"][0]["dtype"] = "uint8"

    def missing(m):
        m["inputs"] = m["inputs"][1:]

    for edit, message in ((shape, "shape"), (dtype, "dtype"), (missing, "sidecar lacks inputs")):
        with pytest.raises(ValueError, match=message):
            PolicyRuntime(edited_sidecar(exported, tmp_path, edit))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("outputs"), "'outputs' is missing"),
        (lambda m: m.update(obs_keys="x"), "'obs_keys' is missing or not a list"),
        (lambda m: m.update(action={"dim": 2}), "'action' needs"),
        (lambda m: m.update(noise={}), "'noise' needs"),
        (lambda m: m["inputs"][0].update(shape=[1, -3]), "bad shape or dtype"),
        (lambda m: m.update(outputs=m["outputs"][:1]), "sidecar lacks outputs"),
    ],
)
def test_malformed_sidecar_refused_naming_the_field(exported, tmp_path, edit, message):
    with pytest.raises(ValueError, match=message):
        PolicyRuntime(edited_sidecar(exported, tmp_path, edit))


def test_sidecar_that_is_not_an_object_refused(exported, tmp_path):
    shutil.copy(exported / "p.onnx", tmp_path / "p.onnx")
    (tmp_path / "p.onnx.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        PolicyRuntime(tmp_path / "p.onnx")


def test_corrupted_model_and_missing_sidecar_refused(exported, tmp_path):
    shutil.copy(exported / "p.onnx.json", tmp_path / "p.onnx.json")
    (tmp_path / "p.onnx").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="advance part .*p.advance.onnx is missing"):
        PolicyRuntime(tmp_path / "p.onnx")
    shutil.copy(exported / "p.advance.onnx", tmp_path / "p.advance.onnx")
    with pytest.raises(ValueError, match="sha256"):
        PolicyRuntime(tmp_path / "p.onnx")
    (tmp_path / "q.onnx").write_bytes((exported / "p.onnx").read_bytes())
    with pytest.raises(ValueError, match="sidecar .* is missing"):
        PolicyRuntime(tmp_path / "q.onnx")


def test_bytes_without_a_path_need_their_sidecar_and_cannot_be_hash_checked(exported):
    """A policy given as bytes: no sidecar path to derive (not ``None.json``), and no file whose check could be skipped."""
    payload = (exported / "p.onnx").read_bytes() + (exported / "p.advance.onnx").read_bytes()
    with pytest.raises(ValueError, match="without a path, needs its sidecar"):
        PolicyRuntime(None, model_bytes=payload)
    meta = json.loads((exported / "p.onnx.json").read_text())
    with pytest.raises(ValueError, match="hash_checked .* needs the path"):
        PolicyRuntime(None, sidecar=meta, model_bytes=payload, hash_checked=True)
    assert PolicyRuntime(None, sidecar=meta, model_bytes=payload).version == 0  # and the bytes with a sidecar load


# A float64 beyond float32's range is cast to inf (numpy warns) and then refused: the warning is the point.
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_runtime_rejects_bad_observations(exported):
    runtime = PolicyRuntime(exported / "p.onnx")
    with pytest.raises(ValueError, match="missing"):
        runtime.step({})
    obs = {k: np.zeros(s["shape"][1:], np.float32) for k, s in zip(runtime.obs_keys, runtime.meta["inputs"])}
    bad = dict(obs)
    bad[runtime.obs_keys[0]] = np.zeros(7, np.float32)
    with pytest.raises(ValueError, match="shape"):
        runtime.step(bad)
    assert np.all(np.isfinite(runtime.step(obs)))
    carry = runtime.carry()
    bad[runtime.obs_keys[0]] = np.full_like(obs[runtime.obs_keys[0]], np.nan)
    with pytest.raises(ValueError, match="non-finite"):
        runtime.step(bad)
    for name, value in runtime.carry().items():  # a refused step leaves the carry as it was
        np.testing.assert_array_equal(value, carry[name])
    bad[runtime.obs_keys[-1]] = np.full(obs[runtime.obs_keys[-1]].shape, 1e300)  # finite in float64, inf in the model's float32
    bad[runtime.obs_keys[0]] = obs[runtime.obs_keys[0]]
    with pytest.raises(ValueError, match=f"observation {runtime.obs_keys[-1]!r} has non-finite"):
        runtime.step(bad)
    for name, value in runtime.carry().items():
        np.testing.assert_array_equal(value, carry[name])
    bad[runtime.obs_keys[0]] = obs[runtime.obs_keys[0]].astype(np.complex64)
    with pytest.raises(ValueError, match="dtype complex64"):
        runtime.step(bad)
    with pytest.raises(ValueError, match="sent action"):
        runtime.action_sent(np.zeros(runtime.meta["action"]["dim"] + 1, np.float32))


def test_image_inputs_must_be_uint8():
    """A float image in [0, 1] cast to uint8 would be all zeros: refused instead."""
    from reverie.envs.base import dtype_fits

    assert dtype_fits(np.dtype(np.uint8), np.dtype(np.uint8))
    assert not dtype_fits(np.dtype(np.float32), np.dtype(np.uint8))
    assert not dtype_fits(np.dtype(np.int64), np.dtype(np.uint8))
    assert dtype_fits(np.dtype(np.float64), np.dtype(np.float32)) and dtype_fits(np.dtype(np.int32), np.dtype(np.float32))
    assert dtype_fits(np.dtype(np.int64), np.dtype(np.bool_)) and not dtype_fits(np.dtype(np.float32), np.dtype(np.bool_))


def test_runtime_checks_the_spaces_of_a_source(exported):
    runtime = PolicyRuntime(exported / "p.onnx")
    vector = envs.make("fake/vector", seed=0)
    runtime.check_spaces(vector.obs_space, vector.act_space)  # the env it was exported for
    with pytest.raises(ValueError, match="does not provide"):
        runtime.check_spaces(envs.make("fake/pixels", seed=0).obs_space, vector.act_space)
    with pytest.raises(ValueError, match="discrete"):
        runtime.check_spaces(vector.obs_space, envs.make("fake/discrete", seed=0).act_space)


def test_runtime_takes_the_sent_action_as_previous_action(exported):
    runtime = PolicyRuntime(exported / "p.onnx")
    obs = {k: np.zeros(s["shape"][1:], np.float32) for k, s in zip(runtime.obs_keys, runtime.meta["inputs"])}
    runtime.step(obs)
    runtime.action_sent(np.full(3, 0.25, np.float32))
    assert np.allclose(runtime.carry()["prev_action"], 0.25)


def test_hot_swapped_runtime_continues_the_carry(exported):
    env = envs.make("fake/vector", seed=0)
    old, new, straight = (PolicyRuntime(exported / "p.onnx") for _ in range(3))
    rng = np.random.default_rng(0)
    obs = env.reset(seed=0)
    for step in range(20):
        noise = rng.random(old.noise_dim, dtype=np.float32)
        if step == 10:
            new.load_carry(old)  # swap between two ticks
        runtime = old if step < 10 else new
        action = runtime.step(obs, noise)
        assert np.allclose(action, straight.step(obs, noise), atol=1e-6)
        obs = env.step(action)


# --------------------------------------------------------------- two parts
def test_fused_format_1_still_loads_and_steps():
    runtime = PolicyRuntime(MODELS / "vector_fused.onnx")
    assert runtime.meta["format"] == "reverie.policy_step/1" and not runtime.split and runtime.advance() is False
    env = envs.make("fake/vector", seed=0)
    obs = env.reset(seed=0)
    for _ in range(5):
        obs = env.step(runtime.step(obs))


def test_halves_of_different_exports_are_refused_by_name(tmp_path):
    """A two-part model whose advance part is another export's (a different, or a differently shaped, one)."""
    copy_robot_model("vector", tmp_path / "p.onnx")
    # The pixel model's advance part has the same shapes (same tiny RSSM) but other weights: refused by its hash.
    shutil.copy(MODELS / "pixels.advance.onnx", tmp_path / "p.advance.onnx")
    meta = json.loads((tmp_path / "p.onnx.json").read_text())
    meta["sha256"] = (
        __import__("hashlib").sha256((tmp_path / "p.onnx").read_bytes() + (tmp_path / "p.advance.onnx").read_bytes()).hexdigest()
    )
    (tmp_path / "p.onnx.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="advance part: sha256 does not match the sidecar"):
        PolicyRuntime(tmp_path / "p.onnx")
    # A sidecar whose halves do not fit together (an advance part of another model size).
    meta["advance"]["outputs"][0]["shape"] = [1, 64]
    (tmp_path / "p.onnx.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="the two halves do not match: advance output 'deter_out'"):
        PolicyRuntime(tmp_path / "p.onnx")
    # Part sizes that do not add up to the payload (the weight channel's case).
    meta = json.loads((MODELS / "vector.onnx.json").read_text())
    meta["observe"]["bytes"] += 1
    with pytest.raises(ValueError, match="do not add up"):
        PolicyRuntime(None, sidecar=meta, model_bytes=(MODELS / "vector.onnx").read_bytes() + (MODELS / "vector.advance.onnx").read_bytes())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("advance"), "'advance' needs 'bytes'"),
        (lambda m: m["advance"].update(inputs=m["advance"]["inputs"][:2]), "'advance': inputs"),
        (lambda m: m.update(format="reverie.policy_step/9"), "is not one of"),
        (lambda m: m.update(inputs=[i for i in m["inputs"] if i["name"] != "post_deter"]), "sidecar lacks inputs \\['post_deter'\\]"),
    ],
)
def test_malformed_two_part_sidecar_refused_naming_the_field(exported, tmp_path, edit, message):
    with pytest.raises(ValueError, match=message):
        PolicyRuntime(edited_sidecar(exported, tmp_path, edit))


def test_two_part_step_matches_the_fused_step():
    """The committed two-part and fused exports of one agent: same actions and carry, with and without the loop's advance."""
    split, fused, lazy = (
        PolicyRuntime(MODELS / "vector.onnx"),
        PolicyRuntime(MODELS / "vector_fused.onnx"),
        PolicyRuntime(MODELS / "vector.onnx"),
    )
    env = envs.make("fake/vector", seed=0, length=40)
    rng = np.random.default_rng(0)
    obs = env.reset(seed=0)
    for t in range(200):
        if obs["is_last"]:
            obs = env.reset()
            for runtime in (split, fused, lazy):
                runtime.reset()
        noise = rng.random(split.noise_dim, dtype=np.float32)
        actions = [runtime.step(obs, noise) for runtime in (split, fused, lazy)]
        np.testing.assert_allclose(actions[0], actions[1], atol=1e-6)
        np.testing.assert_array_equal(actions[0], actions[2])
        sent = actions[0] if t % 7 else np.zeros_like(actions[0])  # now and then the loop sends a safe action instead
        for runtime in (split, fused, lazy):
            runtime.action_sent(sent)
        assert split.advance()  # the loop's call; `lazy` leaves it to its next step
        for name, value in fused.carry().items():
            np.testing.assert_allclose(split.carry()[name], value, atol=1e-6, err_msg=name)
        obs = env.step(sent)


class _CountingSession:
    """Wraps an onnxruntime session and counts its runs."""

    def __init__(self, session):
        self.session, self.runs = session, 0

    def run_with_iobinding(self, binding):
        self.runs += 1
        self.session.run_with_iobinding(binding)


def test_warming_after_the_advance_runs_the_observe_part_and_changes_nothing():
    """A small observe part is warmed after each advance and by ``warm_up()`` (one more run each, on scratch outputs):
    the actions and carry stay bitwise those of an unwarmed runtime, and the step itself never warms (that would be
    on the critical path)."""
    warmed, plain = PolicyRuntime(MODELS / "vector.onnx"), PolicyRuntime(MODELS / "vector.onnx", warm=False)
    assert warmed.warm and not plain.warm  # the committed model is far below WARM_MAX_BYTES
    assert not PolicyRuntime(MODELS / "vector_fused.onnx").warm  # a fused model has no advance to warm after
    warmed.session = _CountingSession(warmed.session)
    env = envs.make("fake/vector", seed=0, length=40)
    obs = env.reset(seed=0)
    rng = np.random.default_rng(0)
    advances = 0
    for _ in range(100):
        if obs["is_last"]:
            obs = env.reset()
            warmed.reset()
            plain.reset()
        noise = rng.random(warmed.noise_dim, dtype=np.float32)
        before = warmed.session.runs
        action = warmed.step(obs, noise)
        assert warmed.session.runs == before + 1
        np.testing.assert_array_equal(action, plain.step(obs, noise))
        for runtime in (warmed, plain):
            runtime.action_sent(action)
        ran = warmed.advance()
        assert ran == plain.advance()
        advances += ran
        assert warmed.session.runs == before + 1 + ran  # the warming run
        assert warmed.warm_up() and not plain.warm_up()  # the loop's pre-tick warm: one more run, nothing changes
        assert warmed.session.runs == before + 2 + ran
        for name, value in plain.carry().items():
            np.testing.assert_array_equal(warmed.carry()[name], value, err_msg=name)
        obs = env.step(action)
    assert advances > 90


def test_hot_swap_between_formats_continues_the_episode():
    """A carry moves from a fused runtime to a two-part one and back (same weights: same actions)."""
    env = envs.make("fake/vector", seed=0, length=1000)
    straight = PolicyRuntime(MODELS / "vector.onnx")
    chain = [PolicyRuntime(MODELS / name) for name in ("vector_fused.onnx", "vector.onnx", "vector_fused.onnx")]
    rng = np.random.default_rng(1)
    obs = env.reset(seed=0)
    current = chain[0]
    for t in range(30):
        if t in (10, 20):
            new = chain[t // 10]
            new.load_carry(current)
            current = new
        noise = rng.random(straight.noise_dim, dtype=np.float32)
        action = current.step(obs, noise)
        np.testing.assert_allclose(action, straight.step(obs, noise), atol=1e-6)
        obs = env.step(action)


def test_the_loop_runs_the_advance_off_the_critical_path_and_accounts_for_it():
    from reverie.realtime.loop import ControlLoop

    env = envs.make("fake/vector", seed=0, length=30)
    runtime = PolicyRuntime(MODELS / "vector.onnx")
    advance, ran = runtime.advance, []
    runtime.advance = lambda: (ran.append(advance()), ran[-1])[1]  # step() calls it through the instance too
    stats = ControlLoop(env, runtime, rate_hz=500).run(steps=50)
    summary = stats.summary()
    assert stats.ticks == 50 and len(stats.advance_us) >= 48 and summary["advance_p50_us"] > 0
    assert summary["advance_misses"] == stats.advance_misses
    assert sum(ran) == len(stats.advance_us)  # every advance ran in the loop between ticks, none inside a step
