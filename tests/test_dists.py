"""DreamerV3's transforms and distributions against hand-computed values."""

import math

import pytest
import torch

from reverie.agent.optim import LaProp
from reverie.world_model import dists
from reverie.world_model.heads import TwoHotHead


def test_symlog_values_and_round_trip():
    x = torch.tensor([-1000.0, -math.e + 1, -1.0, 0.0, 0.5, 1.0, 1e4])
    expected = torch.tensor([-math.log(1001.0), -1.0, -math.log(2.0), 0.0, math.log(1.5), math.log(2.0), math.log(10001.0)])
    assert torch.allclose(dists.symlog(x), expected, atol=1e-6)
    assert torch.allclose(dists.symexp(dists.symlog(x)), x, rtol=1e-5)


def test_symexp_bins_are_symmetric_and_span_20_in_symlog():
    bins = dists.symexp_bins(255)
    assert bins.shape == (255,)
    assert bins[127] == 0.0
    assert torch.equal(bins, -bins.flip(0))
    assert torch.allclose(dists.symlog(bins[[0, -1]]), torch.tensor([-20.0, 20.0]))
    assert torch.all(bins[1:] > bins[:-1])
    # Evenly spaced in symlog space: steps of 40 / 254 (float32 symlog∘symexp loses ~1e-6 relative at |x| = 20).
    steps = torch.diff(dists.symlog(bins.double()))
    assert torch.allclose(steps, torch.full_like(steps, 40.0 / 254), atol=1e-5)


def test_twohot_encode_by_hand():
    bins = torch.tensor([-2.0, 0.0, 1.0, 3.0])
    w = dists.twohot_encode(torch.tensor([0.25, 3.0, -5.0, 2.0]), bins)
    expected = torch.tensor(
        [
            [0.0, 0.75, 0.25, 0.0],  # 0.25 between 0 and 1
            [0.0, 0.0, 0.0, 1.0],  # on the last bin
            [1.0, 0.0, 0.0, 0.0],  # below the range: clipped to the first bin
            [0.0, 0.0, 0.5, 0.5],  # halfway between 1 and 3
        ]
    )
    assert torch.allclose(w, expected)


@pytest.mark.parametrize("value", [0.0, 0.3, -7.5, 123.0, -4567.0, 1e6])
def test_twohot_round_trip(value):
    bins = dists.symexp_bins(255)
    weights = dists.twohot_encode(torch.tensor([value]), bins)
    assert torch.allclose(weights.sum(-1), torch.ones(1))
    assert torch.allclose((weights * bins).sum(-1), torch.tensor([value]), rtol=1e-5, atol=1e-5)
    # Logits equal to log(weights) decode to the value as well.
    decoded = dists.twohot_mean(torch.log(weights.clamp_min(1e-30)), bins)
    assert torch.allclose(decoded, torch.tensor([value]), rtol=1e-4, atol=1e-4)


def test_zero_initialised_head_predicts_exactly_zero():
    head = TwoHotHead(10, layers=1, units=8, outscale=0.0)
    feat = torch.randn(32, 10) * 100
    logits = head.logits(feat)
    assert torch.count_nonzero(logits) == 0
    assert torch.count_nonzero(head.mean(logits)) == 0


def test_twohot_head_keeps_mirror_bins_equal_while_it_learns():
    """Targets near zero give the outer bins equal gradients on both sides; their updates must stay bitwise equal.

    Bins reach ±4.85e8, so a one-ulp difference between a bin and its mirror moves the predicted mean by ~0.4:
    a critic's bias sum over 15,360 imagined states rounded them apart and predicted −3.8 … 3.9 for targets in [0, 0.05].
    """
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the learner runs on a CPU here; the rounding depends on the kernel
    try:
        head = TwoHotHead(16, layers=1, units=64)
        opt = LaProp(head.parameters(), lr=1e-3, warmup=0)
        feat = torch.randn(1024, 15, 16)  # 1,024 start states × 15 imagined steps (some row counts round alike, this one not)
        for _ in range(30):
            opt.zero_grad()
            head.loss(head.logits(feat), torch.rand(1024, 15) * 0.05).mean().backward()
            opt.step()
        with torch.no_grad():
            pred = head.mean(head.logits(feat))
    finally:
        torch.set_num_threads(threads)
    outer = slice(0, 100)  # the 100 outermost bins on each side, far from every target
    for param in (head.out.weight, head.out.bias):
        assert torch.equal(param[outer], param.flip(0)[outer])
    assert pred.min() > -0.01 and pred.max() < 0.06


def test_twohot_loss_is_cross_entropy():
    bins = torch.tensor([0.0, 1.0, 2.0])
    logits = torch.tensor([[0.1, 0.2, 0.3]])
    logp = torch.log_softmax(logits, -1)[0]
    expected = -(0.5 * logp[1] + 0.5 * logp[2])
    assert torch.allclose(dists.twohot_loss(logits, torch.tensor([1.5]), bins), expected.unsqueeze(0))


def test_unimix_floor():
    logits = torch.tensor([[100.0, -100.0, -100.0, -100.0]])
    probs = dists.unimix_logits(logits, 0.01).exp()
    assert torch.allclose(probs.sum(-1), torch.ones(1))
    assert torch.all(probs >= 0.01 / 4 - 1e-7)
    assert torch.allclose(probs[0, 1:], torch.full((3,), 0.0025), atol=1e-7)
    assert torch.allclose(probs[0, 0], torch.tensor(0.99 + 0.0025))


