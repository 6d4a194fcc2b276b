"""DreamerV1 and DreamerV2: the formulas that differ from V3, against hand-computed values."""

import math

import numpy as np
import pytest
import torch
from conftest import TINY, fake_batch, vector_obs_space
from scipy import stats

from reverie.agent.behavior import Actor, SlowCritic
from reverie.agent.builder import build_agent
from reverie.agent.losses import kl_terms, policy_loss
from reverie.agent.optim import ClippedAdam
from reverie.agent.returns import discount_weights
from reverie.cli.config import compose
from reverie.envs.base import Space
from reverie.world_model import dists
from reverie.world_model.heads import MSEHead, scalar_head
from reverie.world_model.rssm import RSSM

OBS_SPACE = vector_obs_space()
ACT_SPACE = Space(np.float32, (2,), -1, 1)


def batch():
    """A batch for the TINY sizes (deter 32, 4 latents of 4 classes)."""
    return fake_batch(deter=32, stoch=4)


def agent_for(algo, *extra):
    torch.manual_seed(0)
    return build_agent(compose([*TINY, f"algo={algo}", *extra]), OBS_SPACE, ACT_SPACE)


# ------------------------------------------------------------------ presets


def test_presets_compose_with_their_sizes_and_a_size_override():
    v1, v2, v3 = (compose([f"algo={a}"]) for a in ("dreamerv1", "dreamerv2", "dreamerv3"))
    assert (v1.size.name, v1.size.deter, v1.algo.rssm.stoch, v1.algo.rssm.latent) == ("dreamerv1", 200, 30, "gaussian")
    assert (v2.size.name, v2.size.deter, v2.size.classes, v2.algo.rssm.latent) == ("dreamerv2", 200, 32, "categorical")
    assert (v3.size.name, v3.algo.rssm.cell) == ("1m", "blockgru")
    # KL balancing 0.8 / 0.2 (V2); one joint KL with 3 free nats (V1).
    assert (v2.algo.loss_scales.dyn, v2.algo.loss_scales.rep, v2.algo.kl_mode) == (0.8, 0.2, "split")
    assert (v1.algo.kl_mode, v1.algo.free_nats, v1.algo.use_cont, v1.algo.loss_scales.con) == ("joint", 3.0, False, 10.0)
    assert v2.algo.use_cont  # V2's default pred_discount (its DMC config turns it off; see docs/algorithms.md)
    # The user's size wins over the preset's default size.
    assert compose(["algo=dreamerv2", "size=12m"]).size.name == "12m"


def test_unknown_algo_lists_the_valid_ones():
    from hydra.errors import HydraException

    with pytest.raises(HydraException, match=r"(?s)Available options in .algo.:\s+dreamerv1\s+dreamerv2\s+dreamerv3"):
        compose(["algo=dreamerv4"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["algo=dreamerv1", "algo.replay_context=true"], "replay_context needs categorical latents"),
        (["algo=dreamerv1", "algo.rssm.cell=blockgru"], "blockgru cell .* categorical latents"),
        (["algo=dreamerv2", "algo.actor.dist=beta"], "unknown actor dist 'beta'; valid: bounded_normal"),
        (["algo=dreamerv2", "algo.reward_head.dist=gauss"], "unknown head dist 'gauss'; valid: twohot, mse"),
        (["algo=dreamerv2", "algo.actor_grad_mix=2.0"], r"actor_grad_mix=2.0 must lie in \[0, 1\]"),
        (["algo=dreamerv1", "algo.optimizer.kind=sgd"], "unknown algo.optimizer.kind 'sgd'; valid: laprop, adam"),
    ],
)
def test_options_that_make_no_sense_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        agent_for(overrides[0].removeprefix("algo="), *overrides[1:])


def test_twohot_reward_in_v1_works_as_documented():
    agent = agent_for("dreamerv1", "algo.reward_head.dist=twohot")
    losses, _, _ = agent.compute_losses(agent._to_tensors(batch()))
    assert torch.isfinite(losses["rew"]).all() and agent.wm.reward.bins.numel() == 255


# ------------------------------------------------------------ distributions


