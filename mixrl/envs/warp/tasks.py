"""Gymnasium v5 semantics of the MuJoCo locomotion tasks, evaluated in batched torch on all worlds at once.

A `Task` reads its parameters (weights, healthy ranges, reset noise, frame skip, observation options) from
Gymnasium's own env object, so `env_kwargs` such as `ctrl_cost_weight` mean what they mean in Gymnasium. Its
functions take a `Views` of the batched physics state (torch tensors of shape (worlds, ...)). No warp import here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import torch
from torch import Tensor

from mixrl.errors import UsageError

# Gymnasium env class -> env id, for the tasks whose v5 terms are implemented here.
SUPPORTED = {
    "InvertedPendulumEnv": "InvertedPendulum-v5",
    "HalfCheetahEnv": "HalfCheetah-v5",
    "HopperEnv": "Hopper-v5",
    "Walker2dEnv": "Walker2d-v5",
    "AntEnv": "Ant-v5",
}
SUPPORTED_IDS = tuple(SUPPORTED.values())
# Unsupported with a reason worth telling.
UNSUPPORTED_REASONS = {
    "Humanoid-v5": "its XML uses the PGS solver, which MuJoCo Warp does not implement",
}


def check_warp_env_id(env_id: str) -> None:
    """One-line UsageError unless `env_id` is a task of the warp backend."""
    if env_id in SUPPORTED_IDS:
        return
    reason = f" ({UNSUPPORTED_REASONS[env_id]})" if env_id in UNSUPPORTED_REASONS else ""
    raise UsageError(
        f"{env_id!r} is not available with backend 'warp'{reason}; supported: {', '.join(SUPPORTED_IDS)}. "
        "Use --backend gymnasium for other envs."
    )


@dataclass
class Views:
    """Zero-copy torch views of the warp state, one row per world."""

    qpos: Tensor  # (N, nq)
    qvel: Tensor  # (N, nv)
    xpos: Tensor  # (N, nbody, 3) body positions
    cfrc_ext: Tensor  # (N, nbody, 6) external contact wrenches (after rne_postconstraint)


class Task:
    """Observation, reward, termination and reset noise of one Gymnasium v5 MuJoCo task."""

    def __init__(self, env: gym.Env):
        unwrapped = env.unwrapped
        self.kind = type(unwrapped).__name__
        self.env_id = SUPPORTED[self.kind]
        p: dict[str, Any] = vars(unwrapped)
        self.frame_skip, self.dt = unwrapped.frame_skip, float(unwrapped.dt)
        self.max_episode_steps = env.spec.max_episode_steps
        self.init_qpos = torch.as_tensor(unwrapped.init_qpos, dtype=torch.float32)
        self.init_qvel = torch.as_tensor(unwrapped.init_qvel, dtype=torch.float32)
        self.noise = p["_reset_noise_scale"]
        # HalfCheetah and Ant draw qvel ~ noise * N(0, 1); the others qvel ~ U(-noise, noise), as qpos.
        self.normal_qvel = self.kind in ("HalfCheetahEnv", "AntEnv")
        skip = 2 if self.kind == "AntEnv" else 1
        self.skip_qpos = skip * p.get("_exclude_current_positions_from_observation", False)
        self.qvel_clip = 10.0 if self.kind in ("HopperEnv", "Walker2dEnv") else None
        self.forward_weight = p.get("_forward_reward_weight", 1.0)
        self.ctrl_weight = p.get("_ctrl_cost_weight", 0.0)
        self.healthy_reward = p.get("_healthy_reward", 0.0)
        self.terminate_when_unhealthy = p.get("_terminate_when_unhealthy", True)
        self.healthy_z = p.get("_healthy_z_range")
        self.healthy_angle = p.get("_healthy_angle_range")
        self.healthy_state = p.get("_healthy_state_range")
        self.contact_weight = p.get("_contact_cost_weight", 0.0)
        self.contact_range = p.get("_contact_force_range")
        self.include_cfrc = p.get("_include_cfrc_ext_in_observation", False)
        self.uses_cfrc = self.kind == "AntEnv"  # needs rne_postconstraint after the physics steps
        self.main_body = unwrapped.model.body(p["_main_body"]).id if self.kind == "AntEnv" else 0

    def to(self, device: torch.device) -> Task:
        self.init_qpos, self.init_qvel = self.init_qpos.to(device), self.init_qvel.to(device)
        return self

    def position(self, v: Views) -> Tensor:
        """What the forward reward differentiates: x of the root (qpos[0]), or the main body's xy (Ant)."""
        if self.kind == "AntEnv":
            return v.xpos[:, self.main_body, :2].clone()
        return v.qpos[:, 0].clone()

    def observe(self, v: Views) -> Tensor:
        """(N, obs_dim) float32 observation, as the env's _get_obs."""
        qvel = v.qvel if self.qvel_clip is None else v.qvel.clamp(-self.qvel_clip, self.qvel_clip)
        parts = [v.qpos[:, self.skip_qpos :], qvel]
        if self.include_cfrc:
            parts.append(self._contact_forces(v)[:, 1:].flatten(1))
        return torch.cat(parts, 1)

    def _contact_forces(self, v: Views) -> Tensor:
        return v.cfrc_ext.clamp(*self.contact_range)

    def _healthy(self, v: Views) -> Tensor:
        qpos, qvel = v.qpos, v.qvel
        if self.kind == "AntEnv":  # finite state and z of the torso within [min, max]
            z = qpos[:, 2]
            finite = torch.isfinite(qpos).all(1) & torch.isfinite(qvel).all(1)
            return finite & (self.healthy_z[0] <= z) & (z <= self.healthy_z[1])
        z, angle = qpos[:, 1], qpos[:, 2]
        healthy = (self.healthy_z[0] < z) & (z < self.healthy_z[1])
        healthy &= (self.healthy_angle[0] < angle) & (angle < self.healthy_angle[1])
        if self.healthy_state is not None:  # Hopper: every state entry but x and z within the range
            state = torch.cat([qpos[:, 2:], qvel], 1)
            healthy &= ((self.healthy_state[0] < state) & (state < self.healthy_state[1])).all(1)
        return healthy

    def reward_terminated(self, v: Views, before: Tensor, action: Tensor, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Reward and terminated flags of the step that moved `position` from `before`; `action` in env units."""
        if self.kind == "InvertedPendulumEnv":  # reward 1 per step while the pole stays within 0.2 rad
            terminated = ~torch.isfinite(obs).all(1) | (obs[:, 1].abs() > 0.2)
            return (~terminated).float(), terminated
        # r = w_f * dx/dt + healthy_reward * healthy - w_c * |a|^2 [- w_contact * |clip(cfrc_ext)|^2]
        velocity = (self.position(v) - before) / self.dt
        reward = self.forward_weight * (velocity[:, 0] if velocity.dim() == 2 else velocity)
        reward = reward - self.ctrl_weight * action.square().sum(1)
        if self.kind == "HalfCheetahEnv":
            return reward, torch.zeros_like(reward, dtype=torch.bool)
        healthy = self._healthy(v)
        reward = reward + self.healthy_reward * healthy.float()
        if self.kind == "AntEnv":
            reward = reward - self.contact_weight * self._contact_forces(v).square().sum((1, 2))
        terminated = ~healthy if self.terminate_when_unhealthy else torch.zeros_like(healthy)
        return reward, terminated

    def reset_state(self, num: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(qpos, qvel) of `num` fresh episodes: init + U(-noise, noise), qvel Gaussian for HalfCheetah and Ant."""
        device, nq, nv = self.init_qpos.device, self.init_qpos.numel(), self.init_qvel.numel()
        qpos = self.init_qpos + self.noise * (2.0 * torch.rand(num, nq, generator=generator, device=device) - 1.0)
        if self.normal_qvel:
            qvel = self.init_qvel + self.noise * torch.randn(num, nv, generator=generator, device=device)
        else:
            qvel = self.init_qvel + self.noise * (2.0 * torch.rand(num, nv, generator=generator, device=device) - 1.0)
        return qpos, qvel
