"""Gaussian policy heads: tanh-squashed (SAC) and diagonal (PPO), with their log-densities as pure functions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from mixrl.policies.nets import mlp, orthogonal_init

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
LOG_2PI = math.log(2.0 * math.pi)
LOG_2 = math.log(2.0)


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Log-density of a diagonal Gaussian, summed over the last axis."""
    z = (x - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * LOG_2PI).sum(-1)


def tanh_log_det_jacobian(pre_tanh: torch.Tensor) -> torch.Tensor:
    """sum_d log(1 - tanh(u_d)^2), in the stable form 2 (log 2 - u - softplus(-2u)); finite for any u."""
    return (2.0 * (LOG_2 - pre_tanh - nn.functional.softplus(-2.0 * pre_tanh))).sum(-1)


def tanh_gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, pre_tanh: torch.Tensor) -> torch.Tensor:
    """log pi(a) of a = tanh(u), u ~ N(mean, std): log N(u) - sum log(1 - tanh(u)^2), from the pre-tanh u."""
    return gaussian_log_prob(mean, log_std, pre_tanh) - tanh_log_det_jacobian(pre_tanh)


def squash_log_std(raw: torch.Tensor) -> torch.Tensor:
    """Map an unbounded output smoothly into [LOG_STD_MIN, LOG_STD_MAX]."""
    return LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw) + 1.0)


class TanhGaussianActor(nn.Module):
    """SAC actor: a = tanh(u), u ~ N(mean(s), std(s)); actions live in [-1, 1]^A."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_sizes: Sequence[int] = (256, 256)):
        super().__init__()
        self.trunk = mlp(obs_dim, hidden_sizes)
        self.mean = nn.Linear(hidden_sizes[-1], action_dim)
        self.log_std = nn.Linear(hidden_sizes[-1], action_dim)

    def distribution_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(obs)
        return self.mean(h), squash_log_std(self.log_std(h))

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised action and its log-prob (computed from the pre-tanh sample, never from atanh)."""
        mean, log_std = self.distribution_params(obs)
        pre_tanh = mean + torch.exp(log_std) * torch.randn_like(mean)
        return torch.tanh(pre_tanh), tanh_gaussian_log_prob(mean, log_std, pre_tanh)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """Log-prob of a given action; u = atanh(a) is recovered with a clamp, so prefer `sample` for fresh ones."""
        mean, log_std = self.distribution_params(obs)
        pre_tanh = torch.atanh(action.clamp(-1.0 + eps, 1.0 - eps))
        return tanh_gaussian_log_prob(mean, log_std, pre_tanh)

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.distribution_params(obs)[0])


class DiagonalGaussianActor(nn.Module):
    """PPO actor: a ~ N(mean(s), exp(log_std)) with a state-independent log-std and orthogonal init."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_sizes: Sequence[int] = (64, 64)):
        super().__init__()
        self.trunk = mlp(obs_dim, hidden_sizes, activation=nn.Tanh)
        for layer in self.trunk:
            if isinstance(layer, nn.Linear):
                orthogonal_init(layer)
        self.mean = orthogonal_init(nn.Linear(hidden_sizes[-1], action_dim), gain=0.01)
        self.log_std = nn.Parameter(torch.zeros(action_dim))

    def distribution_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mean(self.trunk(obs))
        return mean, self.log_std.expand_as(mean)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.distribution_params(obs)
        action = mean + torch.exp(log_std) * torch.randn_like(mean)
        return action, gaussian_log_prob(mean, log_std, action)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        # The state-independent log-std broadcasts over the batch: no expanded copy enters the autograd graph.
        return gaussian_log_prob(self.mean(self.trunk(obs)), self.log_std, action)

    def entropy(self, obs: torch.Tensor) -> torch.Tensor:
        _, log_std = self.distribution_params(obs)
        return (log_std + 0.5 * (1.0 + LOG_2PI)).sum(-1)

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return self.distribution_params(obs)[0]