def test_gaussian_kl_by_hand():
    # KL(N(1, 2²) ‖ N(0, 1)) = log(1/2) + (4 + 1)/2 − ½; KL(N(0, 1) ‖ N(0, 1)) = 0.
    kl = dists.gaussian_kl(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 1.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert kl.item() == pytest.approx(math.log(0.5) + 2.5 - 0.5, abs=1e-6)
    rng = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(4, 3, generator=rng), torch.randn(4, 3, generator=rng)
    s1, s2 = torch.rand(4, 3, generator=rng) + 0.5, torch.rand(4, 3, generator=rng) + 0.5
    reference = torch.distributions.kl_divergence(torch.distributions.Normal(m1, s1), torch.distributions.Normal(m2, s2)).sum(-1)
    assert torch.allclose(dists.gaussian_kl(m1, s1, m2, s2), reference, atol=1e-6)


def test_gaussian_latent_stats_sample_and_reparameterised_gradient():
    rssm = RSSM(token_dim=3, act_dim=2, deter=8, hidden=4, stoch=3, cell="gru", latent="gaussian", min_std=0.1, norm="none")
    raw = torch.tensor([[[0.5, 0.0], [-1.0, 2.0], [0.0, -30.0]]], requires_grad=True)  # [1, S, (mean, raw std)]
    mean, std = dists.gaussian_stats(raw, 0.1)
    assert torch.allclose(std, torch.tensor([[math.log(2) + 0.1, math.log1p(math.exp(2)) + 0.1, 0.1]]), atol=1e-6)
    noise = torch.tensor([[0.3, 0.6, 0.9, 0.2, 0.5, 0.7]])  # Box–Muller: u1 = [:S], u2 = [S:]
    eps = torch.sqrt(-2 * torch.log1p(-noise[:, :3])) * torch.cos(2 * math.pi * noise[:, 3:])
    z = rssm.sample(raw, noise)
    assert torch.allclose(z, mean + std * eps, atol=1e-6)
    z.sum().backward()
    assert torch.allclose(raw.grad[..., 0], torch.ones(1, 3))  # ∂z/∂mean = 1
    assert torch.allclose(raw.grad[..., 1], eps * torch.sigmoid(raw[..., 1].detach()), atol=1e-6)  # ∂z/∂raw std = ε · softplus'
    assert torch.equal(rssm.sample(raw, mode=True), mean)


def test_joint_kl_with_free_nats_on_the_batch_mean():
    torch.manual_seed(0)
    post, prior = torch.randn(6, 5, 2, requires_grad=True), torch.randn(6, 5, 2, requires_grad=True)
    kl = lambda a, b: dists.gaussian_kl(*dists.gaussian_stats(a, 0.1), *dists.gaussian_stats(b, 0.1))  # noqa: E731
    value = kl(post, prior).mean()
    terms = kl_terms(kl, post, prior, mode="joint", free_nats=0.0, free_avg=True)
    assert set(terms) == {"kl"} and torch.allclose(terms["kl"], value)
    # Both sides learn from the joint term.
    terms["kl"].backward()
    assert post.grad.abs().sum() > 0 and prior.grad.abs().sum() > 0
    # Free nats above the batch mean: a constant, no gradient (V1's 3 nats).
    post.grad = prior.grad = None
    clipped = kl_terms(kl, post, prior, mode="joint", free_nats=float(value.detach()) + 1.0, free_avg=True)["kl"]
    assert clipped.item() == pytest.approx(float(value.detach()) + 1.0)
    clipped.backward()
    assert post.grad is None or post.grad.abs().sum() == 0
    assert prior.grad is None or prior.grad.abs().sum() == 0


def test_kl_balancing_sends_0_8_of_the_gradient_to_the_prior_and_0_2_to_the_posterior():
    torch.manual_seed(0)
    post, prior = torch.randn(4, 8, 5, requires_grad=True), torch.randn(4, 8, 5, requires_grad=True)
    kl = lambda a, b: dists.categorical_kl(dists.unimix_logits(a, 0.0), dists.unimix_logits(b, 0.0))  # noqa: E731
    scales = compose(["algo=dreamerv2"]).algo.loss_scales
    terms = kl_terms(kl, post, prior, mode="split", free_nats=0.0, free_avg=True)
    balanced = scales.dyn * terms["dyn"] + scales.rep * terms["rep"]
    g_post, g_prior = torch.autograd.grad(balanced, [post, prior])
    plain = kl(post, prior).mean()
    p_post, p_prior = torch.autograd.grad(plain, [post, prior])
    assert torch.allclose(balanced, plain)  # the value is the plain KL (0.8 + 0.2 = 1)
    assert torch.allclose(g_prior, 0.8 * p_prior, atol=1e-7) and torch.allclose(g_post, 0.2 * p_post, atol=1e-7)


# -------------------------------------------------------------------- actors


def test_truncated_normal_against_scipy():
    mean, std = torch.tensor([0.3, -0.9, 0.0]), torch.tensor([0.5, 0.2, 2.0])
    a, b = (-1 - mean) / std, (1 - mean) / std
    ref = stats.truncnorm(a.numpy(), b.numpy(), loc=mean.numpy(), scale=std.numpy())
    action = torch.tensor([0.1, -0.95, 0.7])
    logp, entropy = dists.trunc_normal_logp_entropy(action, mean, std)
    assert np.allclose(logp.numpy(), ref.logpdf(action.numpy()), atol=1e-5)
    assert np.allclose(entropy.numpy(), ref.entropy(), atol=1e-5)
    # The reparameterised sample is the inverse CDF at Φ(ε).
    eps = torch.tensor([0.4, -1.2, 2.5])
    sample = dists.trunc_normal_sample(mean, std, eps)
    assert np.allclose(sample.numpy(), ref.ppf(stats.norm.cdf(eps.numpy())), atol=1e-5)
    m, s = mean.clone().requires_grad_(), std.clone().requires_grad_()
    dists.trunc_normal_sample(m, s, eps).sum().backward()
    assert (m.grad.abs() > 0).all() and (s.grad.abs() > 0).all()


def test_erfinv_matches_torch():
    x = torch.linspace(-0.999999, 0.999999, 20001)
    assert (dists.erfinv(x) - torch.erfinv(x)).abs().max() < 5e-6
    assert (dists.erfinv(x[9000:11000]) - torch.erfinv(x[9000:11000])).abs().max() < 5e-7


def test_tanh_normal_density_by_change_of_variables():
    mean, std = dists.tanh_normal_params(torch.tensor([0.0, 20.0]), torch.tensor([0.0, -3.0]), mean_scale=5.0, init_std=5.0, min_std=1e-4)
    assert torch.allclose(mean, torch.tensor([0.0, 5 * math.tanh(4.0)]))
    assert std[0].item() == pytest.approx(5.0 + 1e-4, abs=1e-5)  # softplus(0 + softplus⁻¹(5)) + min_std
    assert std[1].item() == pytest.approx(math.log1p(math.exp(-3.0 + math.log(math.expm1(5.0)))) + 1e-4, abs=1e-5)
    action = torch.tensor([0.5, 0.9])
    pre = torch.atanh(action)
    expected = torch.distributions.Normal(mean, std).log_prob(pre) - torch.log(1 - action.square())
    assert torch.allclose(dists.tanh_normal_logp(action, mean, std), expected, atol=1e-5)


@pytest.mark.parametrize("dist", ["trunc_normal", "tanh_normal"])
def test_v1_v2_actors_sample_inside_the_bounds_with_gradients(dist):
    torch.manual_seed(0)
    actor = Actor(6, 3, discrete=False, dist=dist, units=16, norm="none", act="elu", outscale=1.0)
    feat = torch.randn(200, 6)
    sample = actor.sample(feat)
    assert (sample.abs() <= 1).all()
    # The sample is reparameterised: every actor parameter (all layers, mean and std halves) gets a gradient.
    grads = torch.autograd.grad(sample.sum(), list(actor.parameters()))
    for (name, _), g in zip(actor.named_parameters(), grads):
        assert torch.isfinite(g).all() and g.abs().sum() > 0, name
    std_rows = actor.out.weight.shape[0] // 2
    assert grads[-2][std_rows:].abs().sum() > 0  # the std half of the output layer
    action = sample.detach().clamp(-0.99, 0.99)
    logp, entropy = actor.logp_entropy(feat, action)
    mean, std = (x.detach().double() for x in actor.params(feat))
    a = action.double()
    if dist == "tanh_normal":
        # Change of variables: log N(atanh a; μ, σ) − Σ log(1 − a²); the entropy estimate is −log π(a).
        pre = torch.atanh(a)
        expected = (torch.distributions.Normal(mean, std).log_prob(pre) - torch.log(1 - a.square())).sum(-1)
        assert torch.allclose(logp.double(), expected, atol=1e-4)
        assert torch.allclose(entropy.double(), -expected, atol=1e-4)
    else:
        lo, hi = (-1 - mean) / std, (1 - mean) / std
        ref = stats.truncnorm(lo.numpy(), hi.numpy(), loc=mean.numpy(), scale=std.numpy())
        assert np.allclose(logp.detach().numpy(), ref.logpdf(a.numpy()).sum(-1), atol=1e-4)
        assert np.allclose(entropy.detach().numpy(), ref.entropy().sum(-1), atol=1e-4)
    grads = torch.autograd.grad((logp + entropy).sum(), list(actor.parameters()))
    assert all(g.abs().sum() > 0 for g in grads)  # logπ and H reach every parameter as well


def test_policy_loss_dynamics_backprop_and_mix():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ent = torch.tensor([[0.5, 0.25]])
    adv = torch.tensor([[2.0, -1.0]])
    ret = torch.tensor([[3.0, 4.0]], requires_grad=True)
    weight = torch.tensor([[1.0, 0.5]])
    pure = policy_loss(logp, ent, adv, weight, 0.1, returns=ret, mix=1.0)
    assert torch.allclose(pure, -weight * (ret + 0.1 * ent))
    half = policy_loss(logp, ent, adv, weight, 0.0, returns=ret, mix=0.5)
    assert torch.allclose(half, -weight * (0.5 * logp * adv + 0.5 * ret))
    half.sum().backward()
    assert torch.allclose(ret.grad, -0.5 * weight) and torch.allclose(logp.grad, -0.5 * weight * adv)
    with pytest.raises(ValueError, match="needs the returns"):
        policy_loss(logp, ent, adv, weight, 0.0, mix=1.0)


def test_discount_weights_inclusive_and_exclusive():
    cont = torch.tensor([[0.9, 0.8, 0.5]])
    assert torch.allclose(discount_weights(cont, inclusive=True), torch.tensor([[0.9, 0.72, 0.36]]))
    assert torch.allclose(discount_weights(cont, inclusive=False), torch.tensor([[1.0, 0.9, 0.72]]))


def test_v1_fixed_discount_without_a_continuation_head():
    agent = agent_for("dreamerv1")
    assert agent.wm.cont is None
    d = agent.wm.discount(torch.zeros(4, agent.wm.rssm.feat_dim))
    assert torch.allclose(d, torch.full((4,), 0.99))


# ------------------------------------------------------ critics and heads


def test_target_critic_changes_only_every_100_updates():
    critic = MSEHead(4, layers=1, units=8)
    target = SlowCritic(critic, rate=1.0, every=100)
    changed_at = []
    for update in range(250):
        with torch.no_grad():
            for p in critic.parameters():
                p.add_(1.0)
        before = [p.clone() for p in target.net.parameters()]
        target.update(critic)
        if any(not torch.equal(b, a) for b, a in zip(before, target.net.parameters())):
            changed_at.append(update)
            assert all(torch.equal(a, c) for a, c in zip(target.net.parameters(), critic.parameters()))  # a copy
    assert changed_at == [0, 100, 200]
    cfg = compose(["algo=dreamerv2"]).algo
    assert (cfg.slow_every, cfg.slow_rate, cfg.return_value) == (100, 1.0, "slow")


def test_mse_head_and_scalar_head_choice():
    head = scalar_head(3, dist="mse", layers=1, units=4)
    logits = torch.tensor([[1.5], [-2.0]])
    assert torch.equal(head.mean(logits), torch.tensor([1.5, -2.0]))
    assert torch.allclose(head.loss(logits, torch.tensor([1.0, 1.0])), torch.tensor([0.25, 9.0]))


# ---------------------------------------------------------------- optimiser


def test_clipped_adam_clips_each_group_and_decays_weights():
    a, b = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(2))
    opt = ClippedAdam({"model": ([a], 0.1), "actor": ([b], 0.01)}, eps=1e-8, clip=1.0, wd=1e-3)
    a.grad = torch.full((4,), 10.0)  # norm 20: clipped to 1
    b.grad = torch.tensor([0.3, 0.4])  # norm 0.5: untouched
    info = opt.step()
    assert info["grad_norm/model"] == pytest.approx(20.0) and info["grad_norm/actor"] == pytest.approx(0.5)
    assert torch.allclose(a.grad, torch.full((4,), 0.5))
    # Adam's first step moves each weight by lr (the bias-corrected m/√v is ±1); decay is p·(1 − wd).
    assert torch.allclose(a.detach(), torch.full((4,), 1.0 * (1 - 1e-3) - 0.1), atol=1e-6)
    assert torch.allclose(b.detach(), torch.full((2,), 1.0 * (1 - 1e-3) - 0.01), atol=1e-6)


