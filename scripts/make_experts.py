"""Reference agents, intervening experts of several levels and demonstrations for RLIF (results/raw/rlif/).

The recipe of issue 31, as the RLIF paper makes its experts (Luo et al. 2024: a strong reference, its Q, experts
made by behaviour cloning at levels relative to the reference, demonstrations of the reference):

    mixrl ppo --env-id Hopper-v5 --total-timesteps 1000000 --run-root runs/rlif_refs           # the reference
    python scripts/make_experts.py reference-q --env-id Hopper-v5 --reference runs/rlif_refs/Hopper-v5__ppo__1__...
    python scripts/make_experts.py bc-levels   --env-id Hopper-v5
    python scripts/make_experts.py demos       --env-id Hopper-v5 --steps 20000

    mixrl sac --env-id InvertedDoublePendulum-v5 --total-timesteps 30000 --run-root runs/rlif_refs
    python scripts/make_experts.py reference-q --env-id InvertedDoublePendulum-v5 --reference RUN
    python scripts/make_experts.py bc-levels   --env-id InvertedDoublePendulum-v5
    python scripts/make_experts.py demos       --env-id InvertedDoublePendulum-v5 --steps 20000

reference-q: writes results/raw/rlif/experts/<env>/reference/, a policy folder (mixrl.policies.files: safetensors
plus JSON, nothing unpickled) holding the reference's deterministic policy (load_policy, `mixrl eval`,
`--compare reference`) and, as its `critic`, the Q ensemble that mixrl.pretrained.load_reference_q reads
(`mixrl rlif --reference FOLDER`); its check goes to results/raw/rlif/reference_q_<env>.json.
  * A reference with critics (SAC, RLIF/RLPD) keeps them: the RLIF code's reference Q is the reference agent's
    own critics (min of SAC's twin critics, mean of RLPD's ensemble); --fit-q fits one by FQE instead.
  * A reference without a Q (PPO has only V, and that V is of normalised rewards) gets Q^pi_ref fitted by fitted-Q
    evaluation (FQE): TD regression on rollouts of the reference itself,
        y = r + gamma (1 - terminated) mean_j Qbar_j(s', pi_ref(s')),   a time limit bootstraps,
    with the reference's own deterministic next action (Polyak target; observations z-scored and rewards divided
    by their mean |r| while fitting, both folded into the first and last layers, so that the stored Q takes raw
    observations and returns env-reward units; a LayerNorm ensemble of --q-critics, Q_ref their mean). The
    episodes act with Gaussian action noise of std sigma (units of half the action range), equal steps for each
    sigma of --coverage-noises (default 0 0.1 0.2 0.3 0.5 1): the learner's and the weak experts' actions, and
    the states they lead to, are covered, while pi_ref(s') stays inside the noise around the behaviour at every s'.
    Why FQE and not a longer SAC (or RLPD) run: SAC's critics estimate the soft Q of SAC's own stochastic policy,
    not of the reference that demonstrates and sets the levels, and a SAC run as strong as PPO's 3600 on Hopper
    needs about 1M steps (many hours on 2 shared cores; 100k steps gave 568 here), where FQE takes minutes and
    evaluates exactly pi_ref, the policy whose judgement the value-based expert stands for.
  The check, on held-out episodes (other seeds), read back through load_reference_q: the fraction of states where Q
  ranks the reference's action above a noisy one (per sigma of --check-noises, and a uniform action), the fraction
  that the RLIF rule Q(s, a) < Q(s, a_ref) - delta |Q(s, a_ref)| flags, and Q(s, pi_ref(s)) against the
  discounted Monte-Carlo return of the noiseless held-out episodes (states at least 459 steps before a time
  limit, so that the cut tail is under 1 %). The ground truth beside it, on --check-states of those states (MuJoCo
  envs): Q^pi_ref(s, a) simulated from the saved simulator state (take a, then follow pi_ref for 459 steps), so
  that the fitted order can be told apart from the true one: how often a_ref is truly better, how often the fitted
  Q orders the pair as the simulation does (over all pairs, and over those whose true gap exceeds delta |Q|, where
  the rule's decision is at stake), and the correlation of the fitted and the true gaps. `--check-only` checks an
  existing reference folder again.

bc-levels: experts by behaviour cloning of the reference, weak as actors and as labellers alike (an expert level is
one policy: it takes over, and its actions are the DAgger labels; no action noise). A Minari dataset of
--bc-data-steps transitions of the reference's deterministic rollouts (mixrl/<env>/rlif-bc-v0), or, with
--bc-data-noise sigma, of its rollouts with Gaussian action noise (DART, Laskey et al. 2017: the states off the
reference's narrow path that BC needs on unstable tasks such as InvertedDoublePendulum, where BC on clean rollouts
falls within 60 steps; mixrl/<env>/rlif-bc-sigma<100 sigma>-v0, the noisy actions recorded), then one
`mixrl bc --horizon 1 --execute 1` (single-step BC, MSE on tanh actions) per pair of --bc-episodes (the first N
episodes it sees) and --bc-steps (gradient steps; the learning rate anneals to zero over them, so few steps make
an under-fitted, weaker policy), each screened over --screen-episodes; for each target fraction (--fractions,
default 0.15 0.4 1.0 of R_ref) the candidate closest to it is measured again over --episodes (30, other seeds)
and its policy folder copied to results/raw/rlif/experts/<env>/bc_L<fraction>/. The levels go to
results/raw/rlif/experts_<env>.json, which scripts/bench_rlif.py reads: each level has a checkpoint (the folder)
and a noise (0 for BC experts: `mixrl rlif --expert FOLDER`), its return, fraction of R_ref and the command that
trained it; "reference" is the reference folder above (policy and Q).

demos: --steps transitions of the reference's deterministic rollouts as the Minari dataset mixrl/<env>/rlif-demos-v0
(whole episodes, the last one cut there; 20,000 steps = 20 episodes of a reference that never falls), recorded in
the experts file.

Earlier recipe (the 6,000-step grid): train (a SAC reference in chunks of --snapshot-every steps, each chunk's
checkpoint kept in RUN/snapshots) and levels (experts as snapshots with Gaussian action noise, the expert's noise
given to `mixrl rlif --expert-noise`).

Kept in git (each folder well under 1 MB): results/raw/rlif/experts/<env>/{reference,bc_L*}/ and the json files.
Datasets and runs are not: bc-levels and demos remake them (runs/rlif_bc/, $MINARI_DATASETS_PATH); bc-levels
reuses the BC runs it finds under --run-root-bc.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mixrl.checkpoints import find_checkpoint, load_checkpoint
from mixrl.datasets import noisy_policy, uniform_policy
from mixrl.datasets.collect import rollout_episodes
from mixrl.datasets.storage import datasets_root, open_dataset, read_episodes, write_dataset
from mixrl.envs.factory import make_env
from mixrl.evaluation import evaluate, load_policy
from mixrl.policies.critics import QEnsemble
from mixrl.policies.files import critic_spec, write_policy_dir
from mixrl.pretrained import load_reference_q
from mixrl.sweep import shown_command

RAW = Path("results/raw/rlif")
FQE_OPTIONS = ("q_critics", "q_hidden_sizes", "q_steps", "q_batch_size", "q_lr", "q_tau", "gamma")


def experts_file(env_id: str) -> Path:
    return RAW / f"experts_{env_id.replace('/', '-')}.json"


def experts_dir(env_id: str) -> Path:
    return RAW / "experts" / env_id.replace("/", "-")


def reference_q_file(env_id: str) -> Path:
    return RAW / f"reference_q_{env_id.replace('/', '-')}.json"


def demos_id(env_id: str) -> str:
    return f"mixrl/{env_id.lower().replace('/', '-')}/rlif-demos-v0"


def bc_data_id(env_id: str, noise: float = 0.0) -> str:
    """The BC dataset: deterministic rollouts of the reference, or with action noise of std `noise` (sigma30: 0.3)."""
    name = "rlif-bc" if noise == 0 else f"rlif-bc-sigma{round(noise * 100):02d}"
    return f"mixrl/{env_id.lower().replace('/', '-')}/{name}-v0"


def mixrl_command(*argv) -> list[str]:
    return [sys.executable, "-m", "mixrl.cli", *map(str, argv)]


def run_command(argv: list[str]) -> str:
    """Run a mixrl command (its output passes through) and return it as a reader types it."""
    shown = shown_command(argv)
    print(f"$ {shown}", flush=True)
    subprocess.run(argv, check=True)
    return shown


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def rollout_dataset(policy_path: Path, env_id: str, dataset_id: str, steps: int, seed: int, ref_min: float,
                    ref_max: float, noise: float = 0.0) -> list:  # fmt: skip
    """`steps` transitions of the deterministic rollouts of a policy (folder) as a Minari dataset (whole episodes,
    the last one cut there; episode i reset with seed + i), as `mixrl dataset collect expert --action-noise NOISE`
    makes them: with noise, the executed (noisy, clipped) actions are the recorded ones."""
    env, policy = make_env(env_id), load_policy(policy_path)
    if noise > 0:
        policy = noisy_policy(policy, env.action_space, noise, seed)
    episodes = rollout_episodes(policy, env, steps, seed, desc=dataset_id)
    algorithm = "mixrl reference, deterministic" + (f" + N(0, {noise}^2) action noise" if noise > 0 else "")
    description = f"{steps} steps of {policy_path} ({algorithm}; scripts/make_experts.py)"
    write_dataset(dataset_id, episodes, env, ref_min, ref_max, algorithm, description)
    env.close()
    returns = [float(np.sum(e.rewards)) for e in episodes]
    print(f"wrote {dataset_id}: {len(episodes)} episodes, returns {np.mean(returns):.1f} +- {np.std(returns):.1f}")
    return episodes


def train(opts: argparse.Namespace) -> Path:
    """SAC in chunks of --snapshot-every steps (resume is exact), keeping each chunk's checkpoint."""
    from mixrl.agents import sac

    run = None
    for milestone in range(opts.snapshot_every, opts.total_timesteps + 1, opts.snapshot_every):
        if run is None:
            args = sac.Args(env_id=opts.env_id, seed=opts.seed, total_timesteps=milestone, run_root=opts.run_root,
                            compile=True, matmul_precision="medium", eval_every=opts.snapshot_every)  # fmt: skip
        else:
            args = sac.Args(resume=str(run), total_timesteps=milestone)
        run = sac.main(args)
        (run / "snapshots").mkdir(exist_ok=True)
        shutil.copy(run / "checkpoints" / "latest.pt", run / "snapshots" / f"step_{milestone}.pt")
    print(f"reference: {run}")
    return run