def test_straight_through_sample_is_onehot_with_probability_gradient():
    logits = torch.randn(5, 3, 4, requires_grad=True)
    sample = dists.sample_onehot(logits, torch.rand(5, 3))
    assert torch.allclose(sample.detach().sum(-1), torch.ones(5, 3))
    onehot = torch.nn.functional.one_hot(sample.detach().argmax(-1), 4).float()
    assert torch.allclose(sample.detach(), onehot, atol=1e-6)  # one-hot up to rounding of p − sg(p)
    weights = torch.randn(5, 3, 4)
    (sample * weights).sum().backward()
    probs = torch.softmax(logits.detach(), -1)
    # d/dlogits of sum(w * softmax) = p * (w - sum(p * w))
    expected = probs * (weights - (probs * weights).sum(-1, keepdim=True))
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_inverse_cdf_sample_by_hand():
    probs = torch.tensor([0.2, 0.5, 0.3]).expand(6, 3)
    uniform = torch.tensor([0.0, 0.1, 0.25, 0.69, 0.71, 0.999999])
    assert dists.sample_index(probs, uniform).tolist() == [0, 0, 1, 1, 2, 2]


def test_sampling_matches_probabilities():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([0.1, 0.2, 0.7])).expand(20000, 3)
    freq = dists.sample_onehot(logits).mean(0)
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.7]), atol=0.015)


def test_categorical_kl_by_hand():
    """KL over [B=2, S=3, K=2]: each latent's KL from Σ_k p log(p/q), summed over S only (not over B or K alone)."""
    p = torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]], [[0.3, 0.7], [0.5, 0.5], [0.6, 0.4]]], dtype=torch.float64)
    q = torch.tensor([[[0.25, 0.75], [0.5, 0.5], [0.2, 0.8]], [[0.6, 0.4], [0.1, 0.9], [0.5, 0.5]]], dtype=torch.float64)
    per_latent = [
        [sum(pk * math.log(pk / qk) for pk, qk in zip(pl, ql)) for pl, ql in zip(pb, qb)] for pb, qb in zip(p.tolist(), q.tolist())
    ]
    kl = dists.categorical_kl(p.log(), q.log())
    assert kl.shape == (2,)
    assert torch.allclose(kl, torch.tensor([sum(b) for b in per_latent], dtype=torch.float64), atol=1e-12)
    assert per_latent[0][2] == pytest.approx(0.0)  # identical latents add nothing


def test_bounded_normal():
    mean, std = dists.bounded_normal_params(torch.tensor([0.0, 100.0]), torch.tensor([-2.0, 1000.0]), 0.1, 1.0)
    assert torch.allclose(mean, torch.tensor([0.0, 1.0]))
    assert torch.allclose(std, torch.tensor([0.1 + 0.9 * 0.5, 1.0]))
    x = torch.tensor([0.3])
    logp = dists.normal_logp(x, torch.tensor([0.0]), torch.tensor([0.5]))
    assert torch.allclose(logp, torch.distributions.Normal(0.0, 0.5).log_prob(x))
    assert torch.allclose(dists.normal_entropy(torch.tensor([0.5])), torch.distributions.Normal(0.0, 0.5).entropy())


def test_binary_logp_soft_target():
    logit, target = torch.tensor([0.7]), torch.tensor([0.997])
    p = torch.sigmoid(logit)
    expected = target * torch.log(p) + (1 - target) * torch.log(1 - p)
    assert torch.allclose(dists.binary_logp(logit, target), expected)


def test_twohot_loss_equals_dense_cross_entropy():
    torch.manual_seed(0)
    bins = dists.symexp_bins(255)
    logits = torch.randn(64, 255)
    target = dists.symexp(torch.randn(64) * 5)
    dense = -(dists.twohot_encode(target, bins) * torch.log_softmax(logits, -1)).sum(-1)
    assert torch.allclose(dists.twohot_loss(logits, target, bins), dense, atol=1e-5)


def test_twohot_mean_equals_weighted_sum():
    """Σ_k softmax(logits)_k · bins_k in float64 against moderate logits, which keep the mean near the small bins."""
    torch.manual_seed(0)
    bins = dists.symexp_bins(255).double()
    # p_k ∝ exp(−2·|symlog b_k| + noise) decays faster than |b_k| grows: the mean is O(1), set by the small bins,
    # so a wrong bin near zero shifts it by far more than 1e-9.
    logits = -2.0 * dists.symlog(bins).abs() + torch.randn(16, 255, dtype=torch.float64)
    naive = (torch.softmax(logits, -1) * bins).sum(-1)
    got = dists.twohot_mean(logits, bins)
    assert naive.abs().max() < 10
    assert torch.allclose(got, naive, rtol=1e-9, atol=1e-9)


def test_twohot_mean_of_a_wide_distribution_is_exact_in_float32():
    """Early in training a head's outer bins keep equal logits (they all get the same gradient) and hold most of
    the probability, each weighted by up to ±4.85e8. Their mirror pairs must cancel exactly. The official code
    multiplies each side by its bin and then adds the mirrored products, which XLA:CPU contracts into fused
    multiply-adds, leaving a rounding residual per pair (its imagined rewards then spread with std 0.085 around an
    exact spread of 0.0007, docs/parity.md); a plain left-to-right sum is off by up to 1.7 here. Subtracting the
    probabilities first gives exact zeros, also under such a contraction.
    """
    torch.manual_seed(0)
    bins = dists.symexp_bins(255)
    logits = torch.full((4096, 255), 0.3)
    logits[:, 125:130] += torch.randn(4096, 5)  # only the bins around zero carry the learned signal
    exact = (torch.softmax(logits.double(), -1) * bins.double()).sum(-1)
    got = dists.twohot_mean(logits, bins)
    assert exact.abs().max() < 1.0
    assert (got.double() - exact).abs().max() < 1e-6
