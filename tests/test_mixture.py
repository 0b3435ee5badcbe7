"""Gaussian-mixture policy: exact log-density, mixing-weight gradient estimators and the PMOE head."""

import math

import pytest
import torch
from helpers import assert_unbiased
from torch import distributions as D
from torch.nn import functional as F

from mixrl.policies.gaussian import TanhGaussianActor
from mixrl.policies.mixture import (
    ACTOR_EVAL_RULES,
    GaussianMixtureHead,
    combine_experts,
    frequency_loss,
    gmm_log_prob,
    gumbel_softmax_action,
    reinforce_mixing_loss,
)

torch.set_num_threads(1)
F64 = torch.float64


@pytest.fixture(autouse=True)
def seed() -> None:
    """Every test starts from the same random stream."""
    torch.manual_seed(0)


def test_every_test_starts_from_seed_0():
    first = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(first, torch.rand(3))


def random_params(batch: tuple[int, ...], k: int, a: int, dtype=F64, seed: int = 0):
    """Logits ~ N(0, 1), means ~ U(-1, 1), stds in [0.3, 1]: moderate enough for quadrature on a grid."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*batch, k, generator=g, dtype=dtype)
    mean = 2.0 * torch.rand(*batch, k, a, generator=g, dtype=dtype) - 1.0
    log_std = math.log(0.3) * torch.rand(*batch, k, a, generator=g, dtype=dtype)
    return logits, mean, log_std


def direct_pdf(logits, mean, log_std, x):
    """sum_k w_k prod_d exp(-(x - mu)^2 / (2 sigma^2)) / (sqrt(2 pi) sigma), written out term by term."""
    std = log_std.exp()
    z = (x.unsqueeze(-2) - mean) / std
    per_dim = torch.exp(-0.5 * z**2) / (math.sqrt(2.0 * math.pi) * std)
    return (torch.softmax(logits, -1) * per_dim.prod(-1)).sum(-1)


def trapezoid_weights(nodes: torch.Tensor) -> torch.Tensor:
    """Weights of the trapezoid rule on (possibly uneven) sorted nodes."""
    gaps = nodes.diff()
    return 0.5 * (F.pad(gaps, (1, 0)) + F.pad(gaps, (0, 1)))


def grid(nodes: torch.Tensor, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor-product points (N^dims, dims) and their quadrature weights (N^dims,)."""
    weights = trapezoid_weights(nodes)
    points = torch.cartesian_prod(*[nodes] * dims).reshape(-1, dims)
    w = torch.cartesian_prod(*[weights] * dims).reshape(-1, dims).prod(-1)
    return points, w


# ---------------------------------------------------------------- gmm_log_prob


@pytest.mark.parametrize("dims, squash", [(1, True), (2, True), (1, False), (2, False)])
def test_gmm_density_integrates_to_one(dims, squash):
    size = 4001 if dims == 1 else 801
    if squash:  # nodes crowd towards +-1 where the squashed density changes fastest; no analytic Jacobian used
        nodes = torch.tanh(torch.linspace(-7.0, 7.0, size, dtype=F64))
    else:
        nodes = torch.linspace(-9.0, 9.0, size, dtype=F64)
    points, weights = grid(nodes, dims)
    for seed in range(3):
        logits, mean, log_std = random_params((), 3, dims, seed=seed)
        density = gmm_log_prob(logits, mean, log_std, points, squash=squash).exp()
        assert (density * weights).sum().item() == pytest.approx(1.0, abs=1e-4)


