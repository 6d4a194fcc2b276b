"""The dream view: picks recorded sequences, runs the open-loop prediction, and draws and writes it.

:func:`reverie.agent.openloop.open_loop` computes the numbers; this
module chooses what to show (the most recent episodes of a replay or of an
episode file), turns the result into pictures (a PNG grid and an animated GIF
per image key, matplotlib plots of vectors, reward, continuation and the
error by horizon) and writes them: into a folder (all files or none) and to
TensorBoard. ``reverie dream`` and the report during training both use it.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from reverie.agent.openloop import OpenLoop, open_loop

if TYPE_CHECKING:  # matplotlib is imported when a report is drawn
    from matplotlib.figure import Figure

#: Horizons whose open-loop error goes into the metrics as ``report/openloop_error_h{h}``.
METRIC_HORIZONS = (1, 5, 15, 45)
#: Cell border colours: observed (context) and imagined steps.
CONTEXT_RGB = (0, 200, 0)
IMAGINED_RGB = (220, 0, 0)
#: Pixels of border around each frame in the grid and the video.
PAD = 2
#: Keys a sequence needs besides the model's sensor keys.
STEP_KEYS = ("reward", "is_first", "is_last", "is_terminal", "action")


# ------------------------------------------------------------ sequences
class StepSource(Protocol):
    """Consecutive recorded steps numbered ``first … total − 1`` (a :class:`~reverie.agent.replay.Replay` or ``DiskReplay``)."""

    total: int

    @property
    def first(self) -> int:
        """Number of the oldest step held."""

    def read(self, start: int, stop: int, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Steps ``start … stop − 1`` in order."""


