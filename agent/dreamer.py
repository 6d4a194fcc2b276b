"""The Dreamer agent (V1, V2, V3 by options): a pure policy over an explicit carry, and one train step.

``init_state(B)`` returns the carry ``{deter [B, D], stoch [B, S, C],
prev_action [B, A]}``; ``policy(obs, carry)`` returns ``(action, carry)``;
``train(batch)`` performs one update from replayed sequences. Nothing
recurrent is stored on the agent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from reverie.envs.base import Space
from reverie.world_model.heads import scalar_head
from reverie.world_model.model import WorldModel
from reverie.world_model.nets import LatentFeat

from .behavior import Actor, SlowCritic
from .losses import critic_loss, policy_loss, total_loss, world_model_losses
from .optim import ClippedAdam, LaProp
from .returns import PercentileNormalizer, discount_weights, lambda_return

Carry = dict[str, torch.Tensor]

DEFAULT_LOSS_SCALES = {"rec": 1.0, "rew": 1.0, "con": 1.0, "dyn": 1.0, "rep": 0.1, "kl": 1.0, "policy": 1.0, "value": 1.0, "repval": 0.3}


class Dreamer(nn.Module):
    """World model, actor, critic, slow critic, return normaliser, optimiser.

    The defaults are DreamerV3; the V1 and V2 recipes are the presets in
    ``configs/algo/`` over the same options (see docs/algorithms.md).

    Args:
        obs_space: observation spaces of the environment.
        act_space: the action space (continuous ``(A,)`` or one-hot ``(n,)``).
        obs_keys: sensor keys the model uses.
        world_model: keyword arguments of :class:`WorldModel` (without the spaces).
        actor: keyword arguments of :class:`Actor` (without sizes).
        critic: keyword arguments of the critic's :class:`TwoHotHead`.
        imag_horizon: imagined steps per start state (15).
        lam: λ of the returns (0.95).
        horizon: discount horizon; γ = 1 − 1/horizon (333).
        entropy_scale: actor entropy bonus η (3e-4).
        slowreg: weight of the slow-critic regulariser (1.0).
        slow_rate: EMA rate of the slow critic (0.02).
        retnorm: keyword arguments of :class:`PercentileNormalizer`.
        loss_scales: weight of each loss term; ``rec`` applies to every
            reconstructed key.
        optimizer: ``kind`` (``laprop``: one :class:`LaProp` for everything,
            V3; ``adam``: :class:`ClippedAdam` with ``lr`` for the world
            model, ``actor_lr``, ``critic_lr``, ``eps``, ``clip``, ``wd``, V1/V2)
            and the optimiser's keyword arguments.
        replay_value: train the critic on replayed returns too (``repval``).
        actor_grad_mix: 0 trains the actor by REINFORCE (V3), 1 by
            backpropagating the returns through the imagined dynamics (V1), a
            value between mixes the two; None picks by action space (V2:
            REINFORCE for discrete actions, dynamics for continuous ones).
        discount_weight: ``inclusive`` weights imagined step t by
            ``Π_{i≤t} γ_i`` (V3), ``exclusive`` by ``Π_{i<t} γ_i`` (V1, V2).
        return_value: the returns bootstrap from the ``critic`` (V1, V3) or the
            ``slow`` critic (V2's target network).
        slow_every: updates between slow-critic refreshes (V3: 1 with
            ``slow_rate`` 0.02; V2: 100 with rate 1, a copy).
        return_norm: ``percentile`` (V3) or ``none`` (V1, V2).
        replay_context: start replayed sequences from the stored latents (V3)
            instead of zeros (V1, V2).
        expl_noise: std of Gaussian noise added to sampled actions when acting (V1: 0.3).
    """

    def __init__(
        self,
        *,
        obs_space: dict[str, Space],
        act_space: Space,
        obs_keys: list[str],
        world_model: dict[str, Any],
        actor: dict[str, Any],
        critic: dict[str, Any],
        imag_horizon: int = 15,
        lam: float = 0.95,
        horizon: float = 333.0,
        entropy_scale: float = 3e-4,
        slowreg: float = 1.0,
        slow_rate: float = 0.02,
        retnorm: dict[str, Any] | None = None,
        loss_scales: dict[str, float] | None = None,
        optimizer: dict[str, Any] | None = None,
        replay_value: bool = True,
        actor_grad_mix: float | None = 0.0,
        discount_weight: str = "inclusive",
        return_value: str = "critic",
        slow_every: int = 1,
        return_norm: str = "percentile",
        replay_context: bool = True,
        expl_noise: float = 0.0,
    ) -> None:
        super().__init__()
        self.act_dim = act_space.shape[0]
        self.discrete = act_space.discrete
        if actor_grad_mix is None:
            actor_grad_mix = 0.0 if self.discrete else 1.0
        _check_choice("discount_weight", discount_weight, ("inclusive", "exclusive"))
        _check_choice("return_value", return_value, ("critic", "slow"))
        _check_choice("return_norm", return_norm, ("percentile", "none"))
        if not 0.0 <= actor_grad_mix <= 1.0:
            raise ValueError(f"actor_grad_mix={actor_grad_mix} must lie in [0, 1] (0: REINFORCE, 1: dynamics backpropagation)")
        self.actor_grad_mix, self.discount_weight, self.return_value = float(actor_grad_mix), discount_weight, return_value
        self.return_norm, self.replay_context, self.expl_noise = return_norm, replay_context, expl_noise
        self.imag_horizon, self.lam, self.horizon = imag_horizon, lam, horizon
        self.entropy_scale, self.slowreg, self.replay_value = entropy_scale, slowreg, replay_value
        self.scales = {**DEFAULT_LOSS_SCALES, **(loss_scales or {})}
        #: Imagined latents in index form (gathered first layers). False runs the
        #: plain dense computation, which tests compare against.
        self.fast_latents = True
        self.wm = WorldModel(obs_space=obs_space, obs_keys=obs_keys, act_dim=self.act_dim, horizon=horizon, **world_model)
        if replay_context and not self.wm.rssm.categorical:
            raise ValueError("replay_context needs categorical latents (replay stores class indices); set replay_context=false")
        feat = self.wm.rssm.feat_dim
        self.actor = Actor(feat, self.act_dim, discrete=self.discrete, **actor)
        self.critic = scalar_head(feat, **critic)
        self.slow_critic = SlowCritic(self.critic, rate=slow_rate, every=slow_every)
        self.retnorm = PercentileNormalizer(**(retnorm or {}))
        self.optimizer = self._make_optimizer(dict(optimizer or {}))
        #: set to a :class:`~reverie.agent.distributed.DataParallel` when training on several ranks.
        self.parallel: Any = None

    def _make_optimizer(self, options: dict[str, Any]) -> LaProp | ClippedAdam:
        kind = options.pop("kind", "laprop")
        if kind == "laprop":
            trainable = [p for n, p in self.named_parameters() if not n.startswith("slow_critic.")]
            return LaProp(trainable, **options)
        if kind == "adam":
            lr, actor_lr, critic_lr = options.pop("lr"), options.pop("actor_lr"), options.pop("critic_lr")
            groups = {
                "model": (list(self.wm.parameters()), lr),
                "actor": (list(self.actor.parameters()), actor_lr),
                "critic": (list(self.critic.parameters()), critic_lr),
            }
            return ClippedAdam(groups, **options)
        raise ValueError(f"unknown optimizer kind {kind!r}; valid: laprop, adam")

    def compile(self) -> None:
        """``torch.compile`` the hot modules: the heads, the prior and the GRU core.

        The maths is unchanged; compilation fuses the elementwise work around
        the matrix products (about 3× faster updates on a CPU; a one-off
        compile of about a minute). Each distinct input shape compiles once.
        """
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        # A graph that fails to compile runs eagerly instead of stopping training.
        torch._dynamo.config.suppress_errors = True
        heads = [self.critic, self.slow_critic.net, self.wm.reward, self.wm.cont, self.actor]
        hot = [head.mlp for head in heads if head is not None] + [self.wm.rssm.prior_net]  # V1 has no continuation head
        # Instance attributes over the class's methods (what eager() hides again).
        for module in hot:
            module.__dict__["forward"] = torch.compile(module.forward, dynamic=False)
        self._compiled = hot
        self.wm.rssm.__dict__["core"] = torch.compile(self.wm.rssm.core, dynamic=False)

    @contextlib.contextmanager
    def eager(self) -> Iterator[None]:
        """Runs the uncompiled modules inside the block (tracing and ONNX export
        cannot go through ``torch.compile``); compiled ones are restored after."""
        # compile() set instance attributes over the class's methods: hide them.
        compiled = [(m, "forward") for m in getattr(self, "_compiled", [])] + [(self.wm.rssm, "core")]
        saved = [(m, name, m.__dict__.pop(name)) for m, name in compiled if name in m.__dict__]
        try:
            yield
        finally:
            for module, name, fn in saved:
                setattr(module, name, fn)

    @property
    def device(self) -> torch.device:
        """Where the agent's parameters live."""
        return next(self.parameters()).device

    # -------------------------------------------------------------- acting
    def init_state(self, batch: int) -> Carry:
        """Zero carry for ``batch`` environments."""
        state = self.wm.rssm.initial(batch, self.device)
        state["prev_action"] = torch.zeros(batch, self.act_dim, device=self.device)
        return state

    @torch.no_grad()
    def policy(self, obs: Mapping[str, np.ndarray | torch.Tensor], state: Carry, *, mode: bool = False) -> tuple[torch.Tensor, Carry]:
        """One control step for a batch of environments.

        Args:
            obs: ``{key: [B, ...]}``, with the model keys and ``is_first``.
            state: the carry from :meth:`init_state` or the previous call.
            mode: act deterministically (evaluation and deployment).

        Returns:
            The action ``[B, A]`` and the new carry.
        """
        tensors = self._to_tensors(obs)
        token = self.wm.encoder({k: tensors[k] for k in self.wm.obs_keys})
        latent, _ = self.wm.rssm.obs_step(state, state["prev_action"], token, tensors["is_first"], mode=mode)
        action = self.actor.sample(self.wm.rssm.features(latent), mode=mode)
        if self.expl_noise and not mode and not self.discrete:
            action = action + self.expl_noise * torch.randn_like(action)
        if not self.discrete:
            # The environment gets the clipped action, and replay stores it, so
            # the carry's previous action is the clipped one too.
            action = action.clamp(-1.0, 1.0)
        return action, {**latent, "prev_action": action}

    def _to_tensors(self, data: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in data.items():
            # Renderers may hand out views with negative strides; torch needs a copy then.
            t = torch.as_tensor(np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v)
            if self.device.type == "cuda" and t.device.type == "cpu":
                # Page-locked host memory: the copy to the GPU is a DMA that does not wait for the host (non_blocking).
                t = t.pin_memory()
            out[k] = t.to(self.device, non_blocking=True)
        return out

    # ------------------------------------------------------------ training
    def train_step(self, batch: Mapping[str, np.ndarray | torch.Tensor]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """One update of world model, actor and critic.

        Args:
            batch: replayed sequences ``{key: [B, T + 1, ...]}``: the model
                keys, ``reward``, ``is_first``, ``is_last``, ``is_terminal``,
                ``action`` (taken after each observation) and the stored
                latents ``deter``, ``stoch`` (class indices). Step 0 is
                context only: its latent starts the posterior and its action
                is the previous action of step 1.

        Returns:
            Scalar metrics, and refreshed latents ``{deter, stoch}`` for
            steps 1 … T to write back into replay.
        """
        data = self._to_tensors(batch)
        losses, metrics, post = self.compute_losses(data)
        total, scaled = total_loss(losses, self.scales)
        self.optimizer.zero_grad(set_to_none=True)
        if self.actor_grad_mix > 0:
            # The returns depend on the world model and critic through the
            # imagined rollout; only the actor may learn from them.
            actor_params = list(self.actor.parameters())
            actor_grads = torch.autograd.grad(scaled["policy"], actor_params, retain_graph=True)
            # The total of the other terms afresh: total − policy would send a zero gradient back through the
            # whole imagined rollout (+g and −g meet at the policy term), a second backward for nothing.
            total_loss({k: v for k, v in losses.items() if k != "policy"}, self.scales)[0].backward()
            for param, grad in zip(actor_params, actor_grads):
                param.grad = grad if param.grad is None else param.grad + grad
        else:
            total.backward()
        if self.parallel is not None:  # every rank applies the mean gradient of all ranks' batches
            self.parallel.average_gradients(p for p in self.parameters() if p.grad is not None)
        info = self.optimizer.step()
        if not info.get("skipped"):  # a non-finite gradient changed nothing: neither does the slow critic
            self.slow_critic.update(self.critic)
        metrics = {f"loss/{k}": v.mean() for k, v in losses.items()} | metrics
        out = {k: float(v.detach()) for k, v in metrics.items()}
        out["loss/total"] = float(total.detach())
        out["train/grad_norm"] = info.get("grad_norm", 0.0)
        out["train/lr"] = info.get("lr", 0.0)
        out["train/skipped_nonfinite"] = info.get("skipped", 0.0)
        out |= {f"train/{k}": v for k, v in info.items() if k.startswith("grad_norm/")}
        latents = {
            "deter": post["deter"].detach().to(torch.float16).cpu().numpy(),
            "stoch": self.wm.rssm.store_index(post["stoch"].detach()).to(torch.uint8).cpu().numpy(),
        }
        return out, latents

    def compute_losses(
        self, data: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """All loss terms (unscaled, named as in :mod:`reverie.agent.losses`) for one batch; see :meth:`train_step`."""
        rssm = self.wm.rssm
        obs = {k: v[:, 1:] for k, v in data.items() if k not in ("action", "deter", "stoch")}
        prev_actions = data["action"][:, :-1].float()
        B, T = obs["is_first"].shape
        if self.replay_context:
            start = {
                "deter": data["deter"][:, 0].float(),
                "stoch": nn.functional.one_hot(data["stoch"][:, 0].long(), rssm.classes).float(),
            }
        else:
            start = rssm.initial(B, prev_actions.device)

        # World model over the replayed sequence.
        losses, post, metrics = world_model_losses(self.wm, obs, prev_actions, start)
        feat = rssm.features(post)  # [B, T, F]

        # Imagination from every posterior state.
        starts = {
            "deter": post["deter"].detach().reshape(B * T, -1),
            "stoch": post["stoch"].detach().reshape(B * T, *rssm.stoch_shape),
        }
        dynamics = self.actor_grad_mix > 0
        img_feat: torch.Tensor | LatentFeat
        if dynamics or not rssm.categorical:
            # Dense rollout; with dynamics backpropagation its gradient reaches the actor.
            with torch.set_grad_enabled(dynamics):
                img_feat, actions = rssm.imagine_differentiable(starts, self.actor.sample, self.imag_horizon)
        else:
            # REINFORCE needs no gradient through the rollout: no autograd, latents in index form.
            with torch.no_grad():
                traj, actions = rssm.imagine(starts, self.actor.sample, self.imag_horizon, dense=not self.fast_latents)
                img_feat = rssm.latent_features(traj)  # [N, H+1, ...] in index form
                if not self.fast_latents:
                    img_feat = img_feat.dense()
        with torch.set_grad_enabled(dynamics):
            # The returns use rewards of states 1…H, the slow-critic target and
            # the actor loss states 0…H−1 only.
            reward = self.wm.reward.mean(self.wm.reward.logits(_time_slice(img_feat, slice(1, None))))
            reward = torch.cat([torch.zeros_like(reward[:, :1]), reward], 1)  # [N, H+1], entry 0 unused
            cont = self.wm.discount(img_feat)  # [N, H+1], includes the discount
        with torch.no_grad():
            slow_value = self.slow_critic.mean(_time_slice(img_feat, slice(None, -1))) if self.slowreg else None  # [N, H]
        critic_feat = img_feat
        if dynamics:
            assert isinstance(img_feat, torch.Tensor)  # dynamics backpropagation imagines densely (above)
            critic_feat = img_feat.detach()
        value_logits = self.critic.logits(critic_feat)
        if dynamics:
            # Bootstrap values with a gradient path through the imagined states (not into the critic).
            net = self.critic if self.return_value == "critic" else self.slow_critic.net
            value = net.mean(net.logits(img_feat))
        elif self.return_value == "critic":
            value = self.critic.mean(value_logits).detach()
        else:
            value = self.slow_critic.mean(img_feat)
        weight = discount_weights(cont, inclusive=self.discount_weight == "inclusive")  # reach probability × discount
        ret = lambda_return(torch.zeros_like(cont), 1 - cont, reward, value, 1.0, self.lam)  # [N, H]
        if self.return_norm == "percentile":
            # On several ranks the percentiles are those of all ranks' returns, as for one batch of them all.
            self.retnorm.update(ret if self.parallel is None else self.parallel.gather(ret))
            scale = self.retnorm.scale()
        else:
            scale = torch.ones((), device=ret.device)
        adv = (ret - value[:, :-1]) / scale
        actor_feat = _time_slice(img_feat, slice(None, -1))
        if dynamics:
            assert isinstance(actor_feat, torch.Tensor)  # (dense, as above)
            actor_feat, actions = actor_feat.detach(), actions.detach()
        if self.actor_grad_mix == 1.0 and not self.entropy_scale:
            # Pure dynamics backpropagation without an entropy bonus (V1): the loss needs neither log π nor the
            # entropy, so a second actor pass over every imagined state (~10 % of a V1 update's FLOPs) would feed
            # only the entropy metric; every 16th trajectory estimates that, without a graph.
            assert isinstance(actor_feat, torch.Tensor)  # dynamics backpropagation imagines densely
            with torch.no_grad():
                entropy = self.actor.logp_entropy(actor_feat[::16], actions[::16, :-1])[1]
            logp = entropy_term = torch.zeros_like(ret)
        else:
            logp, entropy = self.actor.logp_entropy(actor_feat, actions[:, :-1])
            entropy_term = entropy
        losses["policy"] = (
            policy_loss(logp, entropy_term, adv, weight[:, :-1], self.entropy_scale, returns=ret, mix=self.actor_grad_mix)
            .mean(1)
            .reshape(B, T)
        )
        losses["value"] = (
            critic_loss(self.critic, value_logits[:, :-1], ret, slow_value, weight[:, :-1], self.slowreg).mean(1).reshape(B, T)
        )

        # Critic on replayed returns, bootstrapped by the imagined returns.
        if self.replay_value:
            rep_logits = self.critic.logits(feat)
            slow_rep = self.slow_critic.mean(feat.detach())
            boot = ret[:, 0].reshape(B, T)
            rep_ret = lambda_return(obs["is_last"], obs["is_terminal"], obs["reward"].float(), boot, 1 - 1 / self.horizon, self.lam)
            live = (~obs["is_last"]).float()[:, :-1]
            losses["repval"] = critic_loss(self.critic, rep_logits[:, :-1], rep_ret, slow_rep[:, :-1], live, self.slowreg)

        with torch.no_grad():
            metrics |= {
                "train/ret_mean": ret.mean(),
                "train/ret_scale": scale,
                "train/value_mean": value.mean(),
                "train/adv_mag": adv.abs().mean(),
                "train/actor_entropy": entropy.mean(),
                "train/img_reward": reward.mean(),
                "train/img_cont": cont.mean(),
            }
            if self.return_norm == "percentile":
                # The normaliser's EMA percentiles (the official code's offset is lo, its scale max(1, hi − lo)).
                metrics |= {"train/ret_lo": self.retnorm.lo.clone(), "train/ret_hi": self.retnorm.hi.clone()}
        return losses, metrics, post


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


def _time_slice(feat: torch.Tensor | LatentFeat, sl: slice) -> torch.Tensor | LatentFeat:
    """``feat[:, sl]`` for dense or index-form features ``[N, T, ...]``."""
    if isinstance(feat, LatentFeat):
        return feat.map(lambda x: x[:, sl])
    return feat[:, sl]
