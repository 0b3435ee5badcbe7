"""One run, one directory: the plumbing every agent's loop needs besides its algorithm. The agent builds its parts,
hands them to the Run once and calls it at each iteration boundary; its loop stays in its own file:

    args, saved = start(args, check_args)                 # --resume: the saved Args (the budget may be extended)
    ...build envs, networks, optimisers, buffers...
    with Run(args, "sac", args.env_id, saved) as run:    # Ctrl-C / SIGTERM now only set run.stop_requested
        step, obs = run.track(Parts(state={"actor": actor, ...}, buffer=rb, envs=envs), policy, global_step=0, obs=obs)
        while step < args.total_timesteps:                # track() loaded a saved checkpoint into the parts
            ...one iteration: act, store, update...
            run.end_iteration(step, metrics, obs=obs)     # logs, evaluates, checkpoints when due; honours a stop
        run.finish(step, obs=obs)                         # final evaluation, latest.pt and final.pt

The checkpoint schema is built here from the named parts (state dicts of modules, optimisers, normalisers and
tensors; the env state; the replay buffer, left out of final.pt), the policy (spec, spaces, normalisation), the
loop variables given to end_iteration (counters, the current observation) and the RNG states. Evaluations use one
seed rule (eval_seed), fork the RNG so that evaluating never shifts training, and are excluded from steps/s.

An interrupt is honoured at an iteration boundary, so latest.pt is always a state the run passed through and
`--resume` continues exactly; a second Ctrl-C stops at once (latest.pt is then the last periodic one). A run that
reached its budget is finished: resuming it is refused with the command that extends it, and nothing is written.

Around the loop: the Args dataclass carries @record_given (above @dataclass) and `__main__` calls
`main(parse_args(Args))`, so that a resume tells a given flag from a default; check_args refuses bad values with
check_range and UsageError (one line at the command line; any other exception is a bug and keeps its traceback).

runs/<env>__<algo>__<seed>__<time>/
    config.json  events.out.tfevents.*  evaluations.jsonl  checkpoints/{latest,final}.pt  videos/  eval.json

Resume reads checkpoints/latest.pt (the newest state); load_policy and `mixrl eval` prefer final.pt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from mixrl.checkpoints import (
    CHECKPOINT_FORMAT,
    agent_of,
    atomic_torch_save,
    atomic_write_text,
    library_versions,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from mixrl.errors import MissingPathError, UsageError
from mixrl.evaluation import Policy, evaluate
from mixrl.policies.files import POLICY_DIR, save_policy_dir

__all__ = ["MissingPathError", "UsageError"]  # re-exported: agents import both from here

DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


class RunFinished(UsageError):
    """--resume of a run that already reached its budget: nothing to do (and nothing written)."""


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
    saved = load_checkpoint(run_dir, newest=True, trusted=getattr(args, "trust_pickle", False))
    agent = agent_name(args)
    saved_agent = agent_of(saved) or "?"
    if saved_agent != agent:
        raise UsageError(
            f"--resume {run_dir}: that is a {saved.get('algo')} run on {saved.get('env_id')}, not a {agent} run: "
            f"continue it with `mixrl {saved_agent} --resume {run_dir}`."
        )
    names = {f.name for f in dataclasses.fields(args)}
    trust = {"trust_pickle": args.trust_pickle} if "trust_pickle" in names else {}  # from this command line only
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in saved["args"].items() if k in names}
    resumed = dataclasses.replace(type(args)(**{**fields, **trust}), resume=args.resume)
    taken, refused = {}, []
    for name in sorted(given_fields(args) - {"resume", *trust}):
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
    if saved.get("finished") and taken.get(budget, getattr(resumed, budget)) <= getattr(resumed, budget):
        raise RunFinished(
            f"--resume {run_dir}: the run finished at step {step} ({flag(budget)} {getattr(resumed, budget)}); nothing "
            f"to do. Extend it with `mixrl {agent} --resume {run_dir} {flag(budget)} N`, N above "
            f"{getattr(resumed, budget)}."
        )
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


def disk_full(exc: BaseException | None) -> OSError | None:
    """The out-of-space error (ENOSPC, EFBIG, EDQUOT) behind `exc`, if any: torch.save reports it as a RuntimeError
    whose context is the OSError."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def eval_seed(seed: int) -> int:
    """The reset seed of a run's first evaluation episode (episode i uses eval_seed + i): the same in every agent,
    and apart from the training seeds."""
    return 10_000 + seed


