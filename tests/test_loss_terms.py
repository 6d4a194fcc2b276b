"""Loss terms and distribution helpers that had no value test, against hand-derived formulas.

References: Hafner et al., DreamerV3 (Nature 2025) and danijar/dreamerv3 (``agent.py`` ``imag_loss``,
``configs.yaml``); DreamerV2's ``nets.py`` for the truncated-normal actor.
"""

import math

import numpy as np
import pytest
import torch
from conftest import TINY, fake_batch, vector_obs_space

import reverie.agent.dreamer as dreamer_module
from reverie.agent.builder import build_agent
from reverie.agent.losses import policy_loss, reconstruction_losses, total_loss, world_model_losses
from reverie.agent.returns import lambda_return
from reverie.cli.config import compose
from reverie.envs.base import Space
from reverie.world_model import dists

ACT_SPACE = Space(np.float32, (2,), -1, 1)


def agent_for(*extra):
    torch.manual_seed(0)
    return build_agent(compose([*TINY, "algo=dreamerv3", *extra]), vector_obs_space(), ACT_SPACE)


def hand_twohot_ce(logits, target, bins):
    """−Σ_k twohot(y)_k · log_softmax(logits)_k with the two bins around y found by a loop (y inside the range)."""
    logp = torch.log_softmax(logits.double().reshape(-1, logits.shape[-1]), -1)
    out = []
    for row, y in zip(logp, target.double().flatten().tolist()):
        k = max(i for i in range(len(bins)) if bins[i] <= y)
        w_hi = (y - bins[k]) / (bins[k + 1] - bins[k]) if k + 1 < len(bins) else 0.0
        out.append(-((1 - w_hi) * row[k] + w_hi * row[min(k + 1, len(bins) - 1)]))
    return torch.stack(out).reshape(target.shape)


# -------------------------------------------------------------- distributions


def test_unimix_probs_by_hand():
    # softmax(log [1, 2, 5]) = [1/8, 2/8, 5/8]; mixed: 0.9 · p + 0.1 / 3.
    logits = torch.log(torch.tensor([[1.0, 2.0, 5.0]], dtype=torch.float64))
    expected = torch.tensor([[0.9 / 8 + 0.1 / 3, 0.9 * 2 / 8 + 0.1 / 3, 0.9 * 5 / 8 + 0.1 / 3]], dtype=torch.float64)
    assert torch.allclose(dists.unimix_probs(logits, 0.1), expected, atol=1e-12)
    assert torch.allclose(dists.unimix_probs(logits, 0.0), torch.tensor([[1 / 8, 2 / 8, 5 / 8]], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(dists.unimix_logits(logits, 0.1).exp(), expected, atol=1e-12)


def test_mode_onehot_value_and_straight_through_gradient():
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.9], [3.0, 0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    out = dists.mode_onehot(logits)
    assert torch.allclose(out.detach(), torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64), atol=1e-12)
    w = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, 2.0, -1.0]], dtype=torch.float64)
    (out * w).sum().backward()
    p = torch.softmax(logits.detach(), -1)
    # The gradient is that of the probabilities: ∂/∂logits Σ w · softmax = p · (w − Σ p w).
    assert torch.allclose(logits.grad, p * (w - (p * w).sum(-1, keepdim=True)), atol=1e-12)


def test_categorical_entropy_by_hand():
    # H([½, ¼, ¼]) = ½ ln 2 + 2 · ¼ ln 4 = 1.5 ln 2; uniform over 3: ln 3; the entropy is over the last axis only.
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64))
    ent = dists.categorical_entropy(logits)
    assert ent.shape == (2,)
    assert torch.allclose(ent, torch.tensor([1.5 * math.log(2), math.log(3)], dtype=torch.float64), atol=1e-12)
    # Unnormalised logits give the same entropy (log_softmax inside).
    assert torch.allclose(dists.categorical_entropy(logits + 7.0), ent, atol=1e-12)


def test_trunc_normal_params_by_hand():
    # DreamerV2 nets.py: mean = tanh(x), std = 2 · sigmoid(x / 2) + min_std.
    mean, std = dists.trunc_normal_params(torch.tensor([0.0, 1.0, -30.0]), torch.tensor([0.0, 2.0, -60.0]), min_std=0.1)
    assert torch.allclose(mean, torch.tensor([0.0, math.tanh(1.0), -1.0]))
    assert torch.allclose(std, torch.tensor([1.0 + 0.1, 2 / (1 + math.exp(-1.0)) + 0.1, 0.1]), atol=1e-6)


