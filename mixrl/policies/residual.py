"""Residual policies around a frozen base (ResiP, Ankile et al. 2024): the base acts, a small closed-loop policy
corrects it. All actions live in the base's normalised space [-1, 1]^A (min-max of the env's bounds):

    x_t = [clip(norm(s_t), -clip, clip), a^base_t]         a^base_t: the base's action at this step
    a_t = a^base_t + alpha Delta_t,   Delta_t ~ pi_theta(.|x_t)            env action = denorm(clip(a_t, -1, 1))

The learner (PPO, SAC) sees an environment whose observation is x_t and whose action is Delta_t
(`ResidualVecEnv`); log-probabilities are those of the unscaled Delta. The base is any frozen module with
`deterministic(obs) -> [-1, 1]^A` on raw observations: `FrozenBase` (a mixrl actor and its normaliser, e.g. a
chunked BC policy with one action queue per env) or `SB3Base` (a Stable-Baselines3 zip).
`ResidualPolicy.deterministic` (base + alpha mean) is what `mixrl.load_policy` rebuilds from a residual run.

The baseline that fine-tunes the whole base instead (`mixrl ppo --finetune-base`, a chunked BC base) acts one whole
chunk per step (`ChunkVecEnv` over `mixrl.policies.chunked.ExecuteChunk` sub-envs): a ~ N(mu(norm(s)), sigma^2),
mu the network's k executed actions (`ChunkGaussianActor`), all of its weights trained.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from mixrl.errors import UsageError
from mixrl.policies.chunked import ChunkedActor
from mixrl.policies.gaussian import DiagonalGaussianActor
from mixrl.policies.nets import mlp


def _normalizer_buffers(module: nn.Module, normalizer: dict[str, Any] | None, obs_dim: int, clip: float) -> None:
    """Register mean and std buffers of mixrl's observation-normaliser dict (identity, unclipped, when None)."""
    mean, std, clip = np.zeros(obs_dim), np.ones(obs_dim), clip if normalizer is not None else np.inf
    if normalizer is not None:
        mean, std = normalizer["mean"], np.sqrt(normalizer["var"] + normalizer["epsilon"])
        clip = min(clip, float(normalizer["clip"]))
    module.register_buffer("obs_mean", torch.as_tensor(np.asarray(mean).reshape(-1), dtype=torch.float32))
    module.register_buffer("obs_std", torch.as_tensor(np.asarray(std).reshape(-1), dtype=torch.float32))
    module.obs_clip = clip


def _normalize(module: nn.Module, obs: torch.Tensor) -> torch.Tensor:
    return ((obs - module.obs_mean) / module.obs_std).clamp(-module.obs_clip, module.obs_clip)


class FrozenBase(nn.Module):
    """A frozen mixrl actor `model` on raw observations: obs -> clip(model.deterministic(norm(obs)), -1, 1).

    `obs_normalizer` is the checkpoint's normaliser dict (None: none). Stateful actors (action chunks) keep
    their queues; `reset(mask)` empties those of the masked envs and `peek(obs)` acts without advancing them.
    """

    def __init__(self, model: nn.Module, obs_dim: int, obs_normalizer: dict[str, Any] | None = None):
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        self.obs_dim, self.obs_normalizer = obs_dim, obs_normalizer
        _normalizer_buffers(self, obs_normalizer, obs_dim, np.inf)

    @torch.no_grad()
    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return self.model.deterministic(_normalize(self, obs)).clamp(-1.0, 1.0)

    def reset(self, mask: torch.Tensor | None = None) -> None:
        if hasattr(self.model, "reset"):
            self.model.reset(mask)

    def peek(self, obs: torch.Tensor) -> torch.Tensor:
        if not hasattr(self.model, "queue_state"):
            return self.deterministic(obs)
        state = self.model.queue_state()
        action = self.deterministic(obs)
        self.model.load_queue_state(state)
        return action

    def queue_state(self) -> dict[str, torch.Tensor] | None:
        return self.model.queue_state() if hasattr(self.model, "queue_state") else None

    def load_queue_state(self, state: dict[str, torch.Tensor] | None) -> None:
        if state is not None:
            self.model.load_queue_state(state)