# ----------------------------------------------------- the V1 actor update


def test_v1_actor_learns_through_the_dynamics_and_leaves_the_world_model_untouched():
    # Only the policy loss is on: every other term is scaled to 0.
    zero = [f"algo.loss_scales.{k}=0.0" for k in ("rec", "rew", "con", "kl", "value")]
    agent = agent_for("dreamerv1", *zero, "algo.optimizer.clip=0.0")
    data = agent._to_tensors(batch())
    losses, _, _ = agent.compute_losses(data)
    policy = losses["policy"].mean()
    # The gradient reaches the actor only through the imagined dynamics (no REINFORCE term, no entropy in V1) ...
    assert agent.actor_grad_mix == 1.0 and agent.entropy_scale == 0.0
    actor_grads = torch.autograd.grad(policy, list(agent.actor.parameters()), retain_graph=True)
    assert sum(g.abs().sum() for g in actor_grads) > 0
    # ... and the same loss does depend on the world model (the path exists) ...
    wm_grads = torch.autograd.grad(policy, list(agent.wm.rssm.parameters()), allow_unused=True)
    assert sum(g.abs().sum() for g in wm_grads if g is not None) > 0
    # ... yet a train step changes the actor and nothing of the world model or critic.
    wm_before = {k: v.clone() for k, v in agent.wm.state_dict().items()}
    critic_before = {k: v.clone() for k, v in agent.critic.state_dict().items()}
    actor_before = {k: v.clone() for k, v in agent.actor.state_dict().items()}
    agent.train_step(batch())
    assert all(torch.equal(wm_before[k], v) for k, v in agent.wm.state_dict().items())
    assert all(torch.equal(critic_before[k], v) for k, v in agent.critic.state_dict().items())
    assert any(not torch.equal(actor_before[k], v) for k, v in agent.actor.state_dict().items())