# ----------------------------------------------------------------- world model


def test_reconstruction_symlog_vectors_and_images_by_hand():
    preds = {"pos": torch.tensor([[0.5, -1.0]]), "image": torch.full((1, 16, 16, 1), 0.5)}
    image = torch.zeros(1, 16, 16, 1, dtype=torch.uint8)
    image[0, 0, 0, 0], image[0, 1, 2, 0] = 255, 51
    obs = {"pos": torch.tensor([[math.e - 1, -3.0]]), "image": image}
    losses = reconstruction_losses(preds, obs, vector_keys={"pos"}, symlog_targets=True)
    assert set(losses) == {"rec/pos", "rec/image"}
    # Vectors: Σ (pred − symlog(x))², symlog(e − 1) = 1, symlog(−3) = −ln 4.
    assert losses["rec/pos"].item() == pytest.approx((0.5 - 1.0) ** 2 + (-1.0 + math.log(4.0)) ** 2, rel=1e-6)
    # Images: Σ over H, W, C of (pred − x / 255)²: 254 pixels at 0, one at 1, one at 0.2, prediction 0.5.
    assert losses["rec/image"].item() == pytest.approx(254 * 0.25 + 0.25 + 0.09, rel=1e-6)
    raw = reconstruction_losses({"pos": preds["pos"]}, obs, vector_keys={"pos"}, symlog_targets=False)
    assert raw["rec/pos"].item() == pytest.approx((0.5 - (math.e - 1)) ** 2 + (-1.0 + 3.0) ** 2, rel=1e-6)


def wm_inputs(B=2, T=6):
    rng = np.random.default_rng(1)
    obs = {
        "position": torch.tensor(rng.normal(size=(B, T, 5)), dtype=torch.float32),
        "reward": torch.tensor([[-4.0, -1.0, -0.3, 0.0, 0.7, 3.0], [2.0, 0.5, -2.0, 1.5, -0.1, 6.0]])[:B, :T],
        "is_first": torch.zeros(B, T, dtype=torch.bool),
        "is_terminal": torch.zeros(B, T, dtype=torch.bool),
    }
    obs["is_first"][:, 0] = True
    obs["is_terminal"][0, 2] = obs["is_terminal"][1, 5] = True
    return obs, torch.tensor(rng.uniform(-1, 1, (B, T, 2)), dtype=torch.float32)


@pytest.mark.parametrize("transform", ["tanh", "identity"])
def test_world_model_reward_continuation_and_entropy_terms(transform):
    # The reward head gets random outputs (outscale 1): a zero head has CE = ln 255 whatever the target.
    agent = agent_for(f"algo.reward_transform={transform}", "algo.reward_head.outscale=1.0")
    wm = agent.wm
    obs, prev_actions = wm_inputs()
    with torch.no_grad():
        losses, post, metrics = world_model_losses(wm, obs, prev_actions, wm.rssm.initial(2))
        feat = wm.rssm.features(post)
        reward_logits, cont_logit = wm.reward.logits(feat), wm.cont.logit(feat).double()
        prior_logits = wm.rssm.prior_logits(post["deter"])
    # Reward: two-hot CE to tanh(r) (V2 on Atari, clip_rewards: tanh) or to r.
    target = torch.tanh(obs["reward"]) if transform == "tanh" else obs["reward"]
    bins = wm.reward.bins.double().tolist()
    assert torch.allclose(losses["rew"].double(), hand_twohot_ce(reward_logits, target, bins), rtol=1e-5, atol=1e-6)
    # Continuation: target (1 − terminal) · (1 − 1/horizon) (dreamerv3 ``contdisc``), Bernoulli NLL.
    gamma = 1 - 1 / 333
    y = (1.0 - obs["is_terminal"].double()) * gamma
    assert y[0, 2] == 0 and y[0, 0] == pytest.approx(332 / 333)
    p = torch.sigmoid(cont_logit)
    assert torch.allclose(losses["con"].double(), -(y * torch.log(p) + (1 - y) * torch.log(1 - p)), atol=1e-5)
    # Entropy metrics: mean over [B, T] of Σ_latents H(0.99 · softmax + 0.01 / K).
    assert wm.rssm.unimix == 0.01
    for key, logits in (("wm/prior_ent", prior_logits), ("wm/post_ent", post["logits"])):
        q = 0.99 * torch.softmax(logits.double(), -1) + 0.01 / logits.shape[-1]
        assert metrics[key].item() == pytest.approx((-(q * q.log()).sum((-2, -1))).mean().item(), rel=1e-5)


