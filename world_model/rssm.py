"""The recurrent state-space model (RSSM) shared by DreamerV1, V2 and V3.

State (the carry) is a dict: ``deter [N, D]`` (the recurrent state h) and
``stoch``, the stochastic latent z: ``[N, S, C]`` for S one-hot categoricals
of C classes (V2, V3) or ``[N, S]`` for a diagonal Gaussian (V1). Features
given to the heads are ``concat(deter, flatten(stoch))``.

Two named options select the version's parts:

- ``cell``: ``blockgru`` (V3: block-diagonal GRU over separately embedded
  deter, stoch and action), ``normgru`` (V2: one dense layer over
  ``[stoch, action]``, then a GRU with layer norm on its gates and update bias
  −1) or ``gru`` (V1: the same input layer, then a standard GRU cell).
- ``latent``: ``categorical`` (straight-through one-hot samples with a uniform
  mix) or ``gaussian`` (reparameterised samples, std ``softplus + min_std``).

The distribution parameters (``logits`` in the returned dicts) are raw
logits ``[..., S, C]`` for categoricals and ``(mean, raw std)`` stacked as
``[..., S, 2]`` for Gaussians.

References: danijar/dreamerv3 ``rssm.py`` (block-diagonal GRU, 1 % unimix,
free bits on the two KL terms), danijar/dreamerv2 ``common/nets.py`` (RSSM,
GRUCell with norm), danijar/dreamer ``models.py`` (RSSM of V1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import dists
from .nets import MLP, BlockLinear, LatentFeat, Linear, make_act, make_norm, onehot_matmul, trunc_normal_init_

State = dict[str, torch.Tensor]

CELLS = ("blockgru", "normgru", "gru")
LATENTS = ("categorical", "gaussian")


class NormGRUCell(nn.Module):
    """DreamerV2's GRU: one dense layer over ``[input, h]`` to the three gates,
    layer norm over them, and an update-gate bias of −1 (keeps h at the start).
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.linear = Linear(input_size + hidden_size, 3 * hidden_size, bias=False)
        self.norm = nn.LayerNorm(3 * hidden_size, eps=1e-3)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``[N, I], [N, H] → [N, H]``."""
        reset, cand, update = self.norm(self.linear(torch.cat([x, h], -1))).chunk(3, -1)
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update - 1.0)
        return update * cand + (1 - update) * h


class RSSM(nn.Module):
    """Recurrent state-space model.

    Args:
        token_dim: size of the encoder output per step.
        act_dim: size of the action vector.
        deter: recurrent state size D.
        hidden: width of the input, prior and posterior layers.
        stoch: number of latents S (categoricals, or Gaussian dimensions).
        classes: classes per latent C (categorical latents only).
        blocks: number of diagonal blocks of the GRU (D must divide by it; blockgru only).
        unimix: uniform mixture weight of the latent distributions.
        imglayers: hidden layers of the prior network.
        obslayers: hidden layers of the posterior network.
        dynlayers: block-diagonal hidden layers before the GRU gates (blockgru only).
        act: activation name.
        norm: norm name.
        cell: ``blockgru`` (V3), ``normgru`` (V2) or ``gru`` (V1).
        latent: ``categorical`` (V2, V3) or ``gaussian`` (V1).
        min_std: lower bound of the Gaussian latent's standard deviation.
    """

    def __init__(
        self,
        *,
        token_dim: int,
        act_dim: int,
        deter: int = 512,
        hidden: int = 64,
        stoch: int = 32,
        classes: int = 4,
        blocks: int = 8,
        unimix: float = 0.01,
        imglayers: int = 2,
        obslayers: int = 1,
        dynlayers: int = 1,
        act: str = "silu",
        norm: str = "rms",
        cell: str = "blockgru",
        latent: str = "categorical",
        min_std: float = 0.1,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown rssm cell {cell!r}; valid: {', '.join(CELLS)}")
        if latent not in LATENTS:
            raise ValueError(f"unknown rssm latent {latent!r}; valid: {', '.join(LATENTS)}")
        if cell == "blockgru" and latent != "categorical":
            raise ValueError("the blockgru cell (DreamerV3) works on categorical latents; use cell=gru or normgru for gaussian ones")
        if deter % blocks:
            raise ValueError(f"deter={deter} must be divisible by blocks={blocks}")
        self.cell_kind, self.latent = cell, latent
        self.categorical = latent == "categorical"
        self.classes = classes if self.categorical else 1
        self.deter, self.stoch, self.blocks = deter, stoch, blocks
        self.unimix, self.min_std = unimix, min_std
        self.stoch_dim = stoch * self.classes
        self.feat_dim = deter + self.stoch_dim
        #: Parameters per latent: C logits, or a mean and a raw std.
        self.stats_per_latent = self.classes if self.categorical else 2
        #: Uniform numbers one sample of z takes: one per categorical, two per Gaussian (Box–Muller).
        self.noise_dim = stoch if self.categorical else 2 * stoch

        def dense_in(size: int) -> nn.Sequential:
            return nn.Sequential(Linear(size, hidden), make_norm(norm, hidden), make_act(act))

        if dynlayers < 1 or obslayers < 1:
            raise ValueError("dynlayers and obslayers must be >= 1")
        if cell == "blockgru":
            self._build_block_core(act_dim, hidden, dynlayers, act, norm, dense_in)
        else:
            # V1/V2: h_t = GRU(dense([z_{t−1}, a_{t−1}]), h_{t−1}).
            self.img_in = dense_in(self.stoch_dim + act_dim)
            self.cell = nn.GRUCell(hidden, deter) if cell == "gru" else NormGRUCell(hidden, deter)
        self.prior_net = MLP(deter, imglayers, hidden, act=act, norm=norm)
        self.prior_out = Linear(self.prior_net.out_features, stoch * self.stats_per_latent)
        self.post_token = Linear(token_dim, hidden, bias=False)
        self.post_deter = Linear(deter, hidden)
        trunc_normal_init_(self.post_token.weight, deter + token_dim)
        trunc_normal_init_(self.post_deter.weight, deter + token_dim)
        self.post_net = nn.Sequential(make_norm(norm, hidden), make_act(act), MLP(hidden, obslayers - 1, hidden, act=act, norm=norm))
        self.post_out = Linear(hidden, stoch * self.stats_per_latent)

    def _build_block_core(
        self, act_dim: int, hidden: int, dynlayers: int, act: str, norm: str, dense_in: Callable[[int], nn.Sequential]
    ) -> None:
        """DreamerV3's core: deter, stoch and action embedded separately, then block-diagonal layers and GRU."""
        deter, blocks = self.deter, self.blocks

        # Inputs of the core: deter, stoch and action, each to `hidden` units.
        self.in_deter = dense_in(deter)
        self.in_stoch = dense_in(self.stoch_dim)
        self.in_action = dense_in(act_dim)
        # The official core concatenates deter's group g with the three input
        # embeddings (repeated per group) and applies a block-diagonal layer.
        # That equals BlockLinear(deter) + Linear(embeddings), computed here
        # without materialising the repeated input; both parts use the fan-in
        # of the official kernel (deter + blocks · 3 · hidden).
        fan_in = deter + blocks * 3 * hidden
        dyn_block = [BlockLinear(deter, deter, blocks) for _ in range(dynlayers)]
        self.dyn_block = nn.ModuleList(dyn_block)
        self.dyn_dense = Linear(3 * hidden, deter, bias=False)
        trunc_normal_init_(dyn_block[0].weight, fan_in)
        trunc_normal_init_(self.dyn_dense.weight, fan_in)
        self.dyn_norm = nn.ModuleList(make_norm(norm, deter) for _ in range(dynlayers))
        self.dyn_act = make_act(act)
        self.gru = BlockLinear(deter, 3 * deter, blocks)

    # ----------------------------------------------------------------- state
    @property
    def stoch_shape(self) -> tuple[int, ...]:
        """Shape of z per sample: ``(S, C)`` or ``(S,)``."""
        return (self.stoch, self.classes) if self.categorical else (self.stoch,)

    def initial(self, batch: int, device: torch.device | str = "cpu") -> State:
        """All-zero carry ``{deter [B, D], stoch [B, *stoch_shape]}``."""
        return {
            "deter": torch.zeros(batch, self.deter, device=device),
            "stoch": torch.zeros(batch, *self.stoch_shape, device=device),
        }

    def flat_stoch(self, stoch: torch.Tensor) -> torch.Tensor:
        """``[..., *stoch_shape] → [..., S·C]`` (a Gaussian z is already flat)."""
        return stoch.flatten(-2) if self.categorical else stoch

    def features(self, state: State) -> torch.Tensor:
        """``concat(deter, flatten(stoch))`` → ``[..., D + S·C]``."""
        return torch.cat([state["deter"], self.flat_stoch(state["stoch"])], -1)

    def store_index(self, stoch: torch.Tensor) -> torch.Tensor:
        """What replay keeps of z: class indices ``[..., S]`` (zeros for a Gaussian z, which is not kept)."""
        if self.categorical:
            return stoch.argmax(-1)
        return torch.zeros(stoch.shape, dtype=torch.long, device=stoch.device)

    # ------------------------------------------------------------------ core
    def embed_action(self, action: torch.Tensor) -> torch.Tensor:
        """Scales actions to at most unit magnitude, then embeds them; ``[..., A] → [..., hidden]``.

        V1/V2 cells take the scaled action itself (their input layer sees ``[z, a]``).
        """
        action = action / torch.clamp(action.abs(), min=1.0).detach()
        return action if self.cell_kind != "blockgru" else self.in_action(action)

    def embed_stoch(self, stoch: torch.Tensor) -> torch.Tensor:
        """Input embedding of z: one-hot ``[N, S, C]`` (dense) or class indices ``[N, S]`` (gathered)."""
        if stoch.dtype == torch.long:
            linear, rest = self.in_stoch[0], self.in_stoch[1:]
            assert isinstance(linear, nn.Linear), "dense_in() starts with a Linear"
            x = onehot_matmul(linear.weight, stoch, self.classes) + linear.bias
            return rest(x)
        return self.in_stoch(stoch.flatten(-2))

    def core(self, deter: torch.Tensor, stoch: torch.Tensor, action_emb: torch.Tensor) -> torch.Tensor:
        """One block-diagonal GRU step: ``h_t = f(h_{t-1}, z_{t-1}, a_{t-1})``.

        ``stoch`` is one-hot ``[N, S, C]`` or class indices ``[N, S]`` (or a Gaussian ``[N, S]``).
        """
        if self.cell_kind != "blockgru":
            if self.categorical and stoch.dtype == torch.long:
                stoch = torch.nn.functional.one_hot(stoch, self.classes).to(deter.dtype)
            x = self.img_in(torch.cat([self.flat_stoch(stoch), action_emb], -1))
            return self.cell(x, deter)
        emb = torch.cat([self.in_deter(deter), self.embed_stoch(stoch), action_emb], -1)
        x = self.dyn_block[0](deter) + self.dyn_dense(emb)
        x = self.dyn_act(self.dyn_norm[0](x))
        for block, norm in zip(self.dyn_block[1:], self.dyn_norm[1:]):
            x = self.dyn_act(norm(block(x)))
        gates = self.gru(x)  # [N, 3D], laid out per block as (reset, cand, update)
        n = gates.shape[0]
        gates = gates.reshape(n, self.blocks, 3, self.deter // self.blocks)
        reset, cand, update = gates.unbind(2)  # each [N, G, D/G]
        reset = torch.sigmoid(reset.reshape(n, self.deter))
        cand = torch.tanh(reset * cand.reshape(n, self.deter))
        update = torch.sigmoid(update.reshape(n, self.deter) - 1.0)
        return update * cand + (1 - update) * deter

    def prior_logits(self, deter: torch.Tensor) -> torch.Tensor:
        """Raw prior parameters ``[..., S, C]`` (or ``[..., S, 2]``) from the recurrent state."""
        x = self.prior_out(self.prior_net(deter))
        return x.reshape(*x.shape[:-1], self.stoch, self.stats_per_latent)

    def post_logits(self, deter: torch.Tensor, token_proj: torch.Tensor) -> torch.Tensor:
        """Raw posterior parameters ``[..., S, C]`` (or ``[..., S, 2]``); ``token_proj`` is ``post_token(tokens)``."""
        return self.post_logits_proj(self.post_deter(deter), token_proj)

    def post_logits_proj(self, deter_proj: torch.Tensor, token_proj: torch.Tensor) -> torch.Tensor:
        """:meth:`post_logits` from ``deter_proj = post_deter(deter)``, which the two-part policy step computes ahead of the observation."""
        x = self.post_out(self.post_net(deter_proj + token_proj))
        return x.reshape(*x.shape[:-1], self.stoch, self.stats_per_latent)

    def dist_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the unimixed latent distribution (categorical latents)."""
        return dists.unimix_logits(logits, self.unimix)

    def sample(self, logits: torch.Tensor, noise: torch.Tensor | None = None, mode: bool = False) -> torch.Tensor:
        """A sample (or the mode) of z from raw parameters.

        Categorical: straight-through one-hot of the unimixed distribution;
        ``noise`` holds one uniform per latent. Gaussian: ``mean + std · ε``
        (reparameterised); ``noise`` holds two uniforms per latent (Box–Muller).
        """
        if not self.categorical:
            mean, std = dists.gaussian_stats(logits, self.min_std)
            if mode:
                return mean
            eps = torch.randn_like(mean) if noise is None else dists.normal_from_uniform(noise)
            return mean + std * eps
        logp = self.dist_logits(logits)
        return dists.mode_onehot(logp) if mode else dists.sample_onehot(logp, noise)

    def kl(self, lhs: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        """KL(lhs ‖ rhs) between latent distributions given by raw parameters, summed over latents: ``[...]``."""
        if self.categorical:
            return dists.categorical_kl(self.dist_logits(lhs), self.dist_logits(rhs))
        return dists.gaussian_kl(*dists.gaussian_stats(lhs, self.min_std), *dists.gaussian_stats(rhs, self.min_std))

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """Entropy of the latent distribution, summed over latents: ``[...]``."""
        if self.categorical:
            return dists.categorical_entropy(self.dist_logits(logits)).sum(-1)
        return dists.normal_entropy(dists.gaussian_stats(logits, self.min_std)[1]).sum(-1)

    def _reset(self, stoch: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``stoch · keep`` with ``keep [N]`` broadcast over z's dimensions."""
        return stoch * keep.reshape(-1, *([1] * (stoch.dim() - 1)))

    # ----------------------------------------------------------------- steps
    def obs_step(
        self,
        state: State,
        prev_action: torch.Tensor,
        token: torch.Tensor,
        is_first: torch.Tensor,
        noise: torch.Tensor | None = None,
        mode: bool = False,
    ) -> tuple[State, torch.Tensor]:
        """One posterior step.

        Args:
            state: carry at t−1 (``deter [N, D]``, ``stoch [N, S, C]``).
            prev_action: ``[N, A]`` action taken at t−1.
            token: encoder output ``[N, E]`` at t.
            is_first: ``[N]`` bool; resets carry and action to zeros.
            noise: optional uniform noise ``[N, noise_dim]`` for sampling.
            mode: take the most likely latent instead of sampling.

        Returns:
            The new carry and the raw posterior logits ``[N, S, C]``.
        """
        keep = (~is_first).to(token.dtype)[:, None]
        deter = state["deter"] * keep
        stoch = self._reset(state["stoch"], keep[:, 0])
        deter = self.core(deter, stoch, self.embed_action(prev_action * keep))
        logits = self.post_logits(deter, self.post_token(token))
        stoch = self.sample(logits, noise, mode)
        return {"deter": deter, "stoch": stoch}, logits

    def img_step(self, state: State, action: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[State, torch.Tensor]:
        """One prior step (no observation): returns the new carry and prior logits."""
        deter = self.core(state["deter"], state["stoch"], self.embed_action(action))
        logits = self.prior_logits(deter)
        return {"deter": deter, "stoch": self.sample(logits, noise)}, logits

    def observe(
        self,
        state: State,
        tokens: torch.Tensor,
        prev_actions: torch.Tensor,
        is_first: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> tuple[State, dict[str, torch.Tensor]]:
        """Posterior over a sequence.

        Args:
            state: carry before the first step, ``[B, ...]``.
            tokens: ``[B, T, E]``.
            prev_actions: ``[B, T, A]``; entry t is the action taken before step t.
            is_first: ``[B, T]`` bool.
            noise: uniform numbers ``[B, T, noise_dim]`` for the samples;
                drawn from torch's global generator when None.

        Returns:
            The final carry and ``{deter [B, T, D], stoch [B, T, *stoch_shape], logits [B, T, S, C or 2]}``.
        """
        B, T = is_first.shape
        keep = (~is_first).to(tokens.dtype)  # [B, T]
        # Everything that does not depend on the recurrence is computed for
        # all steps at once.
        action_emb = self.embed_action(prev_actions * keep[..., None])  # [B, T, H]
        token_proj = self.post_token(tokens)  # [B, T, H]
        if noise is None:
            noise = torch.rand(B, T, self.noise_dim, device=tokens.device)
        deter, stoch = state["deter"], state["stoch"]
        deters, stochs, logits_all = [], [], []
        for t in range(T):
            k = keep[:, t, None]
            deter = self.core(deter * k, self._reset(stoch, k[:, 0]), action_emb[:, t])
            logits = self.post_logits(deter, token_proj[:, t])
            stoch = self.sample(logits, noise[:, t])
            deters.append(deter)
            stochs.append(stoch)
            logits_all.append(logits)
        feats = {
            "deter": torch.stack(deters, 1),
            "stoch": torch.stack(stochs, 1),
            "logits": torch.stack(logits_all, 1),
        }
        return {"deter": deter, "stoch": stoch}, feats

    @torch.no_grad()
    def imagine(
        self, start: State, policy: Callable[[torch.Tensor | LatentFeat], torch.Tensor], horizon: int, *, dense: bool = False
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Rolls the prior forward under a policy, without gradients.

        Latents stay in index form throughout (see :class:`LatentFeat`).

        Args:
            start: carry ``[N, ...]`` of the start states (one-hot ``stoch``).
            policy: function ``LatentFeat → action [N, A]``.
            horizon: number of imagined steps H.
            dense: compute with dense one-hot features instead (the plain
                path; same result up to rounding, for tests).

        Returns:
            ``{deter [N, H+1, D], index [N, H+1, S]}`` (the start state
            first) and the actions ``[N, H+1, A]``, where action t was taken in
            state t (the last one is sampled in the final state).
        """

        def feat(deter: torch.Tensor, index: torch.Tensor) -> torch.Tensor | LatentFeat:
            latent = LatentFeat(deter, index, self.classes)
            return latent.dense() if dense else latent

        def stoch(index: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(index, self.classes).float() if dense else index

        deter, index = start["deter"], start["stoch"].argmax(-1)
        deters, indices, actions = [deter], [index], []
        for _ in range(horizon):
            action = policy(feat(deter, index))
            deter = self.core(deter, stoch(index), self.embed_action(action))
            index = dists.sample_index(dists.unimix_probs(self.prior_logits(deter), self.unimix))
            actions.append(action)
            deters.append(deter)
            indices.append(index)
        actions.append(policy(feat(deter, index)))
        traj = {"deter": torch.stack(deters, 1), "index": torch.stack(indices, 1)}
        return traj, torch.stack(actions, 1)

    def imagine_differentiable(
        self, start: State, policy: Callable[[torch.Tensor], torch.Tensor], horizon: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rolls the prior forward with gradients through the samples (dynamics backpropagation, V1/V2).

        Args:
            start: carry ``[N, ...]`` of the start states (no gradient needed).
            policy: function ``features [N, F] → action [N, A]`` (reparameterised);
                it sees detached features, as in the official code, so the
                gradient reaches it only through its actions.
            horizon: number of imagined steps H.

        Returns:
            Dense features ``[N, H+1, F]`` (the start state first) and actions
            ``[N, H+1, A]`` taken in each state.
        """
        state = {"deter": start["deter"], "stoch": start["stoch"]}
        feats, actions = [self.features(state)], []
        for _ in range(horizon):
            action = policy(feats[-1].detach())
            state, _ = self.img_step(state, action)
            actions.append(action)
            feats.append(self.features(state))
        actions.append(policy(feats[-1].detach()))
        return torch.stack(feats, 1), torch.stack(actions, 1)

    def latent_features(self, traj: dict[str, torch.Tensor]) -> LatentFeat:
        """Features of an imagined trajectory in index form."""
        return LatentFeat(traj["deter"], traj["index"], self.classes)
