"""WarpVecEnv: N worlds of one Gymnasium MuJoCo task stepped together by MuJoCo Warp, seen through torch tensors.

Same interface as mixrl.envs.factory.TorchVecEnv (same-step autoreset with the true final observation, actions in
[-1, 1], running normalisation whose state_dict load_policy understands). Controls are written into, and the state
is read from, zero-copy torch views of warp's arrays (`wp.to_torch`); observations, rewards, resets and the
normalisers stay on the device. On CUDA the frame_skip physics steps are one captured CUDA graph (see
`capture_physics` for what runs where one cannot be captured; `step_mode` says which).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import mujoco_warp as mjw
import numpy as np
import torch
import warp as wp
from torch import Tensor

from mixrl.envs.normalizers import DeviceObsNormalizer, DeviceRewardScaler
from mixrl.envs.warp.contact import install_mujoco_c_plane_capsule_frame
from mixrl.envs.warp.tasks import Task, Views, check_warp_env_id
from mixrl.errors import UsageError


def check_cuda_driver(device: torch.device) -> None:
    """Refuse a CUDA device that warp cannot see, naming the driver it needs: without one Warp lists no CUDA device
    (and explains why only in info messages, which the env silences)."""
    if device.type != "cuda" or wp.get_cuda_device_count() > 0:
        return
    toolkit, driver = wp.get_cuda_toolkit_version(), wp.get_cuda_driver_version()
    if toolkit is None:
        raise UsageError(
            f"--device {device}: this warp-lang {wp.__version__} was built without CUDA; install a CUDA build of "
            "warp-lang, or use --device cpu or --backend gymnasium."
        )
    need = (toolkit[0], 0)  # warp relies on CUDA's minor-version compatibility: any driver of its major version
    found = "no NVIDIA driver" if driver is None else f"a driver for CUDA {driver[0]}.{driver[1]}"
    if driver is not None and driver >= need:
        found += ", but no visible GPU (CUDA_VISIBLE_DEVICES?)"
    raise UsageError(
        f"--device {device}: warp-lang {wp.__version__} (built with CUDA {toolkit[0]}.{toolkit[1]}) sees no CUDA "
        f"device; it needs an NVIDIA driver for CUDA {need[0]}.{need[1]} or newer (found {found}). Update the "
        "driver, install a warp-lang built for your CUDA version, or use --device cpu or --backend gymnasium."
    )


def capture_physics(physics: Callable[[], None], wp_device: str, opt: Any) -> tuple[Any, str]:
    """Capture `physics` (MuJoCo Warp's steps) on a CUDA device as one CUDA graph; returns (graph or None, mode).

    Checked first: a memory pool (the step allocates temporaries, which a capture can only take from a pool) and
    conditional graph nodes (CUDA 12.4+), with which MuJoCo Warp's default `opt.graph_conditional` ends the solver
    loop on the device once every world has converged. Without them, or when that capture fails, the capture is
    retried with `opt.graph_conditional = False` (the solver runs its `opt.iterations` in the graph). If no graph
    can be captured, the kernels are launched one by one with MuJoCo Warp's default (each solver iteration then
    reads its convergence flag on the host; a fixed count of iterations would cost more launches than that)."""
    default, failures = opt.graph_conditional, []
    attempts = [default, False] if default else [False]
    if not wp.is_mempool_supported(wp_device):
        failures.append("no CUDA memory pool on the device (is the nvidia-uvm driver loaded?)")
        attempts = []
    elif not wp.is_mempool_enabled(wp_device):
        wp.set_mempool_enabled(wp_device, True)
    if attempts and attempts[0] and not wp.is_conditional_graph_supported():
        failures.append("no conditional graph nodes (they need CUDA 12.4+)")
        attempts = [False]
    for conditional in attempts:
        opt.graph_conditional = conditional
        try:
            physics()  # builds and loads this variant's kernels, which a capture cannot do
            with wp.ScopedCapture(wp_device) as capture:
                physics()
        except Exception as error:  # any failure to capture leaves the fallbacks
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            failures.append(f"capture {'with' if conditional else 'without'} conditional nodes failed: {reason}")
            continue
        mode = "one CUDA graph per step" + ("" if conditional else " (solver without conditional graph nodes)")
        return capture.graph, mode + (f"; {'; '.join(failures)}" if failures else "")
    opt.graph_conditional = default
    return None, "kernels launched one by one, no CUDA graph (slower): " + "; ".join(failures)


_ANNOUNCED: set[str] = set()


def announce(message: str) -> None:
    """Print `message` to stderr, once per process."""
    if message not in _ANNOUNCED:
        _ANNOUNCED.add(message)
        print(message, file=sys.stderr, flush=True)


def warp_device(device: torch.device) -> str:
    """Warp's name for a torch device: "cpu" or "cuda:<index>"."""
    if device.type == "cpu":
        return "cpu"
    return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"