def test_discount_with_a_continuation_head_is_the_prediction_itself():
    # The head is trained on (1 − terminal) · γ, so discount() = sigmoid(logit) must not multiply by γ again.
    wm = agent_for().wm
    gamma = 1 - 1 / 333
    with torch.no_grad():
        wm.cont.out.weight.zero_()
        wm.cont.out.bias.fill_(math.log(gamma / (1 - gamma)))
    d = wm.discount(torch.randn(3, 4, wm.rssm.feat_dim))
    assert d.shape == (3, 4) and torch.allclose(d.double(), torch.full((3, 4), gamma, dtype=torch.float64), atol=1e-6)


# --------------------------------------------------------------------- returns


def test_lambda_return_soft_continuation_by_hand():
    """Three steps, the imagination convention: disc = 1, term = 1 − cont with cont in (0, 1).

    R_1 = r_2 + c_2 · v_2 (the last step bootstraps from v_2 whatever λ);
    R_0 = r_1 + c_1 · ((1 − λ) v_1 + λ R_1).
    r = (·, 1, 2), v = (·, 3, 4), c = (·, 0.9, 0.5), λ = 0.5: R_1 = 2 + 0.5 · 4 = 4, R_0 = 1 + 0.9 · (1.5 + 2) = 4.15.
    """
    reward = torch.tensor([[9.0, 1.0, 2.0]], dtype=torch.float64)  # entry 0 is never used
    value = torch.tensor([[7.0, 3.0, 4.0]], dtype=torch.float64)
    cont = torch.tensor([[0.3, 0.9, 0.5]], dtype=torch.float64)
    zeros = torch.zeros_like(cont)
    ret = lambda_return(zeros, 1 - cont, reward, value, 1.0, 0.5)
    assert torch.allclose(ret, torch.tensor([[4.15, 4.0]], dtype=torch.float64), atol=1e-12)
    # last[1] cuts λ at step 1: R_0 = r_1 + c_1 · v_1 = 1 + 2.7.
    last = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(lambda_return(last, 1 - cont, reward, value, 1.0, 0.5), torch.tensor([[3.7, 4.0]], dtype=torch.float64))
    # A discount multiplies each continuation: γ = 0.8 → R_1 = 2 + 0.4 · 4 = 3.6, R_0 = 1 + 0.72 · (1.5 + 1.8) = 3.376.
    assert torch.allclose(lambda_return(zeros, 1 - cont, reward, value, 0.8, 0.5), torch.tensor([[3.376, 3.6]], dtype=torch.float64))


