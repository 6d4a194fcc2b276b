"""The benchmark scripts still run (tiny arguments), so they cannot rot unnoticed."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def bench(monkeypatch):
    """Imports a bench script by name as it runs from bench/ (its neighbour ``common`` importable); the path is restored after."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module


def run(script, *args, timeout=300):
    out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=timeout, cwd=BENCH.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_train_throughput():
    (row,) = run("train_throughput.py", "--presets", "1m", "--threads", "1", "--updates", "1", "--warmup", "0", "--compile", "false")
    assert row["updates_per_s"] > 0 and row["preset"] == "1m" and row["batch"] == [16, 64]


@pytest.mark.slow
def test_policy_latency():
    rows = run("policy_latency.py", "--presets", "1m", "--obs", "vector", "--steps", "50", "--int8", "--no-install")
    latency = [r for r in rows if r["name"] == "policy_latency"]
    assert {(r["part"], r["precision"]) for r in latency} == {(p, q) for p in ("fused", "critical", "advance") for q in ("fp32", "int8")}
    assert all(r["p99_us"] > 0 and r["cpu_p50_us"] > 0 and r["floor_us"] > 0 and r["steps"] == 50 for r in latency)
    assert all(r["warm"] == (r["part"] != "fused") for r in latency)  # the 1m observe part is small: warmed
    (ratio,) = [r for r in rows if r["name"] == "policy_latency_ratio"]
    assert ratio["critical_over_fused_p99"] > 0 and ratio["fp32_over_int8_fused_p50"] > 0
    assert ratio["critical_over_fused_cpu_p50"] > 0 and ratio["fp32_over_int8_fused_cpu_p50"] > 0


@pytest.mark.slow
def test_flop_floor_counts_the_1m_update():
    (row,) = run("flop_floor.py", "--presets", "1m")
    assert row["preset"] == "1m" and row["update_gflop"] > 1
    for precision in ("fp32", "bf16"):
        assert row[f"floor_s_{precision}"] == pytest.approx(row["update_gflop"] / row[f"peak_gflop_s_{precision}"], rel=1e-9)
    assert sum(row["per_op_gflop"].values()) == pytest.approx(row["update_gflop"], rel=1e-9)


def test_policy_step_conv_flops_by_hand(bench):
    """The 12m pixel encoder's FLOPs: Σ 2·H·W·C_out·C_in·k² over its four same-padded 5×5 convolutions at 64, 32, 16, 8."""
    import torch

    from reverie import envs
    from reverie.agent.builder import build_agent
    from reverie.cli.config import compose
    from reverie.realtime.policy_step import PolicyStep

    cost = bench("policy_latency").cost
    env = envs.make("fake/pixels", obs="pixels", seed=0)
    agent = build_agent(compose(["size=12m", "obs=pixels"]), env.obs_space, env.act_space).eval()
    step = PolicyStep(agent)
    rssm = agent.wm.rssm
    example = [torch.zeros(1, 64, 64, 3, dtype=torch.uint8), torch.zeros(1, rssm.deter), torch.zeros(1, rssm.stoch, rssm.classes)]
    example += [torch.zeros(1, agent.act_dim), torch.tensor([False]), torch.from_numpy(np.zeros((1, step.noise_dim), np.float32))]
    channels = [3, 32, 48, 64, 64]  # depth 16 × mults (2, 3, 4, 4)
    expected = sum(2 * s * s * channels[i + 1] * channels[i] * 25 for i, s in enumerate((64, 32, 16, 8)))
    assert expected == 150_732_800
    assert cost(step, tuple(example))["conv_flops"] == expected


def test_stall_probe():
    (row,) = run("stall_probe.py", "--seconds", "0.3", "--min-gap-ms", "0")
    # With no minimum, every clock read counts: a positive largest gap and ordered counts.
    assert row["max_gap_ms"] > 0 and row["gaps_over_0.5ms"] >= row["gaps_over_1ms"] >= row["gaps_over_2ms"] >= row["over_period_100hz"]


@pytest.mark.slow
def test_loop_deadlines(tmp_path):
    (row,) = run("loop_deadlines.py", "--runs", "1m:100", "--seconds", "0.5", "--out", str(tmp_path))
    assert row["ticks"] + row["skipped"] >= 45 and (tmp_path / "latency_1m_100hz.png").exists()


@pytest.mark.slow
def test_warm_wait():
    rows = run("warm_wait.py", "--blocks", "1", "--block", "20", "--wait-us", "300", "--lead-us", "100")
    assert [r["case"] for r in rows] == ["no_wait", "spin", "sleep", "spin_then_warm"]
    assert all(r["steps"] == 19 and 0 < r["p50_us"] <= r["p99_us"] for r in rows)


