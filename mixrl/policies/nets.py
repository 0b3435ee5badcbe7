"""Building blocks shared by every head and critic: MLPs, initialisers and vectorised linear ensembles."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

_INPLACE = (nn.ReLU,)


def mlp(
    in_dim: int,
    hidden_sizes: Sequence[int],
    out_dim: int | None = None,
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """Linear + activation for each hidden size, then an optional linear output layer."""
    layers: list[nn.Module] = []
    last = in_dim
    for width in hidden_sizes:
        layers += [
            nn.Linear(last, width),
            activation(inplace=True) if activation in _INPLACE else activation(),
        ]
        last = width
    if out_dim is not None:
        layers.append(nn.Linear(last, out_dim))
    return nn.Sequential(*layers)


def orthogonal_init(layer: nn.Linear, gain: float = math.sqrt(2.0), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights with the given gain and a constant bias (the PPO convention)."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.constant_(layer.bias, bias)
    return layer


class EnsembleLinear(nn.Module):
    """`n` independent linear layers applied as one batched matmul: input (n, B, in) -> (n, B, out).

    Each member is initialised exactly like `nn.Linear(in_features, out_features)`.
    """

    def __init__(self, n: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n, 1, out_features))
        for i in range(n):
            member = nn.Linear(in_features, out_features)
            with torch.no_grad():
                self.weight[i].copy_(member.weight.T)
                self.bias[i, 0].copy_(member.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.shape[2] == 1:
            # A width-1 output as a multiply-and-sum: its backward avoids slow rank-1 batched matmuls.
            return (x * self.weight.transpose(1, 2)).sum(-1, keepdim=True) + self.bias
        # bmm then in-place bias: no expanded copy of the bias, one allocation per layer.
        return torch.bmm(x, self.weight).add_(self.bias)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the features of each of `n` members, with a scale and shift per member: (n, B, width)."""

    def __init__(self, n: int, width: int, eps: float = 1e-5):
        super().__init__()
        self.width, self.eps = width, eps
        self.weight = nn.Parameter(torch.ones(n, 1, width))
        self.bias = nn.Parameter(torch.zeros(n, 1, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias, nn.functional.layer_norm(x, (self.width,), eps=self.eps), self.weight)


class EnsembleMLP(nn.Module):
    """`n` independent ReLU MLPs evaluated together; input (B, in) or (n, B, in), output (n, B, out).

    `layer_norm` puts a LayerNorm before each ReLU (RLPD's critics). `members` (indices) evaluates only those
    members, e.g. a random subset of target critics, without computing the others.
    """

    def __init__(self, n: int, in_dim: int, hidden_sizes: Sequence[int], out_dim: int, layer_norm: bool = False):
        super().__init__()
        self.n = n
        sizes = [in_dim, *hidden_sizes, out_dim]
        self.layers = nn.ModuleList(EnsembleLinear(n, a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.norms = nn.ModuleList(EnsembleLayerNorm(n, width) for width in hidden_sizes) if layer_norm else None

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        if members is not None:
            return torch.func.functional_call(self, self.member_parameters(members), (x,))
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.layers[0].weight.shape[0], -1, -1)
        for i, layer in enumerate(self.layers[:-1]):
            x = layer(x)
            x = (x if self.norms is None else self.norms[i](x)).relu_()
        return self.layers[-1](x)

    def member_parameters(self, members: torch.Tensor) -> dict[str, torch.Tensor]:
        """The parameters of the members `members` only (every parameter has the member axis first)."""
        return {name: p[members] for name, p in self.named_parameters()}
