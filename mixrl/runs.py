"""One run, one directory: config, TensorBoard, progress bar, atomic self-describing checkpoints, resume and
interrupts. Everything an agent's loop needs besides its algorithm:

    saved = None
    if args.resume is not None:
        args, saved = resume_args(args, "total_timesteps")   # the saved Args; the budget may be extended
    ...build envs and networks; load saved["state"] into them; set_rng_state(saved["rng"]) last...
    with Run(args, "sac", args.env_id, saved=saved) as run:   # Ctrl-C / SIGTERM now only set run.stop_requested
        while global_step < args.total_timesteps:
            ...one iteration: act, store, update...
            run.log_evaluation({"step": global_step, ...}, scalars)   # when an evaluation is due
            run.end_iteration(global_step, checkpoint)   # latest.pt every checkpoint_every steps; on a stop:
                                                         # save latest.pt, then raise Interrupted
        run.save_final(checkpoint())                     # final.pt (no replay buffer) and latest.pt
    # leaving the block, by any exception too, restores the signal handlers and closes the writer

An interrupt is honoured at an iteration boundary, so latest.pt is always a state the run passed through and
`--resume` continues exactly; a second Ctrl-C stops at once (latest.pt is then the last periodic one).
`checkpoint` is a function returning the payload: the agent's state (args, spaces, policy spec, state dicts,
counters, RNG states); save_checkpoint adds the format tag, agent, algorithm, env id and library versions.

Around the loop: the Args dataclass carries @record_given (above @dataclass) and `__main__` calls
`main(parse_args(Args))`, so that a resume tells a given flag from a default; check_args refuses bad values with
check_range and UsageError (one line at the command line; any other exception is a bug and keeps its traceback).

runs/<env>__<algo>__<seed>__<time>/
    config.json  events.out.tfevents.*  evaluations.jsonl  checkpoints/{latest,final}.pt  videos/  eval.json

Files are replaced atomically (temporary file, fsync, rename, fsync of the folder): a crash or SIGKILL leaves
the old file or the new one, never half of one. Resume reads checkpoints/latest.pt (the newest state); load_policy
and `mixrl eval` prefer final.pt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import platform
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from mixrl.errors import MissingPathError, UsageError

__all__ = ["MissingPathError", "UsageError"]  # re-exported: agents import both from here

CHECKPOINT_FORMAT = "mixrl-checkpoint-1"


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


class Interrupted(KeyboardInterrupt):
    """Training stopped at an iteration boundary on Ctrl-C or SIGTERM, after saving checkpoints/latest.pt."""


def set_cpu_math(threads: int) -> None:
    """torch's CPU threads, and denormal floats flushed to zero on this thread. Adam's moments of a parameter whose
    gradient vanishes decay through the denormal range (below 1.2e-38), where x86 arithmetic is many times slower:
    unflushed, they cost a fifth of a ResiP update. Flushing changes no value above that range."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


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
    """Raise NonFiniteLossError naming the first non-finite loss and the step (no losses yet: nothing to check)."""
    if not losses or torch.isfinite(torch.cat([value.detach().reshape(-1) for value in losses.values()])).all():
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
    """torch.save through atomic_write."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file through atomic_write (config.json, eval.json, evaluations.jsonl rewrites)."""
    atomic_write(path, lambda f: f.write(text.encode()))


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints and resume
# ---------------------------------------------------------------------------------------------------------------


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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", newest: bool = False) -> dict[str, Any]:
    """Load a mixrl checkpoint (trusted file: it holds pickled spaces and RNG states)."""
    file = find_checkpoint(path, newest)
    try:
        ckpt = torch.load(file, map_location=map_location, weights_only=False)
    except Exception as err:
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        raise UsageError(
            f"Could not read checkpoint {file} ({reason}): the file is corrupt or not a checkpoint."
        ) from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"{file} is not a mixrl checkpoint (expected format {CHECKPOINT_FORMAT!r}).")
    return ckpt


def agent_name(args: Any) -> str:
    """The agent an Args instance belongs to: the last part of its module's name (sac, ppo, td3_bc, ...)."""
    module = type(args).__module__
    if module == "__main__":  # python -m mixrl.agents.sac
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else module
    return module.rpartition(".")[2]


def record_given(cls: type) -> type:
    """Class decorator (above @dataclass) for an agent's Args: each instance remembers which fields its caller
    passed, so that `--resume` tells an explicit value from a default even when they are equal."""
    init = cls.__init__
    names = [f.name for f in dataclasses.fields(cls)]

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        object.__setattr__(self, "_given", frozenset(names[: len(args)]) | frozenset(kwargs))

    cls.__init__ = __init__
    return cls


def mark_given(args: Any, names: set[str]) -> Any:
    """Set the fields that count as given (the `mixrl` command marks the flags on its command line)."""
    object.__setattr__(args, "_given", frozenset(names))
    return args


