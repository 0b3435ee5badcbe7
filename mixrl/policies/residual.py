"""Residual policies around a frozen base (ResiP, Ankile et al. 2024): the base acts, a small closed-loop policy
corrects it. All actions live in the base's normalised space [-1, 1]^A (min-max of the env's bounds):

    x_t = [clip(norm(s_t), -clip, clip), a^base_t]         a^base_t: the base's action at this step
    a_t = a^base_t + alpha Delta_t,   Delta_t ~ pi_theta(.|x_t)            env action = denorm(clip(a_t, -1, 1))

The learner (PPO, SAC) sees an environment whose observation is x_t and whose action is Delta_t
(`mixrl.envs.residual.ResidualVecEnv`); log-probabilities are those of the unscaled Delta. The base is any frozen
module with `deterministic(obs) -> [-1, 1]^A` on raw observations: `FrozenBase` (a mixrl actor and its normaliser,
e.g. a chunked BC policy with one action queue per env) or `SB3Base` (a Stable-Baselines3 zip).
`ResidualPolicy.deterministic` (base + alpha mean) is what `mixrl.load_policy` rebuilds from a residual run.

The baseline that fine-tunes the whole base instead (`mixrl ppo --finetune-base`, a chunked BC base) acts one whole
chunk per step (`mixrl.envs.residual.ChunkVecEnv` over `mixrl.policies.chunked.ExecuteChunk` sub-envs):
a ~ N(mu(norm(s)), sigma^2), mu the network's k executed actions (`ChunkGaussianActor`), all of its weights trained.

Only modules and pure functions live here; the vector-env views of the learners are in `mixrl.envs.residual`.
"""

from __future__ import annotations

import importlib
import io
import json
import re
import zipfile
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from mixrl.checkpoints import TRUST_HINT, is_weights_only_refusal, space_from_json, space_to_json
from mixrl.errors import UsageError, require
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

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        """The observations `model` sees: clip(norm(obs)) with the checkpoint's normaliser."""
        return _normalize(self, obs)

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


SB3_POLICY_MODULES = tuple(
    f"stable_baselines3.{name}.policies" for name in ("common", "a2c", "ppo", "sac", "td3", "ddpg", "dqn")
)
"""the modules whose policy classes an SB3 base may name"""
SB3_KWARG_CLASS_MODULES = (
    "torch.nn.modules.activation",
    "torch.optim.adam",
    "torch.optim.adamw",
    "torch.optim.rmsprop",
    "torch.optim.sgd",
    "stable_baselines3.common.torch_layers",
    "stable_baselines3.common.sb2_compat.rmsprop_tf_like",
)
"""the modules whose classes an SB3 base's policy_kwargs may name (activations, optimisers, feature extractors)"""


def _sb3_class(path: Any, modules: tuple[str, ...], what: str) -> type:
    """The class `path` names, from one of `modules` only (importing nothing else)."""
    module_name, _, name = str(path).rpartition(".")
    if module_name not in modules:
        raise UsageError(
            f"The Stable-Baselines3 base names {what} {path!r}, outside the modules a data-only base may use "
            f"({', '.join(modules)})."
        )
    cls = getattr(importlib.import_module(module_name), name, None)
    if not isinstance(cls, type):
        raise UsageError(f"The Stable-Baselines3 base names {what} {path!r}, which is not a class here.")
    return cls


class SB3NeedsPickle(Exception):
    """An SB3 zip that its readable JSON does not describe fully: only its pickles could rebuild it."""


