"""Policies as data: what a checkpoint stores to rebuild a policy without training code, and the rebuild.

A policy spec is {"class": "module.Class", "kwargs": {...}, "state_dict": ...}; a kwarg that is itself a spec (the
frozen base of a residual policy) is rebuilt first. Nothing here runs an environment or reads a file: turning a
checkpoint or a policy folder into an env-facing policy is `mixrl.evaluation.load_policy`, loading frozen bases and
experts `mixrl.pretrained`, the data-only policy files `mixrl.policies.files`.

Building a class that a file names is running code that file chose, so build_actor builds only the nn.Modules of
mixrl's own policy modules (POLICY_MODULES) and checks every tensor's name, shape and dtype against the module
before loading it; `trusted=True` (the user's `--trust-pickle`) lifts the allowlist for classes of one's own.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from mixrl.checkpoints import TRUST_HINT
from mixrl.errors import UsageError

POLICY_MODULES = (
    "mixrl.policies.chunked",
    "mixrl.policies.critics",
    "mixrl.policies.deterministic",
    "mixrl.policies.discrete",
    "mixrl.policies.gaussian",
    "mixrl.policies.mixture",
    "mixrl.policies.nets",
    "mixrl.policies.residual",
    "mixrl.policies.vae",
)
"""the modules whose nn.Module classes a policy file or checkpoint may name without trust"""


def policy_spec(actor: nn.Module, **kwargs: Any) -> dict[str, Any]:
    """What a checkpoint stores to rebuild `actor` without training code: class path, kwargs, weights."""
    cls = type(actor)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "kwargs": kwargs,
        "state_dict": actor.state_dict(),
    }


def residual_spec(policy: nn.Module, head_spec: dict[str, Any]) -> dict[str, Any]:
    """policy_spec() of a ResidualPolicy: its frozen base and its head as nested specs."""
    return policy_spec(policy, base=policy.base.spec, head=head_spec, **policy.spec_kwargs)


def is_spec(value: Any) -> bool:
    """Whether a kwarg is itself a policy spec (built before the module that takes it)."""
    return isinstance(value, dict) and "class" in value


def policy_class(path: Any, trusted: bool = False) -> type[nn.Module]:
    """The nn.Module class `path` ("module.Class") names: one of POLICY_MODULES' own classes, or with `trusted` any
    importable one. Anything else is one UsageError, before any module outside the allowlist is imported."""
    if not isinstance(path, str) or "." not in path:
        raise UsageError(f"policy class {path!r} is not a 'module.Class' path.")
    module_name, _, class_name = path.rpartition(".")
    if module_name not in POLICY_MODULES and not trusted:
        raise UsageError(
            f"policy class {path!r} is not in mixrl's policy modules (mixrl.policies.*): building it would run code "
            f"that the file chose; {TRUST_HINT}."
        )
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise UsageError(f"policy class {path!r} does not exist here ({err}).") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)) or (not trusted and cls.__module__ != module_name):
        raise UsageError(f"policy class {path!r} is not an nn.Module defined in {module_name}.")
    return cls


def check_state(module: nn.Module, state: Any, where: str) -> None:
    """One UsageError for the first tensor of `state` that `module` lacks, misses, or holds in another shape or
    dtype (load_state_dict would cast dtypes silently and report several problems in one long message)."""
    if not isinstance(state, dict):
        raise UsageError(f"{where}: 'state_dict' is a {type(state).__name__}, expected a dict of tensors.")
    expected = module.state_dict()
    for name in expected:
        if name not in state:
            raise UsageError(f"{where}: tensor {name!r} is missing.")
    for name, value in state.items():
        if name not in expected:
            raise UsageError(f"{where}: unexpected tensor {name!r} (not a parameter or buffer of the class).")
        if not isinstance(value, torch.Tensor):
            raise UsageError(f"{where}: {name!r} is a {type(value).__name__}, not a tensor.")
        want = expected[name]
        if value.shape != want.shape:
            raise UsageError(f"{where}: tensor {name!r} has shape {list(value.shape)}, expected {list(want.shape)}.")
        if value.dtype != want.dtype:
            raise UsageError(f"{where}: tensor {name!r} has dtype {value.dtype}, expected {want.dtype}.")


def _has_bytes(value: Any) -> bool:
    if isinstance(value, (bytes, bytearray)):
        return True
    if isinstance(value, dict):
        return any(_has_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_bytes(v) for v in value)
    return False


def _check_sizes(kwargs: dict[str, Any], state: Any, where: str) -> None:
    """Refuse an integer kwarg (a width, a count) above the number of elements the spec's tensors hold: no layer is
    wider than its weights, and a file must not make the loader allocate what its tensors do not hold."""
    if not isinstance(state, dict):
        return
    limit = max(16, sum(v.numel() for v in state.values() if isinstance(v, torch.Tensor)))
    for name, value in kwargs.items():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, int) and not isinstance(item, bool) and item > limit:
                raise UsageError(f"{where}: kwarg {name}={value} is larger than its {limit} stored numbers allow.")


def build_actor(spec: dict[str, Any], device: str | torch.device = "cpu", trusted: bool = False) -> nn.Module:
    """Rebuild a module from policy_spec(); a kwarg that is itself a spec (a residual's base) is built first.
    Only classes of POLICY_MODULES unless `trusted`; every tensor is checked against the module (check_state)."""
    if not isinstance(spec, dict) or not {"class", "kwargs", "state_dict"} <= spec.keys():
        raise UsageError("policy spec: expected an object with 'class', 'kwargs' and 'state_dict'.")
    where = f"policy {spec['class']}"
    cls = policy_class(spec["class"], trusted)
    if not isinstance(spec["kwargs"], dict) or not all(isinstance(k, str) for k in spec["kwargs"]):
        raise UsageError(f"{where}: 'kwargs' must be an object with string keys.")
    kwargs = {k: build_actor(v, device, trusted) if is_spec(v) else v for k, v in spec["kwargs"].items()}
    if "zip_bytes" in kwargs and hasattr(cls, "from_zip"):  # an SB3 base that mixrl embedded as its zip, before 0.2
        if not trusted:
            raise UsageError(f"{where}: the base is embedded as a Stable-Baselines3 zip, which needs pickle; "
                             f"{TRUST_HINT}.")  # fmt: skip
        actor = cls.from_zip(kwargs["zip_bytes"], trusted=True)
    else:
        if _has_bytes(kwargs) and not trusted:
            raise UsageError(f"{where}: its kwargs hold raw bytes, which a data-only policy never needs; {TRUST_HINT}.")
        _check_sizes(kwargs, spec["state_dict"], where)
        try:
            actor = cls(**kwargs)
        except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as err:
            if isinstance(err, UsageError):
                raise
            reason = " ".join(f"{type(err).__name__}: {err}".split())[:160]
            raise UsageError(f"{where}: its kwargs do not fit the class ({reason}).") from None
    check_state(actor, spec["state_dict"], where)
    actor.load_state_dict(spec["state_dict"])
    return actor.to(device).eval()