def given_flags(args_type: type, argv: list[str]) -> set[str]:
    """The Args fields that `argv` names (--name, --name=value, --no-name): what `--resume` takes from the command
    line, even where the value equals the default."""
    names = {field.name for field in dataclasses.fields(args_type)}
    given = set()
    for token in argv:
        if not token.startswith("--"):
            continue
        name = token.removeprefix("--").split("=", 1)[0].replace("-", "_")
        if name not in names and name.startswith("no_"):
            name = name[3:]
        if name in names:
            given.add(name)
    return given


def parse_args(args_type: type, argv: list[str] | None = None, **tyro_kwargs: Any) -> Any:
    """tyro.cli(args_type) on `argv` (default sys.argv[1:]), with the flags it names marked as given (mark_given):
    what an agent's `python -m` entry point and `mixrl AGENT` call."""
    import tyro

    argv = sys.argv[1:] if argv is None else argv
    return mark_given(tyro.cli(args_type, args=argv, **tyro_kwargs), given_flags(args_type, argv))


def given_fields(args: Any) -> set[str]:
    """The fields the caller gave: recorded by @record_given or mark_given, else those that differ from defaults."""
    given = getattr(args, "_given", None)
    if given is not None:
        return set(given)
    defaults = type(args)()
    return {f.name for f in dataclasses.fields(args) if getattr(args, f.name) != getattr(defaults, f.name)}


def flag(name: str) -> str:
    """The command-line flag of an Args field: total_timesteps -> --total-timesteps."""
    return "--" + name.replace("_", "-")


def check_range(args: Any, names: str, low: float, high: float = float("inf")) -> None:
    """Raise UsageError naming the first of the space-separated Args fields `names` whose value (every element, for a
    tuple) is outside [low, high] or not finite."""
    for name in names.split():
        value = getattr(args, name)
        if not all(low <= float(v) <= high for v in (value if isinstance(value, tuple) else (value,))):
            bounds = f"at least {low:g}" if high == float("inf") else f"in [{low:g}, {high:g}]"
            raise UsageError(f"{flag(name)} must be {bounds}, got {value}.")


def resume_args(args: Any, budget: str, changeable: tuple[str, ...] = ("threads",)) -> tuple[Any, dict[str, Any]]:
    """(Args, checkpoint) to continue the run `args.resume` from its checkpoints/latest.pt: the saved Args, with the
    `budget` field (e.g. total_timesteps) and the `changeable` ones taken from `args` where the caller gave them.

    Refuses (UsageError, nothing written) a run of another agent, and any other given field whose value differs
    from the saved one: a resumed run keeps the settings it was started with. Prints what comes from where.
    """
    run_dir = Path(args.resume)
    if not run_dir.is_dir():
        raise MissingPathError(f"--resume {run_dir}: no such run directory.")
    saved = load_checkpoint(run_dir, newest=True)
    agent = agent_name(args)
    saved_agent = saved.get("agent") or str(saved.get("algo", "?")).removeprefix("pmoe_")
    if saved_agent != agent:
        raise UsageError(
            f"--resume {run_dir}: that is a {saved.get('algo')} run on {saved.get('env_id')}, not a {agent} run: "
            f"continue it with `mixrl {saved_agent} --resume {run_dir}`."
        )
    names = {f.name for f in dataclasses.fields(args)}
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in saved["args"].items() if k in names}
    resumed = dataclasses.replace(type(args)(**fields), resume=args.resume)
    taken, refused = {}, []
    for name in sorted(given_fields(args) - {"resume"}):
        value = getattr(args, name)
        if value == getattr(resumed, name):
            continue
        if name == budget or name in changeable:
            taken[name] = value
        else:
            refused.append(f"{flag(name)} {value} (saved: {getattr(resumed, name)})")
    if refused:
        raise UsageError(
            f"--resume {run_dir} keeps the settings the run was started with, but {'; '.join(refused)} "
            f"{'differs' if len(refused) == 1 else 'differ'}: "
            f"drop them (only {', '.join(flag(n) for n in (budget, *changeable))} may change on resume), or start "
            "a new run."
        )
    step = saved["global_step"]
    if taken.get(budget, step) < step:
        raise UsageError(f"{flag(budget)} {taken[budget]} is below the step of {run_dir}'s latest checkpoint ({step}).")
    resumed = dataclasses.replace(resumed, **taken)
    from_command_line = ", ".join(f"{flag(name)} {value}" for name, value in taken.items()) or "nothing"
    print(
        f"resuming {run_dir} from checkpoints/latest.pt at step {step}: from the command line {from_command_line}; "
        f"every other setting from the saved run ({flag(budget)} {getattr(resumed, budget)})."
    )
    return resumed, saved


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------


