"""The LaProp + adaptive-clipping optimiser against a hand-written reference."""

import math

import torch

from reverie.agent.optim import LaProp


def reference(params, grads_seq, lr, warmup, agc=0.3, b1=0.9, b2=0.999, eps=1e-20):
    p = params.clone()
    nu = torch.zeros_like(p)
    mu = torch.zeros_like(p)
    for count, g in enumerate(grads_seq):
        t = count + 1
        upper = agc * max(1e-3, p.norm().item())
        g = g / max(1.0, g.norm().item() / upper)
        nu = b2 * nu + (1 - b2) * g * g
        u = g / (torch.sqrt(nu / (1 - b2**t)) + eps)
        mu = b1 * mu + (1 - b1) * u
        rate = lr * min(count, warmup) / warmup
        p = p - rate * mu / (1 - b1**t)
    return p


def test_matches_reference():
    torch.manual_seed(0)
    start = torch.randn(6)
    grads = [torch.randn(6) * s for s in (0.01, 10.0, 1.0, 0.1, 5.0)]
    param = torch.nn.Parameter(start.clone())
    opt = LaProp([param], lr=0.1, warmup=3)
    for g in grads:
        param.grad = g.clone()
        opt.step()
    assert torch.allclose(param.detach(), reference(start, grads, 0.1, 3), atol=1e-6)


def test_first_update_has_zero_learning_rate_and_count_is_saved():
    param = torch.nn.Parameter(torch.ones(3))
    opt = LaProp([param], lr=1.0, warmup=10)
    param.grad = torch.ones(3)
    info = opt.step()
    assert info["lr"] == 0.0 and torch.equal(param.detach(), torch.ones(3))
    param.grad = torch.ones(3)
    assert math.isclose(opt.step()["lr"], 0.1)
    state = opt.state_dict()
    other = LaProp([torch.nn.Parameter(torch.ones(3))], lr=1.0, warmup=10)
    other.load_state_dict(state)
    assert other.param_groups[0]["count"] == 2


def test_adaptive_clipping_bounds_the_update_ratio():
    param = torch.nn.Parameter(torch.full((4,), 2.0))  # norm 4
    opt = LaProp([param], lr=1.0, warmup=0, agc=0.3)
    param.grad = torch.full((4,), 1e6)
    opt.step()
    # After clipping the gradient has norm 0.3 · 4; LaProp normalises it to ±1 per element.
    assert torch.allclose(param.detach(), torch.full((4,), 1.0), atol=1e-5)


def test_nonfinite_gradient_step_changes_nothing():
    """A NaN/inf gradient is skipped: parameters, moments and step count stay; the next finite step matches the reference."""
    from reverie.agent.optim import ClippedAdam

    torch.manual_seed(0)
    start = torch.randn(6)
    grads = [torch.randn(6) for _ in range(3)]
    param = torch.nn.Parameter(start.clone())
    opt = LaProp([param], lr=0.1, warmup=2)
    for i, g in enumerate(grads):
        if i == 1:
            param.grad = torch.full((6,), float("nan"))
            assert opt.step()["skipped"] == 1.0
            param.grad = torch.tensor([0.0, float("inf"), 0, 0, 0, 0])
            assert opt.step()["skipped"] == 1.0
        param.grad = g.clone()
        assert opt.step()["skipped"] == 0.0
    assert opt.param_groups[0]["count"] == 3
    assert torch.allclose(param.detach(), reference(start, grads, 0.1, 2), atol=1e-6)

    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    adam = ClippedAdam({"model": ([a], 0.1), "actor": ([b], 0.1)})
    a.grad, b.grad = torch.ones(2), torch.tensor([float("nan"), 0.0])
    assert adam.step()["skipped"] == 1.0  # one bad group skips the whole step
    assert torch.equal(a.detach(), torch.ones(2)) and torch.equal(b.detach(), torch.ones(2)) and not adam.state