def start(args: Any, check: Callable[[Any], None] | None = None, budget: str = "total_timesteps") -> tuple[Any, Any]:
    """Begin a run: (Args, checkpoint or None). With --resume, the saved Args and checkpoint (resume_args); then
    `check` refuses bad values, a budget at or below --learning-starts is refused (it would train nothing), and the
    CPU threads and all seeds are set."""
    saved = None
    if args.resume is not None:
        args, saved = resume_args(args, budget)
    if check is not None:
        check(args)
    learning_starts = getattr(args, "learning_starts", None)
    if learning_starts is not None and getattr(args, budget) <= learning_starts:
        raise UsageError(
            f"{flag(budget)} {getattr(args, budget)} is not above --learning-starts {learning_starts}: the run "
            "would only act at random and learn nothing. Raise the budget or lower --learning-starts."
        )
    set_cpu_math(args.threads)
    seed_everything(args.seed, args.torch_deterministic)
    if getattr(args, "compile", False):  # drop the graphs of earlier runs in this process (the recompile limit)
        torch.compiler.reset()
    return args, saved


@dataclass
class Parts:
    """The named stateful parts of a run, as a checkpoint holds them. `state`: modules, optimisers, normalisers
    (anything with state_dict/load_state_dict) and tensors (restored in place); `envs`: the vector env (its state
    as env_state); `buffer`: the replay buffer, kept out of final.pt and of checkpoints with --no-save-buffer."""

    state: dict[str, Any]
    envs: Any = None
    buffer: Any = None


@dataclass
class RunPolicy:
    """The policy a run trains, as evaluation, checkpoints and load_policy see it."""

    acting: Callable[[], nn.Module]
    """the deterministic policy on the agent's observations, as it is now"""
    spec: Callable[[], dict]
    """its policy spec (class, kwargs) from which load_policy rebuilds it"""
    observation_space: gym.Space
    action_space: gym.Space
    env_id: str
    env_kwargs: dict = field(default_factory=dict)
    obs_normalizer: Callable[[], dict | None] = lambda: None
    """the observation statistics the policy acts with, now (None: raw observations)"""
    score: Callable[[float], float | None] | None = None
    """mean return -> normalised score (offline datasets), logged beside the return"""

    @classmethod
    def of(
        cls,
        module: nn.Module,
        spec: Callable[[], dict],
        envs: Any,
        env_id: str,
        env_kwargs: dict,
        normalizer: Any = None,
    ) -> RunPolicy:
        """An online agent's policy: `module` itself acting in the spaces of the vector env `envs`, on observations
        z-scored by `normalizer` (an observation normaliser, or None) with its statistics of the moment."""
        return cls(
            acting=lambda: module,
            spec=spec,
            observation_space=envs.single_observation_space,
            action_space=envs.env_action_space,
            env_id=env_id,
            env_kwargs=env_kwargs,
            obs_normalizer=lambda: None if normalizer is None else normalizer.state_dict(),
        )

    @classmethod
    def of_dataset(
        cls, module: nn.Module, spec: Callable[[], dict], data: Any, env_id: str | None, env_kwargs: tuple[str, ...]
    ) -> RunPolicy:
        """An offline agent's policy: `module` acting on the env of the dataset `data` (an OfflineDataset; `env_id`
        and `env_kwargs` as --env-id and --env-kwargs give them, see its resolve_env) on states z-scored with the
        dataset's statistics, its returns scored with the dataset's reference scores."""
        env_id, kwargs, observation_space, action_space = data.resolve_env(env_id, env_kwargs)
        return cls(
            acting=lambda: module,
            spec=spec,
            observation_space=observation_space,
            action_space=action_space,
            env_id=env_id,
            env_kwargs=kwargs,
            obs_normalizer=lambda: data.obs_normalizer,
            score=data.normalized_score,
        )


def _state_of(part: Any) -> Any:
    return part.detach().clone() if isinstance(part, torch.Tensor) else part.state_dict()


def _loop_state(value: Any) -> Any:
    if hasattr(value, "state_dict"):
        return value.state_dict()
    return value.copy() if isinstance(value, np.ndarray) else value


def _load_state(part: Any, state: Any) -> None:
    if isinstance(part, torch.Tensor):
        with torch.no_grad():
            part.copy_(state)
    else:
        part.load_state_dict(state)