class Run:
    """The directory, TensorBoard writer, progress bar and checkpoints of one training run, and (as a context
    manager) its interrupt handling; see the module docstring for the loop it serves.

    A new run makes runs/<env>__<algo>__<seed>__<time>/ under `root` (default args.run_root) and writes config.json;
    with `saved`, the checkpoint that resume_args returned, it reopens args.resume and forgets what the
    interrupted run logged after that checkpoint.
    """

    def __init__(
        self,
        args: Any,
        algo: str,
        env_id: str,
        root: str | Path | None = None,
        resume: str | Path | None = None,
        saved: dict[str, Any] | None = None,
    ):
        self.algo, self.env_id, self.agent = algo, env_id, agent_name(args)
        self.checkpoint_every = int(getattr(args, "checkpoint_every", 0))
        resume = resume if resume is not None else (getattr(args, "resume", None) if saved is not None else None)
        if resume is not None:
            self.dir = Path(resume)
            if not self.dir.is_dir():
                raise MissingPathError(f"--resume {resume}: no such run directory.")
        else:
            root = Path(root if root is not None else getattr(args, "run_root", "runs"))
            name = f"{env_id.replace('/', '-')}__{algo}__{args.seed}__{int(time.time())}"
            self.dir = root / name
            suffix = 1
            while self.dir.exists():
                self.dir = root / f"{name}_{suffix}"
                suffix += 1
            self.dir.mkdir(parents=True)
            config = {
                "algo": algo,
                "agent": self.agent,
                "env_id": env_id,
                "args": dataclasses.asdict(args),
                "versions": library_versions(),
            }
            atomic_write_text(self.dir / "config.json", json.dumps(config, indent=2, default=str))
        self.checkpoint_dir = self.dir / "checkpoints"
        self.writer = SummaryWriter(str(self.dir))
        if resume is None:
            table = "\n".join(f"|{k}|{v}|" for k, v in dataclasses.asdict(args).items())
            self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
        self.bar: tqdm | None = None
        self._start_time, self._start_step = time.time(), 0
        self.step = 0  # the step of the last end_iteration (or of the checkpoint resumed from)
        self.stop_requested = False
        self._handlers: dict[int, Any] = {}
        self._closed = False
        if saved is not None:
            self.step = saved["global_step"]
            self.rewind(self.step)

    # ------------------------------------------------------------------ interrupts
    def __enter__(self) -> Run:
        """Defer Ctrl-C (SIGINT) and SIGTERM to the next end_iteration (main thread only)."""
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._handlers[signum] = signal.signal(signum, self._request_stop)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self.stop_requested:
            raise KeyboardInterrupt  # the second signal stops at once
        self.stop_requested = True
        name = signal.Signals(signum).name
        tqdm.write(
            f"{name}: stopping after this iteration and saving checkpoints/latest.pt (again to stop at once).",
            file=sys.stderr,
        )

    def end_iteration(self, step: int, checkpoint: Callable[[], dict[str, Any]]) -> None:
        """Close one iteration at `step`: write latest.pt with checkpoint() when a multiple of checkpoint_every was
        passed or a stop was requested; after a stop, raise Interrupted."""
        due = crossed(step, self.step, self.checkpoint_every)
        self.step = step
        if due or self.stop_requested:
            self.save_checkpoint(checkpoint())
        if self.stop_requested:
            raise Interrupted(f"stopped at step {step}; continue with --resume {self.dir}")

    # ------------------------------------------------------------------ logging
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

    def log_evaluation(self, line: dict[str, Any], scalars: dict[str, float] | None = None) -> None:
        """Append one evaluation, a dict with its "step", to evaluations.jsonl; `scalars` (e.g. eval/return) also go
        to TensorBoard at that step."""
        if scalars:
            self.log_scalars(line["step"], scalars)
        with open(self.dir / "evaluations.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")

    def rewind(self, step: int) -> None:
        """On resume from a checkpoint at `step`: forget the evaluations and TensorBoard events that the interrupted
        run logged after it, which the resumed run logs again (a line torn by a kill is dropped too), and the
        temporary files of a checkpoint write that a kill cut short."""
        for tmp in self.checkpoint_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        evaluations = self.dir / "evaluations.jsonl"
        if evaluations.exists():
            kept = []
            for line in evaluations.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    if json.loads(line)["step"] <= step:
                        kept.append(line)
            atomic_write_text(evaluations, "".join(line + "\n" for line in kept))
        self.writer.close()
        self.writer = SummaryWriter(str(self.dir), purge_step=step + 1)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, payload: dict[str, Any], name: str = "latest") -> Path:
        """Atomically write checkpoints/<name>.pt with the format tag, agent, algorithm, env id and library versions."""
        path = self.checkpoint_dir / f"{name}.pt"
        header = {
            "format": CHECKPOINT_FORMAT,
            "agent": self.agent,
            "algo": self.algo,
            "env_id": self.env_id,
            "versions": library_versions(),
        }
        atomic_torch_save({**header, **payload}, path)
        return path

    def save_final(self, payload: dict[str, Any]) -> Path:
        """The end of training: latest.pt with the whole payload (what a resume that extends the budget needs), then
        final.pt without the replay buffer (what load_policy and `mixrl eval` read). Returns final.pt."""
        self.save_checkpoint(payload)
        return self.save_checkpoint({k: v for k, v in payload.items() if k != "buffer"}, "final")

    def close(self) -> None:
        """Restore the signal handlers, close the bar and the writer (again: nothing happens)."""
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers = {}
        if self._closed:
            return
        self._closed = True
        if self.bar is not None:
            self.bar.close()
        self.writer.close()
