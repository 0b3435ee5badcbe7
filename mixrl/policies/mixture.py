"""Gaussian-mixture (mixture-of-experts) policy head of PMOE, its exact log-density and the gradient
estimators for the mixing weights (frequency loss, Gumbel-softmax, REINFORCE).

    pi(a|s) = sum_k w_k(s) pi_k(a|s),   w(s) = softmax(W s + b),   a_k = tanh(u_k),   u_k ~ N(mu_k, sigma_k)

Shapes: logits (..., K), per-expert means and log-stds (..., K, A), actions (..., A).
DiagonalGaussianMixtureActor is PMOE-PPO's unsquashed variant: a ~ N(mu_k, sigma_k), no tanh; its auxiliary Q
network and the frequency loss it drives are auxiliary_q and pmoe_ppo_losses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mixrl.policies.gaussian import (
    gaussian_log_prob,
    squash_log_std,
    tanh_gaussian_log_prob,
    tanh_log_det_jacobian,
)
from mixrl.policies.nets import mlp, orthogonal_init

ENTROPY_MODES = ("component", "mixture")
ACTOR_EVAL_RULES = ("argmax_w", "weighted_mean", "sampled_k_mean", "sample")  # rules that need no critic
EVAL_RULES = (*ACTOR_EVAL_RULES, "argmax_q")


def gmm_log_prob(
    logits: torch.Tensor,
    mean: torch.Tensor,
    log_std: torch.Tensor,
    action: torch.Tensor | None = None,
    *,
    pre_tanh: torch.Tensor | None = None,
    squash: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Exact log-density (...,) of a diagonal Gaussian mixture, of a = tanh(u) when `squash` is true.

        log pi(a) = logsumexp_k [log_softmax(logits)_k + log N(u; mu_k, sigma_k)] - sum_d log(1 - tanh(u_d)^2)

    All experts share the squashing, so the Jacobian factors out of the sum; it is computed in the stable form
    log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)). Pass the pre-tanh sample
    `pre_tanh` for actions you sampled: u = atanh(clamp(a, -1 + eps, 1 - eps)) is only a fallback for given
    actions, and it loses precision (and clamps) as |a| -> 1. Without squashing `action` is the point itself.
    """
    if not squash:
        if pre_tanh is not None or action is None:
            raise ValueError("gmm_log_prob(squash=False) takes the point as `action` and no `pre_tanh`.")
        x = action
    elif pre_tanh is not None:
        x = pre_tanh
    elif action is not None:
        x = torch.atanh(action.clamp(-1.0 + eps, 1.0 - eps))
    else:
        raise ValueError("gmm_log_prob needs `action` or `pre_tanh`.")
    log_weights = F.log_softmax(logits, dim=-1)
    log_expert = gaussian_log_prob(mean, log_std, x.unsqueeze(-2))  # (..., K)
    log_density = torch.logsumexp(log_weights + log_expert, dim=-1)
    return log_density - tanh_log_det_jacobian(x) if squash else log_density


def sample_experts(mean: torch.Tensor, log_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One reparameterised sample from every expert: actions a_k = tanh(u_k), pre-tanh u_k (both (..., K, A))
    and each expert's own log pi_k(a_k) (..., K)."""
    pre_tanh = mean + torch.exp(log_std) * torch.randn_like(mean)
    return torch.tanh(pre_tanh), pre_tanh, tanh_gaussian_log_prob(mean, log_std, pre_tanh)


def draw_expert(logits: torch.Tensor) -> torch.Tensor:
    """k ~ Cat(softmax(logits)), shape (...,). With one expert nothing is drawn (k = 0), so K = 1 consumes
    the random stream exactly as the unimodal TanhGaussianActor does."""
    if logits.shape[-1] == 1:
        return torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
    probs = logits.softmax(-1)
    return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).view(logits.shape[:-1])


