"""Policy-step latency with onnxruntime, one thread: the fused step, the two-part step's critical path and its
off-path advance (fp32, and int8 with ``--int8``), per preset and observation type; and the robot runtime's
import time, resident memory and installed size beside the full install's.

One JSON line per measurement. Latency rows (``name: policy_latency``) have ``preset``, ``obs`` (vector |
pixels), ``part`` (fused | critical | advance), ``precision`` (fp32 | int8), ``p50_us``, ``p99_us``,
``p999_us``, ``floor_us`` (the part's ONNX weight bytes, ``onnx_weight_bytes``, ÷ this thread's memory read
bandwidth, measured in the same run; ``weight_bytes`` counts the torch parameters the part touches) and
``compute_floor_us`` (its matrix-product and convolution FLOPs ÷ the best fp32 product rate of this
thread, measured in the same run). ``cpu_p50_us``, ``cpu_p99_us``: the same steps in this thread's CPU time
(``time.thread_time``), which leaves out the time the thread waited for a core: on a machine shared with other
work a multi-millisecond step is preempted most times and its wall-clock figures measure the scheduler. The
parts are timed in alternating blocks of 500 steps so that all of them see the same machine load; ratios
between them are the robust figure on a busy machine. The int8 exports quantize the wide convolutions (≥ 32
input channels) statically, calibrated on the recorded observations (``reverie.realtime.quantize``). The
two-part runtime warms its observe part after each advance when it is small (``warm`` in the rows;
``PolicyRuntime``). One
``policy_latency_ratio`` line per preset and observation type gives critical ÷ fused (p99, p50, CPU-time p50)
and fp32 ÷ int8. ``robot_install`` lines give the import time and resident memory of the robot side (from
``.venv-robot`` when it exists, which has no torch) and of the full stack, and the installed size of each
dependency set.

    python bench/policy_latency.py --presets 1m 12m --obs vector pixels --steps 10000 [--int8]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import emit, machine, median_seconds

from reverie import envs
from reverie.agent.builder import build_agent
from reverie.cli.config import compose
from reverie.realtime.export import export_policy
from reverie.realtime.policy_step import AdvanceStep, ObserveStep, PolicyStep
from reverie.realtime.runtime import PolicyRuntime

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 500


def read_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Single-thread memory read bandwidth in bytes/s (best of ``repeats`` sums over a large array)."""
    data = np.ones(megabytes * 2**20 // 8, np.float64)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return data.nbytes / best


def peak_flops(n: int = 1024, repeats: int = 20) -> float:
    """This thread's best fp32 rate (FLOP/s) over an n³ product (torch, onnxruntime) and a 5×5 convolution (onnxruntime).

    The convolution is the 12m encoder's largest (32 → 48 channels at 32×32);
    onnxruntime's convolution kernel runs faster than either library's plain
    product here, so the floor takes the best of the three.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    x = rng.standard_normal((1, 32, 32, 32)).astype(np.float32)
    w = rng.standard_normal((48, 32, 5, 5)).astype(np.float32)
    value = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    matmul = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "mm", [value("a", [n, n]), value("b", [n, n])], [value("c", [n, n])]
    )
    conv = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[2, 2, 2, 2])],
        "conv",
        [value("x", list(x.shape))],
        [value("y", [1, 48, 32, 32])],
        [numpy_helper.from_array(w, "w")],
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = lambda graph: ort.InferenceSession(helper.make_model(graph).SerializeToString(), options, providers=["CPUExecutionProvider"])  # noqa: E731
    mm_session, conv_session = session(matmul), session(conv)
    rates = [
        2 * n**3 / median_seconds(lambda: torch.from_numpy(a) @ torch.from_numpy(a), repeats),
        2 * n**3 / median_seconds(lambda: mm_session.run(None, {"a": a, "b": a}), repeats),
        2 * w.size * 32 * 32 / median_seconds(lambda: conv_session.run(None, {"x": x}), 10 * repeats),
    ]
    return max(rates)


def cost(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> dict[str, int]:
    """FLOPs of one call's matrix products and convolutions (``flops``; ``conv_flops`` of those in convolutions),
    and the bytes of the parameters it touches (``weight_bytes``)."""
    from torch.utils.flop_counter import FlopCounterMode

    touched: set[int] = set()
    params: dict[int, torch.nn.Parameter] = {}
    hooks = []
    for sub in module.modules():
        own = list(sub.parameters(recurse=False))
        if own:
            hooks.append(sub.register_forward_pre_hook(lambda m, _, own=own: touched.update(id(p) for p in own)))
            params.update((id(p), p) for p in own)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(*args)
    for hook in hooks:
        hook.remove()
    weight_bytes = sum(params[i].numel() * params[i].element_size() for i in touched)
    conv = sum(int(n) for op, n in counter.get_flop_counts()["Global"].items() if "convolution" in str(op))
    return {"flops": int(counter.get_total_flops()), "conv_flops": conv, "weight_bytes": weight_bytes}


def onnx_weight_bytes(path: Path) -> int:
    """Bytes of an ONNX model's initializers: the weights it streams per call (int8 ones at a byte each)."""
    import onnx
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(init).nbytes for init in onnx.load(str(path)).graph.initializer)


