"""The `mixrl` command: one subcommand per agent (its Args become the flags), plus `eval` and `dataset`.

mixrl sac --env-id Hopper-v5 --total-timesteps 100000
mixrl eval runs/Hopper-v5__sac__1__<time> --episodes 10 --video
mixrl dataset collect medium --policy runs/Hopper-v5__sac__1__<time> --expert runs/<expert run>
"""

from __future__ import annotations

import dataclasses
import importlib
import shlex
import sys
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import tyro

from mixrl.agents import AGENTS  # subcommand -> module with `Args` and `main(args)`


@dataclass
class EvalArgs:
    path: Annotated[str, tyro.conf.Positional]
    """policy folder (model.safetensors + config.json), run directory (uses its policy/ folder, else
    checkpoints/final.pt, else latest.pt) or checkpoint file"""
    episodes: int = 10
    """deterministic episodes to run"""
    seed: int = 0
    """seed of the first episode (episode i uses seed + i)"""
    video: bool = False
    """write an MP4 of the first episode into <run>/videos/ (headless EGL rendering)"""
    max_video_frames: int = 1000
    """frames recorded per video"""
    video_size: tuple[int, int] | None = None
    """video width and height in pixels (default: the env's own render size)"""
    overlay: bool = False
    """draw the step counter and the return so far on the video frames"""
    device: str = "cpu"
    """torch device for the policy"""
    eval_rule: Literal["argmax_w", "weighted_mean", "sampled_k_mean", "sample"] | None = None
    """mixture policies (PMOE): how the action is picked from the experts, instead of the run's rule: mean of
    the heaviest expert, weighted mean of the experts' means, mean of a drawn expert, or a sample"""
    trust_pickle: bool = False
    """read a checkpoint that needs pickle (one written before mixrl stored plain data), or a policy naming classes
    outside mixrl's policy modules: only for files whose author you trust; pickle runs whatever code the file names"""


def run_eval(args: EvalArgs) -> None:
    from mixrl.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(
        args.path,
        args.episodes,
        args.seed,
        args.video,
        args.device,
        args.max_video_frames,
        args.eval_rule,
        args.video_size,
        args.overlay,
        args.trust_pickle,
    )
    rule = result.get("eval_rule")
    kind = "stochastic" if rule in ("sampled_k_mean", "sample") else "deterministic"
    print(
        f"{result['algo']} on {result['env_id']}: return {result['mean_return']:.2f} +- {result['std_return']:.2f} "
        f"over {args.episodes} {kind} episodes"
        + (f" (mixture rule {rule})" if rule else "")
        + (f", success rate {result['success_rate']:.2f}" if "success_rate" in result else "")
    )
    if "base" in result:  # residual policies
        base = result["base"]
        print(
            f"  frozen base alone: return {base['mean_return']:.2f} +- {base['std_return']:.2f}"
            + (f", success rate {base['success_rate']:.2f}" if "success_rate" in base else "")
        )
    for video in result["videos"]:
        print(f"video: {video}")


@dataclass
class DatasetListArgs:
    """List the Minari datasets in $MINARI_DATASETS_PATH (default ~/.minari/datasets)."""


@dataclass
class DatasetInfoArgs:
    """Show a local Minari dataset: environment, spaces, size, returns and reference scores."""

    dataset_id: Annotated[str, tyro.conf.Positional]
    """Minari dataset id, e.g. mixrl/hopper-v5/medium-v0"""


def run_dataset(rest: list[str]) -> None:
    from mixrl.datasets import CollectArgs, collect, dataset_info, datasets_root, list_datasets

    args = tyro.extras.subcommand_cli_from_dict(
        {"collect": CollectArgs, "list": DatasetListArgs, "info": DatasetInfoArgs},
        args=rest,
        prog="mixrl dataset",
        description="Make, list and inspect Minari datasets for the offline agents (td3_bc, a2pr).",
    )
    if isinstance(args, CollectArgs):
        collect(args)
    elif isinstance(args, DatasetListArgs):
        summaries, problems = list_datasets()
        print(f"{len(summaries)} datasets in {datasets_root()}")
        for d in summaries:
            refs = f"{d['ref_min_score']:.1f} / {d['ref_max_score']:.1f}" if d["ref_max_score"] is not None else "-"
            print(
                f"  {d['dataset_id']:40s} {d['env_id']!s:20s} {d['episodes']:6d} episodes {d['steps']:9d} steps  "
                f"ref min / max {refs}"
            )
        for problem in problems:
            print(f"  unreadable: {problem}")
    else:
        for key, value in dataset_info(args.dataset_id).items():
            print(f"{key:22s} {value:.2f}" if isinstance(value, float) else f"{key:22s} {value}")