@pytest.mark.parametrize("retnorm", [["algo.retnorm.rate=1.0", "algo.retnorm.limit=1e-6"], []])
def test_advantage_is_return_minus_value_over_the_percentile_scale(monkeypatch, retnorm):
    """dreamerv3 imag_loss: adv = (ret − tarval[:, :-1]) / rscale with rscale = max(limit, EMA(P95) − EMA(P5)).

    A fresh normaliser (lo = hi = 0) after one update holds rate · P5 and rate · P95 of the returns.
    """
    captured = {}

    def spy_return(*args):
        ret = lambda_return(*args)
        captured.setdefault("boot", args[3].detach().double())
        captured.setdefault("ret", ret.detach().double())
        return ret

    def spy_policy(*args, **kwargs):
        captured["adv"] = args[2].detach().double()
        return policy_loss(*args, **kwargs)

    monkeypatch.setattr(dreamer_module, "lambda_return", spy_return)
    monkeypatch.setattr(dreamer_module, "policy_loss", spy_policy)
    agent = agent_for("algo.reward_head.outscale=1.0", "algo.critic.outscale=1.0", *retnorm)
    with torch.no_grad():
        agent.compute_losses(agent._to_tensors(fake_batch(deter=32, stoch=4)))
    ret, value, adv = captured["ret"], captured["boot"], captured["adv"]
    rate, limit = (1.0, 1e-6) if retnorm else (0.01, 1.0)
    lo, hi = (rate * np.percentile(ret.numpy(), q) for q in (5, 95))
    scale = max(limit, hi - lo)
    if retnorm:
        assert scale > 0.01  # the percentile spread, not the floor, sets the scale here
    assert value.abs().max() > 0 and (ret - value[:, :-1]).abs().max() > 0
    assert torch.allclose(adv, (ret - value[:, :-1]) / scale, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algo", ["dreamerv3", "dreamerv1"])
def test_named_terms_add_up_to_the_total_the_optimiser_sees(algo):
    """train_step's loss/total is Σ scale · mean(term) over exactly the named terms, rec/<key> under the rec scale."""
    torch.manual_seed(0)
    agent = build_agent(compose([*TINY, f"algo={algo}"]), vector_obs_space(), ACT_SPACE)
    batch = fake_batch(deter=32, stoch=4)
    torch.manual_seed(0)
    with torch.no_grad():
        losses, _, _ = agent.compute_losses(agent._to_tensors(batch))
    expected = {"rec/position", "rew", "policy", "value"} | ({"kl"} if algo == "dreamerv1" else {"dyn", "rep", "con", "repval"})
    assert set(losses) == expected
    total, scaled = total_loss(losses, agent.scales)
    by_hand = sum((agent.scales["rec"] if k.startswith("rec/") else agent.scales[k]) * v.mean() for k, v in losses.items())
    assert torch.allclose(total, by_hand) and torch.allclose(total, sum(scaled.values()))
    torch.manual_seed(0)
    metrics, _ = agent.train_step(batch)  # the same draws: the same terms, now with gradients
    assert metrics["loss/total"] == pytest.approx(float(total), rel=1e-5)
    assert {f"loss/{k}" for k in losses} <= set(metrics)


def test_the_return_normaliser_percentiles_are_logged_beside_the_scale():
    """train/ret_lo and train/ret_hi are the EMA percentiles after the update: scale = max(1, hi − lo); V1 has no normaliser."""
    torch.manual_seed(0)
    agent = build_agent(compose([*TINY, "algo=dreamerv3"]), vector_obs_space(), ACT_SPACE)
    agent.retnorm.lo.fill_(-1.0)  # as after earlier updates: a spread above the floor of 1
    agent.retnorm.hi.fill_(2.0)
    metrics, _ = agent.train_step(fake_batch(deter=32, stoch=4))
    lo, hi = float(agent.retnorm.lo), float(agent.retnorm.hi)
    assert -1.0 < lo < 0.0 < hi < 2.0 and hi - lo > 1.0  # one EMA step (rate 0.01) towards this batch's returns
    assert (metrics["train/ret_lo"], metrics["train/ret_hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert metrics["train/ret_scale"] == pytest.approx(max(1.0, hi - lo))
    v1 = build_agent(compose([*TINY, "algo=dreamerv1"]), vector_obs_space(), ACT_SPACE)
    assert "train/ret_lo" not in v1.train_step(fake_batch(deter=32, stoch=4))[0]


def test_dynamics_backpropagation_goes_back_through_the_imagined_rollout_once():
    """V1's returns reach the actor through the rollout; the other terms must not send a (cancelled) gradient back along it too."""
    torch.manual_seed(0)
    agent = build_agent(compose([*TINY, "algo=dreamerv1"]), vector_obs_space(), ACT_SPACE)
    rssm, passes = agent.wm.rssm, []
    imagine = rssm.imagine_differentiable

    def counted(*args, **kwargs):
        feat, actions = imagine(*args, **kwargs)
        feat.register_hook(lambda grad: passes.append(float(grad.abs().sum())))
        return feat, actions

    rssm.imagine_differentiable = counted
    agent.train_step(fake_batch(deter=32, stoch=4))
    assert len(passes) == 1 and passes[0] > 0  # only the actor's gradient, and a real one


def test_v1_runs_its_actor_once_over_the_imagined_states():
    """V1's loss needs no log π: the actor sees each imagined state in the rollout, and a 16th of them again for the entropy metric."""
    torch.manual_seed(0)
    agent = build_agent(compose([*TINY, "algo=dreamerv1"]), vector_obs_space(), ACT_SPACE)
    first = next(m for m in agent.actor.modules() if isinstance(m, torch.nn.Linear))
    rows: list[int] = []
    first.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].reshape(-1, inputs[0].shape[-1]).shape[0]))
    batch = fake_batch(deter=32, stoch=4)
    metrics, _ = agent.train_step(batch)
    starts, horizon = 3 * 8, agent.imag_horizon  # B × T start states; fake_batch holds T + 1 = 9 steps
    assert sum(rows) == starts * (horizon + 1) + math.ceil(starts / 16) * horizon
    assert math.isfinite(metrics["train/actor_entropy"]) and math.isfinite(metrics["loss/policy"])
