"""Running normalisers of observations and rewards, on the host (NumPy) and on a torch device.

`TorchVecEnv` (mixrl.envs.factory) uses the host ones, `WarpVecEnv` (mixrl.envs.warp) and the agents the device
ones; both kinds keep NumPy in their state_dict, so a checkpoint's statistics load into either (and into
`mixrl.load_policy`, which applies an observation normaliser's state as a frozen transform).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor


class RunningMeanStd:
    """Running mean and variance over a stream of batches (parallel algorithm of Chan et al.)."""

    def __init__(self, shape: tuple[int, ...], epsilon: float = 1e-4):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = epsilon

    def update(self, batch: np.ndarray) -> None:
        self.update_from_moments(batch.mean(0), batch.var(0), batch.shape[0])

    def update_from_moments(self, batch_mean, batch_var, batch_count: int) -> None:
        """Merges a batch's mean and (population) variance; plain arithmetic, so NumPy arrays or torch tensors."""
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.var, self.count = state["mean"].copy(), state["var"].copy(), state["count"]


@dataclass
class ObsNormalizer:
    """z-scores observations with running statistics and clips them; frozen when `training` is false."""

    shape: tuple[int, ...]
    clip: float = 10.0
    epsilon: float = 1e-8
    training: bool = True
    rms: RunningMeanStd = field(init=False)

    def __post_init__(self):
        self.rms = RunningMeanStd(self.shape)

    def __call__(self, obs: np.ndarray, update: bool = True) -> np.ndarray:
        if self.training and update:
            self.rms.update(obs.reshape(-1, *self.shape))
        z = (obs - self.rms.mean) / np.sqrt(self.rms.var + self.epsilon)
        return np.clip(z, -self.clip, self.clip)

    def state_dict(self) -> dict[str, Any]:
        return {"clip": self.clip, "epsilon": self.epsilon, **self.rms.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clip, self.epsilon = state["clip"], state["epsilon"]
        self.rms.load_state_dict(state)


class DeviceRunningMeanStd(RunningMeanStd):
    """RunningMeanStd on torch tensors of one device; its state_dict holds NumPy like the original."""

    def __init__(self, shape: tuple[int, ...], device: torch.device, epsilon: float = 1e-4):
        self.mean = torch.zeros(shape, dtype=torch.float64, device=device)
        self.var = torch.ones(shape, dtype=torch.float64, device=device)
        self.count = epsilon

    def update(self, batch: torch.Tensor) -> None:
        batch = batch.double()
        self.update_from_moments(batch.mean(0), batch.var(0, correction=0), batch.shape[0])

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.cpu().numpy().copy(), "var": self.var.cpu().numpy().copy(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = torch.as_tensor(state["mean"], dtype=torch.float64, device=self.mean.device).clone()
        self.var = torch.as_tensor(state["var"], dtype=torch.float64, device=self.var.device).clone()
        self.count = state["count"]


class DeviceObsNormalizer(ObsNormalizer):
    """ObsNormalizer on torch tensors of one device (no host round trip): z = clip((obs - mean) / sqrt(var + eps))."""

    def __init__(self, shape: tuple[int, ...], device: torch.device, clip: float = 10.0, epsilon: float = 1e-8):
        self.shape, self.clip, self.epsilon, self.training = shape, clip, epsilon, True
        self.rms = DeviceRunningMeanStd(shape, device)

    def __call__(self, obs: torch.Tensor, update: bool = True) -> torch.Tensor:
        if self.training and update:
            self.rms.update(obs)
        z = (obs - self.rms.mean) / torch.sqrt(self.rms.var + self.epsilon)
        return z.clamp(-self.clip, self.clip).float()


class RewardScaler:
    """Divides rewards by the running std of the discounted return (Gymnasium's NormalizeReward), then clips."""

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, epsilon: float = 1e-8):
        self.gamma, self.clip, self.epsilon = gamma, clip, epsilon
        self.returns = np.zeros(num_envs)
        self.rms = RunningMeanStd(())
        self.training = True

    def __call__(self, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
        if self.training:
            self.returns = self.returns * self.gamma + reward
            self.rms.update(self.returns)
            self.returns[done] = 0.0
        return np.clip(reward / np.sqrt(self.rms.var + self.epsilon), -self.clip, self.clip)

    def state_dict(self) -> dict[str, Any]:
        return {
            "gamma": self.gamma,
            "clip": self.clip,
            "returns": self.returns.copy(),
            **self.rms.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.returns = state["returns"].copy()
        self.rms.load_state_dict(state)


class DeviceRewardScaler:
    """RewardScaler on the device: r / sqrt(Var[discounted return] + eps), clipped."""

    def __init__(self, num_envs: int, gamma: float, device: torch.device, clip: float = 10.0, epsilon: float = 1e-8):
        self.gamma, self.clip, self.epsilon, self.training = gamma, clip, epsilon, True
        self.returns = torch.zeros(num_envs, dtype=torch.float64, device=device)
        self.rms = DeviceRunningMeanStd((), device)

    def __call__(self, reward: Tensor, done: Tensor) -> Tensor:
        if self.training:
            self.returns = self.returns * self.gamma + reward
            self.rms.update(self.returns)
            self.returns = torch.where(done, 0.0, self.returns)
        return (reward / torch.sqrt(self.rms.var + self.epsilon)).clamp(-self.clip, self.clip)

    def state_dict(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "clip": self.clip, "returns": self.returns.cpu().numpy(), **self.rms.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.returns = torch.as_tensor(state["returns"], dtype=torch.float64, device=self.returns.device).clone()
        self.rms.load_state_dict(state)
