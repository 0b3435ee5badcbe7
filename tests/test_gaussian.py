"""Gaussian heads: log-densities against torch.distributions, stability at the action bounds."""

import torch
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform

from mixrl.policies.gaussian import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    DiagonalGaussianActor,
    TanhGaussianActor,
    squash_log_std,
    tanh_gaussian_log_prob,
)


def test_tanh_gaussian_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    mean, log_std = torch.randn(64, 3, dtype=torch.float64), torch.randn(64, 3, dtype=torch.float64) * 0.5
    pre_tanh = mean + log_std.exp() * torch.randn(64, 3, dtype=torch.float64)
    reference = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform()])
    expected = reference.log_prob(torch.tanh(pre_tanh)).sum(-1)
    assert torch.allclose(tanh_gaussian_log_prob(mean, log_std, pre_tanh), expected, atol=1e-6)


def test_tanh_gaussian_log_prob_is_finite_far_in_the_tails():
    pre_tanh = torch.tensor([[-20.0, 20.0, 0.0]], requires_grad=True)
    log_prob = tanh_gaussian_log_prob(torch.zeros(1, 3), torch.zeros(1, 3), pre_tanh)
    log_prob.sum().backward()
    assert torch.isfinite(log_prob).all() and torch.isfinite(pre_tanh.grad).all()


def test_actor_sample_log_prob_agrees_with_log_prob_of_the_action():
    torch.manual_seed(1)
    actor = TanhGaussianActor(5, 2, (32,))
    obs = torch.randn(16, 5)
    action, log_prob = actor.sample(obs)
    assert action.abs().max() <= 1.0
    assert torch.allclose(actor.log_prob(obs, action), log_prob, atol=1e-3)
    assert torch.equal(actor.deterministic(obs), torch.tanh(actor.distribution_params(obs)[0]))


def test_diagonal_gaussian_matches_torch_distributions():
    torch.manual_seed(2)
    actor = DiagonalGaussianActor(4, 3)
    with torch.no_grad():
        actor.log_std.copy_(torch.tensor([0.1, -0.3, 0.5]))
    obs = torch.randn(8, 4)
    action, log_prob = actor.sample(obs)
    mean, log_std = actor.distribution_params(obs)
    reference = Normal(mean, log_std.exp())
    assert torch.allclose(log_prob, reference.log_prob(action).sum(-1), atol=1e-5)
    assert torch.allclose(actor.entropy(obs), reference.entropy().sum(-1), atol=1e-5)


def test_log_prob_of_actions_at_both_bounds_is_finite_and_symmetric():
    """A tanh-Gaussian with mean 0 gives a and -a the same density, up to a = +-1 (clamped on both sides)."""
    actor = TanhGaussianActor(2, 2, (8,))
    with torch.no_grad():
        actor.mean.weight.zero_()
        actor.mean.bias.zero_()
    obs = torch.randn(3, 2)
    action = torch.tensor([[1.0, 0.3], [0.999, -0.5], [1.0, 1.0]])
    log_prob, mirrored = actor.log_prob(obs, action), actor.log_prob(obs, -action)
    assert torch.isfinite(log_prob).all() and torch.allclose(log_prob, mirrored)


def test_diagonal_gaussian_with_two_leading_dimensions():
    torch.manual_seed(3)
    actor = DiagonalGaussianActor(4, 3)
    obs = torch.randn(2, 5, 4)
    action, log_prob = actor.sample(obs)
    mean, log_std = actor.distribution_params(obs)
    reference = Normal(mean, log_std.exp())
    assert torch.allclose(log_prob, reference.log_prob(action).sum(-1), atol=1e-5)
    assert torch.allclose(actor.entropy(obs), reference.entropy().sum(-1), atol=1e-5)


def test_log_std_squashing_spans_its_bounds():
    """tanh squashing: raw -> LOG_STD_MIN + (LOG_STD_MAX - LOG_STD_MIN) (tanh(raw) + 1) / 2."""
    raw = torch.tensor([-50.0, 0.0, 50.0])
    expected = torch.tensor([LOG_STD_MIN, (LOG_STD_MIN + LOG_STD_MAX) / 2, LOG_STD_MAX])
    torch.testing.assert_close(squash_log_std(raw), expected)


def test_diagonal_gaussian_deterministic_action_is_the_mean_and_samples_spread_by_sigma():
    torch.manual_seed(4)
    actor = DiagonalGaussianActor(4, 2)
    with torch.no_grad():
        actor.log_std.copy_(torch.tensor([-1.0, 0.5]))
    obs = torch.randn(1, 4).expand(4000, 4)
    mean, _ = actor.distribution_params(obs)
    torch.testing.assert_close(actor.deterministic(obs), mean)
    action, _ = actor.sample(obs)
    torch.testing.assert_close(action.std(0), torch.tensor([-1.0, 0.5]).exp(), rtol=0.05, atol=0.0)
