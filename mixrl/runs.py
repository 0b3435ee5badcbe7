"""One run, one directory: config, TensorBoard, progress bar, atomic self-describing checkpoints and resume.

runs/<env>__<algo>__<seed>__<time>/
    config.json  events.out.tfevents.*  checkpoints/{latest,final}.pt  videos/  eval.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import random
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

CHECKPOINT_FORMAT = "mixrl-checkpoint-1"


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


def seed_everything(seed: int, torch_deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; make torch pick deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic


def rng_state() -> dict[str, Any]:
    """The global RNG states of Python, NumPy and torch (and CUDA when present)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def library_versions() -> dict[str, str]:
    import gymnasium

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gymnasium": gymnasium.__version__,
    }
    try:
        import mujoco

        versions["mujoco"] = mujoco.__version__
    except ImportError:
        pass
    return versions


def check_finite(losses: dict[str, torch.Tensor], step: int) -> None:
    """Raise NonFiniteLossError naming the first non-finite loss and the step."""
    if torch.isfinite(torch.cat([value.detach().reshape(-1) for value in losses.values()])).all():
        return  # one check for all values: one host synchronisation per call
    for name, value in losses.items():
        if not torch.isfinite(value).all():
            raise NonFiniteLossError(
                f"Loss '{name}' became {value.item() if value.numel() == 1 else 'non-finite'} at step {step}. "
                "Training stopped; the last good checkpoint is kept in checkpoints/latest.pt. "
                "Try a lower learning rate, observation/reward normalisation, or gradient clipping."
            )


def crossed(step: int, previous: int, every: int) -> bool:
    """True when a multiple of `every` lies in (previous, step]: an interval ended on this step. Never for 0."""
    return every > 0 and step // every > previous // every


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the best one in a run directory (final.pt, else latest.pt)."""
    path = Path(path)
    if path.is_dir():
        for name in ("final.pt", "latest.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise FileNotFoundError(f"No checkpoints/final.pt or checkpoints/latest.pt in run directory {path}.")
    if not path.is_file():
        raise FileNotFoundError(f"No run directory or checkpoint at {path}.")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a mixrl checkpoint (trusted file: it holds pickled spaces and RNG states)."""
    file = find_checkpoint(path)
    try:
        ckpt = torch.load(file, map_location=map_location, weights_only=False)
    except Exception as err:
        raise ValueError(f"Could not read checkpoint {file}: {err}. The file is corrupt or not a checkpoint.") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{file} is not a mixrl checkpoint (expected format {CHECKPOINT_FORMAT!r}).")
    return ckpt


def resume_args(args: Any, budget: str) -> tuple[Any, dict[str, Any]]:
    """The saved Args and checkpoint of the run `args.resume` names; the `budget` field (e.g. total_timesteps)
    comes from `args` when it differs from its default, so that a resumed run can be extended."""
    saved = load_checkpoint(args.resume)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in saved["args"].items()}
    requested = getattr(args, budget)
    if requested == getattr(type(args), budget):
        requested = fields[budget]
    return dataclasses.replace(type(args)(**fields), resume=args.resume, **{budget: requested}), saved


class Run:
    """The directory, TensorBoard writer and progress bar of one training run."""

    def __init__(self, args: Any, algo: str, env_id: str, root: str | Path = "runs", resume: str | Path | None = None):
        self.algo, self.env_id = algo, env_id
        if resume is not None:
            self.dir = Path(resume)
            if not self.dir.is_dir():
                raise FileNotFoundError(f"--resume {resume}: no such run directory.")
        else:
            name = f"{env_id.replace('/', '-')}__{algo}__{args.seed}__{int(time.time())}"
            self.dir = Path(root) / name
            suffix = 1
            while self.dir.exists():
                self.dir = Path(root) / f"{name}_{suffix}"
                suffix += 1
            self.dir.mkdir(parents=True)
            config = {
                "algo": algo,
                "env_id": env_id,
                "args": dataclasses.asdict(args),
                "versions": library_versions(),
            }
            (self.dir / "config.json").write_text(json.dumps(config, indent=2, default=str))
        self.checkpoint_dir = self.dir / "checkpoints"
        self.writer = SummaryWriter(str(self.dir))
        if resume is None:
            table = "\n".join(f"|{k}|{v}|" for k, v in dataclasses.asdict(args).items())
            self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
        self.bar: tqdm | None = None
        self._start_time, self._start_step = time.time(), 0
        # SIGTERM (`kill`, a scheduler's stop) is Ctrl-C while the run is open: the agent saves checkpoints/latest.pt.
        self._sigterm_handler = None
        if threading.current_thread() is threading.main_thread():
            self._sigterm_handler = signal.signal(signal.SIGTERM, signal.default_int_handler)

    def progress(self, total: int, initial: int = 0) -> tqdm:
        """A progress bar over environment steps (shown on terminals only)."""
        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=None)
        self._start_time, self._start_step = time.time(), initial
        return self.bar

    def steps_per_second(self, step: int) -> float:
        return (step - self._start_step) / max(time.time() - self._start_time, 1e-9)

    def log_scalars(self, step: int, scalars: dict[str, float | torch.Tensor]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, float(value), step)

    def log_episodes(self, step: int, returns: list[float], lengths: list[int]) -> None:
        """TensorBoard `charts/episodic_return` and `charts/episodic_length`; the bar shows the recent return."""
        for ret, length in zip(returns, lengths):
            self.writer.add_scalar("charts/episodic_return", ret, step)
            self.writer.add_scalar("charts/episodic_length", length, step)
        if returns and self.bar is not None:
            self.bar.set_postfix(ret=f"{np.mean(returns):.1f}", sps=f"{self.steps_per_second(step):.0f}")

    def log_evaluation(self, line: dict[str, Any]) -> None:
        """Append one evaluation, a dict with its "step", to evaluations.jsonl."""
        with open(self.dir / "evaluations.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")

    def rewind(self, step: int) -> None:
        """On resume from a checkpoint at `step`: forget the evaluations and TensorBoard events that the interrupted
        run logged after it, which the resumed run logs again."""
        evaluations = self.dir / "evaluations.jsonl"
        if evaluations.exists():
            kept = [line for line in evaluations.read_text().splitlines() if json.loads(line)["step"] <= step]
            evaluations.write_text("".join(line + "\n" for line in kept))
        self.writer.close()
        self.writer = SummaryWriter(str(self.dir), purge_step=step + 1)

    def save_checkpoint(self, payload: dict[str, Any], name: str = "latest") -> Path:
        """Atomically write checkpoints/<name>.pt with the format tag, algorithm and library versions."""
        path = self.checkpoint_dir / f"{name}.pt"
        atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "algo": self.algo,
                "env_id": self.env_id,
                "versions": library_versions(),
                **payload,
            },
            path,
        )
        return path

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.writer.close()
        if self._sigterm_handler is not None:
            signal.signal(signal.SIGTERM, self._sigterm_handler)
