"""make_vec_env(): Gymnasium vector environments seen through torch tensors on the agent's device.

The agent acts in [-1, 1]^A for continuous spaces (rescaled here to the env's bounds), receives float32
observations (optionally normalised with running statistics that travel in checkpoints) and, on the step
where a sub-environment ends, the true final observation in `final_obs` (same-step autoreset).
"""

from __future__ import annotations

import copy
import difflib
import importlib
import json
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

import mixrl.envs  # noqa: F401  (registers the mixrl/* ids)
from mixrl.envs.normalizers import ObsNormalizer, RewardScaler
from mixrl.errors import UsageError


def check_env_id(env_id: str) -> None:
    """Raise a ValueError naming close matches when `env_id` is not registered with Gymnasium. An id of the form
    `module:id` (a task in the user's own package) imports `module` first, which registers it, as gym.make does."""
    module, colon, name = env_id.partition(":")
    if colon:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise UsageError(
                f"Environment id {env_id!r}: cannot import module {module!r} ({err}). Install the package that "
                "registers the task, or put its folder on PYTHONPATH."
            ) from None
        env_id = name
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UsageError(
        f"Unknown environment id {env_id!r}.{hint} "
        "List all ids with: python -c 'import gymnasium, mixrl; gymnasium.pprint_registry()'"
    )


def parse_env_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """`--env-kwargs` -> keyword arguments of the env constructor: one JSON object ('{"goal": [0.1, 0.2]}') or
    key=value pairs whose values are read as JSON when they parse (goal_radius=0.05 sparse=true) and as text else."""
    if len(items) == 1 and items[0].lstrip().startswith("{"):
        try:
            kwargs = json.loads(items[0])
        except json.JSONDecodeError as err:
            raise UsageError(f"--env-kwargs {items[0]!r} is not valid JSON ({err}).") from None
        if not isinstance(kwargs, dict):
            raise UsageError(f"--env-kwargs {items[0]!r}: give a JSON object or key=value pairs.")
        return kwargs
    kwargs = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key.isidentifier():
            raise UsageError(f"--env-kwargs {item!r} is not key=value: write e.g. --env-kwargs frame_skip=2 sparse=1.")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


def make_env(env_id: str, render_mode: str | None = None, **env_kwargs: Any) -> gym.Env:
    """gym.make with a clear error for unknown ids, and for --env-kwargs that the env's constructor rejects."""
    check_env_id(env_id)
    if render_mode is not None:
        env_kwargs = {"render_mode": render_mode, **env_kwargs}
    if not env_kwargs:
        return gym.make(env_id)
    try:
        return gym.make(env_id, **env_kwargs)
    except (TypeError, ValueError) as err:
        raise UsageError(f"{env_id} rejects --env-kwargs {env_kwargs}: {err}") from None


def _is_plain_data(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str, np.ndarray, np.generic, np.random.Generator)):
        return True
    if isinstance(value, (list, tuple, deque)):
        return all(_is_plain_data(v) for v in value)
    if isinstance(value, dict):  # e.g. an info dict Gymnasium's env checker keeps between its first steps
        return all(isinstance(k, str) and _is_plain_data(v) for k, v in value.items())
    return False


def _snapshot(obj: Any) -> dict[str, Any]:
    """Deep copies of an object's plain-data attributes (counters, arrays, RNGs), and MuJoCo physics."""
    state = {k: copy.deepcopy(v) for k, v in vars(obj).items() if k != "env" and _is_plain_data(v)}
    if hasattr(obj, "model") and hasattr(obj, "data") and type(obj.data).__name__ == "MjData":
        import mujoco

        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        physics = np.empty(mujoco.mj_stateSize(obj.model, spec))
        mujoco.mj_getState(obj.model, obj.data, physics, spec)
        state["__mujoco_state__"] = physics
    return state


def _restore(obj: Any, state: dict[str, Any]) -> None:
    for key, value in state.items():
        if key == "__mujoco_state__":
            import mujoco

            mujoco.mj_setState(obj.model, obj.data, value, mujoco.mjtState.mjSTATE_INTEGRATION)
            mujoco.mj_forward(obj.model, obj.data)
        else:
            setattr(obj, key, copy.deepcopy(value))


def _wrapper_chain(env: gym.Env) -> list[Any]:
    chain = [env]
    while hasattr(chain[-1], "env"):
        chain.append(chain[-1].env)
    return chain


