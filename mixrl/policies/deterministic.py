"""Deterministic actor of TD3-style agents (TD3+BC, A2PR): a = tanh(f(s)), actions in [-1, 1]^A."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mixrl.policies.nets import mlp


class DeterministicActor(nn.Module):
    """pi(s) = tanh(MLP(s)): ReLU hidden layers, one tanh output per action dimension (max_action = 1).

    The env's own bounds are applied outside: `mixrl.evaluation.Policy` rescales [-1, 1] to them.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden_sizes: Sequence[int] = (256, 256)):
        super().__init__()
        self.net = mlp(obs_dim, hidden_sizes, action_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs))

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return self(obs)


def smoothed_target_actions(
    actor_target: DeterministicActor, next_obs: torch.Tensor, noise_std: float, noise_clip: float
) -> torch.Tensor:
    """a' = clip(pibar(s') + clip(N(0, noise_std^2), -noise_clip, noise_clip), -1, 1)."""
    next_actions = actor_target(next_obs)
    noise = (torch.randn_like(next_actions) * noise_std).clamp(-noise_clip, noise_clip)
    return (next_actions + noise).clamp(-1.0, 1.0)
