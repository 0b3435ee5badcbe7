"""Replay buffer for off-policy agents: preallocated tensors on the agent's device, vectorised add and sample."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Batch(NamedTuple):
    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor


class ReplayBuffer:
    """Ring buffer of transitions (s, a, r, s', terminated) from several envs at once.

    All fields live in one (capacity, width) float tensor, so `sample` is a single gather. Store the true
    next observation of an ending episode (the factory's `final_obs`) and only `terminated`: truncated
    transitions then bootstrap from s' and terminated ones do not.
    """

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, device: str | torch.device = "cpu"):
        self.capacity, self.obs_dim, self.action_dim = capacity, obs_dim, action_dim
        self.device = torch.device(device)
        self._splits = [obs_dim, action_dim, 1, obs_dim, 1]
        self.data = torch.zeros(capacity, sum(self._splits), device=self.device)
        self.pos, self.size = 0, 0

    def add(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
    ) -> None:
        """Append a batch of transitions, one row per env; `rewards`/`terminated` have shape (num_envs,)."""
        rows = torch.cat(
            [
                obs.reshape(len(obs), -1),
                actions.reshape(len(obs), -1).float(),
                rewards.reshape(-1, 1).float(),
                next_obs.reshape(len(obs), -1),
                terminated.reshape(-1, 1).float(),
            ],
            dim=1,
        )
        n = rows.shape[0]
        idx = (self.pos + torch.arange(n, device=self.device)) % self.capacity
        self.data[idx] = rows
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        """Uniform sample with replacement of `batch_size` stored transitions."""
        idx = torch.randint(0, self.size, (batch_size,), device=self.device, generator=generator)
        obs, actions, rewards, next_obs, terminated = self.data[idx].split(self._splits, dim=1)
        return Batch(obs, actions, rewards.squeeze(1), next_obs, terminated.squeeze(1))

    def state_dict(self) -> dict:
        """The filled rows and the write position (what a resumed run needs)."""
        return {"data": self.data[: self.size].clone(), "pos": self.pos, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if state["data"].shape[1] != self.data.shape[1] or state["size"] > self.capacity:
            raise ValueError(
                f"Replay buffer in checkpoint has shape {tuple(state['data'].shape)}, "
                f"which does not fit capacity {self.capacity} and row width {self.data.shape[1]}."
            )
        self.data[: state["size"]] = state["data"].to(self.device)
        self.pos, self.size = state["pos"], state["size"]
