"""Dataclass schemas of the configuration, registered in Hydra's ConfigStore.

Every field carries a ``help`` text; ``reverie train --help`` prints them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


def doc(default: Any, text: str) -> Any:
    """A dataclass field with a default and a help text."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class RSSMConfig:
    """RSSM options shared by the size presets (``algo.rssm``)."""

    stoch: int = doc(32, "number of categorical latents S")
    blocks: int = doc(8, "diagonal blocks of the recurrent GRU")
    unimix: float = doc(0.01, "uniform mixture of the latent distributions")
    imglayers: int = doc(2, "hidden layers of the prior")
    obslayers: int = doc(1, "hidden layers of the posterior")
    dynlayers: int = doc(1, "block-diagonal layers before the GRU gates")
    act: str = doc("silu", "activation")
    norm: str = doc("rms", "norm: rms | layer | none")
    cell: str = doc("blockgru", "recurrent cell: blockgru (V3) | normgru (V2) | gru (V1)")
    latent: str = doc("categorical", "stochastic latent: categorical (V2, V3) | gaussian (V1)")
    min_std: float = doc(0.1, "gaussian latent: lower bound of the standard deviation")


@dataclass
class NetConfig:
    """Encoder or decoder structure (``algo.encoder``, ``algo.decoder``)."""

    layers: int = doc(3, "MLP layers")
    mults: list = doc([2, 3, 4, 4], "CNN channel multipliers of depth per stage")
    kernel: int = doc(5, "CNN kernel size (the strided decoder's are fixed: 5, 5, 6, 6)")
    act: str = doc("silu", "activation")
    norm: str = doc("rms", "norm: rms | layer | none")
    symlog: bool = doc(True, "symlog vector inputs (encoder) and targets (decoder), V3")
    cnn: str = doc("pool", "CNN layout: pool (V3: stride-1 conv + max-pool) | strided (V1, V2: stride-2 4×4 convs, transposed 5,5,6,6)")
    cnn_act: str = doc("", "CNN activation if it differs from act (V1: relu)")


@dataclass
class HeadConfig:
    """An output head: reward, continuation or critic."""

    layers: int = doc(1, "MLP layers")
    dist: str = doc("twohot", "reward and critic heads: twohot (V3) | mse (V1, V2)")
    bins: int = doc(255, "two-hot bins (reward and critic heads)")
    outscale: float = doc(0.0, "initial scale of the output layer (0: predicts exactly 0)")
    act: str = doc("silu", "activation")
    norm: str = doc("rms", "norm")


@dataclass
class ActorConfig:
    """The actor head (``algo.actor``)."""

    layers: int = doc(3, "MLP layers")
    dist: str = doc("bounded_normal", "continuous actions: bounded_normal (V3) | trunc_normal (V2) | tanh_normal (V1)")
    min_std: float = doc(0.1, "lower bound of the action standard deviation")
    max_std: float = doc(1.0, "upper bound of the action standard deviation (bounded_normal)")
    outscale: float = doc(0.01, "initial scale of the output layer")
    mean_scale: float = doc(5.0, "tanh_normal: bound of the pre-squash mean")
    init_std: float = doc(5.0, "tanh_normal: initial standard deviation")
    unimix: float = doc(0.01, "discrete actions: uniform mix of the action probabilities (V3 0.01; V2 0)")
    act: str = doc("silu", "activation")
    norm: str = doc("rms", "norm")


@dataclass
class OptimizerConfig:
    """The optimiser (``algo.optimizer``): LaProp with adaptive clipping (V3) or Adam per module (V1, V2)."""

    kind: str = doc("laprop", "laprop (V3: one optimiser) | adam (V1, V2: world model, actor and critic groups)")
    lr: float = doc(4e-5, "learning rate (adam: of the world model)")
    actor_lr: float = doc(8e-5, "adam: learning rate of the actor")
    critic_lr: float = doc(8e-5, "adam: learning rate of the critic")
    clip: float = doc(100.0, "adam: gradient clipping by global norm per group")
    wd: float = doc(0.0, "adam: decoupled weight decay per update")
    beta1: float = doc(0.9, "momentum")
    beta2: float = doc(0.999, "squared-gradient EMA rate")
    eps: float = doc(1e-20, "epsilon added to the RMS")
    agc: float = doc(0.3, "laprop: adaptive gradient clipping ratio (0 disables)")
    warmup: int = doc(1000, "laprop: linear learning-rate warm-up in updates")


