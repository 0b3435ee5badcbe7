"""Buffers: a replay buffer for off-policy agents and a rollout buffer with GAE for on-policy ones; preallocated
tensors on the agent's device, vectorised add and sample."""

from __future__ import annotations

from typing import NamedTuple

import torch

from mixrl.errors import UsageError


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
        return self._batch(self.data[idx])

    def stored(self) -> Batch:
        """Every stored transition, in storage order (the order of `add` until the buffer wraps around)."""
        return self._batch(self.data[: self.size])

    def _batch(self, rows: torch.Tensor) -> Batch:
        obs, actions, rewards, next_obs, terminated = rows.split(self._splits, dim=1)
        return Batch(obs, actions, rewards.squeeze(1), next_obs, terminated.squeeze(1))

    def state_dict(self) -> dict:
        """The filled rows and the write position (what a resumed run needs)."""
        return {"data": self.data[: self.size].clone(), "pos": self.pos, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if state["data"].shape[1] != self.data.shape[1] or state["size"] > self.capacity:
            raise UsageError(
                f"Replay buffer in checkpoint has shape {tuple(state['data'].shape)}, "
                f"which does not fit capacity {self.capacity} and row width {self.data.shape[1]}."
            )
        self.data[: state["size"]] = state["data"].to(self.device)
        self.pos, self.size = state["pos"], state["size"]


class RolloutBuffer:
    """One on-policy rollout of `num_steps` steps in `num_envs` envs, as preallocated (T, N, ...) tensors.

    Row t holds (s_t, a_t, r_t, s'_t, terminated_t, truncated_t), where s'_t is the true next observation (the
    factory's `final_obs`: the last observation of an episode that ended at t, else s_{t+1}).
    """

    def __init__(
        self, num_steps: int, num_envs: int, obs_dim: int, action_dim: int, device: str | torch.device = "cpu"
    ):
        shape = (num_steps, num_envs)
        self.obs = torch.zeros(*shape, obs_dim, device=device)
        self.actions = torch.zeros(*shape, action_dim, device=device)
        self.rewards = torch.zeros(shape, device=device)
        self.next_obs = torch.zeros(*shape, obs_dim, device=device)
        self.terminated = torch.zeros(shape, dtype=torch.bool, device=device)
        self.truncated = torch.zeros(shape, dtype=torch.bool, device=device)

    def add(
        self,
        t: int,
        obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
        truncated: torch.Tensor,
    ) -> None:
        """Write step t of every env (tensors with a leading num_envs axis)."""
        self.obs[t] = obs
        self.actions[t] = actions
        self.rewards[t] = rewards
        self.next_obs[t] = next_obs
        self.terminated[t] = terminated
        self.truncated[t] = truncated


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    dones: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over (T, N) tensors -> (advantages, lambda-returns).

        delta_t = r_t + gamma (1 - terminated_t) V(s'_t) - V(s_t)
        A_t     = delta_t + gamma lambda (1 - done_t) A_{t+1},   A_T = 0
        R_t     = A_t + V(s_t)

    `next_values[t]` is V of the true next observation s'_t, so a truncated step bootstraps from its final
    observation and a terminated one does not; `dones` (terminated or truncated) stops the recursion at every
    episode end. The last row bootstraps through next_values alone.
    """
    not_terminated = (~terminated).to(rewards.dtype)
    deltas = rewards + gamma * not_terminated * next_values - values
    decay = gamma * gae_lambda * (~dones).to(rewards.dtype)
    advantages = torch.empty_like(deltas)
    advantage = torch.zeros_like(deltas[0])
    for t in reversed(range(deltas.shape[0])):
        advantage = advantages[t] = deltas[t] + decay[t] * advantage
    return advantages, advantages + values