@pytest.mark.slow
def test_learning_summary_and_onnx_vs_torch(tiny_overrides, tmp_path):
    from reverie.cli.main import main

    assert main(["train", "env=fake/vector", "env.time_limit=10", "steps=40", "eval_every=20", *tiny_overrides]) == 0
    # A `reverie run` logdir has its evaluations in eval.jsonl: one line with the learner's wall clock, one from before it was recorded.
    (tmp_path / "run" / "eval.jsonl").write_text('{"step": 30, "eval/return": 7.0}\n{"step": 35, "eval/return": 8.0, "time/wall_s": 1.5}\n')
    (summary,) = run(
        "learning.py", "--summarize-only", "--env", "fake/vector", "--out", str(tmp_path / "out"), "--logdirs", str(tmp_path / "run")
    )
    assert (tmp_path / "out" / "curve.png").exists()
    evals = {step: (ret, wall) for step, ret, wall in summary["runs"][0]["evals"]}
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    wall_at_30 = next(m["time/wall_s"] for m in metrics if m["step"] >= 30 and "time/wall_s" in m)
    assert evals[30] == (7.0, wall_at_30) and evals[35] == (8.0, 1.5) and len(evals) == 4  # and the two of `reverie train`
    (cmp,) = run("onnx_vs_torch.py", str(tmp_path / "run"), "--episodes", "2")
    assert cmp["torch_returns"] == pytest.approx(cmp["onnx_returns"], abs=1e-3)


@pytest.mark.slow
def test_streaming():
    rows = run("streaming.py", "--actors", "2", "--steps", "640", "--transport", "ipc")
    assert [r["obs"] for r in rows] == ["vector", "pixels"]
    assert all(r["lost"] == 0 and r["received"] == r["sent"] > 0 and r["transitions_per_s"] > 0 for r in rows)


@pytest.mark.slow
def test_hot_swap():
    (row,) = run("hot_swap.py", "--runs", "1m:100", "--swaps", "3", "--interval", "0.3")
    assert row["published"] == 3 and row["swaps"] >= 1 and row["weights_refused"] == 0 and row["swap_latency_max_ms"] > 0


@pytest.mark.slow
@pytest.mark.serial
def test_data_parallel():
    rows = run("data_parallel.py", "--ranks", "1", "2", "--batch", "2", "--length", "8", "--updates", "1", "--warmup", "0")
    assert [r["ranks"] for r in rows[:2]] == [1, 2] and rows[1]["allreduce_bytes_per_update"] == 4 * rows[1]["params"]
    assert rows[2]["bench"] == "data_parallel_scaling" and rows[2]["speedup"] > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sim_to_real_gap_and_flow(tmp_path, bench):
    from conftest import TINY

    from reverie.cli.config import compose
    from reverie.cli.main import main

    sim = tmp_path / "sim"
    assert main(["train", *TINY, "env=dmc/cartpole_swingup", "eval_episodes=0", "report_every=0", "steps=100", f"logdir={sim}"]) == 0
    sim_to_real = bench("sim_to_real")
    OWN_KEYS, run_overrides = sim_to_real.OWN_KEYS, sim_to_real.run_overrides
    # The overrides compose the run's own config again (else the learner would refuse to resume it), except for
    # the keys the flow sets itself (all of them resumable).
    from omegaconf import OmegaConf

    again = OmegaConf.to_container(compose(run_overrides(sim / "config.yaml")), resolve=True)
    saved = OmegaConf.to_container(OmegaConf.load(sim / "config.yaml"))
    assert {k: v for k, v in again.items() if k not in OWN_KEYS} == {k: v for k, v in saved.items() if k not in OWN_KEYS}
    out = tmp_path / "bench"
    args = ["--sim", str(sim), "--out", str(out), "--episodes", "1", "--minutes", "0.4", "--window", "1", "--publish-every", "5"]
    (row,) = run("sim_to_real.py", *args, "--control", "--override", "threads=1")
    # The sweep: nominal first, then each set on the simulator.
    nominal, weak = run(
        "sim_to_real.py", "--sim", str(sim), "--out", str(tmp_path / "sweep"), "--episodes", "1", "--sweep", "gain=[0.05,0.05]"
    )
    assert nominal["perturb"] == [] and weak["perturb"] == ["gain=[0.05,0.05]"] and len(weak["returns"]) == 1
    assert nominal["returns"] != weak["returns"]  # with a twentieth of the actuation the episode runs differently
    (gap,) = row["gap"]
    assert gap["policy"] == "nominal-trained" and gap["gap"] == pytest.approx(gap["simulator"] - gap["robot"])
    flow = [json.loads(line) for line in (out / "flow.jsonl").read_text().splitlines()]
    assert row["robot_episodes"] == len(flow) >= 1 and flow[-1]["policy_version"] >= 1
    assert (out / "sim_to_real.png").exists() and (out / "deploy" / "actors" / "actor0" / "robot.json").exists()
    # The control flow: a fresh copy, learning on the unperturbed stand-in; the net recovery subtracts its rise.
    control = [json.loads(line) for line in (out / "control" / "flow.jsonl").read_text().splitlines()]
    assert len(control) >= 1 and row["control_last"] == pytest.approx(control[-1]["return"])
    perturbed_robot = json.loads((out / "deploy" / "actors" / "actor0" / "robot.json").read_text())
    control_robot = json.loads((out / "control" / "deploy" / "actors" / "actor0" / "robot.json").read_text())
    assert perturbed_robot["perturbation"] and control_robot["perturbation"] == {}
    if gap["gap"] > 0:
        rises = (flow[-1]["return"] - flow[0]["return"]) - (control[-1]["return"] - control[0]["return"])
        assert row["recovered_beyond_control"] == pytest.approx(rises / gap["gap"])
    else:
        assert row["recovered_beyond_control"] is None