class WarpVecEnv:
    """`num_envs` worlds of a Gymnasium v5 MuJoCo task on MuJoCo Warp, same interface as TorchVecEnv.

    step(action) -> (obs, reward, terminated, truncated, final_obs), all torch tensors on `device`; worlds whose
    episode ended are reset within the step (reset masks, no host round trip) and `final_obs` holds their true
    last observation. Reset noise comes from a torch generator seeded with `seed` on every reset().
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
        njmax: int | None = None,
    ):
        if num_envs < 1:
            raise UsageError(f"num_envs must be >= 1, got {num_envs}")
        check_warp_env_id(env_id)
        # Set when an env is built, not at import: warp prints a banner and a line per kernel module it loads
        # (dozens per task), and MuJoCo C's contact frame gives Gymnasium's friction on capsule feet (contact.py).
        wp.config.log_level = wp.LOG_WARNING
        install_mujoco_c_plane_capsule_frame()
        self.env_id, self.num_envs, self.device = env_id, num_envs, torch.device(device)
        check_cuda_driver(self.device)
        self.env_kwargs = dict(env_kwargs or {})
        # Gymnasium's own env provides the compiled XML model, the spaces and the task's parameters.
        gym_env = gym.make(env_id, **self.env_kwargs)
        self.task = Task(gym_env).to(self.device)
        mjm = gym_env.unwrapped.model
        self.single_observation_space = gym_env.observation_space
        self.env_action_space = gym_env.action_space
        gym_env.close()
        self.continuous = True
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, self.env_action_space.shape, np.float32)
        self.single_action_space.seed(seed)
        self._low = torch.as_tensor(self.env_action_space.low, device=self.device)
        self._high = torch.as_tensor(self.env_action_space.high, device=self.device)
        self.obs_dim = int(np.prod(self.single_observation_space.shape))

        self._wp_device = warp_device(self.device)
        with wp.ScopedDevice(self._wp_device):
            self.model = mjw.put_model(mjm)
            self.data = mjw.make_data(mjm, nworld=num_envs, njmax=njmax)
        d = self.data
        self._views = Views(wp.to_torch(d.qpos), wp.to_torch(d.qvel), wp.to_torch(d.xpos), wp.to_torch(d.cfrc_ext))
        self._ctrl = wp.to_torch(d.ctrl)
        # Carried between steps besides qpos and qvel: the solver's warm start and the time.
        self._qacc_warmstart, self._time = wp.to_torch(d.qacc_warmstart), wp.to_torch(d.time)
        self._graph, self._torch_stream = None, None
        self.step_mode = "kernels launched one by one (CPU)"  # how a step runs: see capture_physics
        if self.device.type == "cuda":  # the frame_skip steps as one graph
            self._graph, self.step_mode = capture_physics(self._physics, self._wp_device, self.model.opt)
            announce(f"MuJoCo Warp on {self._wp_device}: {self.step_mode}")
        wp.synchronize_device(self._wp_device)  # torch reads the arrays next, on its own stream

        self.obs_normalizer = (
            DeviceObsNormalizer(self.single_observation_space.shape, self.device) if normalize_obs else None
        )
        self.reward_scaler = (
            DeviceRewardScaler(num_envs, normalize_reward_gamma, self.device)
            if normalize_reward_gamma is not None
            else None
        )
        self._seed = seed
        self._generator = torch.Generator(self.device)
        self._elapsed = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self._returns = torch.zeros(num_envs, dtype=torch.float64, device=self.device)
        self._lengths = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self._position = self.task.position(self._views)  # what the next step's forward reward starts from
        # Unread steps: (done, return, length) rows of shape (3, N), float64, each on the host on CUDA (copied without
        # waiting) with the event that marks the copy's end.
        self._pending: list[tuple[Tensor, Any]] = []
        self.episode_returns: list[float] = []
        self.episode_lengths: list[int] = []

    def _physics(self) -> None:
        """frame_skip MuJoCo steps of every world (then the contact wrenches cfrc_ext, for Ant)."""
        with wp.ScopedDevice(self._wp_device):
            for _ in range(self.task.frame_skip):
                mjw.step(self.model, self.data)
            if self.task.uses_cfrc:
                mjw.rne_postconstraint(self.model, self.data)

    @property
    def cuda_graph(self) -> bool:
        """Whether a step replays one captured CUDA graph."""
        return self._graph is not None

    def _simulate(self) -> None:
        if self.device.type != "cuda":
            self._physics()
            return
        # Order warp's work after torch's writes of ctrl and torch's reads after it, without a host sync.
        current = torch.cuda.current_stream(self.device)
        if self._torch_stream is None or self._torch_stream.cuda_stream != current.cuda_stream:
            self._torch_stream = wp.stream_from_torch(current)
        torch_stream, warp_stream = self._torch_stream, wp.get_stream(self._wp_device)
        warp_stream.wait_stream(torch_stream)
        if self._graph is not None:
            wp.capture_launch(self._graph, warp_stream)
        else:
            self._physics()
        torch_stream.wait_stream(warp_stream)

    def _reset_worlds(self, mask: Tensor) -> None:
        """Fresh episodes in the worlds where `mask` is true (mj_resetData + reset_model of Gymnasium)."""
        v = self._views
        qpos, qvel = self.task.reset_state(self.num_envs, self._generator)
        rows = mask[:, None]
        v.qpos.copy_(torch.where(rows, qpos, v.qpos))
        v.qvel.copy_(torch.where(rows, qvel, v.qvel))
        self._qacc_warmstart.copy_(torch.where(rows, 0.0, self._qacc_warmstart))
        self._time.copy_(torch.where(mask, 0.0, self._time))
        v.cfrc_ext.copy_(torch.where(rows[..., None], 0.0, v.cfrc_ext))
        # mj_forward after the reset puts a free-joint root body at qpos[:3] (Ant's forward reward reads xpos).
        if self.task.kind == "AntEnv":
            v.xpos[:, self.task.main_body].copy_(torch.where(rows, qpos[:, :3], v.xpos[:, self.task.main_body]))
        moved = mask.view(-1, *[1] * (self._position.dim() - 1))
        self._position = torch.where(moved, self.task.position(v), self._position)
        self._elapsed.masked_fill_(mask, 0)

    def _obs(self, obs: Tensor, update: bool = True) -> Tensor:
        return obs if self.obs_normalizer is None else self.obs_normalizer(obs, update)

    def reset(self) -> Tensor:
        """Reset every world; each call re-seeds the reset noise with `seed`."""
        self._generator.manual_seed(self._seed)
        self._reset_worlds(torch.ones(self.num_envs, dtype=torch.bool, device=self.device))
        self._returns.zero_()
        self._lengths.zero_()
        return self._obs(self.task.observe(self._views))

    def scale_action(self, action: Tensor) -> Tensor:
        """Agent action in [-1, 1] -> env units (the actuators' control range), on the device."""
        return self._low + 0.5 * (action.clamp(-1.0, 1.0) + 1.0) * (self._high - self._low)

    def to_env_action(self, action: Tensor) -> np.ndarray:
        """Agent action (in [-1, 1]) -> numpy action in the env's own space."""
        return self.scale_action(action.detach().to(self.device)).cpu().numpy().astype(self.env_action_space.dtype)

    def step(self, action: Tensor):
        v = self._views
        env_action = self.scale_action(action.detach().to(self.device, torch.float32))
        self._ctrl.copy_(env_action)
        self._simulate()
        raw_obs = self.task.observe(v)
        reward, terminated = self.task.reward_terminated(v, self._position, env_action, raw_obs)
        self._position = self.task.position(v)
        self._elapsed += 1
        truncated = self._elapsed >= self.task.max_episode_steps
        done = terminated | truncated
        self._returns += reward
        self._lengths += 1
        self._record_episodes(done)
        self._returns.masked_fill_(done, 0.0)
        self._lengths.masked_fill_(done, 0)
        self._reset_worlds(done)
        if self.reward_scaler is not None:
            reward = self.reward_scaler(reward.double(), done)
        # The final observation is normalised with the statistics of this step but does not update them.
        next_obs = self._obs(self.task.observe(v))
        final_obs = torch.where(done[:, None], self._obs(raw_obs, update=False), next_obs)
        return next_obs, reward.float(), terminated, truncated, final_obs

    def _record_episodes(self, done: Tensor) -> None:
        """Queue this step's (done, return, length) of every world for pop_episodes; on CUDA a copy to pinned host
        memory that the host does not wait for."""
        rows = torch.stack([done.double(), self._returns, self._lengths.double()])
        if self.device.type != "cuda":
            self._pending.append((rows, None))
            return
        host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
        host.copy_(rows, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record(torch.cuda.current_stream(self.device))
        self._pending.append((host, copied))

    def _read_episodes(self, wait: bool = True) -> None:
        """Move the finished episodes of the queued steps into episode_returns / episode_lengths: all of them
        (`wait`: on CUDA one synchronisation with the last step), or those whose copy has arrived."""
        ready = len(self._pending)
        if not wait:
            arrived = [copied is None or copied.query() for _, copied in self._pending]
            ready = arrived.index(False) if False in arrived else ready
        if ready == 0:
            return
        last_copy = self._pending[ready - 1][1]
        if last_copy is not None:
            last_copy.synchronize()  # the copies end in stream order
        done, returns, lengths = torch.stack([rows for rows, _ in self._pending[:ready]]).unbind(1)
        del self._pending[:ready]
        finished = done.bool()
        self.episode_returns += returns[finished].tolist()
        self.episode_lengths += lengths[finished].long().tolist()

    def pop_episodes(self, wait: bool = False) -> tuple[list[float], list[int]]:
        """Returns and lengths of the episodes finished since the last call, in the order they finished.

        On CUDA this waits for nothing (agents call it every step): it returns the episodes whose read-back has
        arrived, the others at a later call (state_dict and close keep them). `wait=True` waits for the device to
        finish the last step (one host synchronisation) and returns every episode finished so far."""
        self._read_episodes(wait)
        returns, lengths = self.episode_returns, self.episode_lengths
        self.episode_returns, self.episode_lengths = [], []
        return returns, lengths

    def normalizer_state(self) -> dict[str, Any] | None:
        return None if self.obs_normalizer is None else self.obs_normalizer.state_dict()

    def _state_tensors(self) -> dict[str, Tensor]:
        v = self._views
        return {
            "qpos": v.qpos,
            "qvel": v.qvel,
            "xpos": v.xpos,
            "cfrc_ext": v.cfrc_ext,
            "qacc_warmstart": self._qacc_warmstart,
            "time": self._time,
            "elapsed": self._elapsed,
            "returns": self._returns,
            "lengths": self._lengths,
            "position": self._position,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: world states, counters, the reset generator, normalisers, and the
        finished episodes that pop_episodes has not returned yet."""
        self._read_episodes()
        return {
            "tensors": {name: t.detach().cpu().clone() for name, t in self._state_tensors().items()},
            "generator": self._generator.get_state(),
            "action_space_rng": self.single_action_space.np_random.bit_generator.state,
            "obs_normalizer": self.normalizer_state(),
            "reward_scaler": None if self.reward_scaler is None else self.reward_scaler.state_dict(),
            "episodes": {"returns": list(self.episode_returns), "lengths": list(self.episode_lengths)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        targets = self._state_tensors()
        for name, value in state["tensors"].items():
            if name == "position":
                self._position = value.to(self.device).clone()
            else:
                targets[name].copy_(value.to(self.device))
        self._pending = []
        episodes = state.get("episodes", {"returns": [], "lengths": []})  # absent from older checkpoints
        self.episode_returns, self.episode_lengths = list(episodes["returns"]), list(episodes["lengths"])
        self._generator.set_state(state["generator"])
        self.single_action_space.np_random.bit_generator.state = state["action_space_rng"]
        if self.obs_normalizer is not None:
            self.obs_normalizer.load_state_dict(state["obs_normalizer"])
        if self.reward_scaler is not None:
            self.reward_scaler.load_state_dict(state["reward_scaler"])

    def close(self) -> None:
        """Release the CUDA graph; episodes finished before remain for pop_episodes."""
        self._read_episodes()
        self._graph = None
