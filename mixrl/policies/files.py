"""Policies people can share: a folder of data that loads without running anyone's code.

    runs/<run>/policy/                 written at the end of every run; `mixrl export RUN --format safetensors`
        model.safetensors              the tensors: the deterministic policy's weights (an embedded base's too),
                                       the observation normaliser's statistics, the reference critics (SAC, RLIF)
        config.json                    everything else, as JSON (below)

The layout is Hugging Face's (a model folder of `model.safetensors` beside `config.json`), so the folder can be
pushed to and pulled from the Hub as it is. config.json holds:

    format          "mixrl-policy-1"
    agent, algo     the agent (sac, ppo, ...) and algorithm (pmoe_sac, ...) that trained it
    env_id, env_kwargs, observation_space, action_space    the env; spaces as JSON (mixrl.checkpoints.space_to_json)
    policy          the policy spec without tensors: {"class", "kwargs", "state_dict"}, each tensor a reference
                    {"$tensor": name} into model.safetensors; an embedded base is a nested spec
    obs_normalizer  the frozen observation statistics (arrays as {"$ndarray": name}), or null
    eval_rule       the deterministic rule of a mixture policy (argmax_w, weighted_mean), or null
    critic          the Q ensemble that RLIF's --reference reads (SAC and RLIF runs), or null
    tensors         {"file": "model.safetensors", "sha256": ..., "bytes": ...}: the tensor file's integrity
    global_step, args, versions      the step, the training Args and the library versions (information only)

Other values are tagged: {"$tuple": [...]}, {"$float": "inf"}, {"$numpy": dtype, "value": x}, {"$space": {...}}.
Reading verifies the SHA-256 before parsing the tensors, refuses every tensor that the JSON does not reference and
every reference without a tensor, and builds only classes of mixrl's policy modules (mixrl.policies.loading), each
tensor checked against its parameter's shape and dtype: each defect is one UsageError. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from mixrl.checkpoints import (
    agent_of,
    atomic_write,
    atomic_write_text,
    find_checkpoint,
    library_versions,
    load_checkpoint,
    space_from_json,
    space_to_json,
)
from mixrl.errors import MissingPathError, UsageError
from mixrl.policies.loading import is_spec

POLICY_FORMAT = "mixrl-policy-1"
POLICY_DIR, CONFIG_FILE, TENSOR_FILE = "policy", "config.json", "model.safetensors"
MAX_CONFIG_BYTES = 64 << 20
REQUIRED = {
    "format": str,
    "algo": str,
    "env_id": str,
    "env_kwargs": dict,
    "observation_space": dict,
    "action_space": dict,
    "policy": dict,
    "obs_normalizer": (dict, type(None)),
    "tensors": dict,
}
OPTIONAL = {
    "agent": str,
    "eval_rule": (str, type(None)),
    "critic": (dict, type(None)),
    "global_step": int,
    "args": dict,
    "versions": dict,
}
NUMPY_SCALARS = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
                 "float32", "float64")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Where a policy is
# ---------------------------------------------------------------------------------------------------------------


def is_policy_dir(path: str | Path) -> bool:
    """Whether `path` is a policy folder: it holds model.safetensors, or a config.json of a mixrl policy (a run
    directory's config.json is its Args)."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / TENSOR_FILE).is_file():
        return True
    config = path / CONFIG_FILE
    if not config.is_file() or config.stat().st_size > MAX_CONFIG_BYTES:
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("format", "").startswith("mixrl-policy")
    except (ValueError, UnicodeDecodeError, RecursionError, AttributeError, TypeError):
        return False


def find_policy_dir(path: str | Path) -> Path | None:
    """The policy folder `path` names: the folder itself, its config.json or model.safetensors, or a run
    directory's policy/ folder; None when `path` is a checkpoint or a run directory without one."""
    path = Path(path)
    if path.is_file() and path.name in (CONFIG_FILE, TENSOR_FILE):
        return path.parent
    if is_policy_dir(path):
        return path
    if path.is_dir() and is_policy_dir(path / POLICY_DIR):
        return path / POLICY_DIR
    return None


def run_dir_of(source: Path) -> Path:
    """The folder where `mixrl eval` writes eval.json and videos/ for a policy folder or checkpoint file: the run
    directory that holds it, else the folder itself (a downloaded policy folder) or the checkpoint's folder."""
    if source.is_dir():
        return source.parent if source.name == POLICY_DIR and (source.parent / "checkpoints").is_dir() else source
    return source.parent.parent if source.parent.name == "checkpoints" else source.parent


def read_policy(path: str | Path, trusted: bool = False) -> dict[str, Any]:
    """What load_policy rebuilds a policy from, as a checkpoint-like dict (policy spec with tensors, spaces,
    normaliser, env): from a policy folder (preferred: a run directory's policy/), else from a checkpoint loaded
    with weights_only=True (`trusted` also allows one that needs pickle). "source" is the folder or file read."""
    folder = find_policy_dir(path)
    if folder is not None:
        return read_policy_dir(folder)
    file = find_checkpoint(path)
    ckpt = load_checkpoint(file, map_location="cpu", trusted=trusted)
    return {**ckpt, "source": file, "critic": critic_spec(ckpt)}


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------


def critic_spec(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The spec of a checkpoint's Q ensemble (SAC, RLIF: state "qf" and Args num_critics, hidden_sizes) on raw
    observations and [-1, 1] actions, which RLIF's --reference reads; None where the run has none, or normalised
    its observations (the critics then expect statistics that change during training)."""
    if ckpt.get("critic") is not None:
        return ckpt["critic"]
    state, args = ckpt.get("state") or {}, ckpt.get("args") or {}
    if "qf" not in state or "num_critics" not in args or args.get("normalize_obs"):
        return None
    layer_norm = any(".norms." in name for name in state["qf"])
    kwargs = {
        "obs_dim": int(np.prod(ckpt["observation_space"].shape)),
        "action_dim": int(ckpt["action_space"].shape[0]),
        "n": int(args["num_critics"]),
        "hidden_sizes": tuple(args["hidden_sizes"]),
        "layer_norm": layer_norm,
    }
    return {"class": "mixrl.policies.critics.QEnsemble", "kwargs": kwargs, "state_dict": dict(state["qf"])}


class _TensorStore:
    """The tensors of one file, each stored once: equal tensors (same dtype, shape and bytes) share a name."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}
        self.by_content: dict[tuple, str] = {}

    def add(self, name: str, tensor: torch.Tensor) -> str:
        tensor = tensor.detach().to("cpu").contiguous()
        key = (tensor.dtype, tuple(tensor.shape), hashlib.sha256(tensor.view(-1).view(torch.uint8).numpy()).digest())
        if key in self.by_content:
            return self.by_content[key]
        unique, suffix = name, 1
        while unique in self.tensors:
            unique, suffix = f"{name}.{suffix}", suffix + 1
        self.tensors[unique] = tensor.clone()
        self.by_content[key] = unique
        return unique


def _encode(value: Any, name: str, store: _TensorStore) -> Any:
    """`value` as JSON, its tensors and arrays moved into `store` (see the module docstring for the tags)."""
    if isinstance(value, torch.Tensor):
        return {"$tensor": store.add(name, value)}
    if isinstance(value, np.ndarray):
        if value.dtype.name not in NUMPY_SCALARS:
            raise UsageError(f"{name}: an array of dtype {value.dtype} cannot be stored in a policy file.")
        return {"$ndarray": store.add(name, torch.from_numpy(np.ascontiguousarray(value)))}
    if isinstance(value, np.generic):
        if value.dtype.name not in NUMPY_SCALARS:
            raise UsageError(f"{name}: a NumPy {value.dtype} scalar cannot be stored in a policy file.")
        return {"$numpy": value.dtype.name, "value": _encode(value.item(), name, store)}
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, f"{name}.{i}", store) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{name}.{i}", store) for i, v in enumerate(value)]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str) or key.startswith("$"):
                raise UsageError(
                    f"{name}: key {key!r} cannot be stored in a policy file (only strings not starting $)."
                )
        # tensor names follow the module tree: policy.trunk.0.weight, policy.base.model.net.0.weight, ...
        return {
            k: _encode(v, name if k in ("kwargs", "state_dict") else f"{name}.{k}", store) for k, v in value.items()
        }
    if isinstance(value, gym.Space):
        return {"$space": space_to_json(value)}
    if isinstance(value, (bytes, bytearray)):
        raise UsageError(f"{name}: raw bytes (a pickled object) cannot be stored in a policy file.")
    raise UsageError(f"{name}: a {type(value).__name__} cannot be stored in a policy file.")


def _information(value: Any) -> Any:
    """`value` as strict JSON for reading only (the training Args): containers as objects and lists, non-finite
    floats and anything else that is not JSON as its text."""
    if isinstance(value, dict):
        return {str(k): _information(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_information(v) for v in value]
    if (
        isinstance(value, float)
        and not math.isfinite(value)
        or not isinstance(value, (type(None), bool, int, float, str))
    ):
        return str(value)
    return value


def _data_only(spec: dict[str, Any], trusted: bool) -> dict[str, Any]:
    """`spec` with any Stable-Baselines3 base that mixrl once embedded as its zip (pickle) replaced by its
    description (SB3Base.from_zip; the zip is unpickled only when `trusted`)."""
    kwargs = {k: _data_only(v, trusted) if is_spec(v) else v for k, v in spec["kwargs"].items()}
    if "zip_bytes" in kwargs:
        from mixrl.policies.residual import SB3Base

        base = SB3Base.from_zip(kwargs["zip_bytes"], trusted, "The Stable-Baselines3 base in this checkpoint")
        kwargs = base.description
    return {**spec, "kwargs": kwargs}


def write_policy_dir(ckpt: dict[str, Any], folder: str | Path, trusted: bool = False) -> Path:
    """Write the policy folder of a checkpoint-like dict (load_checkpoint's or read_policy's) into `folder`:
    model.safetensors first, then config.json (each atomically; a crash between leaves a folder whose hash does
    not match, which reading refuses). `trusted`: an SB3 base embedded as its zip may be unpickled to describe it."""
    from safetensors.torch import save

    folder = Path(folder)
    store = _TensorStore()
    policy = _data_only(ckpt["policy"], trusted)
    critic = critic_spec(ckpt)
    config = {
        "format": POLICY_FORMAT,
        "agent": agent_of(ckpt),
        "algo": ckpt["algo"],
        "env_id": ckpt["env_id"],
        "env_kwargs": _encode(dict(ckpt.get("env_kwargs") or {}), "env_kwargs", store),
        "observation_space": space_to_json(ckpt["observation_space"]),
        "action_space": space_to_json(ckpt["action_space"]),
        "policy": _encode(policy, "policy", store),
        "obs_normalizer": _encode(ckpt.get("obs_normalizer"), "obs_normalizer", store),
        "eval_rule": policy["kwargs"].get("eval_rule"),
        "critic": None if critic is None else _encode(critic, "critic", store),
        "global_step": int(ckpt.get("global_step", 0)),
        "args": _information(ckpt.get("args") or {}),
        "versions": {**(ckpt.get("versions") or {}), "written_by": library_versions()},
    }
    data = save(store.tensors, metadata={"format": "pt", "mixrl_format": POLICY_FORMAT})
    config["tensors"] = {"file": TENSOR_FILE, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    text = json.dumps(config, indent=2, allow_nan=False)
    atomic_write(folder / TENSOR_FILE, lambda f: f.write(data))
    atomic_write_text(folder / CONFIG_FILE, text + "\n")
    for name in (TENSOR_FILE, CONFIG_FILE):  # files to share: readable by others (temporary files are owner-only)
        os.chmod(folder / name, 0o644)
    return folder


def save_policy_dir(source: str | Path, folder: str | Path | None = None, trusted: bool = False) -> Path:
    """Write the policy folder of a run directory, checkpoint or policy folder `source` (default: the run's
    policy/). A checkpoint that needs pickle (from before mixrl stored plain data) is read only when `trusted`."""
    ckpt = read_policy(source, trusted)
    if folder is None:
        folder = run_dir_of(Path(ckpt["source"])) / POLICY_DIR
    return write_policy_dir(ckpt, folder, trusted)


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------


class _Decoder:
    """Turns config.json's values back, resolving tensor references; remembers which tensors were used."""

    def __init__(self, tensors: dict[str, torch.Tensor], where: str):
        self.tensors, self.where, self.used = tensors, where, set()

    def tensor(self, name: Any, key: str) -> torch.Tensor:
        if not isinstance(name, str) or name not in self.tensors:
            raise UsageError(f"{self.where}: {key} refers to tensor {name!r}, which {TENSOR_FILE} does not hold.")
        self.used.add(name)
        return self.tensors[name].clone()

    def __call__(self, value: Any, key: str, depth: int = 0) -> Any:
        if depth > 32:
            raise UsageError(f"{self.where}: {key} is nested too deeply.")
        if isinstance(value, list):
            return [self(v, f"{key}[{i}]", depth + 1) for i, v in enumerate(value)]
        if not isinstance(value, dict):
            return value
        tags = [k for k in value if k.startswith("$")]
        if not tags:
            return {k: self(v, f"{key}.{k}", depth + 1) for k, v in value.items()}
        tag = tags[0]
        allowed = {"$numpy": {"$numpy", "value"}}.get(tag, {tag})
        if set(value) != allowed:
            raise UsageError(f"{self.where}: {key} has keys {sorted(value)}, expected {sorted(allowed)}.")
        inner = value[tag]
        if tag == "$tensor":
            return self.tensor(inner, key)
        if tag == "$ndarray":
            tensor = self.tensor(inner, key)
            if str(tensor.dtype).removeprefix("torch.") not in NUMPY_SCALARS:
                raise UsageError(f"{self.where}: {key} is a tensor of dtype {tensor.dtype}, not a NumPy array's.")
            return tensor.numpy()
        if tag == "$tuple":
            if not isinstance(inner, list):
                raise UsageError(f"{self.where}: {key} '$tuple' must hold a list.")
            return tuple(self(v, f"{key}[{i}]", depth + 1) for i, v in enumerate(inner))
        if tag == "$float":
            if inner not in ("inf", "-inf", "nan"):
                raise UsageError(f"{self.where}: {key} '$float' must be 'inf', '-inf' or 'nan'.")
            return float(inner)
        if tag == "$numpy":
            number = self(value["value"], key, depth + 1)
            if inner not in NUMPY_SCALARS or not isinstance(number, (bool, int, float)):
                raise UsageError(f"{self.where}: {key} is not a NumPy scalar of one of {', '.join(NUMPY_SCALARS)}.")
            try:
                return np.dtype(inner).type(number)
            except (OverflowError, ValueError):
                raise UsageError(f"{self.where}: {key}: {number!r} does not fit {inner}.") from None
        if tag == "$space":
            return space_from_json(inner, f"{self.where}: {key}")
        raise UsageError(f"{self.where}: {key} has unknown tag {tag!r}.")


def _check_normalizer(norm: Any, observation_space: gym.Space, where: str) -> None:
    if norm is None:
        return
    if not isinstance(norm, dict):
        raise UsageError(f"{where}: obs_normalizer must be an object or null.")
    for key in ("mean", "var"):
        if key not in norm:
            raise UsageError(f"{where}: obs_normalizer: missing key {key!r}.")
        value = norm[key]
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
            raise UsageError(f"{where}: obs_normalizer.{key} must be a floating-point array.")
        if value.size != int(np.prod(observation_space.shape)) or value.shape not in (
            tuple(observation_space.shape),
            (int(np.prod(observation_space.shape)),),
        ):
            raise UsageError(
                f"{where}: obs_normalizer.{key} has shape {list(value.shape)}, the observations "
                f"{list(observation_space.shape)}."
            )
    for key in ("epsilon", "clip"):
        if key not in norm:
            raise UsageError(f"{where}: obs_normalizer: missing key {key!r}.")
        if not isinstance(norm[key], (int, float, np.floating, np.integer)) or isinstance(norm[key], bool):
            raise UsageError(f"{where}: obs_normalizer.{key} must be a number.")
    if not norm["epsilon"] >= 0 or not norm["clip"] > 0:
        raise UsageError(f"{where}: obs_normalizer needs epsilon >= 0 and clip > 0.")


def _check_spec(spec: Any, where: str, key: str) -> None:
    if not isinstance(spec, dict) or not {"class", "kwargs", "state_dict"} <= spec.keys():
        raise UsageError(f"{where}: {key} must be an object with 'class', 'kwargs' and 'state_dict'.")
    if not isinstance(spec["class"], str) or not isinstance(spec["kwargs"], dict):
        raise UsageError(f"{where}: {key}.class must be a string and {key}.kwargs an object.")
    if not isinstance(spec["state_dict"], dict):
        raise UsageError(f"{where}: {key}.state_dict must be an object of tensor references.")


def read_policy_dir(folder: str | Path) -> dict[str, Any]:
    """Read and check a policy folder; returns the checkpoint-like dict that load_policy builds from (spaces as
    Gymnasium spaces, tensors as tensors, arrays as NumPy). Never unpickles; each defect is one UsageError."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    folder = Path(folder)
    where = str(folder)
    config_file, tensor_file = folder / CONFIG_FILE, folder / TENSOR_FILE
    for file in (config_file, tensor_file):
        if not file.is_file():
            raise MissingPathError(f"{where}: no {file.name} (a policy folder holds {CONFIG_FILE} and {TENSOR_FILE}).")
    if config_file.stat().st_size > MAX_CONFIG_BYTES:
        raise UsageError(f"{where}: {CONFIG_FILE} is larger than {MAX_CONFIG_BYTES >> 20} MiB; not a policy config.")

    def no_constants(name: str) -> None:
        raise ValueError(f"{name} is not valid JSON")

    try:
        config = json.loads(config_file.read_text(encoding="utf-8"), parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise UsageError(f"{where}: {CONFIG_FILE} is not valid JSON ({' '.join(str(err).split())[:120]}).") from None
    if not isinstance(config, dict):
        raise UsageError(f"{where}: {CONFIG_FILE} must hold a JSON object.")
    for table, required in ((REQUIRED, True), (OPTIONAL, False)):
        for key, kind in table.items():
            if key not in config:
                if required:
                    raise UsageError(f"{where}: {CONFIG_FILE} has no {key!r}.")
                continue
            value = config[key]
            kinds = kind if isinstance(kind, tuple) else (kind,)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
                raise UsageError(f"{where}: {CONFIG_FILE} {key!r} is a {type(value).__name__}, expected {names}.")
    if config["format"] != POLICY_FORMAT:
        raise UsageError(f"{where}: format {config['format']!r} is not {POLICY_FORMAT!r} (a newer mixrl wrote it?).")
    info = config["tensors"]
    if info.get("file") != TENSOR_FILE or not isinstance(info.get("sha256"), str):
        raise UsageError(f"{where}: 'tensors' must name {TENSOR_FILE!r} and its 'sha256'.")
    data = tensor_file.read_bytes()
    if hashlib.sha256(data).hexdigest() != info["sha256"].lower():
        raise UsageError(
            f"{where}: {TENSOR_FILE} does not match the SHA-256 in {CONFIG_FILE} ({len(data)} bytes): the file is "
            "truncated, edited or from another policy."
        )
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError, TypeError) as err:
        reason = " ".join(str(err).split())[:120]
        raise UsageError(f"{where}: {TENSOR_FILE} is not a valid safetensors file ({reason}).") from None
    decode = _Decoder(tensors, where)
    _check_spec(config["policy"], where, "policy")
    observation_space = space_from_json(config["observation_space"], f"{where}: observation_space")
    action_space = space_from_json(config["action_space"], f"{where}: action_space")
    if not isinstance(observation_space, gym.spaces.Box):
        raise UsageError(f"{where}: observation_space must be a Box (mixrl policies act on flat observations).")
    if not isinstance(action_space, (gym.spaces.Box, gym.spaces.Discrete)):
        raise UsageError(f"{where}: action_space must be a Box or a Discrete space.")
    policy = decode(config["policy"], "policy")
    norm = decode(config["obs_normalizer"], "obs_normalizer")
    _check_normalizer(norm, observation_space, where)
    critic = None
    if config.get("critic") is not None:
        _check_spec(config["critic"], where, "critic")
        critic = decode(config["critic"], "critic")
    env_kwargs = decode(config["env_kwargs"], "env_kwargs")
    unused = sorted(set(tensors) - decode.used)
    if unused:
        raise UsageError(f"{where}: {TENSOR_FILE} holds tensor {unused[0]!r}, which {CONFIG_FILE} does not use.")
    rule = config.get("eval_rule")
    if rule is not None and policy["kwargs"].get("eval_rule") != rule:
        own = policy["kwargs"].get("eval_rule")
        raise UsageError(f"{where}: eval_rule {rule!r} differs from the policy's own ({own!r}).")
    return {
        "format": config["format"],
        "agent": agent_of(config),
        "algo": config["algo"],
        "env_id": config["env_id"],
        "env_kwargs": env_kwargs,
        "observation_space": observation_space,
        "action_space": action_space,
        "obs_normalizer": norm,
        "policy": policy,
        "critic": critic,
        "global_step": config.get("global_step", 0),
        "args": config.get("args", {}),
        "versions": config.get("versions", {}),
        "source": folder,
    }