def test_learning_labels_name_the_precision_only_when_chosen(tmp_path, bench):
    """``auto`` (the default: fp32 on the CPU) and ``fp32`` read the same; ``bf16`` is named."""
    run_label = bench("learning").run_label

    for precision, label in (("auto", "dreamerv3-1m-seed3"), ("fp32", "dreamerv3-1m-seed3"), ("bf16", "dreamerv3-1m-bf16-seed3")):
        run = tmp_path / precision
        run.mkdir()
        (run / "config.yaml").write_text(f"algo: {{name: dreamerv3}}\nsize: {{name: 1m}}\nseed: 3\nprecision: {precision}\n")
        assert run_label(run) == label
    assert run_label(tmp_path / "no_config") == "no_config"
    # A run trained with env.randomize is named so (the defaults alone are not).
    for name, randomize, label in (
        ("nominal", "{mass: [1.0, 1.0], obs_noise: 0.0, act_delay: 0, seed: null}", "dreamerv3-1m-seed3"),
        ("randomized", "{mass: [0.5, 2.0], obs_noise: 0.0, act_delay: 0, seed: null}", "dreamerv3-1m-randomized-seed3"),
    ):
        run = tmp_path / name
        run.mkdir()
        (run / "config.yaml").write_text(f"algo: {{name: dreamerv3}}\nsize: {{name: 1m}}\nseed: 3\nenv: {{randomize: {randomize}}}\n")
        assert run_label(run) == label


def test_parity_reader_drops_lines_a_resume_superseded(tmp_path, bench):
    read_jsonl = bench("parity").read_jsonl

    lines = [{"step": s} for s in (0, 10, 20, 30)] + [{"step": 15}, {"step": 25}]  # resumed at 15
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 3')  # and a torn last line
    assert [r["step"] for r in read_jsonl(path)] == [0, 10, 15, 25]


def test_parity_comparison_uses_the_official_range_over_seeds(tmp_path, bench):
    """Per 10K window: inside [lowest, highest] official seed mean, counted only with enough episodes everywhere."""
    parity = bench("parity")
    compare, windows = parity.compare, parity.windows

    def run(returns_by_window: list[float], episodes: int = 5) -> dict:
        points = [(k * 10_000 + 1_000 * (i + 1), r) for k, r in enumerate(returns_by_window) for i in range(episodes)]
        return {"episodes": windows(points, 10_000)}

    summary = {
        "official:s0": run([50, 200, 300]),
        "official:s1": run([70, 150, 400]),
        "reverie:s0": run([60, 210, 350]),  # outside in the second window (above 200)
        "reverie:s1": run([55, 160, 390]),
    }
    result = compare(summary, min_episodes=5)
    assert [(w["from"], w["official_min"], w["official_max"]) for w in result["windows"]] == [
        (0, 50, 70),
        (10_000, 150, 200),
        (20_000, 300, 400),
    ]
    assert [w["inside"] for w in result["windows"]][1] == {"reverie:s0": False, "reverie:s1": True}
    assert result["within"] is False and result["official_seeds"] == 2
    summary["reverie:s0"] = run([60, 190, 350])
    assert compare(summary, 5)["within"] is True
    # A window a run has too few episodes in is not compared; one official seed has no range.
    summary["official:s1"] = run([70, 150, 400], episodes=4)
    assert compare(summary, 5)["windows"] == []
    one = {k: v for k, v in summary.items() if k != "official:s1"}
    assert compare(one, 5)["within"] is None and all(w["inside"] is None for w in compare(one, 5)["windows"])