def percentiles(samples: list[float], cpu: list[float]) -> dict[str, float]:
    """Wall-clock p50/p99/p99.9/mean and CPU-time p50/p99 (µs) of per-step seconds."""
    us, cpu_us = np.array(samples) * 1e6, np.array(cpu) * 1e6
    p50, p99, p999 = np.percentile(us, [50, 99, 99.9])
    cpu50, cpu99 = np.percentile(cpu_us, [50, 99])
    return {
        "p50_us": float(p50),
        "p99_us": float(p99),
        "p999_us": float(p999),
        "mean_us": float(us.mean()),
        "cpu_p50_us": float(cpu50),
        "cpu_p99_us": float(cpu99),
    }


def measure(preset: str, obs_kind: str, steps: int, bandwidth: float, peak: float, int8: bool) -> list[dict]:
    # Pixels from dmc/cartpole_swingup's renderer, as the task is trained; vector from the same task.
    env = envs.make("dmc/cartpole_swingup", obs=obs_kind, seed=0)
    torch.manual_seed(0)
    agent = build_agent(compose([f"size={preset}", f"obs={obs_kind}"]), env.obs_space, env.act_space).eval()
    # Real observations, recorded once, replayed for timing.
    obs_seq, obs = [], env.reset(seed=0)
    for _ in range(min(steps, 500)):
        obs_seq.append(obs)
        obs = env.step(np.zeros(env.act_space.shape, np.float32))
        if obs["is_last"]:
            obs = env.reset()
    step = PolicyStep(agent).eval()
    rssm = step.rssm
    o = obs_seq[1]
    obs_args = [torch.from_numpy(np.ascontiguousarray(o[k]))[None] for k in step.obs_keys]
    deter, stoch, action = torch.zeros(1, rssm.deter), torch.zeros(1, *rssm.stoch_shape), torch.zeros(1, step.act_dim)
    noise = torch.full((1, step.noise_dim), 0.5)
    costs = {
        "fused": cost(step, (*obs_args, deter, stoch, action, torch.tensor([False]), noise)),
        "critical": cost(ObserveStep(step), (*obs_args, deter, torch.zeros(1, rssm.post_deter.out_features), noise)),
        "advance": cost(AdvanceStep(step), (deter, stoch, action)),
    }
    precisions = ["fp32", "int8"] if int8 else ["fp32"]
    times: dict[tuple[str, str], list[float]] = {(part, p): [] for part in costs for p in precisions}
    cpu: dict[tuple[str, str], list[float]] = {(part, p): [] for part in costs for p in precisions}
    calibration = [{k: o[k] for k in step.obs_keys} for o in obs_seq]
    onnx_bytes: dict[tuple[str, str], int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        runtimes = {}
        for precision in precisions:
            quantize = {"quantize": "int8", "calibration": calibration} if precision == "int8" else {}
            export_policy(agent, Path(tmp) / f"f_{precision}.onnx", obs_space=env.obs_space, split=False, **quantize)
            export_policy(agent, Path(tmp) / f"s_{precision}.onnx", obs_space=env.obs_space, **quantize)
            runtimes[precision] = (PolicyRuntime(Path(tmp) / f"f_{precision}.onnx"), PolicyRuntime(Path(tmp) / f"s_{precision}.onnx"))
            files = {"fused": f"f_{precision}.onnx", "critical": f"s_{precision}.onnx", "advance": f"s_{precision}.advance.onnx"}
            for part, name in files.items():
                onnx_bytes[(part, precision)] = onnx_weight_bytes(Path(tmp) / name)
        # Alternating blocks: every part sees the same machine load; the first block of each is warm-up.
        size = min(BLOCK, steps)
        for block in range(steps // size + 1):
            for precision, (fused, split) in runtimes.items():
                for i in range(size):
                    ob = obs_seq[i % len(obs_seq)]
                    cpu_start, start = time.thread_time(), time.perf_counter()
                    fused.step(ob)
                    end, cpu_end = time.perf_counter(), time.thread_time()
                    if block:
                        times[("fused", precision)].append(end - start)
                        cpu[("fused", precision)].append(cpu_end - cpu_start)
                for i in range(size):
                    ob = obs_seq[i % len(obs_seq)]
                    cpu_start, start = time.thread_time(), time.perf_counter()
                    sent = split.step(ob)
                    middle, cpu_middle = time.perf_counter(), time.thread_time()
                    split.action_sent(sent)
                    split.advance()
                    end, cpu_end = time.perf_counter(), time.thread_time()
                    if block:
                        times[("critical", precision)].append(middle - start)
                        times[("advance", precision)].append(end - middle)
                        cpu[("critical", precision)].append(cpu_middle - cpu_start)
                        cpu[("advance", precision)].append(cpu_end - cpu_middle)
    out = []
    for (part, precision), samples in times.items():
        c = costs[part]
        out.append(
            {
                "name": "policy_latency",
                "preset": preset,
                "obs": obs_kind,
                "part": part,
                "precision": precision,
                "steps": len(samples),
                **percentiles(samples, cpu[(part, precision)]),
                "warm": part != "fused" and runtimes[precision][1].warm,
                **c,
                "onnx_weight_bytes": onnx_bytes[(part, precision)],
                # Streaming the model's own weights (int8 ones at a byte each) once per call.
                "floor_us": onnx_bytes[(part, precision)] / bandwidth * 1e6,
                # The products alone at this thread's best measured fp32 rate: no fp32 runtime can beat it.
                "compute_floor_us": c["flops"] / peak * 1e6,
                "bandwidth_gb_s": bandwidth / 1e9,
                "peak_gflop_s": peak / 1e9,
            }
        )
    p99 = {(r["part"], r["precision"]): r["p99_us"] for r in out}
    p50 = {(r["part"], r["precision"]): r["p50_us"] for r in out}
    cpu50 = {(r["part"], r["precision"]): r["cpu_p50_us"] for r in out}
    ratio = {
        "name": "policy_latency_ratio",
        "preset": preset,
        "obs": obs_kind,
        "critical_over_fused_p99": p99[("critical", "fp32")] / p99[("fused", "fp32")],
        "critical_over_fused_p50": p50[("critical", "fp32")] / p50[("fused", "fp32")],
        "critical_over_fused_cpu_p50": cpu50[("critical", "fp32")] / cpu50[("fused", "fp32")],
    }
    if int8:
        ratio["fp32_over_int8_fused_p50"] = p50[("fused", "fp32")] / p50[("fused", "int8")]
        ratio["fp32_over_int8_fused_p99"] = p99[("fused", "fp32")] / p99[("fused", "int8")]
        ratio["fp32_over_int8_critical_p50"] = p50[("critical", "fp32")] / p50[("critical", "int8")]
        ratio["fp32_over_int8_fused_cpu_p50"] = cpu50[("fused", "fp32")] / cpu50[("fused", "int8")]
        ratio["fp32_over_int8_critical_cpu_p50"] = cpu50[("critical", "fp32")] / cpu50[("critical", "int8")]
        ratio["critical_over_fused_int8_cpu_p50"] = cpu50[("critical", "int8")] / cpu50[("fused", "int8")]
    out.append(ratio)
    return out


#: Imports the robot side's modules, loads a policy and steps it; prints seconds and VmRSS.
ROBOT_PROBE = """
import time
start = time.perf_counter()
import reverie.realtime.actor, reverie.realtime.runtime, reverie.realtime.loop
imported = time.perf_counter() - start
import sys
rss = lambda: int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) * 1024
rss_import = rss()
model = sys.argv[1]
if model:
    import numpy as np
    runtime = reverie.realtime.runtime.PolicyRuntime(model)
    obs = {k: np.zeros(s["shape"][1:], s["dtype"]) for k, s in zip(runtime.obs_keys, runtime.meta["inputs"])}
    for _ in range(100):
        runtime.step(obs)
print(imported, rss_import, rss(), "torch" in sys.modules)
"""

#: The same for the full stack: the learner's modules (torch, the agent, the exporter).
FULL_PROBE = ROBOT_PROBE.replace(
    "import reverie.realtime.actor, reverie.realtime.runtime, reverie.realtime.loop",
    "import reverie.realtime.learner, reverie.realtime.export, reverie.realtime.runtime",
)


def probe(python: str, code: str, model: str, repeats: int = 5) -> dict:
    runs = []
    for _ in range(repeats):
        done = subprocess.run([python, "-c", code, model], capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
        seconds, rss_import, rss_run, torch_loaded = done.stdout.split()
        runs.append((float(seconds), int(rss_import), int(rss_run), torch_loaded == "True"))
    return {
        "import_s": statistics.median(r[0] for r in runs),
        "import_s_min": min(r[0] for r in runs),
        "rss_after_import_mb": statistics.median(r[1] for r in runs) / 2**20,
        "rss_with_policy_mb": statistics.median(r[2] for r in runs) / 2**20,
        "torch_loaded": runs[0][3],
    }


def installed_bytes(extras: tuple[str, ...]) -> tuple[int, list[str]]:
    """Bytes on disk of the distributions ``reverie[extras]`` pulls in (their RECORD files in this environment)."""
    from importlib import metadata

    import tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    # reverie's own requirements from this checkout's pyproject.toml (an editable install's metadata
    # may predate it); every other distribution's from its installed metadata.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    own = list(project["dependencies"])
    for extra, reqs in project["optional-dependencies"].items():
        own += [f"{r}; extra == '{extra}'" for r in reqs]
    sizes: dict[str, int] = {}
    todo, done = [("reverie", frozenset(extras))], set()
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in done:
            continue
        done.add((name, wanted))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if name not in sizes:
            sizes[name] = sum(f.locate().stat().st_size for f in (dist.files or []) if f.locate().is_file())
        for text in own if name == "reverie" else dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (wanted or {""})):
                continue
            todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return sum(sizes.values()), sorted(sizes)


def robot_install(model: str) -> list[dict]:
    robot_python = ROOT / ".venv-robot" / "bin" / "python"
    robot = str(robot_python) if robot_python.exists() else sys.executable
    rows = []
    robot_bytes, robot_dists = installed_bytes(())
    full_bytes, full_dists = installed_bytes(("full",))
    rows.append(
        {
            "name": "robot_install",
            "what": "robot runtime",
            "python": robot,
            **probe(robot, ROBOT_PROBE, model),
            "installed_mb": robot_bytes / 2**20,
            "distributions": len(robot_dists),
        }
    )
    rows.append(
        {
            "name": "robot_install",
            "what": "full install (learner side: torch, agent, exporter)",
            "python": sys.executable,
            **probe(sys.executable, FULL_PROBE, model),
            "installed_mb": full_bytes / 2**20,
            "distributions": len(full_dists),
        }
    )
    rows.append({"name": "robot_install_ratio", "installed": robot_bytes / full_bytes, "import": rows[0]["import_s"] / rows[1]["import_s"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", default=["1m", "12m"])
    parser.add_argument("--obs", nargs="*", default=["vector", "pixels"])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--int8", action="store_true", help="also the int8-quantized exports")
    parser.add_argument("--no-install", action="store_true", help="skip the robot install's import, memory and size")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bandwidth = read_bandwidth()
    peak = peak_flops()
    info = machine()
    for preset in args.presets:
        for obs_kind in args.obs:
            for record in measure(preset, obs_kind, args.steps, bandwidth, peak, args.int8):
                emit({**record, "machine": info})
    if not args.no_install:
        with tempfile.TemporaryDirectory() as tmp:
            env = envs.make("dmc/cartpole_swingup", seed=0)
            torch.manual_seed(0)
            agent = build_agent(compose(["size=12m"]), env.obs_space, env.act_space).eval()
            export_policy(agent, Path(tmp) / "p.onnx", obs_space=env.obs_space)
            for record in robot_install(str(Path(tmp) / "p.onnx")):
                emit({**record, "machine": info})


if __name__ == "__main__":
    main()