def warn_if_far(level: dict, fraction: float) -> None:
    """Say so when the chosen expert's return is not within half of its target fraction of R_ref either way."""
    if not 0.5 * fraction <= level["fraction"] <= 1.5 * fraction:
        print(f"warning: no candidate near {fraction:.2f} R_ref; widen --bc-steps or --bc-episodes, or try "
              "--bc-data-noise", flush=True)  # fmt: skip


def measure(policy, env_id: str, episodes: int, seed: int) -> dict:
    result = evaluate(policy, env_id, episodes, seed=seed)
    return {"mean": result["mean_return"], "std": result["std_return"], "episodes": episodes, "seed": seed}


# ---------------------------------------------------------------------------------------------------------------
# reference-q: the reference's policy and Q in one small policy folder
# ---------------------------------------------------------------------------------------------------------------


def noisy_rollouts(policy, env_id: str, noises: list[float], steps_per_noise: int, seed: int) -> dict:
    """Episodes of `policy` with Gaussian action noise of each std in `noises` (`steps_per_noise` transitions each,
    the last episode of each cut there): obs, action, reward, next_obs, terminated, noise, episode, t, and sim, the
    simulator state (qpos, qvel) at obs of a MuJoCo env (empty for others)."""
    env, space = make_env(env_id), policy.action_space
    rng = np.random.default_rng(seed)
    half = 0.5 * (space.high - space.low)
    sim = getattr(env.unwrapped, "data", None) if hasattr(env.unwrapped, "set_state") else None
    rows = {k: [] for k in ("obs", "action", "reward", "next_obs", "terminated", "noise", "episode", "t", "sim")}
    episode = 0
    for noise in noises:
        taken = 0
        while taken < steps_per_noise:
            obs, _ = env.reset(seed=seed + episode)
            done, t = False, 0
            while not done and taken < steps_per_noise:
                action = policy(obs) + noise * half * rng.standard_normal(space.shape)
                action = np.clip(action, space.low, space.high).astype(space.dtype)
                state = np.zeros(0) if sim is None else np.concatenate([sim.qpos, sim.qvel])
                next_obs, reward, terminated, truncated, _ = env.step(action)
                for key, value in zip(rows, (obs, action, reward, next_obs, terminated, noise, episode, t, state)):
                    rows[key].append(value)
                obs, t, taken, done = next_obs, t + 1, taken + 1, terminated or truncated
            episode += 1
    env.close()
    return {k: np.asarray(v) for k, v in rows.items()}