def test_gmm_single_expert_equals_torch_tanh_normal():
    _, mean, log_std = random_params((6,), 1, 3)
    u = mean[:, 0] + 1.5 * torch.randn(6, 3, dtype=F64)
    reference = D.TransformedDistribution(D.Normal(mean[:, 0], log_std[:, 0].exp()), [D.TanhTransform()])
    expected = reference.log_prob(torch.tanh(u)).sum(-1)
    logits = torch.zeros(6, 1, dtype=F64)
    torch.testing.assert_close(gmm_log_prob(logits, mean, log_std, pre_tanh=u), expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(gmm_log_prob(logits, mean, log_std, torch.tanh(u)), expected, atol=1e-10, rtol=0)
    # float32 from the pre-tanh sample keeps 1e-5 (atanh of a float32 action would lose ~1e-3 here)
    single = gmm_log_prob(logits.float(), mean.float(), log_std.float(), pre_tanh=u.float())
    torch.testing.assert_close(single.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("squash", [False, True])
def test_gmm_equals_torch_mixture_same_family(squash):
    logits, mean, log_std = random_params((2, 5), 4, 3)  # two leading batch axes
    mixture = D.MixtureSameFamily(D.Categorical(logits=logits), D.Independent(D.Normal(mean, log_std.exp()), 1))
    u = 1.5 * torch.randn(2, 5, 3, dtype=F64)
    if squash:
        expected = D.TransformedDistribution(mixture, [D.TanhTransform()]).log_prob(torch.tanh(u))
        actual = gmm_log_prob(logits, mean, log_std, torch.tanh(u))
    else:
        expected = mixture.log_prob(u)
        actual = gmm_log_prob(logits, mean, log_std, u, squash=False)
    torch.testing.assert_close(actual, expected, atol=1e-10, rtol=0)


def test_gmm_equals_log_of_direct_pdf():
    logits, mean, log_std = random_params((7,), 3, 2)
    u = 1.5 * torch.randn(7, 2, dtype=F64)
    unsquashed = direct_pdf(logits, mean, log_std, u).log()
    torch.testing.assert_close(gmm_log_prob(logits, mean, log_std, u, squash=False), unsquashed)
    squashed = (direct_pdf(logits, mean, log_std, u) / (1.0 - torch.tanh(u) ** 2).prod(-1)).log()
    torch.testing.assert_close(gmm_log_prob(logits, mean, log_std, pre_tanh=u), squashed)
    torch.testing.assert_close(gmm_log_prob(logits, mean, log_std, torch.tanh(u)), squashed)


def test_gmm_rejects_missing_or_contradictory_inputs():
    logits, mean, log_std = random_params((), 2, 1)
    with pytest.raises(ValueError, match="action"):
        gmm_log_prob(logits, mean, log_std)
    with pytest.raises(ValueError, match="pre_tanh"):
        gmm_log_prob(logits, mean, log_std, pre_tanh=torch.zeros(1, dtype=F64), squash=False)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_gmm_gradients_finite_as_actions_approach_bounds(dtype):
    logits, mean, log_std = (p.requires_grad_() for p in random_params((), 3, 2, dtype=dtype))
    gaps = torch.tensor([10.0**-e for e in range(1, 17)] + [0.0], dtype=dtype)
    action = torch.stack([1.0 - gaps, gaps - 1.0], -1).requires_grad_()  # (17, 2), down to exactly +-1
    log_prob = gmm_log_prob(logits, mean, log_std, action)
    log_prob.sum().backward()
    assert torch.isfinite(log_prob).all()
    for tensor in (action, logits, mean, log_std):
        assert torch.isfinite(tensor.grad).all()


def test_gmm_exact_and_smooth_at_pre_tanh_20():
    logits, mean, log_std = random_params((), 3, 2)
    log_std = log_std + 1.5  # stds of 1.3 to 4.5 keep the direct pdf at u = 20 above underflow
    logits, mean, log_std = (p.requires_grad_() for p in (logits, mean, log_std))
    u = torch.tensor([[20.0, -20.0], [-20.0, 20.0], [20.0, 0.5]], dtype=F64, requires_grad=True)
    log_prob = gmm_log_prob(logits, mean, log_std, pre_tanh=u)
    # 1 - tanh(20)^2 is 0 in float64; 1 / cosh(20)^2 = 1.7e-17 is not
    expected = direct_pdf(logits, mean, log_std, u).log() - (1.0 / torch.cosh(u) ** 2).log().sum(-1)
    torch.testing.assert_close(log_prob.detach(), expected.detach(), atol=1e-9, rtol=1e-12)
    log_prob.sum().backward()
    for tensor in (u, logits, mean, log_std):
        assert torch.isfinite(tensor.grad).all()


def test_gmm_finite_in_17_dims_for_far_actions():
    logits, mean, log_std = random_params((4,), 5, 17, dtype=torch.float32)
    log_std = (log_std - 2.0).requires_grad_()
    mean.requires_grad_()
    far = torch.full((4, 17), 30.0)
    naive = torch.log(
        (torch.softmax(logits, -1) * D.Normal(mean, log_std.exp()).log_prob(far[:, None]).sum(-1).exp()).sum(-1)
    )
    assert torch.isinf(naive).all()  # log(sum w exp(.)) underflows here
    log_prob = gmm_log_prob(logits, mean, log_std, far, squash=False)
    exact = gmm_log_prob(logits.double(), mean.double(), log_std.double(), far.double(), squash=False)
    torch.testing.assert_close(log_prob.double(), exact, rtol=1e-5, atol=0)
    log_prob.sum().backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_std.grad).all()
    squashed = gmm_log_prob(logits, mean, log_std, pre_tanh=torch.full((4, 17), -20.0))
    assert torch.isfinite(squashed).all()


# ---------------------------------------------------------------- frequency loss


def test_frequency_loss_targets_the_argmax_q_expert():
    w = torch.tensor([[0.2, 0.8], [0.5, 0.5]], requires_grad=True)
    q = torch.tensor([[3.0, 1.0], [0.0, 2.0]], requires_grad=True)
    loss = frequency_loss(w, q)
    # targets (1, 0) and (0, 1): ((0.8^2 + 0.8^2) + (0.5^2 + 0.5^2)) / 4
    assert loss.item() == pytest.approx((1.28 + 0.5) / 4)
    loss.backward()
    torch.testing.assert_close(w.grad, 2.0 * (w.detach() - torch.tensor([[1.0, 0.0], [0.0, 1.0]])) / 4)
    assert q.grad is None  # the target carries no gradient


def test_frequency_loss_drives_mixing_weights_to_the_winning_expert():
    head = GaussianMixtureHead(obs_dim=3, action_dim=2, num_experts=4, hidden_sizes=(16,))
    obs = torch.randn(128, 3)
    q = torch.randn(128, 4)
    q[:, 2] = q.max(-1).values + 0.1  # expert 2 always wins
    optimiser = torch.optim.Adam(head.mixing.parameters(), lr=0.05)
    for _ in range(300):
        loss = frequency_loss(torch.softmax(head.mixing_logits(obs), -1), q)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        w = torch.softmax(head.mixing_logits(torch.cat([obs, torch.randn(128, 3)])), -1)
    assert w[:, 2].min() > 0.95


# ---------------------------------------------------------------- score-function and Gumbel estimators


def per_sample_grads(loss_fn, theta: torch.Tensor, n: int) -> torch.Tensor:
    """Gradients (n, K) of each term of a loss that averages n samples, all with the logits `theta`."""
    logits = theta.expand(n, -1).clone().requires_grad_()
    loss_fn(logits).backward()
    return n * logits.grad


def test_mixing_functions_with_two_leading_dimensions_equal_row_by_row():
    """Batch shape (2, 3): the estimators and rules act on the last dimensions only (a dim=1 bug shows here)."""
    logits, q, k = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randint(0, 4, (2, 3))
    candidates = torch.randn(2, 3, 4, 5)
    rows = [(i, j) for i in range(2) for j in range(3)]
    per_row = torch.stack([reinforce_mixing_loss(logits[i, j][None], k[i, j][None], q[i, j][None]) for i, j in rows])
    torch.testing.assert_close(reinforce_mixing_loss(logits, k, q), per_row.mean())
    mean = torch.stack([(logits[i, j].softmax(-1)[:, None] * candidates[i, j]).sum(0) for i, j in rows])
    torch.testing.assert_close(combine_experts(candidates, logits, "weighted_mean").reshape(6, 5), mean)


def test_reinforce_gradient_is_the_baselined_score_function():
    theta, q = torch.tensor([0.3, -1.0, 0.5], dtype=F64), torch.tensor([1.0, 4.0, -2.0], dtype=F64)
    k = torch.tensor([0, 1, 2, 1])
    grads = per_sample_grads(lambda logits: reinforce_mixing_loss(logits, k, q.expand(4, -1)), theta, 4)
    w = torch.softmax(theta, -1)
    # -grad_theta log w_k (q_k - b) = -(onehot(k) - w)(q_k - b),  b = sum_j w_j q_j
    expected = -(F.one_hot(k, 3) - w) * (q[k] - (w * q).sum())[:, None]
    torch.testing.assert_close(grads, expected)


def test_reinforce_is_unbiased_for_expected_q():
    theta, q = torch.tensor([0.3, -1.0, 0.5, 1.2], dtype=F64), torch.tensor([1.0, 4.0, -2.0, 0.5], dtype=F64)
    n = 20000
    k = D.Categorical(logits=theta).sample((n,))
    grads = per_sample_grads(lambda logits: reinforce_mixing_loss(logits, k, q.expand(n, -1)), theta, n)
    w = torch.softmax(theta, -1)
    # J = E_{k ~ Cat(w)} q_k = sum_k w_k q_k,  dJ/dtheta_j = w_j (q_j - J); the loss descends -J
    assert_unbiased(grads, -w * (q - (w * q).sum()))


def test_gumbel_softmax_hard_draws_one_expert_with_mixture_frequencies():
    theta = torch.tensor([0.3, -1.0, 0.5])
    experts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    n = 20000
    action = gumbel_softmax_action(theta.expand(n, -1), experts.expand(n, -1, -1), tau=0.7, hard=True)
    picked = (action[:, None, :] == experts).all(-1)  # (n, K): which expert's action came out
    assert (picked.sum(-1) == 1).all()
    assert_unbiased(picked.double(), torch.softmax(theta.double(), -1))


def test_gumbel_softmax_gradient_is_unbiased_for_its_relaxed_objective_only():
    """The pathwise gradient is unbiased for J_tau = E[c . sum_k g_k a_k], g the relaxed sample; for K = 2
    g_1 = sigmoid((theta_1 - theta_2 + L) / tau), L ~ Logistic(0, 1), so dJ_tau/dtheta is a 1-D integral.
    It is biased for the mixture objective J = sum_k w_k c . a_k, which the last assertion shows."""
    tau, n = 1.0, 20000
    theta = torch.tensor([0.4, -0.3], dtype=F64)
    experts = torch.tensor([[0.5, -1.0], [-0.5, 0.8]], dtype=F64)
    c = torch.tensor([2.0, 1.0], dtype=F64)
    q = experts @ c

    def relaxed_objective(logits):
        return gumbel_softmax_action(logits, experts.expand(n, -1, -1), tau) @ c

    grads = per_sample_grads(lambda logits: relaxed_objective(logits).mean(), theta, n)
    l = torch.linspace(-60.0, 60.0, 240001, dtype=F64)
    density = torch.sigmoid(l) * torch.sigmoid(-l)
    x = (theta[0] - theta[1] + l) / tau
    d_mean_g1 = (torch.sigmoid(x) * torch.sigmoid(-x) / tau * density * trapezoid_weights(l)).sum()
    relaxed = (q[0] - q[1]) * d_mean_g1 * torch.tensor([1.0, -1.0], dtype=F64)
    assert_unbiased(grads, relaxed)
    w = torch.softmax(theta, -1)
    mixture = w * (q - (w * q).sum())
    standard_error = grads.std(0) / math.sqrt(n)
    assert ((grads.mean(0) - mixture).abs() > 10 * standard_error).all()


# ---------------------------------------------------------------- the head


@pytest.fixture
def head() -> GaussianMixtureHead:
    return GaussianMixtureHead(obs_dim=3, action_dim=2, num_experts=4, hidden_sizes=(32, 32))


def test_head_shapes(head):
    for batch in ((5,), (2, 5)):
        obs = torch.randn(*batch, 3)
        actions, pre_tanh, log_probs = head.expert_samples(obs)
        assert actions.shape == pre_tanh.shape == (*batch, 4, 2) and log_probs.shape == (*batch, 4)
        assert head.mixing_logits(obs).shape == (*batch, 4)
        for entropy in ("component", "mixture"):
            action, log_prob = head.sample(obs, entropy=entropy)
            assert action.shape == (*batch, 2) and log_prob.shape == batch
            assert (action.abs() < 1).all()
        assert head.log_prob(obs, action).shape == batch
        for rule in ACTOR_EVAL_RULES:
            assert head.deterministic(obs, rule).shape == (*batch, 2)


def test_single_expert_head_is_the_tanh_gaussian_actor():
    torch.manual_seed(3)
    actor = TanhGaussianActor(5, 3, hidden_sizes=(32, 16))
    torch.manual_seed(3)
    head = GaussianMixtureHead(5, 3, num_experts=1, hidden_sizes=(32, 16))
    mine = {k: v for k, v in head.state_dict().items() if not k.startswith("mixing.")}
    theirs = actor.state_dict()
    assert mine.keys() == theirs.keys()
    for name, value in theirs.items():
        torch.testing.assert_close(mine[name], value, atol=0, rtol=0)
    obs = torch.randn(8, 5)
    torch.manual_seed(11)
    action, log_prob = actor.sample(obs)
    after_actor = torch.rand(1)
    for entropy in ("component", "mixture"):
        torch.manual_seed(11)
        head_action, head_log_prob = head.sample(obs, entropy=entropy)
        torch.testing.assert_close(head_action, action, atol=0, rtol=0)
        torch.testing.assert_close(head_log_prob, log_prob, atol=0, rtol=0)
        assert torch.rand(1) == after_actor  # same draws from the random stream
    torch.testing.assert_close(head.log_prob(obs, action), actor.log_prob(obs, action), atol=0, rtol=0)
    torch.testing.assert_close(head.deterministic(obs), actor.deterministic(obs), atol=0, rtol=0)


def test_sample_log_probs_belong_to_the_drawn_expert(head):
    head.double()
    obs = torch.randn(64, 3, dtype=F64)
    for entropy in ("component", "mixture"):
        torch.manual_seed(5)
        action, log_prob = head.sample(obs, entropy=entropy)
        torch.manual_seed(5)
        actions, pre_tanh, expert_log_prob = head.expert_samples(obs)  # the same noise, drawn first
        k = (actions == action[:, None, :]).all(-1).double().argmax(-1)
        assert (actions[torch.arange(64), k] == action).all()
        if entropy == "component":
            expected = expert_log_prob[torch.arange(64), k]
        else:
            expected = gmm_log_prob(*head.distribution_params(obs), pre_tanh=pre_tanh[torch.arange(64), k])
            torch.testing.assert_close(head.log_prob(obs, action), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(log_prob, expected)


def test_sampled_experts_follow_the_mixing_weights(head):
    obs = torch.randn(1, 3).expand(20000, 3)
    with torch.no_grad():
        head.log_std.weight.zero_()
        head.log_std.bias.fill_(-20.0)  # std at its floor e^-5: samples sit on their expert's mean
        means = torch.tanh(head.expert_params(obs[:1])[0][0])  # (K, A)
        action, _ = head.sample(obs)
    nearest = (action[:, None, :] - means).norm(dim=-1).argmin(-1)
    frequencies = F.one_hot(nearest, 4).double()
    assert_unbiased(frequencies, torch.softmax(head.mixing_logits(obs[0]), -1).detach().double())


def test_mixing_net_gets_gradient_only_from_the_mixture_entropy(head):
    obs = torch.randn(16, 3)
    action, log_prob = head.sample(obs, entropy="component")
    (action.sum() + log_prob.sum()).backward()
    assert head.mixing.weight.grad is None
    assert head.mean.weight.grad.abs().sum() > 0  # reparameterised
    _, log_prob = head.sample(obs, entropy="mixture")
    log_prob.sum().backward()
    assert head.mixing.weight.grad.abs().sum() > 0


def test_deterministic_rules(head):
    obs = torch.randn(400, 3)
    means = torch.tanh(head.expert_params(obs)[0])  # (B, K, A)
    with torch.no_grad():
        head.mixing.weight.zero_()
        head.mixing.bias.copy_(torch.tensor([0.0, 0.0, 3.0, 0.0]))
    torch.testing.assert_close(head.deterministic(obs, "argmax_w"), means[:, 2])
    w = torch.softmax(torch.tensor([0.0, 0.0, 3.0, 0.0]), -1)
    torch.testing.assert_close(head.deterministic(obs, "weighted_mean"), (w[:, None] * means).sum(-2))

    mean_choice = head.deterministic(obs, "sampled_k_mean")
    chosen = (mean_choice[:, None, :] == means).all(-1)
    assert (chosen.sum(-1) == 1).all() and set(chosen.double().argmax(-1).tolist()) == {0, 1, 2, 3}

    torch.manual_seed(2)
    sampled = head.deterministic(obs, "sample")
    torch.manual_seed(2)
    torch.testing.assert_close(sampled, head.sample(obs)[0])
    assert not (sampled[:, None, :] == means).all(-1).any()

    def q_fn(tiled_obs, actions):  # prefers expert 1's mean action, as (B, K, 1)
        assert tiled_obs.shape == (400, 4, 3)
        return -((actions - means[:, 1:2]) ** 2).sum(-1, keepdim=True)

    torch.testing.assert_close(head.deterministic(obs, "argmax_q", q_fn=q_fn), means[:, 1])


def test_head_rejects_unknown_modes(head):
    obs = torch.randn(2, 3)
    with pytest.raises(ValueError, match="q_fn"):
        head.deterministic(obs, "argmax_q")
    with pytest.raises(ValueError, match="rule"):
        head.deterministic(obs, "mode")
    with pytest.raises(ValueError, match="entropy"):
        head.sample(obs, entropy="joint")
