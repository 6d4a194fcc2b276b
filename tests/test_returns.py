"""λ-returns, the percentile normaliser and the free-bits KL."""

import numpy as np
import torch

from reverie.agent.losses import kl_terms
from reverie.agent.returns import PercentileNormalizer, lambda_return
from reverie.world_model import dists


def reference_lambda_return(last, term, reward, boot, disc, lam):
    """R_t = r_{t+1} + γ_{t+1} ((1 − λ_{t+1}) v_{t+1} + λ_{t+1} R_{t+1}), R_{T−1} bootstraps from v."""
    N, T = reward.shape
    out = np.zeros((N, T - 1))
    for n in range(N):
        ret = boot[n, T - 1]
        for t in reversed(range(T - 1)):
            gamma = disc * (1 - term[n, t + 1])
            lmb = lam * (1 - last[n, t + 1])
            ret = reward[n, t + 1] + gamma * ((1 - lmb) * boot[n, t + 1] + lmb * ret)
            out[n, t] = ret
    return out


def test_lambda_return_matches_python_loop():
    rng = np.random.default_rng(0)
    N, T = 4, 16
    reward, boot = rng.normal(size=(N, T)), rng.normal(size=(N, T))
    term = rng.random((N, T)) < 0.1
    last = term | (rng.random((N, T)) < 0.1)
    got = lambda_return(*(torch.tensor(x) for x in (last, term, reward, boot)), 0.997, 0.95)
    assert np.allclose(got.numpy(), reference_lambda_return(last, term, reward, boot, 0.997, 0.95), atol=1e-10)


def test_lambda_return_special_cases():
    reward = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    value = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    zeros = torch.zeros_like(reward)
    # λ = 0: one-step TD targets r_{t+1} + γ v_{t+1}.
    assert torch.allclose(lambda_return(zeros, zeros, reward, value, 0.5, 0.0), torch.tensor([[3.5, 3.5, 3.5]]))
    # λ = 1, γ = 1: Monte-Carlo sum plus the final bootstrap.
    assert torch.allclose(lambda_return(zeros, zeros, reward, value, 1.0, 1.0), torch.tensor([[8.0, 7.0, 6.0]]))
    # A terminal state cuts the bootstrap.
    term = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    assert torch.allclose(lambda_return(zeros, term, reward, value, 1.0, 1.0), torch.tensor([[2.0, 1.0, 6.0]]))


def test_percentile_normalizer_ema_and_floor():
    norm = PercentileNormalizer(rate=0.5, limit=1.0)
    x = torch.arange(101, dtype=torch.float32)  # 5th percentile 5, 95th 95
    norm.update(x)
    assert torch.allclose(norm.lo, torch.tensor(2.5)) and torch.allclose(norm.hi, torch.tensor(47.5))
    assert torch.allclose(norm.scale(), torch.tensor(45.0))
    norm.update(x)
    assert torch.allclose(norm.lo, torch.tensor(3.75)) and torch.allclose(norm.hi, torch.tensor(71.25))
    small = PercentileNormalizer(rate=1.0, limit=1.0)
    small.update(torch.linspace(0, 0.1, 50))
    assert small.scale() == 1.0  # the floor keeps small returns from being blown up


def _categorical_kl(lhs, rhs):
    return dists.categorical_kl(dists.unimix_logits(lhs, 0.01), dists.unimix_logits(rhs, 0.01))


def kl_losses(post, prior, unimix, free_nats):
    assert unimix == 0.01
    terms = kl_terms(_categorical_kl, post, prior, mode="split", free_nats=free_nats)
    return terms["dyn"], terms["rep"]


def test_kl_free_bits_value_and_gradient():
    torch.manual_seed(0)
    post = torch.randn(8, 32, 4, requires_grad=True)
    prior = torch.randn(8, 32, 4, requires_grad=True)
    dyn, rep = kl_losses(post, prior, unimix=0.01, free_nats=1.0)
    kl = dists.categorical_kl(dists.unimix_logits(post, 0.01), dists.unimix_logits(prior, 0.01))
    assert torch.allclose(dyn, kl.clamp(min=1.0)) and torch.allclose(rep, kl.clamp(min=1.0))
    # dyn trains only the prior, rep only the posterior.
    post.grad = prior.grad = None
    dyn.sum().backward(retain_graph=True)
    assert post.grad is None or torch.count_nonzero(post.grad) == 0
    assert torch.count_nonzero(prior.grad) > 0
    prior.grad = None
    rep.sum().backward()
    assert torch.count_nonzero(post.grad) > 0
    assert prior.grad is None or torch.count_nonzero(prior.grad) == 0


def test_kl_below_free_bits_sends_no_gradient():
    post = torch.zeros(2, 32, 4, requires_grad=True)
    prior = (torch.zeros(2, 32, 4) + 0.01 * torch.randn(2, 32, 4)).requires_grad_()
    dyn, rep = kl_losses(post, prior, unimix=0.01, free_nats=1.0)
    assert torch.allclose(dyn, torch.ones(2)) and torch.allclose(rep, torch.ones(2))
    (dyn + rep).sum().backward()
    assert torch.count_nonzero(post.grad) == 0 and torch.count_nonzero(prior.grad) == 0


def test_a_non_finite_return_leaves_the_normaliser_as_it_was():
    from reverie.agent.returns import PercentileNormalizer

    norm = PercentileNormalizer(rate=0.5)
    norm.update(torch.linspace(0, 10, 101))
    lo, hi = norm.lo.clone(), norm.hi.clone()
    assert hi > lo
    nan = torch.linspace(0, 10, 101)
    nan[3] = float("nan")  # one NaN makes every quantile NaN
    infs = torch.linspace(0, 10, 101)
    infs[:20] = -float("inf")  # past the 5th percentile: lo would be −inf
    for bad in (nan, infs):
        norm.update(bad)
        assert torch.equal(norm.lo, lo) and torch.equal(norm.hi, hi)
    norm.update(torch.linspace(0, 10, 101))  # and it moves again once the returns are finite
    assert norm.hi > hi
