"""Critics: a Q ensemble evaluated as one batched network, and a state-value network."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mixrl.policies.nets import EnsembleMLP, mlp


class QEnsemble(nn.Module):
    """`n` independent Q(s, a) networks; `forward` returns all n estimates, shape (n, B), or those of `members`
    (indices) only, shape (len(members), B). `layer_norm`: a LayerNorm before each ReLU (RLPD)."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        n: int = 2,
        hidden_sizes: Sequence[int] = (256, 256),
        layer_norm: bool = False,
    ):
        super().__init__()
        self.net = EnsembleMLP(n, obs_dim + action_dim, hidden_sizes, 1, layer_norm)

    def forward(self, obs: torch.Tensor, action: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(torch.cat([obs, action], dim=-1), members).squeeze(-1)


class ValueNetwork(nn.Module):
    """V(s): an MLP with a scalar output."""

    def __init__(self, obs_dim: int, hidden_sizes: Sequence[int] = (256, 256), activation=nn.ReLU):
        super().__init__()
        self.net = mlp(obs_dim, hidden_sizes, 1, activation)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)