@dataclass
class RetNormConfig:
    """The percentile return normaliser (``algo.retnorm``)."""

    kind: str = doc("percentile", "percentile (V3) | none (V1, V2)")
    rate: float = doc(0.01, "EMA rate of the percentiles")
    limit: float = doc(1.0, "floor of the return scale")
    low: float = doc(5.0, "lower percentile")
    high: float = doc(95.0, "upper percentile")


@dataclass
class AlgoConfig:
    """An algorithm preset (``algo=``): every constant of the recipe."""

    name: str = doc("dreamerv3", "algorithm preset: dreamerv1 | dreamerv2 | dreamerv3")
    rssm: RSSMConfig = field(default_factory=RSSMConfig)
    encoder: NetConfig = field(default_factory=NetConfig)
    decoder: NetConfig = field(default_factory=NetConfig)
    reward_head: HeadConfig = field(default_factory=HeadConfig)
    cont_head: HeadConfig = field(default_factory=lambda: HeadConfig(outscale=1.0))
    actor: ActorConfig = field(default_factory=ActorConfig)
    critic: HeadConfig = field(default_factory=lambda: HeadConfig(layers=3))
    free_nats: float = doc(1.0, "free bits of each KL term")
    kl_mode: str = doc("split", "split: dyn and rep terms (V2 balance, V3) | joint: one KL term (V1)")
    free_avg: bool = doc(False, "apply free nats to the batch-mean KL (V1, V2) instead of per step (V3)")
    use_cont: bool = doc(True, "learn a continuation head (false: fixed discount, V1)")
    reward_transform: str = doc("identity", "reward targets: identity | tanh (V2 on Atari)")
    imag_horizon: int = doc(15, "imagination horizon")
    lam: float = doc(0.95, "λ of the λ-returns")
    horizon: float = doc(333.0, "discount horizon: γ = 1 − 1/horizon")
    entropy_scale: float = doc(3e-4, "actor entropy bonus")
    slowreg: float = doc(1.0, "weight of the slow-critic regulariser")
    slow_rate: float = doc(0.02, "EMA rate of the slow critic")
    slow_every: int = doc(1, "updates between slow-critic refreshes (V2: 100 with rate 1)")
    return_value: str = doc("critic", "returns bootstrap from: critic (V1, V3) | slow (V2's target critic)")
    replay_value: bool = doc(True, "also train the critic on replayed λ-returns")
    actor_grad_mix: float | None = doc(
        0.0, "0: REINFORCE (V3), 1: dynamics backpropagation (V1), between: a mix; null: by action space (V2)"
    )
    discount_weight: str = doc("inclusive", "weight of imagined step t: inclusive Π_{i≤t} γ_i (V3) | exclusive Π_{i<t} (V1, V2)")
    replay_context: bool = doc(True, "start replayed sequences from stored latents (V3) instead of zeros (V1, V2)")
    expl_noise: float = doc(0.0, "std of Gaussian noise added to sampled actions (V1: 0.3)")
    prefill: str = doc(
        "policy", "actions until training starts (train_start): policy, the initial policy (V3) | uniform, uniform random (V1, V2)"
    )
    pretrain: int = doc(0, "updates owed at once when training starts, besides the train ratio's (V1; V2 on DMC: 100)")
    retnorm: RetNormConfig = field(default_factory=RetNormConfig)
    loss_scales: dict = doc(
        {"rec": 1.0, "rew": 1.0, "con": 1.0, "dyn": 1.0, "rep": 0.1, "kl": 1.0, "policy": 1.0, "value": 1.0, "repval": 0.3},
        "weights of the loss terms",
    )
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)


@dataclass
class SizeConfig:
    """A model size preset (``size=``), after the official size1m … size400m."""

    name: str = doc("1m", "preset name (after the official size1m … size400m)")
    deter: int = doc(512, "recurrent state size")
    hidden: int = doc(64, "RSSM hidden width")
    classes: int = doc(4, "classes per categorical latent")
    units: int = doc(64, "MLP width of encoder, decoder and heads")
    depth: int = doc(4, "CNN base depth")