def fit_q(data: dict, policy, opts: argparse.Namespace, held: dict) -> tuple[QEnsemble, list]:
    """Fitted-Q evaluation of `policy` on `data` (see the module docstring); returns the ensemble on raw
    observations and [-1, 1] actions, in units of the env's reward (the z-scoring of the observations and the
    reward scale of the fit folded into its first and last layers), and its log."""
    space = policy.action_space
    low, high = space.low, space.high

    def scaled(a):
        return torch.as_tensor(2.0 * (a - low) / (high - low) - 1.0, dtype=torch.float32)

    def tensor(x):
        return torch.as_tensor(x, dtype=torch.float32)

    scale = float(max(np.abs(data["reward"]).mean(), 1e-3))
    mean, std = data["obs"].mean(0), data["obs"].std(0) + 1e-3

    def normalise(obs):
        return tensor((obs - mean) / std)

    obs, next_obs = normalise(data["obs"]), normalise(data["next_obs"])
    action, next_action = scaled(data["action"]), scaled(policy(data["next_obs"]))
    reward, live = tensor(data["reward"] / scale), tensor(1.0 - data["terminated"])
    starts = held["t"] == 0
    held_obs = normalise(held["obs"][starts])
    held_act = scaled(policy(held["obs"][starts]))
    obs_dim, action_dim = obs.shape[1], action.shape[1]
    qf = QEnsemble(obs_dim, action_dim, opts.q_critics, tuple(opts.q_hidden_sizes), layer_norm=True)
    target = copy.deepcopy(qf).requires_grad_(False)
    optimiser = torch.optim.Adam(qf.parameters(), lr=opts.q_lr)
    params, target_params = list(qf.parameters()), list(target.parameters())
    generator = torch.Generator().manual_seed(opts.seed)
    log, start = [], time.time()
    for step in range(1, opts.q_steps + 1):
        idx = torch.randint(len(obs), (opts.q_batch_size,), generator=generator)
        with torch.no_grad():
            y = reward[idx] + opts.gamma * live[idx] * target(next_obs[idx], next_action[idx]).mean(0)
        loss = (qf(obs[idx], action[idx]) - y).pow(2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            torch._foreach_lerp_(target_params, params, opts.q_tau)
        if step % opts.q_log_every == 0 or step == opts.q_steps:
            with torch.no_grad():
                q0 = float(qf(held_obs, held_act).mean()) * scale
            log.append({"step": step, "loss": loss.item() * scale**2, "q_start": q0, "seconds": time.time() - start})
            print(f"  fqe step {step}: loss {log[-1]['loss']:.3f}  Q(s0, pi_ref) {q0:.1f}  "
                  f"({step / (time.time() - start):.0f} steps/s)", flush=True)  # fmt: skip
    with torch.no_grad():
        # raw observations in: W x_n + b = (W / std) x + (b - W (mean / std)) on the observation rows of layer 1
        first, rows = qf.net.layers[0], slice(0, obs_dim)
        shift = torch.einsum("i,nio->no", tensor(mean / std), first.weight[:, rows]).unsqueeze(1)
        first.bias.sub_(shift)
        first.weight[:, rows].div_(tensor(std)[:, None])
        # back to the env's reward units: Q = scale * (the fitted Q of r / scale)
        qf.net.layers[-1].weight.mul_(scale)
        qf.net.layers[-1].bias.mul_(scale)
    return qf.eval(), log


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    out, running = np.zeros(len(rewards)), 0.0
    for i in range(len(rewards) - 1, -1, -1):
        running = rewards[i] + gamma * running
        out[i] = running
    return out


def rollout_q(env, policy, state: np.ndarray, action: np.ndarray, horizon: int, gamma: float) -> float:
    """Q^pi(s, a) by simulation: set the MuJoCo state s, take a, then follow the deterministic policy for up to
    `horizon` steps (the discounted tail beyond them is dropped; gamma^horizon < 1 %)."""
    env.reset(seed=0)
    nq = env.unwrapped.model.nq
    env.unwrapped.set_state(state[:nq], state[nq:])
    obs, total, done, k = None, 0.0, False, 0
    while not done and k < horizon:
        obs, reward, terminated, truncated, _ = env.step(action if k == 0 else policy(obs))
        total += gamma**k * float(reward)
        done, k = terminated or truncated, k + 1
    return total


def check_q(file: Path, policy, held: dict, opts: argparse.Namespace) -> dict:
    """The reference Q on held-out episodes, read back through load_reference_q (what `mixrl rlif` uses)."""
    q_value = load_reference_q(str(file))
    space = policy.action_space
    rng = np.random.default_rng(opts.seed + 7)
    half = 0.5 * (space.high - space.low)
    states = held["obs"]
    reference = policy(states)

    def q_of(actions: np.ndarray) -> np.ndarray:  # load_reference_q takes one state and M actions
        return np.array([q_value(s, a[None])[0] for s, a in zip(states, actions)])

    q_ref = q_of(reference)
    check = {"states": len(states), "episodes": int(len(np.unique(held["episode"]))), "delta": opts.delta}
    others = {f"noise {s}": np.clip(reference + s * half * rng.standard_normal(reference.shape), space.low, space.high)
              for s in opts.check_noises}  # fmt: skip
    others["uniform"] = rng.uniform(space.low, space.high, reference.shape)
    q_others = {}
    for name, actions in others.items():
        q_other = q_others[name] = q_of(actions.astype(space.dtype))
        check[name] = {
            "ref_above": float(np.mean(q_ref > q_other)),
            "flagged": float(np.mean(q_other < q_ref - opts.delta * np.abs(q_ref))),
            "mean_gap": float(np.mean(q_ref - q_other)),
        }
        print(f"  held-out, {name}: Q(s, a_ref) > Q(s, a) on {check[name]['ref_above']:.3f} of the states; "
              f"flagged by the RLIF rule (delta {opts.delta}) on {check[name]['flagged']:.3f}; "
              f"mean gap {check[name]['mean_gap']:.2f}", flush=True)  # fmt: skip
    horizon = int(np.ceil(np.log(0.01) / np.log(opts.gamma)))  # gamma^horizon < 1 %: the cut tail is negligible
    if held["sim"].shape[-1] > 0 and opts.check_states > 0:
        # the ground truth on a sample of the states: Q^pi_ref(s, a) by simulation from the saved MuJoCo state
        env = make_env(opts.env_id)
        pick = rng.choice(len(states), min(opts.check_states, len(states)), replace=False)
        true_ref = np.array([rollout_q(env, policy, held["sim"][i], reference[i], horizon, opts.gamma) for i in pick])
        check["simulated"] = {"states": len(pick), "horizon": horizon}
        for name, actions in others.items():
            actions = actions.astype(space.dtype)
            true = np.array([rollout_q(env, policy, held["sim"][i], actions[i], horizon, opts.gamma) for i in pick])
            fitted = q_others[name][pick]
            true_gap, fitted_gap = true_ref - true, q_ref[pick] - fitted
            clear = np.abs(true_gap) > opts.delta * np.abs(true_ref)  # where the RLIF rule's decision is at stake
            check["simulated"][name] = {
                "ref_above_true": float(np.mean(true_gap > 0)),
                "ref_above_fitted": float(np.mean(fitted_gap > 0)),
                "order_agrees": float(np.mean((true_gap > 0) == (fitted_gap > 0))),
                "clear_pairs": int(clear.sum()),
                "order_agrees_clear": float(np.mean((true_gap > 0)[clear] == (fitted_gap > 0)[clear]))
                if clear.any()
                else None,
                "flagged_true": float(np.mean(true_gap > opts.delta * np.abs(true_ref))),
                "flagged_fitted": float(np.mean(fitted_gap > opts.delta * np.abs(q_ref[pick]))),
                "gap_correlation": float(np.corrcoef(true_gap, fitted_gap)[0, 1]),
                "mean_gap_true": float(true_gap.mean()),
                "mean_gap_fitted": float(fitted_gap.mean()),
            }
            c = check["simulated"][name]
            print(f"  simulated Q^pi_ref on {len(pick)} states, {name}: a_ref better on {c['ref_above_true']:.3f} "
                  f"(fitted Q says {c['ref_above_fitted']:.3f}); order agrees on {c['order_agrees']:.3f}, on "
                  f"{c['order_agrees_clear']} of the {c['clear_pairs']} pairs with a gap over delta |Q|; flagged "
                  f"{c['flagged_true']:.3f} (fitted {c['flagged_fitted']:.3f}); gap correlation "
                  f"{c['gap_correlation']:.2f}", flush=True)  # fmt: skip
        env.close()
    mc, qs = [], []
    for episode in np.unique(held["episode"][held["noise"] == 0]):
        rows = np.flatnonzero(held["episode"] == episode)
        g = discounted_returns(held["reward"][rows], opts.gamma)
        keep = np.ones(len(rows), bool) if held["terminated"][rows[-1]] else np.arange(len(rows)) < len(rows) - horizon
        mc.append(g[keep])
        qs.append(q_ref[rows][keep])
    if mc:
        mc, qs = np.concatenate(mc), np.concatenate(qs)
        check["monte_carlo"] = {
            "states": len(mc),
            "mean_return": float(mc.mean()),
            "mean_q": float(qs.mean()),
            "mean_abs_error": float(np.abs(qs - mc).mean()),
            "correlation": float(np.corrcoef(qs, mc)[0, 1]) if mc.std() > 0 else None,
        }
        error = check["monte_carlo"]["mean_abs_error"]
        print(f"  held-out noiseless episodes ({len(mc)} states): Q(s, pi_ref) {qs.mean():.1f} against the "
              f"discounted return {mc.mean():.1f}, mean |error| {error:.2f}", flush=True)  # fmt: skip
    return check


def reference_q(opts: argparse.Namespace) -> None:
    source = find_checkpoint(opts.reference)
    ckpt = load_checkpoint(source, trusted=True)  # our own run, perhaps from before checkpoints were plain data
    if ckpt["env_id"] != opts.env_id:
        sys.exit(f"--reference {source} was trained on {ckpt['env_id']}, not on {opts.env_id}.")
    policy = load_policy(source, trusted=True)
    out = experts_dir(opts.env_id) / "reference"
    steps_per_noise = opts.q_data_steps // len(opts.coverage_noises)
    held = noisy_rollouts(policy, opts.env_id, opts.coverage_noises, max(steps_per_noise // 10, 2000), 900_000)
    record = {"env_id": opts.env_id, "source": str(source), "algo": ckpt["algo"], "folder": str(out)}
    if opts.check_only:
        previous = json.loads(reference_q_file(opts.env_id).read_text())
        record.update({k: previous[k] for k in ("q", "fqe", "bytes") if k in previous})
        record["check"] = check_q(out, load_policy(out), held, opts)
        record["command"] = previous["command"]
        record["check_command"] = shown_command(["python", *sys.argv])
        reference_q_file(opts.env_id).write_text(json.dumps(record, indent=2))
        print(f"wrote {reference_q_file(opts.env_id)}")
        return
    if critic_spec(ckpt) is not None and not opts.fit_q:  # SAC, RLIF: the reference's own critics, kept
        print(f"{source}: keeping the {ckpt['algo']} critics as the reference Q", flush=True)
        record["q"] = f"the critics of the {ckpt['algo']} reference"
    else:
        print(f"{source}: fitting Q^pi_ref by fitted-Q evaluation", flush=True)
        data = noisy_rollouts(policy, opts.env_id, opts.coverage_noises, steps_per_noise, opts.seed * 10_000)
        print(f"  {len(data['reward'])} transitions in {len(np.unique(data['episode']))} episodes", flush=True)
        qf, log = fit_q(data, policy, opts, held)
        kwargs = {"obs_dim": data["obs"].shape[1], "action_dim": data["action"].shape[1], "n": opts.q_critics,
                  "hidden_sizes": tuple(opts.q_hidden_sizes), "layer_norm": True}  # fmt: skip
        ckpt = {**ckpt, "state": {}, "critic": {"class": "mixrl.policies.critics.QEnsemble", "kwargs": kwargs,
                                   "state_dict": qf.state_dict()}}  # fmt: skip
        record["q"] = "fitted-Q evaluation of the reference"
        record["fqe"] = {
            "transitions": len(data["reward"]),
            "coverage_noises": opts.coverage_noises,
            **{k: getattr(opts, k) for k in FQE_OPTIONS},
            "log": log,
        }
    write_policy_dir(ckpt, out, trusted=True)
    record["bytes"] = folder_bytes(out)
    print(f"wrote {out} ({record['bytes'] / 1e6:.2f} MB)", flush=True)
    record["check"] = check_q(out, load_policy(out), held, opts)
    record["command"] = shown_command(["python", *sys.argv])
    reference_q_file(opts.env_id).write_text(json.dumps(record, indent=2))
    print(f"wrote {reference_q_file(opts.env_id)}")


# ---------------------------------------------------------------------------------------------------------------
# bc-levels: experts by behaviour cloning of the reference
# ---------------------------------------------------------------------------------------------------------------


def bc_run(opts: argparse.Namespace, episodes: int, steps: int) -> tuple[Path, str]:
    """Train (or find, when an earlier call trained it) one BC expert; returns its run and its command."""
    root = Path(opts.run_root_bc) / opts.env_id.replace("/", "-")
    if opts.bc_data_noise > 0:
        root = root / f"sigma{round(opts.bc_data_noise * 100):02d}"
    root = root / f"episodes{episodes}_steps{steps}"
    data = bc_data_id(opts.env_id, opts.bc_data_noise)
    argv = mixrl_command("bc", "--dataset-id", data, "--num-episodes", episodes,
                         "--total-steps", steps, "--horizon", 1, "--execute", 1, "--eval-every", 0,
                         "--eval-episodes", 1, "--checkpoint-every", max(steps, 1000), "--seed", opts.seed,
                         "--run-root", root)  # fmt: skip
    done = sorted(root.glob("*/checkpoints/final.pt"))
    if done:
        return done[-1].parent.parent, shown_command(argv)
    shown = run_command(argv)
    return sorted(root.glob("*/checkpoints/final.pt"))[-1].parent.parent, shown


def bc_levels(opts: argparse.Namespace) -> None:
    reference = Path(opts.reference or experts_dir(opts.env_id) / "reference")
    ref = measure(load_policy(reference), opts.env_id, opts.episodes, opts.seed)
    random = measure(uniform_policy(make_env(opts.env_id).action_space, opts.seed), opts.env_id, 10, opts.seed)
    print(f"reference {reference}: {ref['mean']:.1f} +- {ref['std']:.1f} ({opts.episodes} episodes)", flush=True)
    data = bc_data_id(opts.env_id, opts.bc_data_noise)
    if (datasets_root() / data).exists():
        print(f"{data} exists: kept", flush=True)
    else:
        rollout_dataset(reference, opts.env_id, data, opts.bc_data_steps, opts.seed + 100, random["mean"],
                        ref["mean"], opts.bc_data_noise)  # fmt: skip
    candidates = []
    for episodes, steps in itertools.product(opts.bc_episodes, opts.bc_steps):
        run, command = bc_run(opts, episodes, steps)
        cached = run / "screen.json"  # a later call with a wider grid screens only the new candidates
        screen = json.loads(cached.read_text()) if cached.is_file() else None
        if screen is None or (screen["episodes"], screen["seed"]) != (opts.screen_episodes, opts.seed + 1000):
            screen = measure(load_policy(run), opts.env_id, opts.screen_episodes, opts.seed + 1000)
            cached.write_text(json.dumps(screen))
        candidates.append({"run": str(run), "num_episodes": episodes, "total_steps": steps, "screen": screen,
                           "command": command})  # fmt: skip
        print(f"  candidate BC on {episodes} episodes, {steps} steps: {screen['mean']:.1f} +- {screen['std']:.1f} "
              f"= {screen['mean'] / ref['mean']:.2f} R_ref", flush=True)  # fmt: skip
    chosen = []
    for fraction in opts.fractions:
        best = min(candidates, key=lambda c: abs(c["screen"]["mean"] - fraction * ref["mean"]))
        out = experts_dir(opts.env_id) / f"bc_L{fraction:.2f}"
        shutil.rmtree(out, ignore_errors=True)
        if (Path(best["run"]) / "policy" / "config.json").is_file():  # the policy folder the run wrote at its end
            shutil.copytree(Path(best["run"]) / "policy", out)
        else:
            write_policy_dir(load_checkpoint(best["run"]), out)
        level = {"target_fraction": fraction, "checkpoint": str(out), "noise": 0.0, "made_by": "behaviour cloning",
                 **best, **measure(load_policy(out), opts.env_id, opts.episodes, opts.seed + 5000)}  # fmt: skip
        level["fraction"] = level["mean"] / ref["mean"]
        level["bytes"] = folder_bytes(out)
        chosen.append(level)
        warn_if_far(level, fraction)
        print(f"level {fraction:.2f}: {level['mean']:.1f} +- {level['std']:.1f} = {level['fraction']:.2f} R_ref "
              f"(BC on {best['num_episodes']} episodes, {best['total_steps']} steps) -> {out}", flush=True)  # fmt: skip
    RAW.mkdir(parents=True, exist_ok=True)
    previous = json.loads(experts_file(opts.env_id).read_text()) if experts_file(opts.env_id).is_file() else {}
    q_file = reference_q_file(opts.env_id)
    q_record = json.loads(q_file.read_text()) if q_file.is_file() else None
    record = {
        "env_id": opts.env_id,
        "reference": str(reference),
        "reference_source": q_record["source"] if q_record else str(reference),
        "reference_return": ref,
        "random_return": random,
        "reference_q": q_record,
        "bc_dataset": {
            "dataset_id": data,
            "steps": opts.bc_data_steps,
            "action_noise": opts.bc_data_noise,
            "seed": opts.seed + 100,
            "policy": str(reference),
        },  # fmt: skip
        "levels": chosen,
        "candidates": candidates,
        "command": shown_command(["python", *sys.argv]),
    }
    if previous.get("demos") and previous.get("reference") == record["reference"]:
        record["demos"] = previous["demos"]
    experts_file(opts.env_id).write_text(json.dumps(record, indent=2))
    print(f"wrote {experts_file(opts.env_id)}")


# ---------------------------------------------------------------------------------------------------------------
# levels (earlier recipe): snapshots with action noise
# ---------------------------------------------------------------------------------------------------------------


def snapshots(opts: argparse.Namespace) -> list[tuple[int, Path]]:
    """(global step, file) of the snapshots, named by their step (files of any name are read for it)."""
    folder = Path(opts.snapshots or Path(opts.reference) / "snapshots")
    found = []
    for file in sorted(folder.glob("*.pt")):
        step = int(load_checkpoint(file, trusted=True)["global_step"])  # this stage reads your own snapshots
        found.append((step, file))
    return sorted(found)


def levels(opts: argparse.Namespace) -> None:
    reference = find_checkpoint(opts.reference)
    space = load_checkpoint(reference, trusted=True)["action_space"]  # our own runs, perhaps pickled
    ref = measure(load_policy(reference, trusted=True), opts.env_id, opts.episodes, opts.seed)
    random = measure(uniform_policy(make_env(opts.env_id).action_space, opts.seed), opts.env_id, 10, opts.seed)
    print(f"reference {reference}: {ref['mean']:.1f} +- {ref['std']:.1f} ({opts.episodes} episodes)", flush=True)
    candidates = []
    for step, file in [s for s in snapshots(opts) if s[1].resolve() != reference.resolve()] + [(None, reference)]:
        policy = load_policy(file, trusted=True)
        for noise in opts.noises:
            act = noisy_policy(policy, space, noise, opts.seed) if noise > 0 else policy
            screen = measure(act, opts.env_id, opts.screen_episodes, opts.seed + 1000)
            candidates.append({"checkpoint": str(file), "step": step, "noise": noise, "screen": screen})
            print(f"  candidate step {step} noise {noise}: {screen['mean']:.1f}", flush=True)
    chosen = []
    for fraction in opts.fractions:
        best = min(candidates, key=lambda c: abs(c["screen"]["mean"] - fraction * ref["mean"]))
        policy = load_policy(best["checkpoint"], trusted=True)
        act = noisy_policy(policy, space, best["noise"], opts.seed) if best["noise"] > 0 else policy
        level = {"target_fraction": fraction, **best, **measure(act, opts.env_id, opts.episodes, opts.seed)}
        level["fraction"] = level["mean"] / ref["mean"]
        chosen.append(level)
        warn_if_far(level, fraction)
        print(f"level {fraction:.2f}: {level['mean']:.1f} +- {level['std']:.1f} = {level['fraction']:.2f} R_ref "
              f"(step {best['step']}, noise {best['noise']})", flush=True)  # fmt: skip
    RAW.mkdir(parents=True, exist_ok=True)
    record = {
        "env_id": opts.env_id,
        "reference": str(reference),
        "reference_return": ref,
        "random_return": random,
        "levels": chosen,
        "candidates": candidates,
        "command": "python " + shlex.join(sys.argv),
    }
    experts_file(opts.env_id).write_text(json.dumps(record, indent=2))
    print(f"wrote {experts_file(opts.env_id)}")


def demos(opts: argparse.Namespace) -> None:
    record = json.loads(experts_file(opts.env_id).read_text())
    policy = Path(opts.reference or record["reference"])
    rollout_dataset(policy, opts.env_id, demos_id(opts.env_id), opts.steps, opts.seed,
                    record["random_return"]["mean"], record["reference_return"]["mean"])  # fmt: skip
    episodes = read_episodes(open_dataset(demos_id(opts.env_id)))
    returns = [float(np.sum(e["rewards"])) for e in episodes]
    record["demos"] = {
        "dataset_id": demos_id(opts.env_id),
        "policy": str(policy),
        "steps": opts.steps,
        "seed": opts.seed,
        "episodes": len(episodes),
        "transitions": int(sum(len(e["rewards"]) for e in episodes)),
        "return": {"mean": float(np.mean(returns)), "std": float(np.std(returns))},
        "episode_returns": returns,
        "command": shown_command(["python", *sys.argv]),
    }
    experts_file(opts.env_id).write_text(json.dumps(record, indent=2))
    print(f"recorded the demonstrations in {experts_file(opts.env_id)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["reference-q", "bc-levels", "demos", "train", "levels"])
    parser.add_argument("--env-id", default="Hopper-v5")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reference", default=None,
                        help="reference-q: the reference run or checkpoint; bc-levels, demos: the reference policy "
                             "(default: results/raw/rlif/experts/<env>/reference.pt; levels: the SAC run)")  # fmt: skip
    parser.add_argument("--episodes", type=int, default=30, help="episodes measuring the reference and each level")
    parser.add_argument("--screen-episodes", type=int, default=20, help="bc-levels, levels: episodes per candidate")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.15, 0.4, 1.0], help="target levels of R_ref")
    # reference-q
    parser.add_argument(
        "--coverage-noises",
        type=float,
        nargs="+",
        default=[0.0, 0.1, 0.2, 0.3, 0.5, 1.0],
        help="reference-q: action-noise stds of the rollouts Q is fitted on (equal steps each)",
    )
    parser.add_argument("--q-data-steps", type=int, default=120_000, help="reference-q: transitions to fit Q on")
    parser.add_argument("--q-steps", type=int, default=80_000, help="reference-q: gradient steps of FQE")
    parser.add_argument("--q-critics", type=int, default=3, help="reference-q: ensemble size (Q_ref is their mean)")
    parser.add_argument("--q-hidden-sizes", type=int, nargs="+", default=[192, 192])
    parser.add_argument("--q-batch-size", type=int, default=256)
    parser.add_argument("--q-lr", type=float, default=3e-4)
    parser.add_argument("--q-tau", type=float, default=0.01, help="reference-q: Polyak rate of the target critics")
    parser.add_argument("--q-log-every", type=int, default=5000)
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--check-noises", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    parser.add_argument("--delta", type=float, default=0.03, help="reference-q check: the RLIF rule's margin")
    parser.add_argument(
        "--check-states",
        type=int,
        default=100,
        help="reference-q check: held-out states whose Q^pi_ref is also simulated (MuJoCo envs)",
    )
    parser.add_argument(
        "--fit-q",
        action="store_true",
        help="reference-q: fit Q^pi_ref by FQE even where the reference has critics (SAC)",
    )
    parser.add_argument(
        "--check-only", action="store_true", help="reference-q: check the existing reference folder again (no fitting)"
    )
    # bc-levels
    parser.add_argument("--bc-data-steps", type=int, default=50_000, help="bc-levels: reference transitions for BC")
    parser.add_argument(
        "--bc-data-noise",
        type=float,
        default=0.0,
        help="bc-levels: action-noise std of the reference's rollouts that BC learns from (DART)",
    )
    parser.add_argument("--bc-episodes", type=int, nargs="+", default=[1, 5, 50])
    parser.add_argument(
        "--bc-steps", type=int, nargs="+", default=[100, 125, 150, 175, 200, 300, 500, 1000, 3000, 10_000]
    )
    parser.add_argument("--run-root-bc", default="runs/rlif_bc", help="bc-levels: parent folder of the BC runs")
    # demos
    parser.add_argument("--steps", type=int, default=20_000, help="demos: transitions of reference rollouts")
    # train, levels (earlier recipe)
    parser.add_argument("--total-timesteps", type=int, default=120_000, help="train: SAC steps of the reference")
    parser.add_argument("--snapshot-every", type=int, default=10_000, help="train: steps between kept checkpoints")
    parser.add_argument("--run-root", default="runs/experts", help="train: parent folder of the reference run")
    parser.add_argument("--snapshots", default=None, help="levels: folder of earlier checkpoints (RUN/snapshots)")
    parser.add_argument("--noises", type=float, nargs="+", default=[0.0, 0.3, 0.6, 1.0])
    opts = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("MUJOCO_GL", "egl")
    np.set_printoptions(precision=3)
    stages = {"reference-q": reference_q, "bc-levels": bc_levels, "demos": demos, "train": train, "levels": levels}
    stages[opts.stage](opts)


if __name__ == "__main__":
    main()
