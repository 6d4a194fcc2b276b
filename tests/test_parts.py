"""The parts `reverie train` and `reverie learner` share, and what the split guarantees.

agent/ imports nothing from realtime/; the train ratio is read in one place and
counts every rank's batch; the learner builds no environment (its spaces come
from the checkpoint or a spaces file, and it runs with the simulators missing);
`reverie run` evaluates the learner's deterministic policies next to an environment.
"""

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import TINY, chunk_of

from reverie.agent.run import COUNTERS
from reverie.cli.config import compose
from reverie.cli.main import main

ROOT = Path(__file__).resolve().parent.parent


def test_agent_imports_nothing_from_realtime():
    """Statically (every import statement in agent/) and when run (agent's modules import with realtime blocked)."""
    offending = []
    for path in sorted((ROOT / "agent").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                name = ("." * node.level) + (node.module or "")
                names = [name] + [f"{name}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            if any("realtime" in n.split(".") for n in names):
                offending.append(f"{path.name}:{node.lineno}")
    assert not offending, f"agent/ imports realtime/ at {offending}"
    modules = sorted(f"reverie.agent.{p.stem}" for p in (ROOT / "agent").glob("*.py") if p.stem != "__init__")
    script = textwrap.dedent(
        f"""
        import importlib, sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "reverie.realtime" or name.startswith("reverie.realtime."):
                    raise ImportError("agent/ must not import " + name)

        sys.meta_path.insert(0, Block())
        for name in {modules!r}:
            importlib.import_module(name)
        print("ok", len({modules!r}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr[-2000:]


def test_train_ratio_counts_every_ranks_batch():
    from reverie.agent.ratio import TrainRatio

    cfg = compose([*TINY])  # ratio 32, batch 4 × 8, train_start 16
    one, two = dict(COUNTERS), dict(COUNTERS)
    single, double = TrainRatio(cfg, one), TrainRatio(cfg, two, world=2)
    single.earn(10, replay_steps=10)  # replay not ready yet: nothing owed
    assert one["train_credit"] == 0 and not single.owed()
    single.earn(10, replay_steps=20)
    double.earn(10, replay_steps=20)
    # 10 steps × 32 replayed per step = 320 replayed steps: 10 updates of 32, or 5 updates of 2 ranks × 32.
    assert one["train_credit"] == pytest.approx(10.0) and two["train_credit"] == pytest.approx(5.0)
    two["updates"], two["agent_steps"] = 5, 10
    assert double.achieved() == pytest.approx(32.0)


def test_pretrain_owes_its_burst_once_when_training_starts():
    from reverie.agent.ratio import TrainRatio

    cfg = compose([*TINY, "algo.pretrain=7"])  # ratio 32, batch 4 × 8 (1 update per agent step), train_start 16
    counters = dict(COUNTERS)
    ratio = TrainRatio(cfg, counters)
    ratio.earn(10, replay_steps=10)  # not ready: no burst yet
    assert counters["train_credit"] == 0
    ratio.earn(1, replay_steps=16)  # ready: 7 at once plus the step's 1
    assert counters["train_credit"] == pytest.approx(8.0)
    ratio.earn(1, replay_steps=17)  # never again
    assert counters["train_credit"] == pytest.approx(9.0)
    # A resumed run that has trained already (its credit spent) gets no second burst.
    resumed = {**COUNTERS, "updates": 50}
    TrainRatio(cfg, resumed).earn(1, replay_steps=100)
    assert resumed["train_credit"] == pytest.approx(1.0)
    for algo, burst in (("dreamerv1", 100), ("dreamerv2", 100), ("dreamerv3", 0)):
        assert TrainRatio(compose([f"algo={algo}"]), dict(COUNTERS)).pretrain == burst
    with pytest.raises(ValueError, match="algo.pretrain"):
        TrainRatio(compose([*TINY, "algo.pretrain=-1"]), dict(COUNTERS))


def _spaces_file(tmp_path, env):
    path = tmp_path / "spaces.json"
    assert main(["spaces", f"env={env}", "-o", str(path)]) == 0
    return path


def test_learner_spaces_come_from_the_checkpoint_then_the_file(tmp_path):
    from reverie.realtime.learner import Learner
    from reverie.realtime.protocol import Experience
    from reverie.realtime.spaces import read_spaces

    spaces = _spaces_file(tmp_path, "fake/discrete")
    base = [*TINY, "env=fake/vector", f"logdir={tmp_path / 'run'}", f"realtime.ipc_dir={tmp_path / 'ipc'}", "eval_episodes=0"]
    learner = Learner(compose([*base, f"env.spaces={spaces}"]))
    try:  # the file wins over the env the config names (fake/vector has continuous actions)
        assert learner.act_space.discrete and learner.act_space == read_spaces(spaces)[1]
        learner.ingest(Experience("a", 0, 0, 0, chunk_of(learner.receiver.schema, 10, first=True), session=1))
        learner.save()
    finally:
        learner.close()
    again = Learner(compose(base))  # resumed: the checkpoint's spaces, not the named env's
    try:
        assert again.book.resumed and again.act_space.discrete
    finally:
        again.close()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": 1, "obs": {"x": {"dtype": "float32", "shape": [2]}}, "act": {}}))
    with pytest.raises(ValueError, match="lack"):
        Learner(compose([*base, f"logdir={tmp_path / 'other'}", f"env.spaces={bad}"]))


NO_SIMULATORS = """
import sys


class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("dm_control", "gymnasium", "mujoco", "ale_py", "crafter"):
            raise ImportError(name + " is not installed here")


sys.meta_path.insert(0, Block())
from reverie.cli.config import compose
from reverie.realtime.learner import Learner
from reverie.realtime.protocol import Experience
sys.path.insert(0, {tests!r})
from conftest import chunk_of

learner = Learner(compose({overrides!r}))
schema = learner.receiver.schema
for seq in range(4):
    learner.ingest(Experience("a", seq, seq, 0, chunk_of(schema, 10, first=True, last=True), session=1))
while learner.can_train():
    learner.update()
learner.publish()
learner.stop()  # the loop ends at once: checkpoint, then the final export
learner.run(handle_signals=False)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("dm_control", "gymnasium", "mujoco"))
print("updates", learner.counters["updates"], "loaded", loaded)
"""


@pytest.mark.slow
def test_learner_runs_without_the_simulator_its_config_names(tmp_path):
    """A learner for a dmc task on a machine without dm_control, MuJoCo or gymnasium: spaces from a file."""
    spaces = _spaces_file(tmp_path, "dmc/cartpole_swingup")
    overrides = [
        *TINY,
        "env=dmc/cartpole_swingup",
        f"env.spaces={spaces}",
        f"logdir={tmp_path / 'run'}",
        f"realtime.ipc_dir={tmp_path / 'ipc'}",
        "report_every=0",
        "steps=1000000",
    ]
    script = NO_SIMULATORS.format(tests=str(ROOT / "tests"), overrides=overrides)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1].split()
    assert last[0] == "updates" and int(last[1]) > 0 and out.stdout.strip().endswith("loaded []"), out.stdout
    run = tmp_path / "run"
    for name in ("checkpoint.pt", "published/policy.onnx", "policy.onnx", "curve.png"):
        assert (run / name).exists(), name


def test_the_learners_policies_are_evaluated_next_to_an_environment(tmp_path):
    """`reverie run`'s evaluator: the learner's deterministic policy of a step, run in the control loop, into eval.jsonl."""
    from conftest import make_agent

    from reverie import envs
    from reverie.realtime.launcher import Evaluations
    from reverie.realtime.outputs import export_for_evaluation

    cfg = compose([*TINY, "env=fake/vector", "env.time_limit=12", "eval_episodes=2", "realtime.rate_hz=400", f"logdir={tmp_path}"])
    env = envs.from_config(cfg, 0)
    agent = make_agent(env, overrides=tuple(TINY))
    old = export_for_evaluation(agent, cfg, env.obs_space, 40)
    new = export_for_evaluation(agent, cfg, env.obs_space, 80, wall_s=123.5)
    assert json.loads(Path(f"{new}.json").read_text())["env_config"]["time_limit"] == 12
    evaluations = Evaluations(cfg, tmp_path, [sys.executable, "-m", "reverie.cli.main"])
    evaluations.poll()  # starts the newest; the older waiting one is dropped
    assert not old.exists() and evaluations.running is not None
    evaluations.finish(timeout=120)
    lines = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [80] and evaluations.failures == 0
    assert lines[0]["time/wall_s"] == 123.5  # the learner's wall clock at the export: the curve against minutes
    report = json.loads((tmp_path / "eval" / "step_0000000080" / "eval.json").read_text())
    # The episodes ran in the run's environment settings (12 steps each, from the sidecar), not the env's defaults.
    assert report["episodes"] == 2 and report["return_mean"] == pytest.approx(lines[0]["eval/return"])
    assert report["ticks"] == 2 * 12  # the default episode is 50 steps
    assert not new.exists()  # evaluated policies are removed


def test_the_learner_leaves_a_core_to_each_local_actor(monkeypatch):
    """`reverie run`: threads=0 gives the learner the cores its actors leave (at least one); a set value stays."""
    from reverie.realtime import launcher

    monkeypatch.setattr(launcher.os, "cpu_count", lambda: 2)
    assert launcher.learner_threads(compose(["threads=0"])) == 1
    assert launcher.learner_threads(compose(["threads=0", "realtime.actors=4"])) == 1
    assert launcher.learner_threads(compose(["threads=2"])) == 2
    monkeypatch.setattr(launcher.os, "cpu_count", lambda: 16)
    assert launcher.learner_threads(compose(["threads=0", "realtime.actors=3"])) == 13
