"""Actor and critic loss formulas."""

import math

import pytest
import torch

from reverie.agent.behavior import Actor, SlowCritic
from reverie.agent.losses import critic_loss, policy_loss
from reverie.world_model.heads import TwoHotHead


def test_policy_loss_formula_and_gradient_paths():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ent = torch.tensor([[0.5, 0.25]], requires_grad=True)
    adv = torch.tensor([[2.0, -1.0]], requires_grad=True)
    weight = torch.tensor([[1.0, 0.5]], requires_grad=True)
    loss = policy_loss(logp, ent, adv, weight, 0.1)
    expected = -torch.tensor([[1.0 * (-1 * 2 + 0.1 * 0.5), 0.5 * (-2 * -1 + 0.1 * 0.25)]])
    assert torch.allclose(loss, expected)
    loss.sum().backward()
    assert adv.grad is None and weight.grad is None  # stopped gradients
    assert torch.allclose(logp.grad, -torch.tensor([[2.0, -0.5]]))


def hand_twohot_ce(logits, target, bins):
    """−Σ_k twohot(target)_k · log_softmax(logits)_k, with the two-hot weights found by a loop over the bins."""
    logp = torch.log_softmax(logits.double(), -1)
    out = []
    for row, y in zip(logp, target.tolist()):
        k = max(i for i in range(len(bins)) if bins[i] <= y)  # the bin at or below y (targets stay inside the range)
        w_hi = (y - bins[k]) / (bins[k + 1] - bins[k])
        out.append(-((1 - w_hi) * row[k] + w_hi * row[k + 1]))
    return torch.stack(out)


@pytest.mark.parametrize("slowreg", [0.3, 0.0])
def test_critic_loss_is_weighted_twohot_ce_plus_slow_regulariser(slowreg):
    torch.manual_seed(0)
    critic = TwoHotHead(4, layers=1, units=8, outscale=1.0)
    logits = critic.logits(torch.randn(3, 4)).detach()
    target, slow = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 3.0, 0.25])
    weight = torch.tensor([1.0, 0.5, 0.0])
    got = critic_loss(critic, logits, target, slow, weight, slowreg)
    bins = critic.bins.double().tolist()
    # weight · (CE(return) + slowreg · CE(slow critic)); slowreg = 0 drops the slow term entirely.
    expected = weight.double() * (hand_twohot_ce(logits, target, bins) + slowreg * hand_twohot_ce(logits, slow, bins))
    assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-6)
    if slowreg == 0:
        assert torch.allclose(got.double(), weight.double() * hand_twohot_ce(logits, target, bins), rtol=1e-5, atol=1e-6)


def test_slow_critic_ema():
    critic = TwoHotHead(4, layers=1, units=8, outscale=1.0)
    slow = SlowCritic(critic, rate=0.02)
    before = [p.clone() for p in slow.net.parameters()]
    with torch.no_grad():
        for p in critic.parameters():
            p.add_(1.0)
    slow.update(critic)
    for b, s, c in zip(before, slow.net.parameters(), critic.parameters()):
        assert torch.allclose(s, 0.98 * b + 0.02 * c)


def test_actor_continuous_and_discrete():
    torch.manual_seed(0)
    actor = Actor(10, 3, discrete=False, units=16)
    feat = torch.randn(5, 10)
    mean, std = actor.params(feat)
    assert torch.all(mean.abs() <= 1) and torch.all((std >= 0.1) & (std <= 1.0))
    assert torch.equal(actor.sample(feat, mode=True), mean)
    noise = torch.randn(5, 3)
    assert torch.allclose(actor.sample(feat, noise), mean + std * noise)


def test_discrete_actor_logp_and_entropy_by_hand():
    """logπ(a) = log_softmax(raw)[a] and H = −Σ p log p of the actor's raw output (here without unimix)."""
    torch.manual_seed(0)
    actor = Actor(10, 4, discrete=True, units=16, outscale=1.0)
    feat = torch.randn(5, 10)
    action = actor.sample(feat).detach()
    assert torch.allclose(action.sum(-1), torch.ones(5))
    logp, ent = actor.logp_entropy(feat, action)
    raw = actor.out(actor.mlp(feat)).detach().double()
    p = torch.exp(raw - raw.logsumexp(-1, keepdim=True))
    index = action.argmax(-1)
    assert torch.allclose(logp.double(), torch.log(p[torch.arange(5), index]), atol=1e-6)
    assert torch.allclose(ent.double(), -(p * p.log()).sum(-1), atol=1e-6)
    assert ent.min() < math.log(4) - 1e-3  # the outputs are far enough from uniform that the check above bites


def test_discrete_actor_has_the_official_one_percent_unimix():
    """danijar/dreamerv3 configs.yaml: ``policy: {..., unimix: 0.01}``: every action keeps probability ≥ 0.01 / K."""
    from reverie.cli.config import compose

    assert compose(["algo=dreamerv3"]).algo.actor.unimix == 0.01
    assert compose(["algo=dreamerv2"]).algo.actor.unimix == 0.0  # V2's one-hot actor has no mix
    actor = Actor(3, 4, discrete=True, units=8, outscale=1.0, unimix=0.01)
    with torch.no_grad():
        actor.out.weight.zero_()
        actor.out.bias.copy_(torch.tensor([100.0, -100.0, -100.0, -100.0]))
    logits, _ = actor.params(torch.zeros(1, 3))
    assert torch.allclose(logits.exp(), torch.tensor([[0.99 + 0.0025, 0.0025, 0.0025, 0.0025]]), atol=1e-6)
