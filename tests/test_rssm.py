"""RSSM: sequence posterior equals step-by-step posterior, imagination shapes, resets."""

import pytest
import torch

from reverie.world_model.nets import BlockLinear
from reverie.world_model.rssm import RSSM


def make_rssm(**kw):
    torch.manual_seed(0)
    args = dict(token_dim=12, act_dim=3, deter=64, hidden=16, stoch=8, classes=4, blocks=4)
    return RSSM(**{**args, **kw})


CELLS = {
    "v3": {},
    "v2": {"cell": "normgru", "unimix": 0.0, "norm": "none", "act": "elu"},
    "v1": {"cell": "gru", "latent": "gaussian", "norm": "none", "act": "elu"},
}


@pytest.mark.parametrize("version", list(CELLS))
def test_observe_equals_step_by_step(version):
    rssm = make_rssm(**CELLS[version])
    B, T = 3, 7
    tokens, actions = torch.randn(B, T, 12), torch.randn(B, T, 3)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    is_first[1, 4] = True  # an episode boundary inside the sequence
    start = rssm.initial(B)
    torch.manual_seed(1)
    final, feats = rssm.observe(start, tokens, actions, is_first)
    torch.manual_seed(1)
    noise = torch.rand(B, T, rssm.noise_dim)
    state = start
    for t in range(T):
        state, logits = rssm.obs_step(state, actions[:, t], tokens[:, t], is_first[:, t], noise[:, t])
        assert torch.allclose(feats["deter"][:, t], state["deter"], atol=1e-6)
        if rssm.categorical:
            assert torch.equal(feats["stoch"][:, t].argmax(-1), state["stoch"].argmax(-1))
        else:
            assert torch.allclose(feats["stoch"][:, t], state["stoch"], atol=1e-5)
        assert torch.allclose(feats["logits"][:, t], logits, atol=1e-6)
    assert torch.allclose(final["deter"], state["deter"], atol=1e-6)


@pytest.mark.parametrize("version", list(CELLS))
def test_is_first_resets_the_carry(version):
    rssm = make_rssm(**CELLS[version])
    token, action = torch.randn(2, 12), torch.randn(2, 3)
    busy = {"deter": torch.randn(2, 64), "stoch": torch.randn(2, *rssm.stoch_shape)}
    noise = torch.rand(2, rssm.noise_dim)
    first = torch.ones(2, dtype=torch.bool)
    a, _ = rssm.obs_step(busy, action, token, first, noise)
    b, _ = rssm.obs_step(rssm.initial(2), torch.zeros(2, 3), token, first, noise)
    assert torch.allclose(a["deter"], b["deter"]) and torch.allclose(a["stoch"], b["stoch"])


@pytest.mark.parametrize("version", ["v3", "v2"])
def test_imagine_shapes(version):
    rssm = make_rssm(**CELLS[version])
    N, H = 5, 15
    start = {"deter": torch.randn(N, 64), "stoch": torch.nn.functional.one_hot(torch.randint(0, 4, (N, 8)), 4).float()}
    policy = lambda feat: torch.tanh(feat[:, :3])
    traj, actions = rssm.imagine(start, lambda f: policy(f.dense()), H)
    assert traj["deter"].shape == (N, H + 1, 64)
    assert traj["index"].shape == (N, H + 1, 8)
    assert actions.shape == (N, H + 1, 3)
    assert torch.equal(traj["deter"][:, 0], start["deter"])
    assert rssm.latent_features(traj).dense().shape == (N, H + 1, 64 + 32)


def test_block_linear_is_block_diagonal():
    layer = BlockLinear(8, 12, blocks=4)
    x = torch.zeros(1, 8)
    x[0, 2:4] = torch.randn(2)  # only block 1 is non-zero
    out = layer(x) - layer.bias
    assert torch.count_nonzero(out[0, :3]) == 0 and torch.count_nonzero(out[0, 6:]) == 0
    expected = x[0, 2:4] @ layer.weight[1]
    assert torch.allclose(out[0, 3:6], expected)


@pytest.mark.parametrize("version", list(CELLS))
def test_differentiable_imagination_matches_prior_steps_and_passes_gradients(version):
    rssm = make_rssm(**CELLS[version])
    N, H = 4, 5
    start = {"deter": torch.randn(N, 64), "stoch": torch.randn(N, *rssm.stoch_shape)}
    weight = torch.randn(rssm.feat_dim, 3, requires_grad=True)  # a stand-in policy with parameters
    policy = lambda feat: torch.tanh(feat @ weight)  # noqa: E731
    feats, actions = rssm.imagine_differentiable(start, policy, H)
    assert feats.shape == (N, H + 1, rssm.feat_dim) and actions.shape == (N, H + 1, 3)
    assert torch.allclose(feats[:, 0], rssm.features(start))
    # The policy sees detached features: its gradient comes only through the actions it took.
    (grad,) = torch.autograd.grad(feats[:, -1].sum(), [weight])
    assert grad.abs().sum() > 0