class Run:
    """The directory, TensorBoard writer, progress bar, checkpoints and evaluations of one training run, and (as a
    context manager) its interrupt handling; see the module docstring for the loop it serves.

    A new run makes runs/<env>__<algo>__<seed>__<time>/ under `root` (default args.run_root) and writes config.json;
    with `saved`, the checkpoint that start() returned, it reopens args.resume and forgets what the interrupted run
    logged after that checkpoint. `budget` names the Args field of the run's length. With `keep_best`, an evaluation
    whose mean return beats every earlier one also writes checkpoints/best.pt (without the replay buffer).
    """

    def __init__(
        self,
        args: Any,
        algo: str,
        env_id: str,
        saved: dict[str, Any] | None = None,
        root: str | Path | None = None,
        budget: str = "total_timesteps",
        keep_best: bool = False,
    ):
        self.args, self.algo, self.env_id, self.agent = args, algo, env_id, agent_name(args)
        self.budget = int(getattr(args, budget, 0))
        self.checkpoint_every = int(getattr(args, "checkpoint_every", 0))
        self.eval_every, self.log_every = int(getattr(args, "eval_every", 0)), int(getattr(args, "log_every", 1))
        self.device = torch.device(getattr(args, "device", "cpu"))
        self.saved = saved
        if saved is not None:
            self.dir = Path(args.resume)
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
        if saved is None:
            table = "\n".join(f"|{k}|{v}|" for k, v in dataclasses.asdict(args).items())
            self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
        self.bar: tqdm | None = None
        self.parts: Parts | None = None
        self.policy: RunPolicy | None = None
        self.extra: dict[str, Any] = {}
        self.keep_best = keep_best
        self.best_return = -float("inf") if saved is None else saved.get("best_return", -float("inf"))
        self.metrics: dict[str, torch.Tensor] = {}
        self._start_time, self._start_step, self._eval_seconds = time.perf_counter(), 0, 0.0
        self._log_time, self._log_eval_seconds = self._start_time, 0.0
        self.step = 0  # the step of the last end_iteration (or of the checkpoint resumed from)
        self.saved_step: int | None = None  # the step of the newest latest.pt
        self.stop_requested = False
        self._handlers: dict[int, Any] = {}
        self._closed = False
        if saved is not None:
            self.step = self.saved_step = saved["global_step"]
            self.rewind(self.step)

    # ------------------------------------------------------------------ interrupts and errors
    def __enter__(self) -> Run:
        """Defer Ctrl-C (SIGINT) and SIGTERM to the next end_iteration (main thread only)."""
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._handlers[signum] = signal.signal(signum, self._request_stop)
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, traceback: Any) -> None:
        self.close()
        full = disk_full(exc)
        if full is not None:
            kept = (
                f"checkpoints/latest.pt of step {self.saved_step} is intact; free disk space, then continue with "
                f"`mixrl {self.agent} --resume {self.dir}`"
                if self.saved_step is not None
                else "no checkpoint was written yet; free disk space and start the run again"
            )
            raise UsageError(
                f"No room to write {full.filename or 'a run file'} ({full.strerror}) at step {self.step}: {kept}."
            ) from exc

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self.stop_requested:
            raise KeyboardInterrupt  # the second signal stops at once
        self.stop_requested = True
        name = signal.Signals(signum).name
        tqdm.write(
            f"{name}: stopping after this iteration and saving checkpoints/latest.pt (again to stop at once).",
            file=sys.stderr,
        )

    # ------------------------------------------------------------------ the parts
    def track(self, parts: Parts, policy: RunPolicy, total: int | None = None, **loop: Any) -> Any:
        """Take the run's stateful parts and its policy, and open the progress bar up to `total`: the step at which
        the loop ends (default the budget; e.g. the last whole rollout below it), where end_iteration leaves the
        evaluation and the save to finish(). Returns the loop variables given as keywords (global_step=0 first, then
        e.g. obs=obs): on resume the saved ones (tensors on the run's device), after the saved state was loaded into
        the parts, RNG states last.
        Several variables come back as a tuple in the order given, one as itself. A loop variable with state_dict and
        load_state_dict (e.g. RLIF's labeller) is saved as its state and restored in place; the counters already in
        self.extra are restored too."""
        self.parts, self.policy = parts, policy
        saved = self.saved
        if saved is not None:
            if parts.buffer is not None and "buffer" not in saved:
                raise UsageError(
                    f"{self.dir}: checkpoint saved without its replay buffer (--no-save-buffer); cannot resume exactly."
                )
            for name, part in parts.state.items():
                _load_state(part, saved["state"][name])
            if parts.envs is not None:
                parts.envs.load_state_dict(saved["env_state"])
            if parts.buffer is not None:
                parts.buffer.load_state_dict(saved["buffer"])
            loop = {name: self._restored(value, saved[name]) for name, value in loop.items()}
            self.extra.update({name: saved[name] for name in self.extra})
            set_rng_state(saved["rng"])
        first = next(iter(loop.values()), 0)
        self.budget = total if total is not None else self.budget
        self.progress(self.budget, initial=int(first))
        values = tuple(loop.values())
        return values[0] if len(values) == 1 else values

    def _restored(self, value: Any, saved: Any) -> Any:
        if hasattr(value, "load_state_dict"):
            value.load_state_dict(saved)
            return value
        if isinstance(saved, torch.Tensor):
            return saved.to(self.device)
        return saved.copy() if isinstance(saved, np.ndarray) else saved

    def checkpoint(self, step: int, loop: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint payload at `step` (save_checkpoint adds the header)."""
        parts, policy = self.parts, self.policy
        payload = {
            "args": dataclasses.asdict(self.args),
            "env_kwargs": policy.env_kwargs,
            "observation_space": policy.observation_space,
            "action_space": policy.action_space,
            "obs_normalizer": policy.obs_normalizer(),
            "policy": policy.spec(),
            "state": {name: _state_of(part) for name, part in parts.state.items()},
            "global_step": step,
            **{name: _loop_state(value) for name, value in loop.items()},
            **self.extra,
            "rng": rng_state(),
        }
        if parts.envs is not None:
            payload["env_state"] = parts.envs.state_dict()
        if parts.buffer is not None and getattr(self.args, "save_buffer", True):
            payload["buffer"] = parts.buffer.state_dict()
        if self.keep_best:
            payload["best_return"] = self.best_return
        return payload

    # ------------------------------------------------------------------ the loop
    def end_iteration(self, step: int, metrics: dict[str, torch.Tensor] | None = None, **loop: Any) -> None:
        """Close one iteration at `step` (the loop variables as keywords, as track() took them): log `metrics`
        every --log-every steps, evaluate every --eval-every steps, write latest.pt every --checkpoint-every steps,
        and after a Ctrl-C or SIGTERM write latest.pt and raise Interrupted. At the budget nothing is due: finish()
        evaluates and saves."""
        previous, self.step = self.step, step
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
        if metrics:
            self.metrics = metrics
            if crossed(step, previous, self.log_every):
                self.log_metrics(step, metrics)
        if step >= self.budget:
            return
        if crossed(step, previous, self.eval_every):
            self.keep_if_best(step, self.evaluate(step), loop)
        if crossed(step, previous, self.checkpoint_every) or self.stop_requested:
            self.save_checkpoint(step, loop)
        if self.stop_requested:
            raise Interrupted(f"stopped at step {step}; continue with --resume {self.dir}")

    def finish(self, step: int, **loop: Any) -> dict[str, Any]:
        """The end of training: the final evaluation, then latest.pt with the whole state (what a resume that
        extends the budget needs) and final.pt without the replay buffer (what load_policy and `mixrl eval` read).
        Prints and returns the final evaluation."""
        line = self.evaluate(step)
        self.keep_if_best(step, line, loop)
        self.save_checkpoint(step, loop, finished=True)
        self.save_checkpoint(step, loop, "final", finished=True)
        save_policy_dir(self.checkpoint_dir / "final.pt", self.dir / POLICY_DIR, trusted=True)  # the file to share
        extra = "".join(f", {name.replace('_', ' ')} {value:g}" for name, value in line.items() if name in self.extra)
        score = f", normalised score {line['normalized_score']:.1f}" if "normalized_score" in line else ""
        best = f" (best {self.best_return:.1f})" if self.keep_best else ""
        self.write(
            f"final deterministic return over {self.args.eval_episodes} episodes: "
            f"{line['mean_return']:.1f} +- {line['std_return']:.1f}{score}{extra}{best}"
        )
        return line

    def keep_if_best(self, step: int, line: dict[str, Any], loop: dict[str, Any]) -> None:
        """With keep_best: write checkpoints/best.pt when the evaluation `line` beats every earlier mean return (the
        best return so far travels in the checkpoints, so a resumed run compares with it)."""
        if self.keep_best and line["mean_return"] > self.best_return:
            self.best_return = line["mean_return"]
            self.save_checkpoint(step, loop, "best")

    def write(self, message: str) -> None:
        """Print a line without breaking the progress bar."""
        tqdm.write(message)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, step: int) -> dict[str, Any]:
        """Deterministic episodes of the policy as it is now, from reset seeds eval_seed(seed) + i, on a forked RNG
        (so that evaluating never shifts training); logged to evaluations.jsonl and TensorBoard (eval/*) with the
        run's extra counters (self.extra, e.g. RLIF's interventions). Returns the logged line."""
        if self.device.type == "cuda":  # the training work still queued on the GPU counts as training time
            torch.cuda.synchronize(self.device)
        policy, tick = self.policy, time.perf_counter()
        acting = Policy(
            policy.acting(), policy.observation_space, policy.action_space, policy.obs_normalizer(), self.device
        )
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            seed = eval_seed(self.args.seed)
            result = evaluate(acting, policy.env_id, self.args.eval_episodes, seed=seed, env_kwargs=policy.env_kwargs)
        self._eval_seconds += time.perf_counter() - tick
        line = {"step": step, "mean_return": result["mean_return"], "std_return": result["std_return"]}
        if "success_rate" in result:
            line["success_rate"] = result["success_rate"]
        score = policy.score(result["mean_return"]) if policy.score is not None else None
        if score is not None:
            line["normalized_score"] = score
            if self.bar is not None:
                self.bar.set_postfix(score=f"{score:.1f}")
        line.update(self.extra)
        scalars = {("eval/return" if k == "mean_return" else "eval/return_std" if k == "std_return" else f"eval/{k}"): v
                   for k, v in line.items() if k != "step"}  # fmt: skip
        self.log_evaluation({**line, "steps_per_second": self.steps_per_second(step)}, scalars)
        return line

    # ------------------------------------------------------------------ logging
    def progress(self, total: int, initial: int = 0) -> tqdm:
        """A progress bar over environment steps (shown on terminals only)."""
        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=None)
        self._start_time, self._start_step, self._eval_seconds = time.perf_counter(), initial, 0.0
        self._log_time, self._log_step, self._log_eval_seconds = self._start_time, initial, 0.0
        return self.bar

    def steps_per_second(self, step: int) -> float:
        """Training steps per second since the bar opened, evaluations excluded."""
        seconds = time.perf_counter() - self._start_time - self._eval_seconds
        return (step - self._start_step) / max(seconds, 1e-9)

    def log_metrics(self, step: int, metrics: dict[str, torch.Tensor | float]) -> None:
        """Check the losses are finite, then log them and charts/SPS (training steps per second since the last log,
        evaluations excluded) to TensorBoard."""
        check_finite({k: v for k, v in metrics.items() if k.startswith("losses/")}, step)
        now = time.perf_counter()
        seconds = now - self._log_time - (self._eval_seconds - self._log_eval_seconds)
        sps = (step - self._log_step) / max(seconds, 1e-9)
        self._log_time, self._log_step, self._log_eval_seconds = now, step, self._eval_seconds
        self.log_scalars(step, {**metrics, "charts/SPS": sps})

    def log_scalars(self, step: int, scalars: dict[str, float | torch.Tensor]) -> None:
        """Scalars to TensorBoard; tensors are stacked and read from the device in one synchronisation."""
        tensors = {tag: value for tag, value in scalars.items() if isinstance(value, torch.Tensor)}
        values = {tag: float(value) for tag, value in scalars.items() if tag not in tensors}
        if tensors:
            stacked = torch.stack([value.detach().float().reshape(()) for value in tensors.values()]).tolist()
            values.update(zip(tensors, stacked))
        for tag in scalars:
            self.writer.add_scalar(tag, values[tag], step)

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
    def save_checkpoint(self, step: int, loop: dict[str, Any], name: str = "latest", finished: bool = False) -> Path:
        """Atomically write checkpoints/<name>.pt (final, best: without the replay buffer) with the format tag, agent,
        algorithm, env id and library versions; `finished` marks the state after the final evaluation (a resume
        with the same budget is then refused). A state with non-finite losses is never saved."""
        check_finite({k: v for k, v in self.metrics.items() if k.startswith("losses/")}, step)
        payload = {**self.checkpoint(step, loop), "finished": finished}
        if name != "latest":
            payload.pop("buffer", None)
        path = self.checkpoint_dir / f"{name}.pt"
        header = {
            "format": CHECKPOINT_FORMAT,
            "agent": self.agent,
            "algo": self.algo,
            "env_id": self.env_id,
            "versions": library_versions(),
        }
        atomic_torch_save({**header, **payload}, path)
        if name == "latest":
            self.saved_step = step
        return path

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