@dataclass
class RandomizeConfig:
    """Perturbations of the simulator (``env.randomize``) or the stand-in robot (``realtime.robot_perturb``); all off by default.

    Factor ranges are ``[low, high]``: each element (body, geom, dof, actuator)
    gets its own factor drawn uniformly from the range; ``[x, x]`` is a fixed
    factor. ``env.randomize`` draws again at every episode reset;
    ``realtime.robot_perturb`` draws once when the robot is built and keeps it.
    """

    mass: list = doc([1.0, 1.0], "factor range of each body's mass (its inertia scales alike)")
    friction: list = doc([1.0, 1.0], "factor range of each geom's friction (sliding, torsional, rolling)")
    damping: list = doc([1.0, 1.0], "factor range of each joint dof's damping")
    gain: list = doc([1.0, 1.0], "factor range of each actuator's gain (a servo's mirrored bias term scales with it)")
    obs_noise: float = doc(0.0, "std of Gaussian noise added to every float sensor value at every tick")
    obs_bias: list = doc([0.0, 0.0], "range of a per-episode offset drawn for every float sensor element ([b, b]: fixed)")
    act_noise: float = doc(0.0, "std of Gaussian noise added to continuous actions in [-1, 1] (then clipped)")
    act_delay: int = doc(0, "control ticks between computing an action and applying it (zeros applied at an episode's first ticks)")
    dropout: float = doc(0.0, "probability per sensor key and tick that it repeats its previous value")
    seed: int | None = doc(None, "seed of the draws (default: the environment's seed)")


@dataclass
class SafetyConfig:
    """Command limits the actor puts between the policy and the robot (``realtime.safety``); all off by default."""

    max_delta: float = doc(0.0, "largest change of any action dimension from one tick to the next ([-1, 1] units); 0: no limit")
    low: list = doc([], "per-joint lower bounds of the command in [-1, 1] (one number, or one per action dimension); []: -1")
    high: list = doc([], "per-joint upper bounds of the command in [-1, 1]; []: 1")


@dataclass
class EnvConfig:
    """The environment (``env=``)."""

    name: str = doc("dmc/cartpole_swingup", "environment: dmc/<domain>_<task>, gym/<id>, atari/<game>, crafter or fake/<variant>")
    action_repeat: int | None = doc(None, "actions repeated per agent step (default: 2 for dmc, 1 otherwise)")
    time_limit: int | None = doc(None, "agent steps per episode (default: the environment's own)")
    size: int = doc(64, "side of pixel observations")
    options: dict = doc(
        {}, "keyword arguments of the raw environment (add one with +env.options.KEY=V), e.g. atari: sticky, actions, noops, gray"
    )
    randomize: RandomizeConfig = field(default_factory=RandomizeConfig)
    spaces: str = doc(
        "",
        "learner: a JSON file of the observation and action spaces (`reverie spaces` writes it), so the learner needs no"
        " simulator; empty: the checkpoint's, else read from the env named here without stepping it",
    )


@dataclass
class ReplayConfig:
    """The disk-backed replay (``replay.*``)."""

    capacity: int = doc(1_000_000, "steps kept in replay")
    chunk_size: int = doc(1024, "steps per chunk file on disk")
    max_magnitude: float = doc(
        1e6, "largest magnitude of a stored float (observations, reward); larger values are refused as no measurement"
    )
    recent_fraction: float = doc(
        0.0, "share of each batch drawn from the newest recent_steps steps (0: uniform); e.g. 0.5 after a deployment"
    )
    recent_steps: int = doc(10_000, "the window recent_fraction draws from, in agent steps")