class StepArrays:
    """Steps held in memory as ``{key: [N, ...]}`` (an episode file), with the :class:`StepSource` interface.

    Missing flags get their meaning for a single recorded episode: ``is_first``
    at step 0 only, never ``is_last`` or ``is_terminal``; a missing reward is 0.

    Raises:
        ValueError: for arrays of different lengths or without an ``action``.
    """

    def __init__(self, arrays: dict[str, np.ndarray], *, name: str = "episode") -> None:
        arrays = {k: np.asarray(v) for k, v in arrays.items() if not k.startswith("log/")}
        if "action" not in arrays:
            raise ValueError(f"{name} has no 'action' array (keys: {', '.join(sorted(arrays)) or 'none'})")
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{name}: arrays differ in length ({lengths})")
        n = lengths["action"]
        arrays.setdefault("is_first", np.arange(n) == 0)
        arrays.setdefault("is_last", np.zeros(n, bool))
        arrays.setdefault("is_terminal", np.zeros(n, bool))
        arrays.setdefault("reward", np.zeros(n, np.float32))
        self.arrays, self.total = arrays, n

    @property
    def first(self) -> int:
        """Always 0."""
        return 0

    def read(self, start: int, stop: int, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Steps ``start … stop − 1``."""
        return {k: self.arrays[k][start:stop] for k in (keys or self.arrays)}


def load_episode_file(path: str | Path) -> StepArrays:
    """An ``.npz`` of consecutive steps ``{key: [N, ...]}`` (an episode, or a replay chunk file).

    Raises:
        ValueError: for a missing or unreadable file, or unusable arrays.
    """
    path = Path(path)
    try:
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise ValueError(f"no episode file at {path}") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read episode file {path}: {exc}") from exc
    return StepArrays(arrays, name=f"episode file {path}")


def episode_windows(is_first: np.ndarray, is_last: np.ndarray, *, length: int, count: int) -> list[int]:
    """Start offsets of the ``count`` most recent episodes with at least ``length`` steps.

    An episode starts at ``is_first`` and runs to the next one (or the end of
    the data). Finished episodes (an ``is_last`` inside) come first, newest
    first; episodes still running fill up if there are too few.

    Raises:
        ValueError: when no episode has ``length`` steps.
    """
    starts = np.flatnonzero(is_first)
    ends = np.append(starts[1:], len(is_first))
    long_enough = [(s, e) for s, e in zip(starts, ends) if e - s >= length]
    if not long_enough:
        longest = int((ends - starts).max()) if len(starts) else 0
        raise ValueError(
            f"no episode holds context + horizon = {length} steps (longest: {longest}, {len(starts)} episode starts); "
            "lower the context or the horizon"
        )
    done = [int(s) for s, e in reversed(long_enough) if is_last[s:e].any()]
    running = [int(s) for s, e in reversed(long_enough) if not is_last[s:e].any()]
    return (done + running)[:count]


def recent_sequences(source: StepSource, *, length: int, count: int, keys: list[str]) -> dict[str, np.ndarray]:
    """The first ``length`` steps of the ``count`` most recent episodes in ``source``: ``{key: [B, length, ...]}``.

    Args:
        source: the recorded steps.
        length: steps per sequence (context + horizon).
        count: sequences wanted (fewer when fewer episodes qualify).
        keys: the model's sensor keys (``reward``, the flags and ``action`` are added).

    Raises:
        ValueError: when the source holds fewer than ``length`` steps, no
            episode that long, or lacks a key.
    """
    held = source.total - source.first
    if held < length:
        raise ValueError(f"replay holds {held} steps, fewer than context + horizon = {length}")
    flags = source.read(source.first, source.total, ("is_first", "is_last"))
    starts = episode_windows(flags["is_first"], flags["is_last"], length=length, count=count)
    wanted = (*keys, *STEP_KEYS)
    windows = [source.read(source.first + s, source.first + s + length) for s in starts]
    missing = [k for k in wanted if k not in windows[0]]
    if missing:
        raise ValueError(f"the recorded steps lack {', '.join(missing)} (they hold {', '.join(sorted(windows[0]))})")
    return {k: np.stack([w[k] for w in windows]) for k in wanted}


# --------------------------------------------------------------- dream
def dream(agent: Any, seqs: dict[str, np.ndarray], *, context: int, seed: int = 0) -> OpenLoop:
    """Open-loop prediction of ``agent``'s world model over recorded sequences.

    Each sequence is a fresh start (zero carry, ``is_first`` at step 0): all
    the model knows comes from its ``context`` observed steps. The latent
    samples use a generator seeded with ``seed``, so reports of different
    checkpoints draw the same noise, and torch's global generator (which a
    resumed run must replay exactly) is left alone.

    Args:
        agent: a :class:`~reverie.agent.dreamer.Dreamer`.
        seqs: ``{key: [B, T, ...]}`` from :func:`recent_sequences`;
            ``action`` is the action taken after each step.
        context: observed steps K.
        seed: seed of the latent noise.
    """
    wm = agent.wm
    device = agent.device
    obs = {k: torch.as_tensor(np.ascontiguousarray(seqs[k]), device=device) for k in (*wm.obs_keys, "reward", "is_terminal")}
    is_first = torch.zeros(seqs["is_first"].shape, dtype=torch.bool, device=device)
    is_first[:, 0] = True
    obs["is_first"] = is_first
    action = torch.as_tensor(np.ascontiguousarray(seqs["action"]), device=device).float()
    prev_actions = torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], 1)  # entry t: the action before step t
    generator = torch.Generator(device=device).manual_seed(seed)
    # Eager: a compiled module would recompile for this batch shape, a stall of seconds.
    with agent.eager(), torch.no_grad():
        return open_loop(wm, obs, prev_actions, context=context, generator=generator)


# ------------------------------------------------------------- drawing
def _rgb(images: np.ndarray) -> np.ndarray:
    """``[..., C]`` uint8 → ``[..., 3]``: grey repeated, extra channels dropped."""
    if images.shape[-1] == 3:
        return images
    if images.shape[-1] == 1:
        return np.repeat(images, 3, -1)
    return np.repeat(images[..., :1], 3, -1)


def _cells(truth: np.ndarray, pred: np.ndarray, context: int) -> np.ndarray:
    """``[B, 3, T, H + 2·PAD, W + 2·PAD, 3]``: truth, model, |model − truth| per step, each framed by its step's colour."""
    truth = _rgb(np.asarray(truth, np.uint8))
    model = _rgb(np.round(np.clip(np.asarray(pred, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8))
    error = np.abs(model.astype(np.int16) - truth.astype(np.int16)).astype(np.uint8)
    rows = np.stack([truth, model, error], 1)  # [B, 3, T, H, W, 3]
    B, _, T, H, W, _ = rows.shape
    cells = np.empty((B, 3, T, H + 2 * PAD, W + 2 * PAD, 3), np.uint8)
    colour = np.where((np.arange(T) < context)[:, None], np.array(CONTEXT_RGB, np.uint8), np.array(IMAGINED_RGB, np.uint8))  # [T, 3]
    cells[...] = colour[None, None, :, None, None, :]
    cells[:, :, :, PAD : PAD + H, PAD : PAD + W] = rows
    return cells


def image_grid(truth: np.ndarray, pred: np.ndarray, context: int) -> np.ndarray:
    """The PNG grid: for each sequence three rows (truth, model, absolute error), time along the columns.

    Args:
        truth: ``[B, T, H, W, C]`` uint8.
        pred: ``[B, T, H, W, C]`` in [0, 1].
        context: K; the frames of the first K columns are green, the imagined ones red.

    Returns:
        ``[B · 3 · (H + 2·PAD), T · (W + 2·PAD), 3]`` uint8.
    """
    cells = _cells(truth, pred, context)
    B, R, T, h, w, _ = cells.shape
    return cells.transpose(0, 1, 3, 2, 4, 5).reshape(B * R * h, T * w, 3)


def video_frames(truth: np.ndarray, pred: np.ndarray, context: int) -> np.ndarray:
    """The animation: frame t shows truth, model and error (top to bottom) of every sequence (left to right) at step t.

    Returns:
        ``[T, 3 · (H + 2·PAD), B · (W + 2·PAD), 3]`` uint8.
    """
    cells = _cells(truth, pred, context)
    B, R, T, h, w, _ = cells.shape
    return cells.transpose(2, 1, 3, 0, 4, 5).reshape(T, R * h, B * w, 3)


#: Margins :func:`label_grid` adds: a header with the step numbers, a column with the row names.
HEADER_PX, LABEL_PX = 14, 40


def label_grid(grid: np.ndarray, *, sequences: int, steps: int, context: int) -> np.ndarray:
    """The grid of :func:`image_grid` on a white canvas with the step numbers above and the row names to the left.

    Returns:
        ``[HEADER_PX + grid height, LABEL_PX + grid width, 3]`` uint8; the
        grid itself sits at ``[HEADER_PX:, LABEL_PX:]``.
    """
    from PIL import Image, ImageDraw

    rows, cols = sequences * 3, steps
    cell_h, cell_w = grid.shape[0] // rows, grid.shape[1] // cols
    canvas = Image.new("RGB", (LABEL_PX + grid.shape[1], HEADER_PX + grid.shape[0]), "white")
    canvas.paste(Image.fromarray(grid), (LABEL_PX, HEADER_PX))
    draw = ImageDraw.Draw(canvas)
    every = max(1, -(-30 // cell_w))  # about 30 px per number
    for t in range(0, cols, every):
        draw.text((LABEL_PX + t * cell_w + 2, 1), str(t), fill=CONTEXT_RGB if t < context else IMAGINED_RGB)
    for r in range(rows):
        draw.text((2, HEADER_PX + r * cell_h + cell_h // 2 - 5), ("truth", "model", "error")[r % 3], fill="black")
    return np.asarray(canvas)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an ``[H, W, 3]`` uint8 image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def encode_gif(frames: np.ndarray, fps: float = 10.0) -> bytes:
    """Animated GIF bytes (looping) of ``[T, H, W, 3]`` uint8 frames, with Pillow's writer."""
    from PIL import Image

    # Fast octree palettes: Pillow's default median cut takes ~40× longer per frame.
    images = [Image.fromarray(f).quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE) for f in frames]
    buf = io.BytesIO()
    # disposal=1 and optimize=False: every frame is kept whole, so a reader counts exactly T frames.
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0, optimize=False, disposal=1)
    return buf.getvalue()


def _figure_rgb(fig: Figure) -> np.ndarray:
    """Renders a matplotlib figure to ``[H, W, 3]`` uint8 and closes it."""
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas
    assert isinstance(canvas, FigureCanvasAgg)  # _pyplot() selects Agg, whose canvas has the pixel buffer
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series_figure(rows: list[tuple[str, np.ndarray, np.ndarray]], context: int, title: str) -> np.ndarray:
    """Truth (solid) and model (dashed) over time: a row per ``(label, truth [B, T], pred [B, T])``, a column per sequence.

    The context steps are shaded and their end drawn. Fixed margins instead of
    ``tight_layout``, which measured most of a report's cost.
    """
    plt = _pyplot()
    B, T = rows[0][1].shape
    width, height = 2.3 * B + 0.9, 1.25 * len(rows) + 0.9
    fig, axes = plt.subplots(len(rows), B, figsize=(width, height), dpi=80, squeeze=False, sharex=True)
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.15 / width, bottom=0.45 / height, top=1 - 0.5 / height, wspace=0.3, hspace=0.2)
    steps = np.arange(T)
    for r, (label, truth, pred) in enumerate(rows):
        for b in range(B):
            ax = axes[r, b]
            ax.axvspan(-0.5, context - 0.5, color="tab:green", alpha=0.12, lw=0)
            ax.axvline(context - 0.5, color="tab:green", lw=1)
            ax.plot(steps, truth[b], color="black", lw=1.2, label="truth")
            ax.plot(steps, pred[b], color="tab:red", lw=1.2, ls="--", label="model")
            ax.locator_params(nbins=4)
            ax.tick_params(labelsize=7)
            if b == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0:
                ax.set_title(f"sequence {b}", fontsize=8)
    for b in range(B):
        axes[-1, b].set_xlabel("step", fontsize=8)
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{title}: open loop after {context} context steps (green)", fontsize=9)
    return _figure_rgb(fig)


def vector_figure(result: OpenLoop, key: str, *, max_dims: int = 8) -> np.ndarray:
    """Truth and prediction of one vector key over time: a row per dimension (at most ``max_dims``), a column per sequence."""
    truth, pred = result.truth[key].float().numpy(), result.pred[key].numpy()  # [B, T, D]
    D = truth.shape[-1]
    dims = min(D, max_dims)
    rows = [(f"{key}[{d}]", truth[..., d], pred[..., d]) for d in range(dims)]
    return _series_figure(rows, result.context, key + (f" (first {dims} of {D} dims)" if dims < D else ""))


def reward_figure(result: OpenLoop) -> np.ndarray:
    """Reward (and continuation, with a head) predicted against true along the sequences."""
    rows = [("reward", result.reward.numpy(), result.reward_pred.numpy())]
    if result.cont is not None and result.cont_pred is not None:  # (both, with a continuation head)
        rows.append(("continuation", result.cont.numpy(), result.cont_pred.numpy()))
    return _series_figure(rows, result.context, "reward and continuation")


def error_figure(result: OpenLoop) -> np.ndarray:
    """The open-loop error by horizon, per key and in total, with each key's reconstruction error over the context as reference."""
    plt = _pyplot()
    by_h = {k: v.numpy() for k, v in result.error_by_horizon().items()}
    horizons = np.arange(1, result.horizon + 1)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=80)
    for i, (key, values) in enumerate(by_h.items()):
        colour = "black" if key == "total" else f"C{i}"
        ax.plot(horizons, values, color=colour, lw=2 if key == "total" else 1.2, label=key)
        if key in result.error:
            recon = float(result.error[key][:, : result.context].mean())
            ax.axhline(recon, color=colour, lw=0.8, ls=":")
    if all((v > 0).all() for v in by_h.values()):
        ax.set_yscale("log")
    ax.set_xlabel("open-loop horizon (steps after the context)")
    ax.set_ylabel("error (loss space)")
    ax.set_title(f"open-loop error, mean of {result.reward.shape[0]} sequences (dotted: over the context)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.14, top=0.9)
    return _figure_rgb(fig)


# -------------------------------------------------------------- report
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


@dataclass
class DreamReport:
    """Everything one report shows, ready to write.

    Attributes:
        images: ``{name: [H, W, 3] uint8}``: the grid per image key
            (``openloop_<key>``), a plot per vector key (``vector_<key>``),
            ``reward`` and ``error``.
        videos: ``{name: [T, H, W, 3] uint8}`` frames, one per image key (``openloop_<key>``).
        numbers: the JSON summary (errors by horizon, per key and total).
        fps: frames per second of the animations.
    """

    images: dict[str, np.ndarray] = field(default_factory=dict)
    videos: dict[str, np.ndarray] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)
    fps: float = 10.0
    _gifs: dict[str, bytes] = field(default_factory=dict, repr=False)

    def gif(self, name: str) -> bytes:
        """The animation ``name`` as GIF bytes (encoded once)."""
        if name not in self._gifs:
            self._gifs[name] = encode_gif(self.videos[name], self.fps)
        return self._gifs[name]

    def files(self) -> dict[str, bytes]:
        """File name → content: the PNGs, the GIFs and ``openloop.json``."""
        out = {f"{name}.png": encode_png(image) for name, image in self.images.items()}
        out |= {f"{name}.gif": self.gif(name) for name in self.videos}
        out["openloop.json"] = (json.dumps(self.numbers, indent=1) + "\n").encode()
        return out

    def metrics(self) -> dict[str, float]:
        """``report/openloop_error_h{h}`` (total, loss space) for the horizons of :data:`METRIC_HORIZONS` within H."""
        total = self.numbers["error_by_horizon"]["total"]
        return {f"report/openloop_error_h{h}": total[h - 1] for h in METRIC_HORIZONS if h <= len(total)}


def build_report(result: OpenLoop, *, fps: float = 10.0, info: dict[str, Any] | None = None) -> DreamReport:
    """Draws ``result``: grids and animations of the image keys, plots of the rest, and the numbers.

    Args:
        result: from :func:`dream`.
        fps: frames per second of the animations.
        info: extra entries for the JSON summary (checkpoint, step, …).
    """
    report = DreamReport(fps=fps)
    for key, truth in result.truth.items():
        if truth.dim() == 5:  # [B, T, H, W, C] image
            t, p = truth.numpy(), result.pred[key].numpy()
            grid = image_grid(t, p, result.context)
            report.images[f"openloop_{_safe(key)}"] = label_grid(grid, sequences=t.shape[0], steps=t.shape[1], context=result.context)
            report.videos[f"openloop_{_safe(key)}"] = video_frames(t, p, result.context)
        else:
            report.images[f"vector_{_safe(key)}"] = vector_figure(result, key)
    report.images["reward"] = reward_figure(result)
    report.images["error"] = error_figure(result)
    by_h = result.error_by_horizon()
    imagined = slice(result.context, None)
    numbers: dict[str, Any] = {
        **(info or {}),
        "context": result.context,
        "horizon": result.horizon,
        "sequences": int(result.reward.shape[0]),
        "error_space": "reconstruction loss per step: squared error summed over a vector's (symlog) dimensions or an image's pixels in [0, 1]",
        "error_by_horizon": {k: [round(float(x), 6) for x in v] for k, v in by_h.items()},
        "error_over_context": {k: round(float(v[:, : result.context].mean()), 6) for k, v in result.error.items()},
        "reward_abs_error_by_horizon": [round(float(x), 6) for x in (result.reward_pred - result.reward)[:, imagined].abs().mean(0)],
    }
    if result.cont is not None and result.cont_pred is not None:
        numbers["cont_abs_error_by_horizon"] = [round(float(x), 6) for x in (result.cont_pred - result.cont)[:, imagined].abs().mean(0)]
    numbers["table"] = {f"h{h}": numbers["error_by_horizon"]["total"][h - 1] for h in METRIC_HORIZONS if h <= result.horizon}
    report.numbers = numbers
    return report


def write_report(report: DreamReport, out: str | Path) -> Path:
    """Writes the report's files into the folder ``out``, all or nothing.

    The files go into a temporary folder beside ``out``, which then takes its
    place (an earlier report there is replaced); a failure leaves ``out`` as
    it was.
    """
    out = Path(out)
    files = report.files()  # encode everything before touching the disk
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the report is an ordinary output folder
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.{os.getpid()}.old")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def log_report(writer: Any, report: DreamReport, step: int) -> None:
    """Writes the report to TensorBoard: every image, and each animation as an animated GIF image summary.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter``.
        report: from :func:`build_report`.
        step: the global step (environment steps).
    """
    from tensorboard.compat.proto.summary_pb2 import Summary

    for name, image in report.images.items():
        writer.add_image(f"dream/{name}", image, step, dataformats="HWC")
    for name, frames in report.videos.items():
        # What SummaryWriter.add_video writes (an image summary holding an
        # animated GIF), without its moviepy dependency.
        _, height, width, channels = frames.shape
        image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=report.gif(name))
        writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=f"dream/{name}_video", image=image)]), step)
    writer.flush()


def training_report(
    agent: Any, replay: StepSource, *, context: int, horizon: int, sequences: int, step: int, out_dir: str | Path, writer: Any = None
) -> dict[str, float]:
    """The report during training: files under ``out_dir``, TensorBoard, and the metrics to log.

    Returns:
        ``report/openloop_error_h{h}`` and ``report/seconds`` (the cost of the report).

    Raises:
        ValueError: when the replay holds no episode of ``context + horizon`` steps yet.
    """
    start = time.perf_counter()
    seqs = recent_sequences(replay, length=context + horizon, count=sequences, keys=agent.wm.obs_keys)
    report = build_report(dream(agent, seqs, context=context), info={"step": int(step)})
    write_report(report, out_dir)
    if writer is not None:
        log_report(writer, report, step)
    return {**report.metrics(), "report/seconds": time.perf_counter() - start}
