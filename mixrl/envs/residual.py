"""Learner-side views of a mixrl vector env with a frozen base policy inside (ResiP, mixrl.policies.residual).

`ResidualVecEnv`: the residual learner's env, whose observation is x = [clip(norm(s)), a_base] and whose action
is the correction Delta. `ChunkVecEnv`: the env of PPO that fine-tunes a whole chunked base, whose action is a chunk.
The agent loads the base (mixrl.pretrained.load_base) and hands it in as an nn.Module; these views only wrap a
`mixrl.envs.factory.TorchVecEnv` (or a WarpVecEnv) with raw observations, and keep every tensor on its device.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from torch import nn

from mixrl.errors import UsageError

# The residual policy is a pure nn.Module of mixrl.policies (the one exception to envs/ not importing policies/).
from mixrl.policies.residual import ResidualPolicy, chunked_model


class _FrozenBaseVecEnv:
    """What both learner-side views of a mixrl vector env (raw observations, a frozen base inside) share: the env's
    sizes and spaces, its episodes, its state, and no normaliser of their own (the base's is fixed, in the policy)."""

    def __init__(self, envs: Any, what: str):
        if envs.normalizer_state() is not None:
            raise ValueError(f"{what} needs raw observations: make the vector env without normalize_obs.")
        self.envs = envs
        self.num_envs, self.device, self.continuous = envs.num_envs, torch.device(envs.device), True
        self.obs_dim = envs.obs_dim
        self.single_observation_space = envs.single_observation_space
        self.single_action_space = envs.single_action_space
        self.env_action_space = envs.env_action_space

    def pop_episodes(self) -> tuple[list[float], list[int]]:
        return self.envs.pop_episodes()

    def normalizer_state(self) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return self.envs.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.envs.load_state_dict(state)

    def close(self) -> None:
        self.envs.close()


class ResidualVecEnv(_FrozenBaseVecEnv):
    """A mixrl vector env (`mixrl.envs.factory.TorchVecEnv`, raw observations) seen by the residual learner: its
    observations are x = [clip(norm(s)), a_base] (obs_dim wide) and its actions Delta; the base acts inside,
    and each sub-env's action queue is emptied when that sub-env resets (same-step autoreset).
    `single_observation_space` stays the env's own: it is what `policy` (base + alpha head) takes.
    The base and the policy's normaliser are moved to the env's device."""

    def __init__(self, envs: Any, base: nn.Module, alpha: float = 0.1):
        if not envs.continuous:
            raise UsageError(f"A residual needs a continuous (Box) action space, not {envs.env_action_space}.")
        super().__init__(envs, "A residual's base")
        action_dim = envs.single_action_space.shape[0]
        policy = ResidualPolicy(base, None, envs.obs_dim, alpha, getattr(base, "obs_normalizer", None))
        self.policy = policy.to(self.device)
        probe = torch.zeros(1, envs.obs_dim, device=self.device)
        if base.obs_dim != envs.obs_dim or base.peek(probe).shape[-1] != action_dim:
            raise UsageError(
                f"The base policy does not fit {envs.env_id}: it was made for another observation or action size "
                f"(this env has {envs.obs_dim} observations and {action_dim} actions)."
            )
        self.obs_dim = envs.obs_dim + action_dim
        self.x = torch.zeros(self.num_envs, self.obs_dim, device=self.device)
        # Whether step() reads `done` on the host to skip the base's look at final observations on steps without
        # an episode end: free on the CPU, a synchronisation per step on an accelerator.
        self.read_done_on_host = self.device.type == "cpu"

    def reset(self) -> torch.Tensor:
        self.policy.reset()
        self.x = self.policy.inputs(self.envs.reset())
        return self.x

    def step(self, delta: torch.Tensor):
        obs, reward, terminated, truncated, final_obs = self.envs.step(self.policy.combine(self.x, delta))
        done = terminated | truncated
        # Without the host read every step takes the masked path below, which gives the same values (an all-false
        # reset is a no-op, and peek leaves the queues as they were).
        if self.read_done_on_host and not done.any():
            self.x = self.policy.inputs(obs)
            return self.x, reward, terminated, truncated, self.x
        final_x = self.policy.inputs(final_obs, advance=False)
        self.policy.reset(done)
        self.x = self.policy.inputs(obs)
        return self.x, reward, terminated, truncated, torch.where(done[:, None], final_x, self.x)

    def state_dict(self) -> dict[str, Any]:
        queues = self.policy.base.queue_state() if hasattr(self.policy.base, "queue_state") else None
        return {"envs": self.envs.state_dict(), "x": self.x.clone(), "queues": queues}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state_dict(), whose tensors may be on another device (a checkpoint is read onto the CPU)."""
        self.envs.load_state_dict(state["envs"])
        self.x = state["x"].to(self.device, copy=True)
        if hasattr(self.policy.base, "load_queue_state"):
            queues = state["queues"]
            if queues is not None:
                queues = {name: t.to(self.device) for name, t in queues.items()}
            self.policy.base.load_queue_state(queues)


class ChunkVecEnv(_FrozenBaseVecEnv):
    """A mixrl vector env of `ExecuteChunk` sub-envs (raw observations) seen by PPO that fine-tunes the chunked network
    of `base` (a FrozenBase): observations are the base's normalised ones and an action is a chunk of
    k = execute actions in [-1, 1]^(k A), what the base would queue. `env_action_space` is the env's own
    single-step space, that of the chunked policy `mixrl.load_policy` rebuilds. The base's normaliser is moved to
    the env's device."""

    def __init__(self, envs: Any, base: nn.Module):
        model = chunked_model(base)
        super().__init__(envs, "A chunked base")
        space, k = envs.env_action_space, model.execute
        if base.obs_dim != envs.obs_dim or space.shape[0] != k * model.action_dim:
            raise UsageError(
                f"The base policy does not fit {envs.env_id}: it was made for another observation or action size, "
                f"or the env's steps are not chunks of its {k} executed actions (wrap the sub-envs in ExecuteChunk)."
            )
        self.base = base.to(self.device)
        self.env_action_space = gym.spaces.Box(
            space.low[: model.action_dim], space.high[: model.action_dim], dtype=space.dtype
        )

    def reset(self) -> torch.Tensor:
        return self.base.normalize(self.envs.reset())

    def step(self, chunk: torch.Tensor):
        obs, reward, terminated, truncated, final_obs = self.envs.step(chunk)
        x = self.base.normalize(obs)
        return x, reward, terminated, truncated, x if final_obs is obs else self.base.normalize(final_obs)
