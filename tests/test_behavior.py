"""Actor and critic loss formulas."""

import torch

from reverie.agent.behavior import Actor, SlowCritic, critic_loss, policy_loss
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


def test_critic_loss_is_weighted_twohot_ce_plus_slow_regulariser():
    critic = TwoHotHead(4, layers=1, units=8, outscale=1.0)
    feat = torch.randn(3, 4)
    logits = critic.logits(feat)
    target, slow = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 3.0, 0.5])
    weight = torch.tensor([1.0, 0.5, 0.0])
    got = critic_loss(critic, logits, target, slow, weight, 1.0)
    expected = weight * (critic.loss(logits, target) + critic.loss(logits, slow))
    assert torch.allclose(got, expected)


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
    disc = Actor(10, 4, discrete=True, units=16)
    a = disc.sample(feat)
    assert torch.allclose(a.detach().sum(-1), torch.ones(5))
    logp, ent = disc.logp_entropy(feat, a.detach())
    assert torch.all(logp <= 0) and torch.all(ent <= torch.log(torch.tensor(4.0)) + 1e-6)
