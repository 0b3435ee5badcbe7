"""Q-network over a discrete action set (DQN): Q(s, .) for every action and the greedy action."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mixrl.policies.nets import mlp


class QNetwork(nn.Module):
    """Q(s, .): obs (B, obs_dim) -> (B, num_actions); `deterministic` returns argmax_a Q(s, a), shape (B,).

    With `shared_hidden`, one hidden width-w layer is applied len(hidden_sizes) - 1 times after the input
    layer (weights shared between those applications), as in the original code of the three-body paper;
    by default every hidden layer has its own weights.
    """

    def __init__(
        self,
        obs_dim: int,
        num_actions: int,
        hidden_sizes: Sequence[int] = (200, 200),
        shared_hidden: bool = False,
    ):
        super().__init__()
        hidden_sizes = tuple(hidden_sizes)
        self.shared_hidden = shared_hidden
        if shared_hidden:
            if len(set(hidden_sizes)) != 1:
                raise ValueError(f"shared_hidden needs equal hidden sizes, got {hidden_sizes}")
            width = hidden_sizes[0]
            self.repeats = len(hidden_sizes) - 1
            self.inp = nn.Sequential(nn.Linear(obs_dim, width), nn.ReLU())
            self.hidden = nn.Sequential(nn.Linear(width, width), nn.ReLU())
            self.out = nn.Linear(width, num_actions)
        else:
            self.net = mlp(obs_dim, hidden_sizes, num_actions)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.shared_hidden:
            return self.net(obs)
        h = self.inp(obs)
        for _ in range(self.repeats):
            h = self.hidden(h)
        return self.out(h)

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return self(obs).argmax(-1)