def test_v2_discrete_actor_uses_reinforce_and_continuous_uses_dynamics():
    assert agent_for("dreamerv2").actor_grad_mix == 1.0
    torch.manual_seed(0)
    discrete = build_agent(compose([*TINY, "algo=dreamerv2"]), OBS_SPACE, Space(np.float32, (4,), 0, 1, discrete=True))
    assert discrete.actor_grad_mix == 0.0


@pytest.mark.parametrize("algo", ["dreamerv1", "dreamerv2"])
def test_train_step_is_finite_and_refreshes_latents(algo):
    agent = agent_for(algo)
    stoch = agent.wm.rssm.stoch
    metrics, latents = agent.train_step(batch())
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert latents["deter"].shape == (3, 8, 32) and latents["stoch"].shape == (3, 8, stoch)


def test_strided_cnn_shapes_of_v1_v2():
    from reverie.world_model.decoder import Decoder
    from reverie.world_model.encoder import Encoder

    enc = Encoder(vector_dims={}, image_channels={"image": 3}, depth=4, mults=(1, 2, 4, 8), kernel=4, cnn="strided", act="elu", norm="none")
    convs = [m for m in enc.cnn if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.stride, c.padding) for c in convs] == [((4, 4), (2, 2), (0, 0))] * 4
    assert enc.out_dim == 32 * 4  # 64 → 31 → 14 → 6 → 2: 2 · 2 · 8 · depth
    tokens = enc({"image": torch.zeros(2, 5, 64, 64, 3, dtype=torch.uint8)})
    assert tokens.shape == (2, 5, 128)
    dec = Decoder(feat_dim=10, vector_dims={}, image_channels={"image": 3}, depth=4, cnn="strided", cnn_act="relu", act="elu", norm="none")
    kernels = [m.kernel_size for m in dec.cnn if isinstance(m, torch.nn.ConvTranspose2d)]
    assert kernels == [(5, 5), (5, 5), (6, 6), (6, 6)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in dec.cnn) == 3
    pred = dec(torch.zeros(2, 5, 10))["image"]
    assert pred.shape == (2, 5, 64, 64, 3)
    with pytest.raises(ValueError, match="unknown cnn layout"):
        Encoder(vector_dims={}, image_channels={"image": 3}, cnn="dilated")


@pytest.mark.parametrize("algo", ["dreamerv1", "dreamerv2"])
def test_compile_and_eager_with_v1_v2_parts(algo):
    agent = agent_for(algo, "algo.use_cont=false")  # compile without a continuation head
    agent.compile()
    with agent.eager():
        assert "forward" not in agent.actor.mlp.__dict__
    assert "forward" in agent.actor.mlp.__dict__


def test_a_terminating_task_without_a_continuation_head_warns(tmp_path):
    from reverie.agent import train
    from reverie.cli.main import main

    train._warn_no_continuation_head.cache_clear()
    args = [
        *TINY,
        "algo=dreamerv1",
        "env=fake/vector",
        "+env.options.terminal=true",
        "+env.options.length=10",
        "steps=40",
        "eval_episodes=0",
    ]
    with pytest.warns(UserWarning, match="set algo.use_cont=true"):
        assert main(["train", *args, f"logdir={tmp_path / 'a'}"]) == 0