def select_expert(per_expert: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Row k of (..., K, A) for each leading index: (..., A)."""
    index = k[..., None, None].expand(*k.shape, 1, per_expert.shape[-1])
    return per_expert.gather(-2, index).squeeze(-2)


def combine_experts(candidates: torch.Tensor, logits: torch.Tensor, rule: str) -> torch.Tensor:
    """One action (..., A) from per-expert candidates (..., K, A) by an actor rule: `argmax_w` the heaviest
    expert's, `weighted_mean` sum_k w_k c_k, `sampled_k_mean` and `sample` that of k ~ Cat(w)."""
    if rule not in ACTOR_EVAL_RULES:
        raise ValueError(f"rule={rule!r} is not one of {ACTOR_EVAL_RULES}.")
    if rule == "weighted_mean":
        return (logits.softmax(-1).unsqueeze(-1) * candidates).sum(-2)
    return select_expert(candidates, logits.argmax(-1) if rule == "argmax_w" else draw_expert(logits))


def frequency_loss(mixing_probs: torch.Tensor, q_values: torch.Tensor) -> torch.Tensor:
    """PMOE frequency loss: L = 1/(B K) sum_{b,k} (w_k(s_b) - onehot(argmax_k q_{b,k})_k)^2, target detached.

    `q_values` (B, K) scores one sample of each expert; w is pulled towards each expert's frequency of wins.
    """
    target = F.one_hot(q_values.argmax(-1), mixing_probs.shape[-1]).to(mixing_probs.dtype)
    return F.mse_loss(mixing_probs, target)


def gumbel_softmax_action(
    logits: torch.Tensor, expert_actions: torch.Tensor, tau: float, hard: bool = False
) -> torch.Tensor:
    """Relaxed mixture sample a = sum_k g_k a_k, g = softmax((logits + G) / tau), G ~ Gumbel(0, 1) i.i.d.

    Gradients reach the logits through g (pathwise). For tau > 0 this differentiates the relaxed objective,
    not the mixture's. With `hard`, g is the one-hot of argmax_k (logits + G) (an exact k ~ Cat(w), so a is
    one expert's action) and the gradient is the straight-through one of the relaxed g.
    """
    g = F.gumbel_softmax(logits, tau=tau, hard=hard)
    return (g.unsqueeze(-1) * expert_actions).sum(-2)


def reinforce_mixing_loss(logits: torch.Tensor, k: torch.Tensor, q_values: torch.Tensor) -> torch.Tensor:
    """Score-function loss for the mixing weights; its gradient is -mean_B grad log w_k (q_k - b), with the
    baseline b = sum_j w_j q_j. q, w in b and the advantage are detached, so only log w_k carries gradient."""
    log_w = F.log_softmax(logits, dim=-1)
    q = q_values.detach()
    baseline = (log_w.detach().exp() * q).sum(-1)
    advantage = q.gather(-1, k.unsqueeze(-1)).squeeze(-1) - baseline
    return -(log_w.gather(-1, k.unsqueeze(-1)).squeeze(-1) * advantage).mean()


class GaussianMixtureHead(nn.Module):
    """PMOE actor: K tanh-Gaussian experts on a shared ReLU trunk, mixed by w(s) = softmax(Linear(s)).

    The mixing net reads the raw (factory-normalised) observation and shares nothing with the trunk. It is
    created last, so with K = 1 the trunk and heads are initialised (same seed) exactly as TanhGaussianActor;
    with K = 1, w = 1 whatever the mixing layer holds, so it is zero-initialised without drawing random
    numbers and modules created after the head are initialised as after a TanhGaussianActor too.
    `eval_rule` (one of EVAL_RULES) is the rule `deterministic(obs)` uses when none is given.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        num_experts: int = 4,
        hidden_sizes: Sequence[int] = (256, 256),
        eval_rule: str = "argmax_w",
    ):
        super().__init__()
        if eval_rule not in EVAL_RULES:
            raise ValueError(f"eval_rule={eval_rule!r} is not one of {EVAL_RULES}.")
        self.num_experts, self.action_dim, self.eval_rule = num_experts, action_dim, eval_rule
        self.trunk = mlp(obs_dim, hidden_sizes)
        self.mean = nn.Linear(hidden_sizes[-1], num_experts * action_dim)
        self.log_std = nn.Linear(hidden_sizes[-1], num_experts * action_dim)
        if num_experts > 1:
            self.mixing = nn.Linear(obs_dim, num_experts)
        else:
            self.mixing = nn.utils.skip_init(nn.Linear, obs_dim, 1)
            nn.init.zeros_(self.mixing.weight)
            nn.init.zeros_(self.mixing.bias)

    def mixing_logits(self, obs: torch.Tensor) -> torch.Tensor:
        """Logits of w(s), shape (..., K)."""
        return self.mixing(obs)

    def expert_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-expert pre-tanh means and log-stds, each (..., K, A); log-std squashed into [-5, 2]."""
        h = self.trunk(obs)
        shape = (self.num_experts, self.action_dim)
        return self.mean(h).unflatten(-1, shape), squash_log_std(self.log_std(h)).unflatten(-1, shape)

    def distribution_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, mean, log_std): everything gmm_log_prob needs."""
        return (self.mixing_logits(obs), *self.expert_params(obs))

    def expert_samples(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterised sample of every expert: actions and pre-tanh (..., K, A), log pi_k (..., K)."""
        return sample_experts(*self.expert_params(obs))

    def sample(self, obs: torch.Tensor, entropy: str = "component") -> tuple[torch.Tensor, torch.Tensor]:
        """Action a_k of an expert k ~ Cat(w(s)) and its log-prob: log pi_k(a_k) of that expert alone
        (`component`) or the mixture's log pi(a_k) at the drawn u_k (`mixture`, which also depends on w)."""
        if entropy not in ENTROPY_MODES:
            raise ValueError(f"entropy={entropy!r} is not one of {ENTROPY_MODES}.")
        logits, mean, log_std = self.distribution_params(obs)
        actions, pre_tanh, expert_log_prob = sample_experts(mean, log_std)
        k = draw_expert(logits)
        if entropy == "component":
            log_prob = expert_log_prob.gather(-1, k.unsqueeze(-1)).squeeze(-1)
        else:
            log_prob = gmm_log_prob(logits, mean, log_std, pre_tanh=select_expert(pre_tanh, k))
        return select_expert(actions, k), log_prob

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor, pre_tanh: torch.Tensor | None = None) -> torch.Tensor:
        """Mixture log pi(a|s); pass `pre_tanh` when known, else it is recovered by a clamped atanh."""
        return gmm_log_prob(*self.distribution_params(obs), action, pre_tanh=pre_tanh)

    def deterministic(
        self,
        obs: torch.Tensor,
        rule: str | None = None,
        q_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Evaluation action by `rule` (default: the head's eval_rule). Rules: `argmax_w` tanh(mu_k),
        k = argmax w; `weighted_mean` sum_k w_k tanh(mu_k); `sampled_k_mean` tanh(mu_k), k ~ Cat(w); `sample`
        tanh(u_k), k ~ Cat(w); `argmax_q` tanh(mu_k), k = argmax_k q_fn(s, tanh(mu_k)), where q_fn maps
        observations tiled to (..., K, S) and candidates (..., K, A) to Q of (..., K)."""
        rule = self.eval_rule if rule is None else rule
        if rule not in EVAL_RULES:
            raise ValueError(f"rule={rule!r} is not one of {EVAL_RULES}.")
        if rule == "argmax_q" and q_fn is None:
            raise ValueError("rule='argmax_q' needs a critic: pass q_fn(obs, actions) -> Q.")
        logits, mean, log_std = self.distribution_params(obs)
        candidates = sample_experts(mean, log_std)[0] if rule == "sample" else torch.tanh(mean)
        if rule == "argmax_q":
            tiled = obs.unsqueeze(-2).expand(*logits.shape, obs.shape[-1])
            return select_expert(candidates, q_fn(tiled, candidates).reshape(logits.shape).argmax(-1))
        return combine_experts(candidates, logits, rule)


class DiagonalGaussianMixtureActor(nn.Module):
    """PMOE-PPO actor: K unsquashed diagonal Gaussian experts on a shared tanh trunk, mixed by w = softmax(Linear(s)).

        pi(a|s) = sum_k w_k(s) N(a; mu_k(s), diag(exp(2 log_std_k))),   log_std a state-independent (K, A) parameter

    The mixture counterpart of DiagonalGaussianActor (orthogonal init, mean head gain 0.01, log-std 0): with K = 1
    it is initialised (same seed) exactly as that actor, its log-density is the same Gaussian's, `sample` draws
    the same random numbers, and the mixing layer (w = 1) is zero-initialised without drawing any. The mixing
    net reads the (factory-normalised) observation and shares nothing with the trunk. `deterministic(obs)` picks
    the evaluation action by `eval_rule` (one of ACTOR_EVAL_RULES; default the mean of the heaviest expert).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        num_experts: int = 5,
        hidden_sizes: Sequence[int] = (64, 64),
        eval_rule: str = "argmax_w",
    ):
        super().__init__()
        if eval_rule not in ACTOR_EVAL_RULES:
            raise ValueError(f"eval_rule={eval_rule!r} is not one of {ACTOR_EVAL_RULES}.")
        self.num_experts, self.action_dim, self.eval_rule = num_experts, action_dim, eval_rule
        self.trunk = mlp(obs_dim, hidden_sizes, activation=nn.Tanh)
        for layer in self.trunk:
            if isinstance(layer, nn.Linear):
                orthogonal_init(layer)
        self.mean = orthogonal_init(nn.Linear(hidden_sizes[-1], num_experts * action_dim), gain=0.01)
        self.log_std = nn.Parameter(torch.zeros(num_experts, action_dim))
        if num_experts > 1:
            self.mixing = nn.Linear(obs_dim, num_experts)
        else:
            self.mixing = nn.utils.skip_init(nn.Linear, obs_dim, 1)
            nn.init.zeros_(self.mixing.weight)
            nn.init.zeros_(self.mixing.bias)

    def distribution_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (..., K), mean (..., K, A), log_std (..., K, A)): everything gmm_log_prob needs."""
        mean = self.mean(self.trunk(obs)).unflatten(-1, (self.num_experts, self.action_dim))
        return self.mixing(obs), mean, self.log_std.expand_as(mean)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k ~ Cat(w(s)), a ~ N(mu_k, sigma_k), and the mixture log pi(a|s) (not the expert's alone)."""
        logits, mean, log_std = self.distribution_params(obs)
        k = draw_expert(logits)
        expert_mean = select_expert(mean, k)
        action = expert_mean + select_expert(log_std, k).exp() * torch.randn_like(expert_mean)
        return action, gmm_log_prob(logits, mean, log_std, action, squash=False)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Mixture log pi(a|s) by logsumexp over the experts: finite for any action."""
        return gmm_log_prob(*self.distribution_params(obs), action, squash=False)

    def deterministic(self, obs: torch.Tensor, rule: str | None = None) -> torch.Tensor:
        """Evaluation action by `rule` (default: eval_rule): `argmax_w` mu_k, k = argmax w; `weighted_mean`
        sum_k w_k mu_k (the mixture's mean); `sampled_k_mean` mu_k, k ~ Cat(w); `sample` a ~ pi(.|s)."""
        logits, mean, log_std = self.distribution_params(obs)
        rule = self.eval_rule if rule is None else rule
        candidates = mean + log_std.exp() * torch.randn_like(mean) if rule == "sample" else mean
        return combine_experts(candidates, logits, rule)


def auxiliary_q(obs_dim: int, action_dim: int, hidden_sizes: Sequence[int] = (64, 64, 64)) -> nn.Sequential:
    """PMOE-PPO's auxiliary Q(s, a): a ReLU MLP on [s, a] that learns the lambda-returns and names the best expert
    for the frequency loss (pmoe_ppo_losses)."""
    return mlp(obs_dim + action_dim, hidden_sizes, 1)


def q_values(qf: nn.Module, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Q(s, a) on [s, a]: obs (..., S) and actions (..., A) -> (...,)."""
    return qf(torch.cat([obs, actions], -1)).squeeze(-1)


def pmoe_ppo_losses(
    qf: nn.Module,
    obs: torch.Tensor,
    actions: torch.Tensor,
    returns: torch.Tensor,
    logits: torch.Tensor,
    mean: torch.Tensor,
    log_std: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PMOE-PPO's terms beside the PPO loss, on the actor's distribution_params(obs) -> (L_freq, L_Q):

    L_freq = E_{s,k}[(w_k(s) - onehot(argmax_j Q(s, a_j))_k)^2],   a_j ~ N(mu_j(s), sigma_j), one per expert, detached
    L_Q    = E[(Q(s, a) - R)^2],   (a, R) the rollout's actions and lambda-returns
    """
    with torch.no_grad():
        candidates = mean + log_std.exp() * torch.randn_like(mean)  # a_k ~ N(mu_k, sigma_k): (B, K, A)
        tiled = obs.unsqueeze(-2).expand(*candidates.shape[:-1], obs.shape[-1])
        expert_q = q_values(qf, tiled, candidates)
    return frequency_loss(logits.softmax(-1), expert_q), F.mse_loss(q_values(qf, obs, actions), returns)