@dataclass
class RealtimeConfig:
    """The asynchronous actor/learner (``realtime.*``): ``reverie run | learner | actor``."""

    transport: str = doc("ipc", "ipc (one machine) | tcp (across machines)")
    host: str = doc("127.0.0.1", "tcp: the learner's host (actors connect to it)")
    bind: str = doc("*", "tcp: the interface the learner binds")
    port: int = doc(5555, "tcp: experience port; weights use port+1, status port+2")
    ipc_dir: str = doc("", "ipc: folder of the socket files (default: one per logdir under /tmp)")
    actors: int = doc(1, "reverie run: number of actor processes")
    actor_id: str = doc("actor0", "reverie actor: this actor's id (distinct per actor)")
    rate_hz: float = doc(50.0, "actor control rate (ticks per second)")
    robot: bool = doc(False, "actor drives the MuJoCo robot stand-in paced in wall-clock time")
    robot_perturb: RandomizeConfig = field(default_factory=RandomizeConfig)
    initial_policy: str = doc(
        "", "reverie actor: exported policy (.onnx) to run until the learner's first weights arrive; '': random actions"
    )
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    safe_action: str = doc("hold", "action on a missed deadline or a bad observation: hold | zero")
    priority: int = doc(0, "SCHED_FIFO priority of the actor's control thread, 1-99 (needs CAP_SYS_NICE); 0: normal scheduling")
    chunk: int = doc(64, "steps per experience message")
    queue_size: int = doc(4096, "experience messages an actor keeps while the learner is away (then drops the oldest)")
    publish_every: int = doc(100, "learner updates between weight publications")
    status_every_s: float = doc(1.0, "seconds between status reports")
    curve: bool = doc(False, "authenticate and encrypt every socket with ZeroMQ CURVE")
    insecure: bool = doc(False, "allow tcp without CURVE: plaintext, and anyone who reaches the ports can inject experience or weights")
    seq_window: int = doc(4096, "without CURVE: a sequence-number jump beyond this many messages counts as a reset, not as missing")
    keys: str = doc("keys", "CURVE key folder from `reverie keys` (learner.key*, actor.key*)")


@dataclass
class Config:
    """The root config of ``reverie train``."""

    algo: AlgoConfig = field(default_factory=AlgoConfig)
    size: SizeConfig = field(default_factory=SizeConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    realtime: RealtimeConfig = field(default_factory=RealtimeConfig)
    exp: Any = doc(None, "experiment preset applied on top (exp=<name>)")
    obs: str = doc("vector", "observations: vector | pixels")
    steps: int = doc(100_000, "environment steps to train for (simulator steps, action repeat included)")
    train_ratio: float = doc(512.0, "replayed steps per agent step (batch_size × batch_length per update)")
    train_start: int = doc(1024, "agent steps collected before the first update")
    batch_size: int = doc(16, "sequences per update")
    batch_length: int = doc(64, "steps per sequence")
    seed: int = doc(0, "seed of everything")
    logdir: str = doc("logs/${env.name}/${algo.name}-${size.name}-seed${seed}", "output folder; rerunning into it resumes")
    device: str = doc("auto", "auto | cpu | cuda")
    # auto: the paper's bf16 compute on a GPU; fp32 on the CPU, where bf16 has not been shown to learn the same
    # to 100K steps (docs/benchmarks.md, "The CPU recipe").
    precision: str = doc("auto", "auto (bf16 on a GPU, fp32 on the CPU) | fp32 | bf16 (autocast of matrix products)")
    compile: bool = doc(True, "torch.compile the hot modules (same maths, ~3x faster; ~1 min to compile)")
    threads: int = doc(0, "CPU threads for torch (0: all cores; reverie run's learner: the cores its local actors leave)")
    reuse_freed_memory: bool = doc(
        True, "training on the CPU: large tensors reuse freed heap memory (glibc) instead of fresh kernel pages (V1 updates 1.37x faster)"
    )
    eval_every: int = doc(10_000, "environment steps between evaluations")
    eval_episodes: int = doc(5, "episodes per evaluation (deterministic policy)")
    report_every: int = doc(
        10_000, "environment steps between dream reports (open-loop predictions: logdir/dream/, TensorBoard, metrics); 0: never"
    )
    report_context: int = doc(5, "dream report: observed (context) steps before the open-loop prediction")
    report_horizon: int = doc(45, "dream report: imagined steps after the context")
    report_sequences: int = doc(4, "dream report: sequences shown (the most recent episodes in replay)")
    log_every: int = doc(2_000, "environment steps between metric lines")
    checkpoint_every: int = doc(10_000, "environment steps between checkpoints (taken at episode ends)")
    progress: bool = doc(True, "show a progress bar")


def register() -> None:
    """Registers the schema as ``base_config`` (config.yaml extends it)."""
    ConfigStore.instance().store(name="base_config", node=Config)
