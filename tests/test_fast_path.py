"""The fast paths compute the same losses and gradients as the plain ones (fp32, 1e-5)."""

import copy

import numpy as np
import torch
from conftest import fake_batch, vector_obs_space

from reverie.agent.dreamer import Dreamer
from reverie.envs.base import Space
from reverie.world_model.nets import MLP, LatentFeat


def test_mlp_on_latent_features_equals_dense():
    torch.manual_seed(0)
    mlp = MLP(16 + 6 * 5, 2, 32)
    feat = LatentFeat(torch.randn(7, 3, 16), torch.randint(0, 5, (7, 3, 6)), 5)
    fast = mlp(feat)
    grads_fast = torch.autograd.grad(fast.square().sum(), list(mlp.parameters()))
    plain = mlp(feat.dense())
    grads_plain = torch.autograd.grad(plain.square().sum(), list(mlp.parameters()))
    assert torch.allclose(fast, plain, atol=1e-5)
    for a, b in zip(grads_fast, grads_plain):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def tiny_agent():
    wm = dict(
        rssm=dict(deter=64, hidden=16, stoch=8, classes=4, blocks=4),
        encoder=dict(layers=2, units=16),
        decoder=dict(layers=2, units=16),
        reward_head=dict(layers=1, units=16),
        cont_head=dict(layers=1, units=16),
    )
    return Dreamer(
        obs_space=vector_obs_space(),
        act_space=Space(np.float32, (2,), -1, 1),
        obs_keys=["position"],
        world_model=wm,
        actor=dict(layers=2, units=16),
        critic=dict(layers=2, units=16),
        imag_horizon=5,
    )


batch = fake_batch


def test_agent_losses_and_gradients_fast_equal_plain():
    torch.manual_seed(0)
    fast = tiny_agent()
    plain = copy.deepcopy(fast)
    plain.fast_latents = False
    results = []
    for agent in (fast, plain):
        torch.manual_seed(1)
        losses, _, _ = agent.compute_losses(agent._to_tensors(batch()))
        total = sum(v.mean() for v in losses.values())
        grads = torch.autograd.grad(total, [p for n, p in agent.named_parameters() if not n.startswith("slow_critic.")], allow_unused=True)
        results.append(({k: v.detach() for k, v in losses.items()}, grads))
    (lf, gf), (lp, gp) = results
    for key in lf:
        assert torch.allclose(lf[key], lp[key], atol=1e-5, rtol=1e-5), key
    for a, b in zip(gf, gp):
        if a is None:
            assert b is None
        else:
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_compiled_agent_matches_eager():
    torch.manual_seed(0)
    eager = tiny_agent()
    compiled = copy.deepcopy(eager)
    compiled.compile()
    results = []
    for agent in (eager, compiled):
        torch.manual_seed(1)
        losses, _, _ = agent.compute_losses(agent._to_tensors(batch()))
        results.append({k: v.detach() for k, v in losses.items()})
    for key in results[0]:
        assert torch.allclose(results[0][key], results[1][key], atol=1e-4, rtol=1e-4), key