def test_parity_mean_difference_and_its_interval(bench):
    """reverie − official over pooled episodes: the hand-computed difference; no difference inside the noise, a large one outside."""
    parity = bench("parity")
    compare, mean_difference, windows = parity.compare, parity.mean_difference, parity.windows

    same = mean_difference([1.0, 3.0, 5.0, 7.0], [2.0, 4.0, 6.0], level=0.95)
    assert same["mean"] == pytest.approx(4.0 - 4.0) and same["low"] < 0 < same["high"] and same["consistent"]
    far = mean_difference([100.0, 101.0, 99.0, 100.0], [50.0, 51.0, 49.0], level=0.95)
    assert far["mean"] == pytest.approx(50.0) and 48 <= far["low"] <= far["high"] <= 52 and not far["consistent"]
    # A constant sample has a zero-width interval: 2 − 1 exactly.
    assert mean_difference([2.0, 2.0], [1.0, 1.0, 1.0], level=0.99) | {"level": None} == {
        "mean": 1.0,
        "low": 1.0,
        "high": 1.0,
        "level": None,
        "consistent": False,
    }

    rng = np.random.default_rng(0)

    def run(centre: float) -> dict:  # 10 noisy episodes in each of two windows
        return {"episodes": windows([(w * 10_000 + 900 * i, centre + rng.normal(0, 30)) for w in range(2) for i in range(10)], 10_000)}

    summary = {"official:s0": run(200), "official:s1": run(200), "reverie:s0": run(200), "reverie:s1": run(200)}
    result = compare(summary, min_episodes=5)
    assert result["consistent"] is True and all(w["difference"]["level"] == pytest.approx(1 - 0.05 / 2) for w in result["windows"])
    summary["reverie:s1"] = summary["reverie:s0"] = run(400)
    assert compare(summary, min_episodes=5)["consistent"] is False


def test_parity_compares_a_new_run_with_official_runs_from_a_saved_summary(tmp_path):
    """``--official-summary`` gives the comparison that the official logdirs gave, without them; other windows are refused."""
    rng = np.random.default_rng(0)

    def logdir(name: str, score: str, centre: float) -> Path:
        path = tmp_path / name
        path.mkdir()
        rows = [{"step": 1_000 * i + 500, score: centre + float(rng.normal(0, 20))} for i in range(30)]
        rows += [{"step": 2_000 * i, "loss/dyn" if score == "episode/return" else "train/loss/dyn": 1.0 + i} for i in range(15)]
        rows.sort(key=lambda r: r["step"])  # a log's steps never decrease (a decrease reads as a resume)
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    ours = logdir("ours", "episode/return", 100)
    official = [str(logdir(f"official{i}", "episode/score", 100)) for i in range(2)]
    run("parity.py", "--reverie", str(ours), "--official", *official, "--out", str(tmp_path / "full"))
    run(
        "parity.py", "--reverie", str(ours), "--official-summary", str(tmp_path / "full" / "summary.json"), "--out", str(tmp_path / "saved")
    )
    full, saved = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("full", "saved"))
    assert saved["comparison"] == full["comparison"] and len(full["comparison"]["windows"]) == 3
    assert saved["runs"].keys() == full["runs"].keys() == {"reverie:ours", "official:official0", "official:official1"}
    assert (tmp_path / "saved" / "returns.png").stat().st_size > 0 and (tmp_path / "saved" / "losses.png").stat().st_size > 0
    refused = subprocess.run(
        [
            sys.executable,
            str(BENCH / "parity.py"),
            "--reverie",
            str(ours),
            "--window",
            "5000",
            "--official-summary",
            str(tmp_path / "full" / "summary.json"),
            "--out",
            str(tmp_path / "no"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0 and "not --window 5000" in refused.stderr


def test_recovery_beyond_the_control_subtracts_the_rise_learning_gives_anyway(bench):
    beyond_control = bench("sim_to_real").beyond_control
    perturbed = [{"return": r} for r in (10, 20, 30, 40)]  # first 2: 15, last 2: 35, a rise of 20
    control = [{"return": r} for r in (10, 12, 14, 16)]  # 11 then 15: a rise of 4 without any gap
    assert beyond_control(perturbed, control, {"gap": 40.0}, window=2) == pytest.approx((20 - 4) / 40)
    assert beyond_control(perturbed, [], {"gap": 40.0}, window=2) is None
    assert beyond_control(perturbed, control, {"gap": -5.0}, window=2) is None
