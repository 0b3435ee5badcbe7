"""Checkpoint files: atomic writes, finding and loading mixrl checkpoints, RNG states and library versions, and the
plain-data forms that let a checkpoint load with `torch.load(weights_only=True)`.

Files are replaced atomically (temporary file, fsync, rename, fsync of the folder): a crash or SIGKILL leaves
the old file or the new one, never half of one.

A file someone else gave you is data, not code. A checkpoint holds only what torch's weights-only unpickler accepts
(tensors, numbers, strings, bytes, lists, tuples, dicts): `to_plain` turns NumPy arrays and scalars, NumPy random
generators, deques and Gymnasium spaces into tagged dicts of those, `from_plain` turns them back. Gymnasium spaces
become JSON descriptions (`space_to_json`), which the policy files of `mixrl.policies.files` use too. A file that
needs pickle (a checkpoint from before this format, or one made to run code) is refused unless the caller opts in
with `trusted=True` (`--trust-pickle` on the command line).
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import platform
import random
import tempfile
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import gymnasium as gym
import numpy as np
import torch

from mixrl.errors import MissingPathError, UsageError

CHECKPOINT_FORMAT = "mixrl-checkpoint-2"
"""plain data that loads with weights_only=True; "mixrl-checkpoint-1" files (pickled spaces and RNG states) load only
when trusted"""
LEGACY_FORMATS = ("mixrl-checkpoint-1",)
TRUST_HINT = "load it only if you trust its author, with --trust-pickle (Python: trusted=True)"


def rng_state() -> dict[str, Any]:
    """The global RNG states of Python, NumPy and torch (and CUDA when present)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() returned (the CUDA states of devices this machine lacks are skipped)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # only the devices this machine has
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


def library_versions() -> dict[str, str]:
    import gymnasium

    versions = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a TorchVersion, which weights_only loading refuses
        "gymnasium": gymnasium.__version__,
    }
    try:
        import mujoco

        versions["mujoco"] = mujoco.__version__
    except ImportError:
        pass
    return versions


# ---------------------------------------------------------------------------------------------------------------
# Spaces as JSON descriptions
# ---------------------------------------------------------------------------------------------------------------

DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
          "float64")  # fmt: skip
"""the NumPy dtypes a space description may name"""