class SB3Base(nn.Module):
    """The deterministic policy of a Stable-Baselines3 zip (its bytes, so that a checkpoint is self-contained),
    as obs -> [-1, 1]^A: squashing policies (SAC, TD3) already act there; the others (PPO, A2C) act in the env's
    bounds, clipped and rescaled. Observations reach it raw (a VecNormalize wrapper is not in the zip)."""

    def __init__(self, zip_bytes: bytes):
        super().__init__()
        from stable_baselines3.common.save_util import load_from_zip_file

        try:
            data, params, _ = load_from_zip_file(io.BytesIO(zip_bytes), device="cpu")
        except Exception as err:
            raise UsageError(f"Not a readable Stable-Baselines3 model zip ({err}).") from err
        space = data["action_space"]
        if not isinstance(space, gym.spaces.Box):
            raise UsageError(f"The base acts in {space}; a residual needs a continuous (Box) action space.")
        # The policy alone, as the algorithm's load() builds it (the learning-rate schedule is never used).
        policy = data["policy_class"](data["observation_space"], space, lambda _: 0.0, **data.get("policy_kwargs", {}))
        policy.load_state_dict(params["policy"])
        self.policy = policy.requires_grad_(False).eval()
        self.obs_dim = int(np.prod(data["observation_space"].shape))
        self.register_buffer("low", torch.as_tensor(space.low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(space.high, dtype=torch.float32))

    @torch.no_grad()
    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        action = self.policy._predict(obs, deterministic=True).float()
        if not self.policy.squash_output:
            action = 2.0 * (action.clamp(self.low, self.high) - self.low) / (self.high - self.low) - 1.0
        return action.clamp(-1.0, 1.0)

    def peek(self, obs: torch.Tensor) -> torch.Tensor:
        return self.deterministic(obs)


def _add_log_std(module: nn.Module, size: int, value: float, learn: bool) -> None:
    """A state-independent log-std `module.log_std` of `size` entries: a parameter when learned, else a buffer."""
    log_std = torch.full((size,), float(value))
    if learn:
        module.log_std = nn.Parameter(log_std)
    else:
        module.register_buffer("log_std", log_std)


class ResidualGaussianActor(DiagonalGaussianActor):
    """Delta ~ N(mu_theta(x), diag(exp(2 log_std))): PPO's Gaussian actor, initialised as ResiP does: a ReLU MLP with
    Kaiming-normal hidden layers and an all-zero, bias-free output layer (mu = 0 at initialisation), and a
    state-independent log-std, fixed or learned."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (256, 256),
        log_std: float = -1.0,
        learn_std: bool = False,
    ):
        nn.Module.__init__(self)  # the layers differ from DiagonalGaussianActor's; its distribution methods apply
        self.trunk = mlp(obs_dim, hidden_sizes)
        for layer in self.trunk:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        self.mean = nn.Linear(hidden_sizes[-1], action_dim, bias=False)
        nn.init.zeros_(self.mean.weight)
        _add_log_std(self, action_dim, log_std, learn_std)


class ResidualPolicy(nn.Module):
    """base + alpha head on raw observations; `head` acts on x = [clip(norm(obs)), a_base] (see module docstring).

    The residual's observation normaliser is the base's where it has one (`obs_normalizer`, then clipped to
    +-obs_clip), else the identity.
    `head` may be attached after construction (the learner builds it for the input size of `ResidualVecEnv`).
    """

    def __init__(
        self,
        base: nn.Module,
        head: nn.Module | None,
        obs_dim: int,
        alpha: float = 0.1,
        obs_normalizer: dict[str, Any] | None = None,
        obs_clip: float = 3.0,
    ):
        super().__init__()
        self.base, self.head, self.alpha = base, head, alpha
        self.spec_kwargs = {"obs_dim": obs_dim, "alpha": alpha, "obs_normalizer": obs_normalizer, "obs_clip": obs_clip}
        _normalizer_buffers(self, obs_normalizer, obs_dim, obs_clip)

    def inputs(self, obs: torch.Tensor, advance: bool = True) -> torch.Tensor:
        """x = [clip(norm(obs)), a_base]; `advance=False` leaves the base's action queues as they were."""
        base_action = self.base.deterministic(obs) if advance else self.base.peek(obs)
        return torch.cat([_normalize(self, obs), base_action], -1)

    def combine(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """a = a_base + alpha Delta, a_base the last A entries of x."""
        return x[..., -delta.shape[-1] :] + self.alpha * delta

    @torch.no_grad()
    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        x = self.inputs(obs)
        return self.combine(x, self.head.deterministic(x))

    def reset(self, mask: torch.Tensor | None = None) -> None:
        if hasattr(self.base, "reset"):
            self.base.reset(mask)


class _FrozenBaseVecEnv:
    """What both learner-side views of a mixrl vector env (raw observations, a frozen base inside) share: the env's
    sizes and spaces, its episodes, its state, and no normaliser of their own (the base's is fixed, in the policy)."""

    def __init__(self, envs: Any, what: str):
        if envs.normalizer_state() is not None:
            raise ValueError(f"{what} needs raw observations: make the vector env without normalize_obs.")
        self.envs = envs
        self.num_envs, self.device, self.continuous = envs.num_envs, envs.device, True
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
    `single_observation_space` stays the env's own: it is what `policy` (base + alpha head) takes."""

    def __init__(self, envs: Any, base: nn.Module, alpha: float = 0.1):
        if not envs.continuous:
            raise UsageError(f"A residual needs a continuous (Box) action space, not {envs.env_action_space}.")
        super().__init__(envs, "A residual's base")
        action_dim = envs.single_action_space.shape[0]
        if base.obs_dim != envs.obs_dim or base.peek(torch.zeros(1, envs.obs_dim)).shape[-1] != action_dim:
            raise UsageError(
                f"The base policy does not fit {envs.env_id}: it was made for another observation or action size "
                f"(this env has {envs.obs_dim} observations and {action_dim} actions)."
            )
        self.policy = ResidualPolicy(base, None, envs.obs_dim, alpha, getattr(base, "obs_normalizer", None))
        self.obs_dim = envs.obs_dim + action_dim
        self.x = torch.zeros(self.num_envs, self.obs_dim, device=self.device)

    def reset(self) -> torch.Tensor:
        self.policy.reset()
        self.x = self.policy.inputs(self.envs.reset())
        return self.x

    def step(self, delta: torch.Tensor):
        obs, reward, terminated, truncated, final_obs = self.envs.step(self.policy.combine(self.x, delta))
        done = terminated | truncated
        if not done.any():  # most steps: no queue to empty, no final observation apart from obs
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
        self.envs.load_state_dict(state["envs"])
        self.x = state["x"].clone()
        if hasattr(self.policy.base, "load_queue_state"):
            self.policy.base.load_queue_state(state["queues"])


class ExecutedActions(nn.Module):
    """chunk (..., H, A) -> its first `execute` actions, flattened: (..., execute * A)."""

    def __init__(self, execute: int):
        super().__init__()
        self.execute = execute

    def forward(self, chunk: torch.Tensor) -> torch.Tensor:
        return chunk[..., : self.execute, :].flatten(-2)


class ChunkGaussianActor(DiagonalGaussianActor):
    """PPO's Gaussian over whole chunks, for fine-tuning a chunked BC network: a ~ N(mu(s), diag(exp(2 log_std)))
    with mu(s) the first `execute` actions of `model`'s chunk (flattened), every weight of `model` trained, and a
    state-independent log-std, fixed or learned. Its deterministic action is `model`'s executed chunk."""

    def __init__(self, model: ChunkedActor, log_std: float = -3.3, learn_std: bool = False):
        nn.Module.__init__(self)  # DiagonalGaussianActor's distribution methods on mean(trunk(s))
        self.trunk, self.mean = model, ExecutedActions(model.execute)
        _add_log_std(self, model.execute * model.action_dim, log_std, learn_std)


def chunked_model(base: nn.Module) -> ChunkedActor:
    """The chunked BC network of a FrozenBase, or a one-line error for any other base."""
    model = getattr(base, "model", None)
    if not isinstance(model, ChunkedActor):
        raise UsageError(
            "--finetune-base fine-tunes a chunked BC network: give --base-policy a `mixrl bc` run or checkpoint "
            f"(this base is {type(model if model is not None else base).__name__})."
        )
    return model


class ChunkVecEnv(_FrozenBaseVecEnv):
    """A mixrl vector env of `ExecuteChunk` sub-envs (raw observations) seen by PPO that fine-tunes the chunked network
    of `base` (a FrozenBase): observations are the base's normalised ones and an action is a chunk of
    k = execute actions in [-1, 1]^(k A), what the base would queue. `env_action_space` is the env's own
    single-step space, that of the chunked policy `mixrl.load_policy` rebuilds."""

    def __init__(self, envs: Any, base: nn.Module):
        model = chunked_model(base)
        super().__init__(envs, "A chunked base")
        space, k = envs.env_action_space, model.execute
        if base.obs_dim != envs.obs_dim or space.shape[0] != k * model.action_dim:
            raise UsageError(
                f"The base policy does not fit {envs.env_id}: it was made for another observation or action size, "
                f"or the env's steps are not chunks of its {k} executed actions (wrap the sub-envs in ExecuteChunk)."
            )
        self.base = base
        self.env_action_space = gym.spaces.Box(
            space.low[: model.action_dim], space.high[: model.action_dim], dtype=space.dtype
        )

    def reset(self) -> torch.Tensor:
        return _normalize(self.base, self.envs.reset())

    def step(self, chunk: torch.Tensor):
        obs, reward, terminated, truncated, final_obs = self.envs.step(chunk)
        x = _normalize(self.base, obs)
        return x, reward, terminated, truncated, x if final_obs is obs else _normalize(self.base, final_obs)
