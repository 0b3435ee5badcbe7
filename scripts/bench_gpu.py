"""Speed of the MuJoCo Warp backend: physics, PPO and SAC on many worlds; and warp against Gymnasium on the CPU.

    python scripts/bench_gpu.py                   # on a CUDA machine, under 8 minutes on one H100/H200
    python scripts/bench_gpu.py --short           # a fifth of the budgets (`make gpu-check`)
    python scripts/bench_gpu.py --eager           # PPO and SAC without torch.compile
    python scripts/bench_gpu.py --smoke           # tiny settings on the CPU: checks the script end to end
    python scripts/bench_gpu.py --cpu-compare     # warp (CPU) against Gymnasium sync envs at equal worlds

GPU part (device cuda): (1) env steps/s of `make_vec_env(..., backend="warp")` with random actions, at 1k, 4k
and 16k worlds for HalfCheetah-v5 and Ant-v5 (frame skip 5: one env step = 5 MuJoCo steps; resets, observations
and rewards included); (2) PPO on HalfCheetah-v5 with large-batch settings in the spirit of MuJoCo Playground's
brax-PPO recipes (4096 envs, rollouts of 16 steps, 32 minibatches, 4 epochs, lr 3e-4 annealed, 256-256 nets,
observation and reward normalisation): env steps/s over the whole run and the deterministic return (Gymnasium's
own HalfCheetah-v5, 5 episodes) after a fixed budget; (3) SAC on HalfCheetah-v5 with 4096 envs, batch 8192,
two updates per env step: updates/s and env steps/s. PPO and SAC compile their losses (`--compile`) unless
`--eager` (and `--smoke`). Each part writes its section of results/gpu.md.

The times leave out MuJoCo Warp's kernel compilation on a cold cache (about a minute per task): warp keeps the
kernels in $WARP_CACHE_PATH (default ~/.cache/warp); keep that folder between runs (`make gpu-check` uses
.cache/warp).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mixrl.envs.factory import make_vec_env

RESULTS = Path(__file__).resolve().parent.parent / "results" / "gpu.md"


def machine(device: str) -> str:
    """The CPU model (and the GPU's name on CUDA)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = re.search(r"Model name:\s*(.+)", lscpu).group(1).strip()
    except (OSError, AttributeError):
        pass
    gpu = f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    return f"{cpu}, {torch.get_num_threads()} torch thread(s){gpu}"


def env_steps_per_second(env_id: str, worlds: int, steps: int, device: str, backend: str) -> tuple[float, str]:
    """Env steps/s (summed over worlds) of `steps` steps with uniform random actions, after one warm-up step, and
    whether the warp backend replayed a CUDA graph: "yes", "yes, solver without conditional nodes" or "no"."""
    envs = make_vec_env(env_id, worlds, seed=0, device=device, backend=backend)
    envs.reset()
    action_dim = envs.single_action_space.shape[0]
    actions = torch.rand(steps + 1, worlds, action_dim, device=device) * 2 - 1
    envs.step(actions[0])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for t in range(1, steps + 1):
        envs.step(actions[t])
        envs.pop_episodes()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    graph = "no"
    if getattr(envs, "cuda_graph", False):
        graph = "yes, solver without conditional nodes" if "without conditional" in envs.step_mode else "yes"
    envs.close()
    return worlds * steps / elapsed, graph


def bench_physics(device: str, worlds: list[int], steps: int) -> list[str]:
    rows = ["| task | worlds | env steps/s | MuJoCo steps/s | CUDA graph |", "|---|---|---|---|---|"]
    for env_id in ("HalfCheetah-v5", "Ant-v5"):
        for n in worlds:
            sps, graph = env_steps_per_second(env_id, n, steps, device, "warp")
            rows.append(f"| {env_id} | {n} | {sps:,.0f} | {5 * sps:,.0f} | {graph} |")
            print(rows[-1], flush=True)
    return rows


def final_eval(run_dir: Path) -> dict:
    return json.loads((run_dir / "evaluations.jsonl").read_text().splitlines()[-1])


def bench_ppo(device: str, compile: bool, num_envs: int, num_steps: int, total: int, eval_episodes: int) -> list[str]:
    from mixrl.agents import ppo

    args = ppo.Args(
        env_id="HalfCheetah-v5",
        backend="warp",
        device=device,
        num_envs=num_envs,
        num_steps=num_steps,
        num_minibatches=32,
        update_epochs=4,
        learning_rate=3e-4,
        hidden_sizes=(256, 256),
        total_timesteps=total,
        eval_every=0,
        eval_episodes=eval_episodes,
        checkpoint_every=0,
        compile=compile,
        seed=1,
    )
    with tempfile.TemporaryDirectory() as root:
        args.run_root = root
        start = time.perf_counter()
        run_dir = ppo.main(args)
        elapsed = time.perf_counter() - start
        result = final_eval(run_dir)
    steps = (total // (num_envs * num_steps)) * num_envs * num_steps
    rows = [
        f"| envs x rollout | env steps | wall s (incl. {'torch.compile, ' * compile}final eval) | env steps/s | "
        f"return ({eval_episodes} ep.) |",
        "|---|---|---|---|---|",
        f"| {num_envs} x {num_steps} | {steps:,} | {elapsed:.0f} | {steps / elapsed:,.0f} | "
        f"{result['mean_return']:.0f} +- {result['std_return']:.0f} |",
    ]
    print(rows[-1], flush=True)
    return rows


def bench_sac(device: str, compile: bool, num_envs: int, iterations: int, batch_size: int) -> list[str]:
    from mixrl.agents import sac

    updates_per_step = 2
    learning_starts = 4 * num_envs
    args = sac.Args(
        env_id="HalfCheetah-v5",
        backend="warp",
        device=device,
        num_envs=num_envs,
        batch_size=batch_size,
        buffer_size=max(100_000, (4 + iterations) * num_envs),
        utd_ratio=updates_per_step / num_envs,
        learning_starts=learning_starts,
        total_timesteps=learning_starts + iterations * num_envs,
        eval_every=0,
        eval_episodes=1,
        checkpoint_every=0,
        save_buffer=False,
        compile=compile,
        seed=1,
    )
    with tempfile.TemporaryDirectory() as root:
        args.run_root = root
        start = time.perf_counter()
        sac.main(args)
        elapsed = time.perf_counter() - start
    updates = iterations * updates_per_step
    rows = [
        f"| envs | batch | updates | wall s (incl. warm-up, {'torch.compile, ' * compile}final eval) | updates/s | "
        "env steps/s |",
        "|---|---|---|---|---|---|",
        f"| {num_envs} | {batch_size} | {updates} | {elapsed:.0f} | {updates / elapsed:,.1f} | "
        f"{args.total_timesteps / elapsed:,.0f} |",
    ]
    print(rows[-1], flush=True)
    return rows


def bench_cpu_compare(env_ids: list[str], worlds: list[int], steps: int) -> list[str]:
    rows = [
        "| task | worlds | Gymnasium env steps/s | warp (CPU) env steps/s | warp / Gymnasium |",
        "|---|---|---|---|---|",
    ]
    for env_id in env_ids:
        for n in worlds:
            gym_sps, _ = env_steps_per_second(env_id, n, steps, "cpu", "gymnasium")
            warp_sps, _ = env_steps_per_second(env_id, n, steps, "cpu", "warp")
            rows.append(f"| {env_id} | {n} | {gym_sps:,.0f} | {warp_sps:,.0f} | {warp_sps / gym_sps:.2f} |")
            print(rows[-1], flush=True)
    return rows


def write_section(name: str, lines: list[str]) -> None:
    """Replace the section between `<!-- name -->` and `<!-- /name -->` in results/gpu.md (append if missing)."""
    text = RESULTS.read_text() if RESULTS.exists() else "# MuJoCo Warp backend: speed\n"
    block = f"<!-- {name} -->\n" + "\n".join(lines) + f"\n<!-- /{name} -->"
    pattern = re.compile(rf"<!-- {name} -->.*?<!-- /{name} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny settings on the CPU (checks the script)")
    parser.add_argument("--cpu-compare", action="store_true", help="warp (CPU) against Gymnasium at equal worlds")
    parser.add_argument("--device", default="cuda", help="torch device of the GPU part")
    parser.add_argument("--ppo-steps", type=int, default=None, help="PPO budget in env steps (GPU part; 30M)")
    parser.add_argument("--short", action="store_true", help="a fifth of the budgets (physics, PPO, SAC)")
    parser.add_argument("--eager", action="store_true", help="PPO and SAC without torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(1)
    command = " ".join(["python scripts/bench_gpu.py", *sys.argv[1:]])
    if args.cpu_compare:
        rows = bench_cpu_compare(["InvertedPendulum-v5", "HalfCheetah-v5", "Ant-v5"], [16, 256, 1024], steps=20)
        header = [
            "## CPU: warp backend against Gymnasium at equal worlds",
            "",
            f"`{command}` on {machine('cpu')}, shared with other jobs (load average {os.getloadavg()[0]:.1f} on",
            f"{os.cpu_count()} cores at the end: absolute figures are low, the ratios the point). Env steps/s summed",
            "over worlds, 20 steps of uniform random actions after one warm-up step (kernels compiled and cached);",
            "Gymnasium: `make_vec_env` (sync vector env, one MuJoCo C env after another). On a CPU, warp pays a",
            "fixed cost per kernel launch for every MuJoCo step, whatever the number of worlds.",
            "",
        ]
        write_section("cpu", header + rows)
        return
    device = "cpu" if args.smoke else args.device
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke (tiny CPU check) or --cpu-compare")
    compile = not (args.eager or args.smoke)  # the smoke check stays quick
    if args.smoke:
        worlds, steps, ppo_cfg, sac_cfg = [8, 16], 3, (16, 8, 16 * 8 * 2, 1), (16, 3, 64)
    elif args.short:
        worlds, steps, ppo_cfg, sac_cfg = [1024, 4096, 16384], 40, (4096, 16, 6_000_000, 5), (4096, 40, 8192)
    else:
        worlds, steps, ppo_cfg, sac_cfg = [1024, 4096, 16384], 200, (4096, 16, 30_000_000, 5), (4096, 200, 8192)
    if args.ppo_steps is not None:
        ppo_cfg = (*ppo_cfg[:2], args.ppo_steps, ppo_cfg[3])
    start = time.perf_counter()
    title = "## GPU (smoke run on the CPU: tiny settings, not a measurement)" if args.smoke else "## GPU"
    title += " (short budgets)" if args.short and not args.smoke else ""
    lines = [title, "", f"`{command}` on {machine(device)}.", ""]
    # Each part rewrites the section as it ends, so that a run stopped part-way keeps what it measured.
    lines += [f"Physics: env steps/s of the warp backend, {steps} steps of random actions (frame skip 5).", ""]
    lines += bench_physics(device, worlds, steps)
    write_section("gpu", lines)
    losses = "losses compiled with torch.compile" if compile else "eager losses"
    settings = f"many envs, short rollouts; 32 minibatches, 4 epochs, 256-256 nets, {losses}"
    lines += ["", f"PPO on HalfCheetah-v5 ({settings}):", ""]
    lines += bench_ppo(device, compile, *ppo_cfg)
    write_section("gpu", lines)
    lines += ["", f"SAC on HalfCheetah-v5 (two updates per env step over all envs, {losses}):", ""]
    lines += bench_sac(device, compile, *sac_cfg)
    lines += ["", f"{time.perf_counter() - start:.0f} s in all, kernel compilation included."]
    write_section("gpu", lines)


if __name__ == "__main__":
    main()