def _number(value: Any) -> Any:
    """A JSON number, or "inf", "-inf", "nan" for the floats that strict JSON cannot hold."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) or (isinstance(value, str) and value in ("inf", "-inf", "nan"))


def _array_from_json(values: Any, shape: tuple[int, ...], dtype: np.dtype, where: str) -> np.ndarray:
    if not isinstance(values, list) or not all(_is_number(v) for v in values):
        raise UsageError(f"{where}: expected a flat list of numbers.")
    if len(values) != math.prod(shape):
        raise UsageError(f"{where}: {len(values)} values for shape {list(shape)}.")
    return np.array([float(v) if isinstance(v, str) else v for v in values], dtype=dtype).reshape(shape)


def space_to_json(space: gym.Space) -> dict[str, Any]:
    """A JSON description of a Box, Discrete, MultiDiscrete, MultiBinary, Tuple or Dict space (exact: bounds are
    listed element by element, non-finite ones as "inf", "-inf", "nan"); space_from_json rebuilds an equal space."""
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": space.dtype.name,
            "low": [_number(v) for v in space.low.reshape(-1).tolist()],
            "high": [_number(v) for v in space.high.reshape(-1).tolist()],
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start), "dtype": space.dtype.name}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {
            "type": "MultiDiscrete",
            "nvec": space.nvec.tolist(),
            "start": space.start.tolist(),
            "dtype": space.dtype.name,
        }
    if isinstance(space, gym.spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, gym.spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_json(s) for s in space.spaces]}
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "spaces": [[key, space_to_json(s)] for key, s in space.spaces.items()]}
    raise UsageError(f"A {type(space).__name__} space cannot be described as data (Box, Discrete, MultiDiscrete, "
                     "MultiBinary, Tuple, Dict can).")  # fmt: skip


def _field(d: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """d[key], which must be a `kind` (a bool is not an int here); else one UsageError naming `where`."""
    if key not in d:
        raise UsageError(f"{where}: missing key {key!r}.")
    value, kinds = d[key], kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise UsageError(f"{where}: {key!r} is a {type(value).__name__}, expected {names}.")
    return value


def _dtype(d: dict, where: str, default: str | None = None) -> np.dtype:
    name = d.get("dtype", default)
    if name not in DTYPES:
        raise UsageError(f"{where}: dtype {name!r} is not one of {', '.join(DTYPES)}.")
    return np.dtype(name)


def _int_list(d: dict, key: str, where: str) -> list[int]:
    values = _field(d, key, list, where)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise UsageError(f"{where}: {key!r} must be a list of integers.")
    return values


def space_from_json(d: Any, where: str = "space", depth: int = 0) -> gym.Space:
    """The space that space_to_json described; a description that does not fit is one UsageError naming `where`."""
    if not isinstance(d, dict):
        raise UsageError(f"{where}: expected a space description (a JSON object), got {type(d).__name__}.")
    if depth > 16:
        raise UsageError(f"{where}: spaces nested too deeply.")
    kind = _field(d, "type", str, where)
    try:
        if kind == "Box":
            shape = tuple(_int_list(d, "shape", where))
            if any(n < 0 for n in shape) or math.prod(shape) > 1 << 24:
                raise UsageError(f"{where}: shape {list(shape)} is not a valid Box shape.")
            dtype = _dtype(d, where)
            low = _array_from_json(_field(d, "low", list, where), shape, dtype, f"{where}.low")
            high = _array_from_json(_field(d, "high", list, where), shape, dtype, f"{where}.high")
            return gym.spaces.Box(low, high, shape, dtype)
        if kind == "Discrete":
            n, start = _field(d, "n", int, where), _field(d, "start", int, where)
            return gym.spaces.Discrete(n, start=start, dtype=_dtype(d, where, "int64"))
        if kind == "MultiDiscrete":
            nvec, start = _int_list(d, "nvec", where), _int_list(d, "start", where)
            return gym.spaces.MultiDiscrete(nvec, dtype=_dtype(d, where, "int64"), start=start)
        if kind == "MultiBinary":
            n = _field(d, "n", (int, list), where)
            return gym.spaces.MultiBinary(n if isinstance(n, int) else _int_list(d, "n", where))
        if kind == "Tuple":
            spaces = _field(d, "spaces", list, where)
            return gym.spaces.Tuple([space_from_json(s, f"{where}[{i}]", depth + 1) for i, s in enumerate(spaces)])
        if kind == "Dict":
            items = _field(d, "spaces", list, where)
            if not all(isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) for item in items):
                raise UsageError(f"{where}: 'spaces' must be a list of [key, space] pairs.")
            return gym.spaces.Dict({k: space_from_json(s, f"{where}.{k}", depth + 1) for k, s in items})
    except (ValueError, TypeError, OverflowError, AssertionError) as err:
        if isinstance(err, UsageError):
            raise
        raise UsageError(f"{where}: not a valid {kind} space ({' '.join(str(err).split())[:120]}).") from None
    raise UsageError(f"{where}: space type {kind!r} is not one of Box, Discrete, MultiDiscrete, MultiBinary, Tuple, "
                     "Dict.")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Plain data: what torch.load(weights_only=True) accepts
# ---------------------------------------------------------------------------------------------------------------

TAG = "__mixrl__"
BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")
ARRAY_KINDS = "biufcSUmM"  # NumPy dtype kinds stored as raw bytes (never object arrays)
_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size)


def to_plain(obj: Any, where: str = "checkpoint") -> Any:
    """`obj` with every NumPy array and scalar, NumPy random generator, deque and Gymnasium space replaced by a
    tagged dict of plain data (from_plain turns it back), so that torch.load(weights_only=True) reads it. Containers
    keep their kind (dict, OrderedDict with its _metadata, list, tuple, set); anything else is a TypeError (a bug:
    a part whose state is not data)."""
    if type(obj) in _PLAIN or isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, np.generic):  # before the built-in types: np.float64 is a float, np.bool_ is not a bool
        return {TAG: "scalar", "array": to_plain(np.asarray(obj), where)}
    for kind in (bool, int, float, complex, str, bytes):  # subclasses (TorchVersion, IntEnum) as their base type
        if isinstance(obj, kind):
            return kind(obj)
    if isinstance(obj, dict):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for key, value in obj.items():
            out[key] = to_plain(value, f"{where}[{key!r}]")
        if hasattr(obj, "_metadata"):  # module state dicts: versions that load_state_dict reads
            out._metadata = obj._metadata
        return out
    if isinstance(obj, tuple):
        return tuple(to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, list):
        return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        return {TAG: "set", "items": [to_plain(v, where) for v in obj], "frozen": isinstance(obj, frozenset)}
    if isinstance(obj, deque):
        return {TAG: "deque", "items": [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)], "maxlen": obj.maxlen}
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in ARRAY_KINDS or obj.dtype.fields is not None:  # object or structured arrays
            items = [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj.reshape(-1).tolist())]
            return {TAG: "object_array", "items": items, "shape": list(obj.shape)}
        raw = np.frombuffer(np.ascontiguousarray(obj).tobytes(), np.uint8).copy()  # the bytes, as a uint8 tensor
        return {TAG: "ndarray", "dtype": obj.dtype.str, "shape": list(obj.shape), "data": torch.from_numpy(raw)}
    if isinstance(obj, np.random.Generator):
        bit_generator = obj.bit_generator
        return {TAG: "generator", "bit_generator": type(bit_generator).__name__,
                "state": to_plain(bit_generator.state, where)}  # fmt: skip
    if isinstance(obj, np.random.RandomState):
        return {TAG: "random_state", "state": to_plain(obj.get_state(legacy=False), where)}
    if isinstance(obj, gym.Space):
        return {TAG: "space", "space": space_to_json(obj)}
    raise TypeError(f"{where}: a {type(obj).__module__}.{type(obj).__qualname__} is not plain data and cannot be "
                    "stored in a checkpoint that loads with weights_only=True.")  # fmt: skip


def _bit_generator(name: Any, where: str) -> np.random.BitGenerator:
    if name not in BIT_GENERATORS:
        raise UsageError(f"{where}: bit generator {name!r} is not one of {', '.join(BIT_GENERATORS)}.")
    return getattr(np.random, name)()


def from_plain(obj: Any, where: str = "checkpoint") -> Any:
    """Undo to_plain: tagged dicts become NumPy arrays, scalars, generators, deques and spaces again. A tag that
    does not fit is one UsageError naming `where`."""
    if isinstance(obj, dict):
        kind = obj.get(TAG)
        if kind is None:
            out = OrderedDict() if isinstance(obj, OrderedDict) else {}
            for key, value in obj.items():
                out[key] = from_plain(value, f"{where}[{key!r}]")
            if hasattr(obj, "_metadata"):
                out._metadata = obj._metadata
            return out
        try:
            return _from_tagged(kind, obj, where)
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, UsageError):
                raise
            raise UsageError(f"{where}: a stored {kind} does not fit ({' '.join(str(err).split())[:120]}).") from None
    if isinstance(obj, tuple):
        return tuple(from_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, list):
        return [from_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    return obj


def _from_tagged(kind: str, obj: dict, where: str) -> Any:
    if kind == "ndarray":
        dtype = np.dtype(str(obj["dtype"]))
        if dtype.kind not in ARRAY_KINDS or dtype.fields is not None:
            raise UsageError(f"{where}: array dtype {obj['dtype']!r} is not plain numbers or text.")
        data = obj["data"]
        if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8:
            raise UsageError(f"{where}: a stored array's data must be a uint8 tensor.")
        raw = data.cpu().numpy().tobytes()
        return np.frombuffer(raw, dtype=dtype).reshape([int(n) for n in obj["shape"]]).copy()
    if kind == "object_array":
        items = [from_plain(v, where) for v in obj["items"]]
        out = np.empty(len(items), dtype=object)
        out[:] = items
        return out.reshape([int(n) for n in obj["shape"]])
    if kind == "scalar":
        return from_plain(obj["array"], where)[()]
    if kind == "set":
        items = [from_plain(v, where) for v in obj["items"]]
        return frozenset(items) if obj.get("frozen") else set(items)
    if kind == "deque":
        return deque([from_plain(v, where) for v in obj["items"]], obj["maxlen"])
    if kind == "generator":
        bit_generator = _bit_generator(obj["bit_generator"], where)
        bit_generator.state = from_plain(obj["state"], where)
        return np.random.Generator(bit_generator)
    if kind == "random_state":
        state = np.random.RandomState()
        state.set_state(from_plain(obj["state"], where))
        return state
    if kind == "space":
        return space_from_json(obj["space"], where)
    raise UsageError(f"{where}: unknown stored kind {kind!r}.")


# ---------------------------------------------------------------------------------------------------------------
# Atomic files
# ---------------------------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a no-op where folders cannot be opened, as on Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Replace `path` by what `write(file)` writes: into a temporary file of the same folder, fsync, rename, fsync
    the folder. A crash at any moment leaves the old file or the new one, never a part of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save of to_plain(obj) through atomic_write: the file loads with torch.load(weights_only=True)."""
    plain = to_plain(obj)
    atomic_write(path, lambda f: torch.save(plain, f))


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file through atomic_write (config.json, eval.json, evaluations.jsonl rewrites)."""
    atomic_write(path, lambda f: f.write(text.encode()))


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints and resume
# ---------------------------------------------------------------------------------------------------------------


def agent_of(record: dict[str, Any]) -> str:
    """The mixrl agent (sac, ppo, ...) that wrote a checkpoint or policy config: its `agent` field, else its algo
    without the pmoe_ prefix (files written before `agent` was stored); "" when it names neither."""
    return record.get("agent") or str(record.get("algo", "")).removeprefix("pmoe_")


def find_checkpoint(path: str | Path, newest: bool = False) -> Path:
    """A checkpoint file, or one in a run directory: final.pt, else latest.pt (the newest state, latest.pt first,
    with `newest`, as a resume needs: a finished run that was extended and stopped has a newer latest.pt)."""
    path = Path(path)
    if path.is_dir():
        for name in ("latest.pt", "final.pt") if newest else ("final.pt", "latest.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise MissingPathError(
            f"No checkpoints/final.pt or checkpoints/latest.pt in run directory {path} (a run writes latest.pt "
            "every --checkpoint-every steps and when stopped): start the run again."
        )
    if not path.is_file():
        raise MissingPathError(f"No run directory or checkpoint at {path}.")
    return path


def needs_pickle(file: str | Path, what: str = "checkpoint") -> UsageError:
    """The one-line refusal of a file that only pickle can read."""
    return UsageError(
        f"{file} needs pickle to load, which runs code the file names (a {what} from before mixrl stored plain data, "
        f"or a file made to run code): {TRUST_HINT}."
    )


def is_weights_only_refusal(err: BaseException) -> bool:
    """Whether torch.load(weights_only=True) refused a pickle that names globals outside its allowlist (as opposed
    to a file that is corrupt)."""
    text = str(err).lower()
    return isinstance(err, pickle.UnpicklingError) and ("allowed global" in text or "unsupported global" in text)


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", newest: bool = False, trusted: bool = False
) -> dict[str, Any]:
    """Load a mixrl checkpoint with torch.load(weights_only=True), then from_plain. A file that needs pickle (a
    "mixrl-checkpoint-1" file, or one made to run code) is refused with one line unless `trusted`, which loads it
    with pickle (only for files whose author you trust)."""
    file = find_checkpoint(path, newest)

    def refuse(err: BaseException) -> UsageError:
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        return UsageError(f"Could not read checkpoint {file} ({reason}): the file is corrupt or not a checkpoint.")

    try:
        ckpt = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as err:
        if not trusted:
            raise (needs_pickle(file) if is_weights_only_refusal(err) else refuse(err)) from None
        try:
            ckpt = torch.load(file, map_location=map_location, weights_only=False)
        except Exception as err2:
            raise refuse(err2) from err2
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (CHECKPOINT_FORMAT, *LEGACY_FORMATS):
        raise UsageError(f"{file} is not a mixrl checkpoint (expected format {CHECKPOINT_FORMAT!r}).")
    return from_plain(ckpt, str(file))
