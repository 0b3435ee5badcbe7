"""Conditional VAE of a behaviour policy (BCQ's, as used by A2PR): encode (s, a) into z, decode (s, z) into a.

encoder:  [s, a] -> 750 -> 750 (ReLU) -> (mu, log sigma),  log sigma clamped to [-4, 15]
sample:   z = mu + sigma * eps,  eps ~ N(0, I)   (reparameterised)
decoder:  [s, z] -> 750 -> 750 (ReLU) -> tanh, actions in [-1, 1]^A
KL:       KL(N(mu, sigma^2) || N(0, I)) per latent dimension = -0.5 (1 + log sigma^2 - mu^2 - sigma^2)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mixrl.policies.nets import mlp

LOG_STD_MIN, LOG_STD_MAX = -4.0, 15.0


class ConditionalVAE(nn.Module):
    """q(z | s, a) and p(a | s, z); `forward(s, a)` encodes, samples z and decodes: -> (a_hat, mu, sigma)."""

    def __init__(self, obs_dim: int, action_dim: int, latent_dim: int, hidden_sizes: Sequence[int] = (750, 750)):
        super().__init__()
        self.encoder = mlp(obs_dim + action_dim, hidden_sizes)
        self.mean = nn.Linear(hidden_sizes[-1], latent_dim)
        self.log_std = nn.Linear(hidden_sizes[-1], latent_dim)
        self.decoder = mlp(obs_dim + latent_dim, hidden_sizes, action_dim)

    def encode(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, sigma) of q(z | s, a)."""
        h = self.encoder(torch.cat([obs, action], dim=-1))
        return self.mean(h), self.log_std(h).clamp(LOG_STD_MIN, LOG_STD_MAX).exp()

    def decode(self, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.decoder(torch.cat([obs, z], dim=-1)))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, std = self.encode(obs, action)
        z = mean + std * torch.randn_like(std)
        return self.decode(obs, z), mean, std


def kl_to_standard_normal(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) = -0.5 (1 + log sigma^2 - mu^2 - sigma^2), mean over batch and latent dims."""
    return -0.5 * (1.0 + std.pow(2).log() - mean.pow(2) - std.pow(2)).mean()