class TorchVecEnv:
    """A synchronous Gymnasium vector env whose inputs and outputs are torch tensors on `device`.

    step(action) -> (obs, reward, terminated, truncated, final_obs): `obs` is already the reset observation
    for sub-envs that ended, `final_obs` the true last observation (equal to `obs` elsewhere). Finished
    episodes are collected in `episode_returns` / `episode_lengths` until `pop_episodes()`.
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int = 1,
        seed: int = 0,
        device: str | torch.device = "cpu",
        normalize_obs: bool = False,
        normalize_reward_gamma: float | None = None,
        env_kwargs: dict[str, Any] | None = None,
        wrapper: Callable[[gym.Env], gym.Env] | None = None,
    ):
        if num_envs < 1:
            raise UsageError(f"num_envs must be >= 1, got {num_envs}")
        check_env_id(env_id)
        self.env_id, self.num_envs, self.device = env_id, num_envs, torch.device(device)
        self.env_kwargs = dict(env_kwargs or {})
        self.envs = gym.vector.SyncVectorEnv(
            [lambda: (wrapper or (lambda env: env))(make_env(env_id, **self.env_kwargs)) for _ in range(num_envs)],
            autoreset_mode=AutoresetMode.SAME_STEP,
        )
        self.single_observation_space = self.envs.single_observation_space
        self.env_action_space = self.envs.single_action_space
        if not isinstance(self.single_observation_space, gym.spaces.Box):
            raise UsageError(
                f"{env_id}: only Box observation spaces are supported, got {self.single_observation_space}"
            )
        self.continuous = isinstance(self.env_action_space, gym.spaces.Box)
        if self.continuous:
            shape = self.env_action_space.shape
            self.single_action_space = gym.spaces.Box(-1.0, 1.0, shape, np.float32)
            self._low, self._high = self.env_action_space.low, self.env_action_space.high
            if not (np.isfinite(self._low).all() and np.isfinite(self._high).all()):
                raise UsageError(
                    f"{env_id} has unbounded actions {self.env_action_space}; mixrl's continuous agents act in "
                    "[-1, 1] rescaled to the env's bounds: wrap or register the env with finite action bounds."
                )
        else:
            self.single_action_space = self.env_action_space
        self.obs_dim = int(np.prod(self.single_observation_space.shape))
        self.obs_normalizer = ObsNormalizer(self.single_observation_space.shape) if normalize_obs else None
        self.reward_scaler = (
            RewardScaler(num_envs, normalize_reward_gamma) if normalize_reward_gamma is not None else None
        )
        self._seed = seed
        self._returns = np.zeros(num_envs)
        self._lengths = np.zeros(num_envs, np.int64)
        self.episode_returns: list[float] = []
        self.episode_lengths: list[int] = []
        self.single_action_space.seed(seed)

    def _to_tensor(self, x: np.ndarray, dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(x, dtype=dtype).to(self.device)

    def _obs(self, obs: np.ndarray, update: bool = True) -> torch.Tensor:
        obs = obs.reshape(self.num_envs, -1)
        if self.obs_normalizer is not None:
            obs = self.obs_normalizer(obs.reshape(self.num_envs, *self.single_observation_space.shape), update)
        return self._to_tensor(obs.reshape(self.num_envs, -1))

    def reset(self) -> torch.Tensor:
        """Reset every sub-env; the first call seeds them with seed, seed + 1, ..."""
        obs, _ = self.envs.reset(seed=self._seed)
        self._returns[:] = 0
        self._lengths[:] = 0
        return self._obs(obs)

    def to_env_action(self, action: torch.Tensor) -> np.ndarray:
        """Agent action (in [-1, 1] for Box spaces) -> numpy action in the env's own space."""
        action = action.detach().cpu().numpy()
        if self.continuous:
            action = self._low + 0.5 * (np.clip(action, -1.0, 1.0) + 1.0) * (self._high - self._low)
            return action.astype(self.env_action_space.dtype)
        start = getattr(self.env_action_space, "start", 0)  # Discrete(n, start): indices 0..n-1 -> start..start+n-1
        return (action.astype(np.int64) + start).reshape(self.num_envs, *self.env_action_space.shape)

    def step(self, action: torch.Tensor):
        obs, reward, terminated, truncated, info = self.envs.step(self.to_env_action(action))
        self.info = info  # the vector env's info of this step (an ended sub-env's own is under "final_info")
        done = terminated | truncated
        self._returns += reward
        self._lengths += 1
        for i in np.flatnonzero(done):
            self.episode_returns.append(float(self._returns[i]))
            self.episode_lengths.append(int(self._lengths[i]))
            self._returns[i], self._lengths[i] = 0.0, 0
        final_obs = obs
        if done.any():
            final_obs = obs.copy()
            final_obs[info["_final_obs"]] = np.stack(info["final_obs"][info["_final_obs"]])
        if self.reward_scaler is not None:
            reward = self.reward_scaler(reward, done)
        # The final observation is normalised with the statistics of this step but does not update them.
        next_obs_tensor = self._obs(obs)
        final_obs_tensor = next_obs_tensor if not done.any() else self._obs(final_obs, update=False)
        return (
            next_obs_tensor,
            self._to_tensor(reward),
            self._to_tensor(terminated, torch.bool),
            self._to_tensor(truncated, torch.bool),
            final_obs_tensor,
        )

    def pop_episodes(self) -> tuple[list[float], list[int]]:
        """Returns and lengths of the episodes finished since the last call."""
        returns, lengths = self.episode_returns, self.episode_lengths
        self.episode_returns, self.episode_lengths = [], []
        return returns, lengths

    def normalizer_state(self) -> dict[str, Any] | None:
        return None if self.obs_normalizer is None else self.obs_normalizer.state_dict()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: sub-env physics, counters and RNGs, normalisers."""
        return {
            "vector": _snapshot(self.envs),
            "sub_envs": [[_snapshot(w) for w in _wrapper_chain(env)] for env in self.envs.envs],
            "action_space_rng": copy.deepcopy(self.single_action_space.np_random),
            "returns": self._returns.copy(),
            "lengths": self._lengths.copy(),
            "obs_normalizer": self.normalizer_state(),
            "reward_scaler": None if self.reward_scaler is None else self.reward_scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _restore(self.envs, state["vector"])
        for env, chain_state in zip(self.envs.envs, state["sub_envs"]):
            for wrapper, wrapper_state in zip(_wrapper_chain(env), chain_state):
                _restore(wrapper, wrapper_state)
        self.single_action_space._np_random = copy.deepcopy(state["action_space_rng"])
        self._returns, self._lengths = state["returns"].copy(), state["lengths"].copy()
        if self.obs_normalizer is not None:
            self.obs_normalizer.load_state_dict(state["obs_normalizer"])
        if self.reward_scaler is not None:
            self.reward_scaler.load_state_dict(state["reward_scaler"])

    def close(self) -> None:
        self.envs.close()


def make_vec_env(
    env_id: str,
    num_envs: int = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    normalize_obs: bool = False,
    normalize_reward_gamma: float | None = None,
    env_kwargs: dict[str, Any] | None = None,
    backend: Literal["gymnasium", "warp"] = "gymnasium",
    wrapper: Callable[[gym.Env], gym.Env] | None = None,
) -> TorchVecEnv:
    """Vector env of `num_envs` copies of `env_id` (sync), seeded with seed, seed + 1, ..., on `device`.

    backend="warp" steps all copies at once on MuJoCo Warp (mixrl.envs.warp, same interface; warp is imported
    only then), seeded with `seed` for the reset noise of every world. `wrapper` wraps each Gymnasium
    sub-env (e.g. mixrl.envs.interventions.InterventionWrapper); the warp backend takes none.
    """
    if backend == "warp" and wrapper is not None:
        raise UsageError("backend 'warp' takes no Gymnasium wrapper: use backend 'gymnasium'.")
    if backend == "warp":
        from mixrl.envs.warp import check_warp_env_id

        check_warp_env_id(env_id)
        try:
            from mixrl.envs.warp.vec_env import WarpVecEnv
        except ImportError as error:
            raise UsageError(
                f"backend 'warp' needs MuJoCo Warp ({error}); install it with: pip install 'mixrl[warp]'"
            ) from None
        return WarpVecEnv(env_id, num_envs, seed, device, normalize_obs, normalize_reward_gamma, env_kwargs)
    if backend != "gymnasium":
        raise UsageError(f"Unknown backend {backend!r}; use 'gymnasium' or 'warp'.")
    return TorchVecEnv(env_id, num_envs, seed, device, normalize_obs, normalize_reward_gamma, env_kwargs, wrapper)
