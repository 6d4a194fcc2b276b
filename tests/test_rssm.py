"""RSSM: sequence posterior equals step-by-step posterior, imagination shapes, resets."""

import torch

from reverie.world_model.nets import BlockLinear
from reverie.world_model.rssm import RSSM


def make_rssm(**kw):
    torch.manual_seed(0)
    args = dict(token_dim=12, act_dim=3, deter=64, hidden=16, stoch=8, classes=4, blocks=4)
    return RSSM(**{**args, **kw})


def test_observe_equals_step_by_step():
    rssm = make_rssm()
    B, T = 3, 7
    tokens, actions = torch.randn(B, T, 12), torch.randn(B, T, 3)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    is_first[1, 4] = True  # an episode boundary inside the sequence
    start = rssm.initial(B)
    torch.manual_seed(1)
    final, feats = rssm.observe(start, tokens, actions, is_first)
    torch.manual_seed(1)
    noise = torch.rand(B, T, 8)
    state = start
    for t in range(T):
        state, logits = rssm.obs_step(state, actions[:, t], tokens[:, t], is_first[:, t], noise[:, t])
        assert torch.allclose(feats["deter"][:, t], state["deter"], atol=1e-6)
        assert torch.equal(feats["stoch"][:, t].argmax(-1), state["stoch"].argmax(-1))
        assert torch.allclose(feats["logits"][:, t], logits, atol=1e-6)
    assert torch.allclose(final["deter"], state["deter"], atol=1e-6)


def test_is_first_resets_the_carry():
    rssm = make_rssm()
    token, action = torch.randn(2, 12), torch.randn(2, 3)
    busy = {"deter": torch.randn(2, 64), "stoch": torch.nn.functional.one_hot(torch.randint(0, 4, (2, 8)), 4).float()}
    noise = torch.rand(2, 8)
    first = torch.ones(2, dtype=torch.bool)
    a, _ = rssm.obs_step(busy, action, token, first, noise)
    b, _ = rssm.obs_step(rssm.initial(2), torch.zeros(2, 3), token, first, noise)
    assert torch.allclose(a["deter"], b["deter"]) and torch.allclose(a["stoch"], b["stoch"])


def test_imagine_shapes():
    rssm = make_rssm()
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
