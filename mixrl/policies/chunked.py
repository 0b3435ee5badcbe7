"""Action chunking (Zhao et al. 2023; Chi et al. 2023): predict the next `horizon` actions from one observation and
execute the first `execute` of them open-loop, one queue per environment; `ExecuteChunk` makes a whole chunk one
action of an environment (for PPO that fine-tunes a chunked network)."""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from mixrl.policies.nets import mlp


class ChunkedActor(nn.Module):
    """MLP from an observation to a chunk of `horizon` actions in [-1, 1]^A (tanh output), with per-env queues.

    `forward(obs)` is the chunk, shape (B, horizon, A), for training. `deterministic(obs)` acts: a row whose
    queue is empty predicts a chunk and queues its first `execute` actions; every row then pops one action.
    `reset(mask)` empties the queues of the masked rows (all rows without a mask), which must follow each
    reset of the matching environment. The queues are not part of the state dict.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (256, 256),
        horizon: int = 8,
        execute: int = 8,
    ):
        super().__init__()
        if not 1 <= execute <= horizon:
            raise ValueError(f"execute={execute} must be between 1 and horizon={horizon}.")
        self.action_dim, self.horizon, self.execute = action_dim, horizon, execute
        self.net = mlp(obs_dim, hidden_sizes, horizon * action_dim)
        self.queue = torch.zeros(0, execute, action_dim)  # (N, execute, A)
        self.position = torch.zeros(0, dtype=torch.long)  # next action of each queue; == execute: empty

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs)).unflatten(-1, (self.horizon, self.action_dim))

    def reset(self, mask: torch.Tensor | None = None) -> None:
        if mask is None:
            self.position = torch.zeros(0, dtype=torch.long)
        elif len(self.position):
            self.position.masked_fill_(mask.to(self.position.device), self.execute)  # no host sync on a GPU

    @torch.no_grad()
    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        n = obs.shape[0]
        if self.position.shape[0] != n:  # first call, or a batch of another size: start with empty queues
            self.queue = torch.zeros(n, self.execute, self.action_dim, device=obs.device)
            self.position = torch.full((n,), self.execute, dtype=torch.long, device=obs.device)
        empty = self.position >= self.execute
        if obs.device.type == "cpu":
            self._refill_selected(obs, empty)
        else:
            self._refill_masked(obs, empty)
        action = self.queue[torch.arange(n, device=obs.device), self.position]
        self.position += 1
        return action

    def _refill_selected(self, obs: torch.Tensor, empty: torch.Tensor) -> None:
        """Plan only for the rows whose queue is empty (reading `empty` on the host: free on a CPU)."""
        if empty.all():  # every queue at once (envs that reset together): no masked reads and writes
            self.queue = self(obs)[:, : self.execute]
            self.position.zero_()
        elif empty.any():
            self.queue[empty] = self(obs[empty])[:, : self.execute]
            self.position[empty] = 0

    def _refill_masked(self, obs: torch.Tensor, empty: torch.Tensor) -> None:
        """Plan for every row and keep the plans of the empty queues: no host synchronisation (a GPU's choice; the
        rows are computed in a batch of another size, so their last bits may differ from _refill_selected's)."""
        self.queue = torch.where(empty[:, None, None], self(obs)[:, : self.execute], self.queue)
        self.position.masked_fill_(empty, 0)

    def queue_state(self) -> dict[str, torch.Tensor]:
        """The queues, for a checkpoint that must continue exactly."""
        return {"queue": self.queue.clone(), "position": self.position.clone()}

    def load_queue_state(self, state: dict[str, torch.Tensor]) -> None:
        self.queue, self.position = state["queue"].clone(), state["position"].clone()


class ExecuteChunk(gym.Wrapper):
    """Makes one step of `env` a whole chunk: the action is `steps` actions of `env` (flattened, steps * A, each
    within env's bounds), executed in order; the rewards are summed, and the chunk stops where the episode ends."""

    def __init__(self, env: gym.Env, steps: int):
        super().__init__(env)
        space = env.action_space
        self.steps = steps
        self.action_space = gym.spaces.Box(np.tile(space.low, steps), np.tile(space.high, steps), dtype=space.dtype)

    def step(self, action: np.ndarray):
        total = 0.0
        for single in np.reshape(action, (self.steps, -1)):
            obs, reward, terminated, truncated, info = self.env.step(single)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info
