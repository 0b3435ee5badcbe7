"""`mixrl export`: a run's deterministic policy as one ONNX or TorchScript graph, raw observation -> env action, or
as the data-only policy folder that runs write at their end (mixrl.policies.files), for runs made before it.

    mixrl export runs/Hopper-v5__sac__1__<time> --format onnx           # writes <run>/policy.onnx
    mixrl export runs/<run>/checkpoints/final.pt --format torchscript --output policy.pt
    mixrl export runs/<older run> --format safetensors --trust-pickle   # writes <run>/policy/ (your own run)

The graph does what `mixrl.load_policy` does around the network, so it needs nothing else at run time:
    z = clip((obs - mean) / sqrt(var + eps), -c, c)       observation normalisation (float64), if the run used it
    a = actor.deterministic(z)                            Gaussian mean, mixture rule, deterministic actor, argmax Q
    a_env = low + (clip(a, -1, 1) + 1) (high - low) / 2   Box action spaces; Discrete ones give start + index
Input "obs": (batch, *observation shape) in the observation space's dtype; output "action": (batch, *action shape).
The batch size is dynamic.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import gymnasium as gym
import numpy as np
import torch
import tyro
from torch import nn

from mixrl.errors import UsageError, require
from mixrl.evaluation import Policy, policy_from_checkpoint
from mixrl.policies.files import POLICY_DIR, read_policy, run_dir_of, write_policy_dir

STOCHASTIC_RULES = ("sampled_k_mean", "sample")
ONNX_MODULES = ("onnx", "onnxscript")  # what torch.onnx.export(dynamo=True) imports; onnxruntime runs the file


class ExportablePolicy(nn.Module):
    """`Policy` as one torch module: raw observations (batch, *obs_shape) -> env actions, nothing drawn at random."""

    def __init__(self, policy: Policy):
        super().__init__()
        rule = getattr(policy.actor, "eval_rule", None)
        if rule in STOCHASTIC_RULES:
            raise UsageError(
                f"The policy's evaluation rule {rule!r} draws a random expert, so it has no deterministic graph to "
                "export: pass --eval-rule argmax_w or --eval-rule weighted_mean."
            )
        if hasattr(policy.actor, "reset"):
            raise UsageError(
                f"{type(policy.actor).__name__} can keep state between steps (a queue of chunked actions, its own or "
                "its base's), which a graph of one observation cannot hold, so chunked and residual policies are not "
                "exported: evaluate them in Python with mixrl.load_policy instead."
            )
        self.actor = policy.actor.cpu().eval()
        self.obs_shape = tuple(policy.observation_space.shape)
        self.discrete = not isinstance(policy.action_space, gym.spaces.Box)
        norm = policy.obs_normalizer
        self.normalize = norm is not None
        if norm is not None:
            self.register_buffer("obs_mean", torch.as_tensor(np.asarray(norm["mean"], np.float64)).reshape(-1))
            std = np.sqrt(np.asarray(norm["var"], np.float64) + norm["epsilon"])
            self.register_buffer("obs_std", torch.as_tensor(std).reshape(-1))
            self.obs_clip = float(norm["clip"])
        if not self.discrete:
            self.register_buffer("low", torch.as_tensor(policy.action_space.low))
            self.register_buffer("high", torch.as_tensor(policy.action_space.high))
        else:
            self.action_shape = tuple(policy.action_space.shape)
            self.action_start = int(getattr(policy.action_space, "start", 0))  # Discrete(n, start)
        self.requires_grad_(False)  # an inference graph: outputs that users can turn into numpy directly

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.reshape(obs.shape[0], -1)
        if self.normalize:
            x = ((x.double() - self.obs_mean) / self.obs_std).clamp(-self.obs_clip, self.obs_clip)
        action = self.actor.deterministic(x.float())
        if self.discrete:
            return (action.long() + self.action_start).reshape(obs.shape[0], *self.action_shape)
        return self.low + 0.5 * (action.clamp(-1.0, 1.0) + 1.0) * (self.high - self.low)


def example_obs(module: ExportablePolicy, dtype: np.dtype, batch: int = 2) -> torch.Tensor:
    """A batch of observations to trace with (its values do not matter)."""
    return torch.zeros(batch, *module.obs_shape, dtype=torch.from_numpy(np.zeros(0, dtype)).dtype)


def input_dtype(space: gym.spaces.Box) -> np.dtype:
    """The graph's input dtype: the observation space's floating dtype, float32 for integer observations."""
    return space.dtype if np.issubdtype(space.dtype, np.floating) else np.dtype(np.float32)


def export_policy(
    path: str | Path,
    format: Literal["onnx", "torchscript", "safetensors"] = "onnx",
    output: str | Path | None = None,
    eval_rule: str | None = None,
    trusted: bool = False,
) -> Path:
    """Write the deterministic policy of a policy folder, run directory or checkpoint (read as load_policy reads
    them: nothing unpickled unless `trusted`) as ONNX or TorchScript, or as a policy folder (safetensors); returns
    the file or folder. The default output is <run>/policy.onnx (policy.torchscript.pt, policy/) in the run."""
    if format not in ("onnx", "torchscript", "safetensors"):
        raise UsageError(f"--format {format!r} is not one of: onnx, torchscript, safetensors.")
    if format == "onnx":  # torch's exporter needs both; checked before anything is loaded or written
        for module in ONNX_MODULES:
            require(module, "export", "mixrl export --format onnx")
    ckpt = read_policy(path, trusted)
    run_dir = run_dir_of(Path(ckpt["source"]))
    if format == "safetensors":
        if eval_rule is not None:
            spec = ckpt["policy"]
            if "eval_rule" not in spec["kwargs"]:
                raise UsageError(f"--eval-rule applies to mixture policies only; this one is {spec['class']}.")
            ckpt["policy"] = {**spec, "kwargs": {**spec["kwargs"], "eval_rule": eval_rule}}
        policy_from_checkpoint(ckpt, "cpu", None, trusted)  # the folder must load: check before writing
        return write_policy_dir(ckpt, Path(output) if output is not None else run_dir / POLICY_DIR, trusted)
    policy = policy_from_checkpoint(ckpt, "cpu", eval_rule, trusted)
    module = ExportablePolicy(policy)
    obs = example_obs(module, input_dtype(policy.observation_space))
    out = (
        Path(output)
        if output is not None
        else run_dir / ("policy.onnx" if format == "onnx" else "policy.torchscript.pt")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notes; the graph is checked below
        if format == "onnx":
            torch.onnx.export(
                module,
                (obs,),
                str(out),
                dynamo=True,
                input_names=["obs"],
                output_names=["action"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            )
        else:
            traced = torch.jit.trace(module, (obs,), check_inputs=[(example_obs(module, obs.numpy().dtype, 5),)])
            traced.save(str(out))
    return out


@dataclass
class ExportArgs:
    path: Annotated[str, tyro.conf.Positional]
    """policy folder, run directory (uses its policy/ folder, else checkpoints/final.pt, else latest.pt) or
    checkpoint file"""
    format: Literal["onnx", "torchscript", "safetensors"] = "onnx"
    """ONNX (onnxruntime, TensorRT, ...), TorchScript (torch.jit.load, libtorch in C++), or safetensors: the
    data-only policy folder (model.safetensors + config.json) that mixrl.load_policy reads and people can share"""
    output: str | None = None
    """file or folder to write (default: <run>/policy.onnx, <run>/policy.torchscript.pt or <run>/policy/)"""
    eval_rule: Literal["argmax_w", "weighted_mean"] | None = None
    """mixture policies: the deterministic rule to export instead of the run's own (mean of the heaviest expert,
    or the weighted mean of the experts' means)"""
    trust_pickle: bool = False
    """read a checkpoint that needs pickle (one written before mixrl stored plain data): only for files whose
    author you trust, e.g. your own older runs; pickle runs whatever code the file names"""


def run_export(args: ExportArgs) -> Path:
    """`mixrl export`: write the file and say what it maps."""
    out = export_policy(args.path, args.format, args.output, args.eval_rule, args.trust_pickle)
    if args.format == "safetensors":
        print(f"exported a policy folder: {out} (model.safetensors + config.json; load with mixrl.load_policy)")
    else:
        print(f"exported {args.format}: {out} (input 'obs' raw observations, output 'action' env actions)")
    return out