EXPORT_HELP = (
    "Export a run's deterministic policy as an ONNX or TorchScript graph (raw observation -> env action), or as a "
    "data-only policy folder (safetensors + JSON) to share."
)


def available_agents() -> dict[str, object]:
    modules = {}
    for name, module_name in AGENTS.items():
        try:
            modules[name] = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
    return modules


def training_command(ckpt: dict[str, Any]) -> str:
    """`mixrl AGENT --flag value ...`: the command that trains a run like the checkpoint's, its saved Args that
    differ from the agent's defaults as flags (the run folder and resume path left out)."""
    from mixrl.checkpoints import agent_of
    from mixrl.sweep import flag_argv

    agent = agent_of(ckpt)
    defaults = dataclasses.asdict(importlib.import_module(AGENTS[agent]).Args())

    def plain(value: Any) -> Any:  # tuples come back from a checkpoint as lists
        return list(value) if isinstance(value, list | tuple) else value

    flags = []
    for name, value in ckpt["args"].items():
        if name not in ("run_root", "resume") and plain(value) != plain(defaults.get(name)):
            flags += flag_argv(name, value)
    return shlex.join(["mixrl", agent, *flags])


def usage(agents: dict[str, object]) -> str:
    lines = ["usage: mixrl COMMAND [--help] [options]", "", "commands:"]
    for name, module in agents.items():
        lines.append(f"  {name:10s} train: {(module.__doc__ or '').strip().splitlines()[0]}")
    lines.append(f"  {'eval':10s} evaluate a run directory or checkpoint (mean/std return, eval.json, --video MP4)")
    lines.append(f"  {'dataset':10s} collect | list | info: Minari datasets for the offline agents (td3_bc, a2pr)")
    lines.append(f"  {'sweep':10s} trials (agents x envs x seeds x flags) on Ray; `sweep report` tables and plots")
    lines.append(f"  {'export':10s} write a run's deterministic policy as ONNX, TorchScript or a policy folder")
    lines.append("\n`mixrl COMMAND --help` lists the options of a command.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import os

    os.environ.setdefault("MUJOCO_GL", "egl")
    argv = sys.argv[1:] if argv is None else argv
    agents = available_agents()
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(agents))
        return
    command, rest = argv[0], argv[1:]
    import torch

    from mixrl.runs import Interrupted, NonFiniteLossError, UsageError, parse_args

    if command not in agents:  # eval, dataset, export, sweep: one torch thread (agents set theirs from --threads)
        torch.set_num_threads(1)

    try:
        if command == "eval":
            run_eval(tyro.cli(EvalArgs, args=rest, prog="mixrl eval", description="Evaluate a trained policy."))
        elif command == "dataset":
            run_dataset(rest)
        elif command == "sweep":
            from mixrl.sweep import main as sweep_main

            sweep_main(rest)
        elif command == "export":
            from mixrl.export import ExportArgs, run_export

            run_export(tyro.cli(ExportArgs, args=rest, prog="mixrl export", description=EXPORT_HELP))
        elif command in agents:
            module = agents[command]
            args = parse_args(module.Args, rest, prog=f"mixrl {command}", description=module.__doc__)
            run_dir = module.main(args)
            print(f"run directory: {run_dir}")
        else:
            sys.exit(f"mixrl: unknown command {command!r}.\n\n{usage(agents)}")
    except (UsageError, NonFiniteLossError) as err:  # messages for people; any other error is a bug: traceback
        sys.exit(f"mixrl {command}: error: {err}")
    except Interrupted as err:  # Ctrl-C or SIGTERM, honoured at an iteration boundary
        sys.exit(f"mixrl {command}: {err}")
    except KeyboardInterrupt:
        sys.exit(f"mixrl {command}: interrupted at once; checkpoints/latest.pt is the last periodic checkpoint.")


if __name__ == "__main__":
    main()
