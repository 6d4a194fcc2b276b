"""The recurrent state-space model (RSSM) of DreamerV3.

State (the carry) is a dict: ``deter [N, D]`` (the recurrent state h) and
``stoch [N, S, C]`` (S one-hot categoricals of C classes, z). Features given to
the heads are ``concat(deter, flatten(stoch))`` of size D + S·C.

Reference: danijar/dreamerv3 ``rssm.py`` (block-diagonal GRU, 1 % unimix,
straight-through sampling, free bits on the two KL terms).
"""

from __future__ import annotations

import torch
from torch import nn

from . import dists
from .nets import MLP, BlockLinear, LatentFeat, Linear, make_act, make_norm, onehot_matmul, trunc_normal_init_

State = dict[str, torch.Tensor]


class RSSM(nn.Module):
    """Recurrent state-space model with categorical latents.

    Args:
        token_dim: size of the encoder output per step.
        act_dim: size of the action vector.
        deter: recurrent state size D.
        hidden: width of the input, prior and posterior layers.
        stoch: number of categorical latents S.
        classes: classes per latent C.
        blocks: number of diagonal blocks of the GRU (D must divide by it).
        unimix: uniform mixture weight of the latent distributions.
        imglayers: hidden layers of the prior network.
        obslayers: hidden layers of the posterior network.
        dynlayers: block-diagonal hidden layers before the GRU gates.
        act: activation name.
        norm: norm name.
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
    ) -> None:
        super().__init__()
        if deter % blocks:
            raise ValueError(f"deter={deter} must be divisible by blocks={blocks}")
        self.deter, self.stoch, self.classes, self.blocks = deter, stoch, classes, blocks
        self.unimix = unimix
        self.feat_dim = deter + stoch * classes

        def dense_in(size: int) -> nn.Sequential:
            return nn.Sequential(Linear(size, hidden), make_norm(norm, hidden), make_act(act))

        # Inputs of the core: deter, stoch and action, each to `hidden` units.
        self.in_deter = dense_in(deter)
        self.in_stoch = dense_in(stoch * classes)
        self.in_action = dense_in(act_dim)
        # The official core concatenates deter's group g with the three input
        # embeddings (repeated per group) and applies a block-diagonal layer.
        # That equals BlockLinear(deter) + Linear(embeddings), computed here
        # without materialising the repeated input; both parts use the fan-in
        # of the official kernel (deter + blocks · 3 · hidden).
        if dynlayers < 1 or obslayers < 1:
            raise ValueError("dynlayers and obslayers must be >= 1")
        fan_in = deter + blocks * 3 * hidden
        self.dyn_block = nn.ModuleList(BlockLinear(deter, deter, blocks) for _ in range(dynlayers))
        self.dyn_dense = Linear(3 * hidden, deter, bias=False)
        trunc_normal_init_(self.dyn_block[0].weight, fan_in)
        trunc_normal_init_(self.dyn_dense.weight, fan_in)
        self.dyn_norm = nn.ModuleList(make_norm(norm, deter) for _ in range(dynlayers))
        self.dyn_act = make_act(act)
        self.gru = BlockLinear(deter, 3 * deter, blocks)
        self.prior_net = MLP(deter, imglayers, hidden, act=act, norm=norm)
        self.prior_out = Linear(self.prior_net.out_features, stoch * classes)
        self.post_token = Linear(token_dim, hidden, bias=False)
        self.post_deter = Linear(deter, hidden)
        trunc_normal_init_(self.post_token.weight, deter + token_dim)
        trunc_normal_init_(self.post_deter.weight, deter + token_dim)
        self.post_net = nn.Sequential(make_norm(norm, hidden), make_act(act), MLP(hidden, obslayers - 1, hidden, act=act, norm=norm))
        self.post_out = Linear(hidden, stoch * classes)

    # ----------------------------------------------------------------- state
    def initial(self, batch: int, device: torch.device | str = "cpu") -> State:
        """All-zero carry ``{deter [B, D], stoch [B, S, C]}``."""
        return {
            "deter": torch.zeros(batch, self.deter, device=device),
            "stoch": torch.zeros(batch, self.stoch, self.classes, device=device),
        }

    def features(self, state: State) -> torch.Tensor:
        """``concat(deter, flatten(stoch))`` → ``[..., D + S·C]``."""
        stoch = state["stoch"]
        return torch.cat([state["deter"], stoch.reshape(*stoch.shape[:-2], -1)], -1)

    # ------------------------------------------------------------------ core
    def embed_action(self, action: torch.Tensor) -> torch.Tensor:
        """Scales actions to at most unit magnitude, then embeds them; ``[..., A] → [..., hidden]``."""
        action = action / torch.clamp(action.abs(), min=1.0).detach()
        return self.in_action(action)

    def embed_stoch(self, stoch: torch.Tensor) -> torch.Tensor:
        """Input embedding of z: one-hot ``[N, S, C]`` (dense) or class indices ``[N, S]`` (gathered)."""
        if stoch.dtype == torch.long:
            linear, rest = self.in_stoch[0], self.in_stoch[1:]
            x = onehot_matmul(linear.weight, stoch, self.classes) + linear.bias
            return rest(x)
        return self.in_stoch(stoch.flatten(-2))

    def core(self, deter: torch.Tensor, stoch: torch.Tensor, action_emb: torch.Tensor) -> torch.Tensor:
        """One block-diagonal GRU step: ``h_t = f(h_{t-1}, z_{t-1}, a_{t-1})``.

        ``stoch`` is one-hot ``[N, S, C]`` or class indices ``[N, S]``.
        """
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
        """Raw prior logits ``[..., S, C]`` from the recurrent state."""
        x = self.prior_out(self.prior_net(deter))
        return x.reshape(*x.shape[:-1], self.stoch, self.classes)

    def post_logits(self, deter: torch.Tensor, token_proj: torch.Tensor) -> torch.Tensor:
        """Raw posterior logits ``[..., S, C]``; ``token_proj`` is ``post_token(tokens)``."""
        x = self.post_out(self.post_net(self.post_deter(deter) + token_proj))
        return x.reshape(*x.shape[:-1], self.stoch, self.classes)

    def dist_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the unimixed latent distribution."""
        return dists.unimix_logits(logits, self.unimix)

    def sample(self, logits: torch.Tensor, noise: torch.Tensor | None = None, mode: bool = False) -> torch.Tensor:
        """Straight-through one-hot sample (or mode) of the unimixed distribution."""
        logp = self.dist_logits(logits)
        return dists.mode_onehot(logp) if mode else dists.sample_onehot(logp, noise)

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
            noise: optional uniform noise ``[N, S]`` for sampling (one per latent).
            mode: take the most likely latent instead of sampling.

        Returns:
            The new carry and the raw posterior logits ``[N, S, C]``.
        """
        keep = (~is_first).to(token.dtype)[:, None]
        deter = state["deter"] * keep
        stoch = state["stoch"] * keep[..., None]
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
        self, state: State, tokens: torch.Tensor, prev_actions: torch.Tensor, is_first: torch.Tensor
    ) -> tuple[State, dict[str, torch.Tensor]]:
        """Posterior over a sequence.

        Args:
            state: carry before the first step, ``[B, ...]``.
            tokens: ``[B, T, E]``.
            prev_actions: ``[B, T, A]``; entry t is the action taken before step t.
            is_first: ``[B, T]`` bool.

        Returns:
            The final carry and ``{deter [B, T, D], stoch [B, T, S, C], logits [B, T, S, C]}``.
        """
        B, T = is_first.shape
        keep = (~is_first).to(tokens.dtype)  # [B, T]
        # Everything that does not depend on the recurrence is computed for
        # all steps at once.
        action_emb = self.embed_action(prev_actions * keep[..., None])  # [B, T, H]
        token_proj = self.post_token(tokens)  # [B, T, H]
        noise = torch.rand(B, T, self.stoch, device=tokens.device)
        deter, stoch = state["deter"], state["stoch"]
        deters, stochs, logits_all = [], [], []
        for t in range(T):
            k = keep[:, t, None]
            deter = self.core(deter * k, stoch * k[..., None], action_emb[:, t])
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
    def imagine(self, start: State, policy, horizon: int, *, dense: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
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

    def latent_features(self, traj: dict[str, torch.Tensor]) -> LatentFeat:
        """Features of an imagined trajectory in index form."""
        return LatentFeat(traj["deter"], traj["index"], self.classes)


def kl_losses(
    post_logits: torch.Tensor, prior_logits: torch.Tensor, *, unimix: float, free_nats: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """DreamerV3's dynamics and representation KL terms with free bits.

    dyn = max(free, KL(sg(post) ‖ prior)) trains the prior;
    rep = max(free, KL(post ‖ sg(prior))) trains the posterior. Below the
    threshold the clipped term is constant, so it sends no gradient.

    Args:
        post_logits, prior_logits: raw logits ``[..., S, C]``.

    Returns:
        ``(dyn, rep)``, each ``[...]``.
    """
    post = dists.unimix_logits(post_logits, unimix)
    prior = dists.unimix_logits(prior_logits, unimix)
    dyn = dists.categorical_kl(post.detach(), prior)
    rep = dists.categorical_kl(post, prior.detach())
    if free_nats:
        dyn = torch.clamp(dyn, min=free_nats)
        rep = torch.clamp(rep, min=free_nats)
    return dyn, rep
