"""Policy-step latency: torch eager vs onnxruntime, one thread, per preset and observation type.

One JSON line per measurement with ``preset``, ``obs`` (vector | pixels),
``runtime`` (torch | onnxruntime), ``p50_us``, ``p99_us``, ``p999_us`` and
``floor_us``: the weight-streaming floor of the model (bytes of the policy
step's parameters ÷ memory read bandwidth measured in the same run), and
``compute_floor_us``: the step's matrix-product and convolution FLOPs ÷ the
best fp32 product rate of this thread measured in the same run.

    python bench/policy_latency.py --presets 1m 12m --obs vector pixels --steps 10000
"""

from __future__ import annotations

import argparse
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
from reverie.realtime.policy_step import PolicyStep
from reverie.realtime.runtime import PolicyRuntime


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


def step_flops(step: PolicyStep, example: list[torch.Tensor]) -> dict[str, int]:
    """FLOPs of one policy step's matrix products and convolutions (elementwise work not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        step(*example)
    per_op = counter.get_flop_counts()["Global"]
    conv = sum(int(n) for op, n in per_op.items() if "convolution" in str(op))
    return {"flops": int(counter.get_total_flops()), "conv_flops": conv}


def percentiles(samples: list[float]) -> dict[str, float]:
    us = np.array(samples) * 1e6
    return {
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
        "p999_us": float(np.percentile(us, 99.9)),
        "mean_us": float(us.mean()),
    }


def measure(preset: str, obs_kind: str, steps: int, bandwidth: float, peak: float) -> list[dict]:
    env = envs.make("dmc/cartpole_swingup" if obs_kind == "vector" else "fake/pixels", obs=obs_kind, seed=0)
    torch.manual_seed(0)
    agent = build_agent(compose([f"size={preset}", f"obs={obs_kind}"]), env.obs_space, env.act_space).eval()
    step = PolicyStep(agent)
    params = [p for m in (step.encoder, step.rssm, step.actor) for p in m.parameters()]
    model_bytes = sum(p.numel() * p.element_size() for p in params)
    floor_us = model_bytes / bandwidth * 1e6
    keys = agent.wm.obs_keys
    # Real observations, recorded once, replayed for timing.
    obs_seq, obs = [], env.reset(seed=0)
    for _ in range(min(steps, 500)):
        obs_seq.append(obs)
        obs = env.step(np.zeros(env.act_space.shape, np.float32))
        if obs["is_last"]:
            obs = env.reset()
    rng = np.random.default_rng(0)
    out = []
    # torch eager
    rssm = agent.wm.rssm
    deter, stoch, prev = torch.zeros(1, rssm.deter), torch.zeros(1, rssm.stoch, rssm.classes), torch.zeros(1, agent.act_dim)
    times = []
    with torch.inference_mode():
        for i in range(steps + 100):
            o = obs_seq[i % len(obs_seq)]
            start = time.perf_counter()
            inputs = [torch.from_numpy(np.ascontiguousarray(o[k]))[None] for k in keys]
            noise = torch.from_numpy(rng.random((1, step.noise_dim), dtype=np.float32))
            prev, deter, stoch = step(*inputs, deter, stoch, prev, torch.tensor([i == 0]), noise)
            action = prev[0].numpy()
            if i >= 100:
                times.append(time.perf_counter() - start)
    assert np.all(np.isfinite(action))
    o = obs_seq[0]
    example = [*(torch.from_numpy(np.ascontiguousarray(o[k]))[None] for k in keys), deter, stoch, prev, torch.tensor([False]), noise]
    flops = step_flops(step, example)
    base = {
        "name": "policy_latency",
        "preset": preset,
        "obs": obs_kind,
        "steps": steps,
        "model_bytes": model_bytes,
        "floor_us": floor_us,
        "bandwidth_gb_s": bandwidth / 1e9,
        **flops,
        # The products alone at this thread's best measured rate: no runtime can beat it.
        "compute_floor_us": flops["flops"] / peak * 1e6,
        "peak_gflop_s": peak / 1e9,
    }
    out.append({**base, "runtime": "torch", **percentiles(times)})
    # onnxruntime
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.onnx"
        export_policy(agent, path, obs_space=env.obs_space)
        runtime = PolicyRuntime(path, threads=1)
        times = []
        for i in range(steps + 100):
            o = obs_seq[i % len(obs_seq)]
            start = time.perf_counter()
            runtime.step(o)
            if i >= 100:
                times.append(time.perf_counter() - start)
    out.append({**base, "runtime": "onnxruntime", **percentiles(times)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", default=["1m", "12m"])
    parser.add_argument("--obs", nargs="*", default=["vector", "pixels"])
    parser.add_argument("--steps", type=int, default=10_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bandwidth = read_bandwidth()
    peak = peak_flops()
    info = machine()
    for preset in args.presets:
        for obs_kind in args.obs:
            for record in measure(preset, obs_kind, args.steps, bandwidth, peak):
                emit({**record, "machine": info})


if __name__ == "__main__":
    main()