class SB3Base(nn.Module):
    """The deterministic policy of a Stable-Baselines3 model as obs -> [-1, 1]^A: squashing policies (SAC, TD3)
    already act there; the others (PPO, A2C) act in the env's bounds, clipped and rescaled. Observations reach it
    raw (a VecNormalize wrapper is not in the zip).

    It is built from data only: the policy class (one of SB3_POLICY_MODULES'), the spaces as JSON descriptions
    (mixrl.checkpoints.space_to_json), the JSON-able policy_kwargs and, in `class_kwargs`, the kwargs that are
    classes (activation functions, optimisers, feature extractors: SB3_KWARG_CLASS_MODULES'). The weights come
    after (load_state_dict). `SB3Base.from_zip` reads an SB3 zip without unpickling anything where SB3 stored
    these readably."""

    def __init__(
        self,
        policy_class: str,
        observation_space: dict[str, Any],
        action_space: dict[str, Any],
        policy_kwargs: dict[str, Any] | None = None,
        class_kwargs: dict[str, str] | None = None,
    ):
        super().__init__()
        require("stable_baselines3", "bench", "A Stable-Baselines3 base policy")
        from stable_baselines3.common.policies import BasePolicy

        policy_kwargs, class_kwargs = dict(policy_kwargs or {}), dict(class_kwargs or {})
        cls = _sb3_class(policy_class, SB3_POLICY_MODULES, "policy class")
        if not issubclass(cls, BasePolicy):
            raise UsageError(f"The Stable-Baselines3 base's class {policy_class!r} is not an SB3 policy.")
        obs_space = space_from_json(observation_space, "SB3 base observation_space")
        space = space_from_json(action_space, "SB3 base action_space")
        if not isinstance(space, gym.spaces.Box):
            raise UsageError(f"The base acts in {space}; a residual needs a continuous (Box) action space.")
        kwargs = {**policy_kwargs}
        for name, path in class_kwargs.items():
            kwargs[name] = _sb3_class(path, SB3_KWARG_CLASS_MODULES, f"policy_kwargs[{name!r}]")
        try:  # the policy alone, as the algorithm's load() builds it (the learning-rate schedule is never used)
            policy = cls(obs_space, space, lambda _: 0.0, **kwargs)
        except (TypeError, ValueError, KeyError, AssertionError) as err:
            reason = " ".join(f"{type(err).__name__}: {err}".split())[:160]
            raise UsageError(f"The SB3 base's policy_kwargs do not fit {policy_class} ({reason}).") from None
        self.policy = policy.requires_grad_(False).eval()
        self.description = {
            "policy_class": policy_class,
            "observation_space": observation_space,
            "action_space": action_space,
            "policy_kwargs": policy_kwargs,
            "class_kwargs": class_kwargs,
        }
        self.obs_dim = int(np.prod(obs_space.shape))
        self.register_buffer("low", torch.as_tensor(space.low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(space.high, dtype=torch.float32))

    @classmethod
    def from_zip(cls, zip_bytes: bytes, trusted: bool = False, name: str = "The Stable-Baselines3 zip") -> SB3Base:
        """The base of an SB3 model zip: its description from the zip's JSON `data` and its weights from policy.pth
        read with weights_only=True. Where SB3 stored something only as a pickle, one UsageError naming the opt-in,
        unless `trusted`: then SB3's own loader unpickles the zip (run only on files whose author you trust)."""
        require("stable_baselines3", "bench", "A Stable-Baselines3 base policy")  # before the file is read
        try:
            description, params = _read_sb3_zip(zip_bytes)
        except SB3NeedsPickle as why:
            if not trusted:
                raise UsageError(f"{name} needs pickle to load ({why}): {TRUST_HINT}.") from None
            description, params = _unpickle_sb3_zip(zip_bytes)
        base = cls(**description)
        try:
            base.policy.load_state_dict(params)
        except (RuntimeError, TypeError, KeyError) as err:
            reason = " ".join(str(err).split())[:160]
            raise UsageError(f"{name}: policy.pth does not fit {description['policy_class']} ({reason}).") from None
        return base

    @torch.no_grad()
    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        action = self.policy._predict(obs, deterministic=True).float()
        if not self.policy.squash_output:
            action = 2.0 * (action.clamp(self.low, self.high) - self.low) / (self.high - self.low) - 1.0
        return action.clamp(-1.0, 1.0)

    def peek(self, obs: torch.Tensor) -> torch.Tensor:
        return self.deterministic(obs)


def _read_sb3_zip(zip_bytes: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(SB3Base kwargs, policy state dict) of an SB3 zip, from its JSON `data` and from policy.pth with
    weights_only=True; SB3NeedsPickle where something is stored only as a pickle."""
    try:
        with zipfile.ZipFile(io.BytesIO(zip_bytes)) as z:
            names = set(z.namelist())
            if not {"data", "policy.pth"} <= names:
                raise UsageError("Not a Stable-Baselines3 model zip (no 'data' or 'policy.pth' inside).")
            data = json.loads(z.read("data"))
            policy_pth = z.read("policy.pth")
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, RecursionError, OSError) as err:
        raise UsageError(f"Not a readable Stable-Baselines3 model zip ({type(err).__name__}: {err}).") from None
    if not isinstance(data, dict):
        raise UsageError("Not a Stable-Baselines3 model zip ('data' is not a JSON object).")
    try:
        params = torch.load(io.BytesIO(policy_pth), map_location="cpu", weights_only=True)
    except Exception as err:
        if is_weights_only_refusal(err):
            raise SB3NeedsPickle("its policy.pth holds more than tensors") from None
        raise UsageError(f"The zip's policy.pth is unreadable ({type(err).__name__}: {err}).") from None
    if not isinstance(params, dict) or not all(isinstance(v, torch.Tensor) for v in params.values()):
        raise SB3NeedsPickle("its policy.pth is not a dict of tensors")
    policy_class = data.get("policy_class")
    init = policy_class.get("__init__") if isinstance(policy_class, dict) else None
    match = re.fullmatch(r"<function (\w+)\.__init__ at 0x[0-9a-f]+>", init) if isinstance(init, str) else None
    if match is None or not isinstance(policy_class.get("__module__"), str):
        raise SB3NeedsPickle("its policy class is stored only as a pickle")
    kwargs = data.get("policy_kwargs", {})
    if not isinstance(kwargs, dict):
        raise SB3NeedsPickle("its policy_kwargs are stored only as a pickle")
    policy_kwargs, class_kwargs = {}, {}
    for key, value in kwargs.items():
        if key.startswith(":"):  # ":type:" and ":serialized:" (the pickle) of a dict SB3 could not write as JSON
            continue
        is_class = re.fullmatch(r"<class '([\w.]+)'>", value) if isinstance(value, str) else None
        if is_class:
            class_kwargs[key] = is_class.group(1)
        elif isinstance(value, str) and value.startswith("<"):
            raise SB3NeedsPickle(f"its policy_kwargs[{key!r}] is stored only as a pickle ({value[:60]})")
        else:
            policy_kwargs[key] = value
    description = {
        "policy_class": f"{policy_class['__module__']}.{match.group(1)}",
        "observation_space": _sb3_box(data.get("observation_space"), "observation_space"),
        "action_space": _sb3_box(data.get("action_space"), "action_space"),
        "policy_kwargs": policy_kwargs,
        "class_kwargs": class_kwargs,
    }
    return description, params


def _sb3_numbers(text: Any, shape: list[int], what: str) -> list[float]:
    """The numbers of a NumPy array that SB3 wrote with str() (default print options), or SB3NeedsPickle where the
    text is summarised ("...") or may be rounded (8 fractional digits, NumPy's default precision)."""
    if not isinstance(text, str) or "..." in text:
        raise SB3NeedsPickle(f"its {what} is not written out in full")
    tokens = text.replace("[", " ").replace("]", " ").split()
    values = []
    for token in tokens:
        mantissa = token.lower().split("e")[0]
        if len(mantissa.partition(".")[2]) >= 8:
            raise SB3NeedsPickle(f"its {what} is written rounded ({token})")
        try:
            values.append(float(token))
        except ValueError:
            raise SB3NeedsPickle(f"its {what} is not a list of numbers") from None
    size = int(np.prod(shape))
    if len(values) == 1 and size != 1:
        values = values * size
    if len(values) != size:
        raise SB3NeedsPickle(f"its {what} has {len(values)} numbers for shape {shape}")
    return values


def _sb3_box(space: Any, what: str) -> dict[str, Any]:
    """space_to_json of a Box that SB3 wrote readably beside its pickle."""
    if not isinstance(space, dict) or space.get(":type:") != "<class 'gymnasium.spaces.box.Box'>":
        raise SB3NeedsPickle(f"its {what} is not a Box written readably")
    shape, dtype = space.get("_shape"), space.get("dtype")
    if not isinstance(shape, list) or not all(isinstance(n, int) for n in shape) or not isinstance(dtype, str):
        raise SB3NeedsPickle(f"its {what} has no readable shape and dtype")
    if dtype not in ("float16", "float32", "float64"):
        raise SB3NeedsPickle(f"its {what} has dtype {dtype}")
    low = np.array(_sb3_numbers(space.get("low"), shape, f"{what} low"), dtype=dtype).reshape(shape)
    high = np.array(_sb3_numbers(space.get("high"), shape, f"{what} high"), dtype=dtype).reshape(shape)
    try:
        return space_to_json(gym.spaces.Box(low, high, tuple(shape), np.dtype(dtype)))
    except ValueError as err:
        raise UsageError(f"The zip's {what} is not a valid Box ({err}).") from None


def _unpickle_sb3_zip(zip_bytes: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """What _read_sb3_zip returns, through SB3's own loader (pickle: trusted files only)."""
    from stable_baselines3.common.save_util import load_from_zip_file

    try:
        data, params, _ = load_from_zip_file(io.BytesIO(zip_bytes), device="cpu")
    except Exception as err:
        raise UsageError(f"Not a readable Stable-Baselines3 model zip ({err}).") from err
    kwargs, cls = data.get("policy_kwargs") or {}, data.get("policy_class")
    if not isinstance(kwargs, dict) or not isinstance(cls, type) or "policy" not in params:
        raise UsageError("The Stable-Baselines3 zip holds no policy class, policy_kwargs and policy weights.")
    policy_kwargs, class_kwargs = {}, {}
    for key, value in kwargs.items():
        if isinstance(value, type):
            class_kwargs[key] = f"{value.__module__}.{value.__qualname__}"
        else:
            policy_kwargs[key] = value
    description = {
        "policy_class": f"{cls.__module__}.{cls.__qualname__}",
        "observation_space": space_to_json(data["observation_space"]),
        "action_space": space_to_json(data["action_space"]),
        "policy_kwargs": policy_kwargs,
        "class_kwargs": class_kwargs,
    }
    return description, params["policy"]


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
    `head` may be attached after construction (the learner builds it for the input size of the residual env).
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
