"""Offline RL: Minari datasets (collect, replay-buffer split, load, errors), TD3+BC's and A2PR's updates against
hand computations of their formulas, A2PR without its VAE branch = TD3+BC, smoke runs, resume, the CLI."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys

import minari
import numpy as np
import pytest
import torch
from helpers import recording

import mixrl
from mixrl import runs
from mixrl.agents import a2pr, sac, td3_bc
from mixrl.buffers import Batch, ReplayBuffer
from mixrl.checkpoints import load_checkpoint
from mixrl.cli import main as cli_main
from mixrl.datasets import CollectArgs, collect, load_dataset, normalized_score, replay_episodes
from mixrl.evaluation import evaluate_checkpoint
from mixrl.optim import FlatAdam, flatten_parameters
from mixrl.policies.critics import QEnsemble, ValueNetwork
from mixrl.policies.deterministic import DeterministicActor
from mixrl.policies.vae import ConditionalVAE

RANDOM_ID = "mixrl/pendulum-v1/random-v0"
REFS = {"ref_min_score": -1200.0, "ref_max_score": -100.0}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """A datasets root holding a 450-step uniform-random Pendulum dataset (episodes of 200, 200 and a cut 50)."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        collect(CollectArgs("random", env_id="Pendulum-v1", steps=450, **REFS))
        yield root


@pytest.fixture
def root(datasets, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(datasets))
    return datasets


def tiny_td3_bc(tmp_path, **kw) -> td3_bc.Args:
    base = dict(
        dataset_id=RANDOM_ID,
        seed=3,
        total_steps=6,
        batch_size=16,
        hidden_sizes=(32, 32),
        eval_every=0,
        eval_episodes=1,
        checkpoint_every=0,
        log_every=2,
        run_root=str(tmp_path / "runs"),
    )
    return td3_bc.Args(**{**base, **kw})


def tiny_a2pr(tmp_path, **kw) -> a2pr.Args:
    base = dict(
        dataset_id=RANDOM_ID,
        seed=3,
        total_steps=6,
        batch_size=16,
        actor_hidden=(32, 32),
        critic_hidden=(32, 32),
        value_hidden=(16,),
        vae_hidden=(16,),
        eval_every=0,
        eval_episodes=1,
        checkpoint_every=0,
        log_every=2,
        run_root=str(tmp_path / "runs"),
    )
    return a2pr.Args(**{**base, **kw})


# ---------------------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------------------


def test_dataset_roundtrip(root):
    raw = minari.load_dataset(RANDOM_ID)  # Minari's own reader sees a complete dataset with reference scores
    episodes = list(raw.iterate_episodes())
    assert [len(e.rewards) for e in episodes] == [200, 200, 50]
    assert episodes[-1].truncations[-1] and not episodes[-1].terminations.any()
    assert raw.storage.metadata["ref_min_score"] == -1200.0
    assert np.isclose(minari.get_normalized_score(raw, np.array(-650.0)), 0.5)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging folder left behind

    data = load_dataset(RANDOM_ID)
    assert data.env_id == "Pendulum-v1" and data.num_episodes == 3 and data.buffer.size == 450
    obs = np.concatenate([e.observations[:-1] for e in episodes]).astype(np.float64)
    next_obs = np.concatenate([e.observations[1:] for e in episodes]).astype(np.float64)
    actions = np.concatenate([e.actions for e in episodes])
    stored_obs, stored_actions, rewards, stored_next, terminated = data.buffer.data.split([3, 1, 1, 3, 1], dim=1)
    norm = data.obs_normalizer
    assert np.allclose(norm["mean"], obs.mean(0)) and np.allclose(np.sqrt(norm["var"]), obs.std(0) + 1e-3)
    # the transform that mixrl.evaluation.Policy applies is the one the agent trains on
    policy_view = np.clip((obs - norm["mean"]) / np.sqrt(norm["var"] + norm["epsilon"]), -norm["clip"], norm["clip"])
    assert np.allclose(stored_obs.numpy(), policy_view, atol=1e-5)
    assert np.allclose(stored_next.numpy(), (next_obs - norm["mean"]) / np.sqrt(norm["var"]), atol=1e-5)
    assert np.allclose(stored_actions.numpy(), actions / 2.0)  # Pendulum's [-2, 2] -> [-1, 1]
    assert np.allclose(rewards.squeeze(1).numpy(), np.concatenate([e.rewards for e in episodes]))
    assert terminated.sum() == 0

    raw_data = load_dataset(RANDOM_ID, normalize_obs=False)
    assert raw_data.obs_normalizer is None and np.allclose(raw_data.buffer.data[:, :3].numpy(), obs, atol=1e-6)


def test_normalized_score():
    assert normalized_score(3234.3, -20.272305, 3234.3) == pytest.approx(100.0)
    assert normalized_score(-20.272305, -20.272305, 3234.3) == pytest.approx(0.0)
    assert normalized_score(1000.0, 0.0, 4000.0) == pytest.approx(25.0)
    assert np.allclose(normalized_score(np.array([-280.178953, 12135.0]), -280.178953, 12135.0), [0.0, 100.0])


def test_replay_buffer_becomes_episodes(root, tmp_path):
    """SAC with 2 envs and a ring buffer smaller than the run: the split recovers whole and cut episodes."""
    run = sac.main(
        sac.Args(
            env_id="Pendulum-v1",
            num_envs=2,
            total_timesteps=500,
            buffer_size=300,
            learning_starts=100,
            batch_size=16,
            hidden_sizes=(16, 16),
            eval_episodes=1,
            run_root=str(tmp_path / "runs"),
        )
    )
    ckpt = load_checkpoint(run, newest=True)  # latest.pt holds the replay buffer, final.pt does not
    episodes = replay_episodes(ckpt, str(run))
    # 250 steps per env, the last 150 of each kept: rows 100-199 end at the 200-step time limit, then 50 more
    assert sorted(len(e.rewards) for e in episodes) == [50, 50, 100, 100]
    data = ckpt["buffer"]["data"].numpy()
    rows = {tuple(np.round(r[:3], 5)) for r in data}
    for e in episodes:
        assert e.observations.shape == (len(e.rewards) + 1, 3) and e.truncations[-1] and not e.terminations.any()
        assert np.abs(e.actions).max() <= 2.0 and np.abs(e.actions).max() > 1.0  # rescaled to Pendulum's [-2, 2]
        assert all(tuple(np.round(o, 5)) in rows for o in e.observations[:-1])

    collect(CollectArgs("medium-replay", policy=str(run), dataset_id="mixrl/pendulum-v1/replay-v0", **REFS))
    assert load_dataset("mixrl/pendulum-v1/replay-v0").buffer.size == 300
    del ckpt["buffer"]
    with pytest.raises(ValueError, match="--save-buffer"):
        replay_episodes(ckpt, "run")


def test_collect_from_policy_and_concatenate(root, tmp_path):
    run = td3_bc.main(tiny_td3_bc(tmp_path))
    # ref_max_score measured: the expert's deterministic return (1 episode); ref_min below any Pendulum return
    collect(
        CollectArgs(
            "medium",
            policy=str(run),
            expert=str(run),
            steps=250,
            action_noise=0.1,
            ref_episodes=1,
            ref_min_score=-3300.0,
        )
    )
    medium = minari.load_dataset("mixrl/pendulum-v1/medium-v0")
    assert medium.total_steps == 250 and "action noise" in medium.storage.metadata["algorithm_name"]
    # The actions are the policy's plus N(0, (0.1 (high - low) / 2)^2) = N(0, 0.2^2) noise, clipped to [-2, 2].
    policy = mixrl.load_policy(run)
    noise = np.concatenate([ep.actions - policy(ep.observations[:-1]) for ep in medium.iterate_episodes()])
    assert abs(noise.mean()) < 0.05 and 0.15 < noise.std() < 0.25, (noise.mean(), noise.std())
    expert_return = evaluate_checkpoint(run, episodes=1, seed=1_000_000)["mean_return"]
    assert medium.storage.metadata["ref_max_score"] == pytest.approx(expert_return)
    # A shared policy folder alone (no checkpoint beside it) acts and measures the expert's score too.
    shared = tmp_path / "shared"
    (run / "policy").rename(shared)
    collect(CollectArgs("expert", policy=str(shared), steps=50, ref_episodes=1, ref_min_score=-3300.0))
    expert = minari.load_dataset("mixrl/pendulum-v1/expert-v0")
    assert expert.total_steps == 50 and expert.storage.metadata["ref_max_score"] == pytest.approx(expert_return)

    sources = (RANDOM_ID, "mixrl/pendulum-v1/medium-v0")
    with pytest.raises(ValueError, match="reference scores"):
        collect(CollectArgs("medium-expert", sources=sources))
    collect(CollectArgs("medium-expert", sources=sources, **REFS))
    combined = load_dataset("mixrl/pendulum-v1/medium-expert-v0")
    assert combined.buffer.size == 700 and combined.num_episodes == 5
    with pytest.raises(ValueError, match="already exists"):
        collect(CollectArgs("medium-expert", sources=sources, **REFS))
    with pytest.raises(ValueError, match="needs --policy"):
        collect(CollectArgs("medium", expert=str(run)))
    with pytest.raises(ValueError, match="--expert EXPERT_RUN or --ref-max-score"):
        collect(CollectArgs("medium", policy=str(run)))


def test_bad_datasets_stop_with_one_clear_message(root, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as missing:
        load_dataset("mixrl/hopper-v5/medium-v0")
    assert "mixrl dataset collect medium --policy RUN --expert EXPERT_RUN --dataset-id mixrl/hopper-v5/medium-v0" in (
        str(missing.value)
    )
    with pytest.raises(ValueError, match="does not match InvertedPendulum-v5"):
        td3_bc.main(tiny_td3_bc(tmp_path, env_id="InvertedPendulum-v5"))

    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(broken))
    data_file = broken / RANDOM_ID / "data" / "main_data.hdf5"
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_dataset(RANDOM_ID)
    (broken / RANDOM_ID / "data" / "metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_dataset(RANDOM_ID)

    cli = subprocess.run(
        [sys.executable, "-m", "mixrl.cli", "a2pr", "--dataset-id", "mixrl/hopper-v5/expert-v0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode != 0 and "Traceback" not in cli.stderr and len(cli.stderr.strip().splitlines()) == 1
    assert "mixrl dataset collect expert --policy EXPERT_RUN --dataset-id mixrl/hopper-v5/expert-v0" in cli.stderr


def test_dataset_cli(root, capsys):
    cli_main(
        [
            "dataset",
            "collect",
            "random",
            "--env-id",
            "Pendulum-v1",
            "--steps",
            "30",
            "--dataset-id",
            "mixrl/pendulum-v1/cli-v0",
            "--ref-max-score",
            "-100",
            "--ref-episodes",
            "1",
        ]
    )
    cli_main(["dataset", "list"])
    cli_main(["dataset", "info", "mixrl/pendulum-v1/cli-v0"])
    cli_main(["--help"])
    out = capsys.readouterr().out
    assert "wrote mixrl/pendulum-v1/cli-v0: 1 episodes, 30 steps" in out
    assert "mixrl/pendulum-v1/cli-v0" in out and RANDOM_ID in out and "ref min / max -1200.0 / -100.0" in out
    assert "normalized_score_mean" in out and "Pendulum-v1" in out
    assert "td3_bc" in out and "a2pr" in out and "collect | list | info" in out


# ---------------------------------------------------------------------------------------------------------------
# Updates against hand computations
# ---------------------------------------------------------------------------------------------------------------

B, OBS, ACT, LATENT = 16, 3, 2, 4


def fixed_batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(
        torch.randn(B, OBS, generator=g),
        torch.rand(B, ACT, generator=g) * 2 - 1,
        torch.randn(B, generator=g),
        torch.randn(B, OBS, generator=g),
        (torch.rand(B, generator=g) < 0.25).float(),
    )


NOISE, CLIP = 0.5, 0.3  # sigma and c large enough that both clips act on this batch


def smoothed(actor_target, next_obs, noise):
    """a' = clip(pibar(s') + clip(sigma noise, -c, c), -1, 1)."""
    return (actor_target(next_obs) + (NOISE * noise).clamp(-CLIP, CLIP)).clamp(-1, 1)


def td3_target(actor_target, qf_target, batch, noise, gamma=0.99):
    """y = r + gamma (1 - d) min_j Qbar_j(s', a')."""
    a_next = smoothed(actor_target, batch.next_obs, noise)
    q1, q2 = qf_target(batch.next_obs, a_next)
    return batch.rewards + gamma * (1 - batch.terminated) * torch.minimum(q1, q2)


def test_td3_bc_update_matches_the_formulas():
    torch.manual_seed(0)
    actor, qf = DeterministicActor(OBS, ACT, (16, 16)), QEnsemble(OBS, ACT, 2, (16, 16))
    actor_t, qf_t = copy.deepcopy(actor).requires_grad_(False), copy.deepcopy(qf).requires_grad_(False)
    args = td3_bc.Args(policy_freq=2, policy_noise=NOISE, noise_clip=CLIP)
    modules = {"actor": actor, "actor_target": actor_t, "qf": qf, "qf_target": qf_t}
    optimizers = {
        "actor": FlatAdam(flatten_parameters([actor]), 3e-4),
        "critic": FlatAdam(flatten_parameters([qf]), 3e-4),
    }
    update = td3_bc.make_update(args, modules, optimizers)
    batch = fixed_batch()

    actor0, qf0, actor_t0, qf_t0 = (copy.deepcopy(m) for m in (actor, qf, actor_t, qf_t))
    torch.manual_seed(1)
    first = update(batch)  # iteration 1: critic only
    torch.manual_seed(1)
    with torch.no_grad():
        y = td3_target(actor_t0, qf_t0, batch, torch.randn(B, ACT))
        q1, q2 = qf0(batch.obs, batch.actions)
        expected = ((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean()
    assert torch.allclose(first["losses/qf_loss"], expected, rtol=1e-6)
    assert "losses/actor_loss" not in first
    assert all(torch.equal(p, p0) for p, p0 in zip(actor.parameters(), actor0.parameters()))

    qf1_before = copy.deepcopy(qf)
    second = update(batch)  # iteration 2: critic, then actor on the updated critic, then Polyak
    with torch.no_grad():
        pi = actor0(batch.obs)
        q_pi = qf(batch.obs, pi)[0]  # qf now holds the critic after iteration 2's critic step
        lam = 2.5 / q_pi.abs().mean()
        expected_actor = -lam * q_pi.mean() + ((pi - batch.actions) ** 2).mean()
        stale_lam = 2.5 / qf1_before(batch.obs, pi)[0].abs().mean()
    assert torch.allclose(second["losses/lambda"], lam, rtol=1e-6)
    assert not torch.allclose(stale_lam, lam, rtol=1e-6)  # lambda tells the critic before from after its step
    assert torch.allclose(second["losses/actor_loss"], expected_actor, rtol=1e-6)
    for p_t, p_t0, p in zip(actor_t.parameters(), actor_t0.parameters(), actor.parameters()):
        assert torch.allclose(p_t, 0.995 * p_t0 + 0.005 * p, atol=1e-7)


def test_compiled_td3_bc_update_equals_the_eager_one():
    """Without smoothing noise the step is deterministic: the compiled losses and gradients give the eager result."""
    torch.manual_seed(0)
    actor, qf = DeterministicActor(OBS, ACT, (16, 16)), QEnsemble(OBS, ACT, 2, (16, 16))
    base = {"actor": actor, "qf": qf, "actor_target": copy.deepcopy(actor), "qf_target": copy.deepcopy(qf)}
    batch, states = fixed_batch(), {}
    for compile in (False, True):
        modules = {k: copy.deepcopy(m).requires_grad_("target" not in k) for k, m in base.items()}
        optimizers = {
            k: FlatAdam(flatten_parameters([modules[m]]), 1e-2) for k, m in (("actor", "actor"), ("critic", "qf"))
        }
        update = td3_bc.make_update(td3_bc.Args(policy_noise=0.0, compile=compile), modules, optimizers)
        metrics = [update(batch) for _ in range(4)]
        states[compile] = (metrics[-1], optimizers["actor"].params.clone(), optimizers["critic"].params.clone())
    torch.compiler.reset()
    (eager, actor_e, critic_e), (compiled, actor_c, critic_c) = states[False], states[True]
    assert torch.allclose(compiled["losses/actor_loss"], eager["losses/actor_loss"], rtol=1e-4, atol=1e-6)
    assert torch.allclose(actor_c, actor_e, atol=1e-5) and torch.allclose(critic_c, critic_e, atol=1e-5)
    initial = torch.cat([p.detach().reshape(-1) for p in base["actor"].parameters()])
    assert not torch.allclose(actor_c, initial, atol=1e-3)  # the actor stepped twice


def test_compiled_bfloat16_a2pr_and_td3_bc_runs_evaluate_in_float32(root, tmp_path, monkeypatch):
    # Each compiled loss and gradient runs with the bfloat16 setting that CPU products consult (oneDNN's
    # fp32_precision "bf16"; on CPUs without AMX, such as the AMD EPYC of the tests, the products still come out
    # as in float32), and evaluation in float32.
    gradient_precisions = {a2pr: [], td3_bc: []}
    for agent, used in gradient_precisions.items():
        monkeypatch.setattr(agent, "loss_gradient", recording(agent.loss_gradient, used))
    precisions = []
    evaluate = runs.evaluate  # the run's evaluation

    def recording_evaluate(*args, **kwargs):
        precisions.append(torch.get_float32_matmul_precision())
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(runs, "evaluate", recording_evaluate)
    run = a2pr.main(tiny_a2pr(tmp_path, compile=True, matmul_precision="medium", eval_every=3))
    lines = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [3, 6] and all(np.isfinite(line["mean_return"]) for line in lines)
    assert precisions == ["highest", "highest"] and torch.get_float32_matmul_precision() == "highest"
    state = load_checkpoint(td3_bc.main(tiny_td3_bc(tmp_path, compile=True, matmul_precision="medium")))["state"]
    assert all(torch.isfinite(v).all() for v in state["actor"].values())
    for agent, used in gradient_precisions.items():
        assert used and set(used) == {("medium", "bf16")}, agent.__name__
    assert torch.get_float32_matmul_precision() == "highest" and torch.backends.mkldnn.matmul.fp32_precision == "ieee"


def a2pr_setup(**kw):
    torch.manual_seed(0)
    modules = {"actor": DeterministicActor(OBS, ACT, (16, 16)), "qf": QEnsemble(OBS, ACT, 2, (16, 16))}
    modules["actor_target"] = copy.deepcopy(modules["actor"]).requires_grad_(False)
    modules["qf_target"] = copy.deepcopy(modules["qf"]).requires_grad_(False)
    modules["value"], modules["vae"] = ValueNetwork(OBS, (16,)), ConditionalVAE(OBS, ACT, LATENT, (16,))
    batch = fixed_batch()
    with torch.no_grad():  # put V(s) mid-way among Q_1(s, a), so that the advantage masks are mixed
        shift = modules["qf"](batch.obs, batch.actions)[0].median() - modules["value"](batch.obs).median()
        modules["value"].net[-1].bias += shift
    names = {"actor": "actor", "critic": "qf", "value": "value", "vae": "vae"}
    optimizers = {k: FlatAdam(flatten_parameters([modules[m]]), lr=1e-2) for k, m in names.items()}
    args = a2pr.Args(
        policy_freq=1, alpha=2.5, bc_weight=0.7, vae_recon_weight=1.3, policy_noise=NOISE, noise_clip=CLIP, **kw
    )
    return args, modules, optimizers, batch


def test_a2pr_update_matches_the_formulas():
    args, modules, optimizers, batch = a2pr_setup()
    before = {k: copy.deepcopy(m) for k, m in modules.items()}
    update = a2pr.make_update(args, modules, optimizers)
    torch.manual_seed(5)
    metrics = update(batch)

    s, a, r, nd = batch.obs, batch.actions, batch.rewards, 1 - batch.terminated
    qf, vae = modules["qf"], modules["vae"]  # after the update: the critic after step 1, the VAE after step 3
    torch.manual_seed(5)
    with torch.no_grad():
        noise, eps_vae, eps_actor = torch.randn(B, ACT), torch.randn(B, LATENT), torch.randn(B, LATENT)
        # 1. critic
        y = td3_target(before["actor_target"], before["qf_target"], batch, noise)
        q1, q2 = before["qf"](s, a)
        assert torch.allclose(metrics["losses/qf_loss"], ((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean(), rtol=1e-6)
        # 2. value: min of the updated critics' backup and y, at the same a'
        a_next = smoothed(before["actor_target"], batch.next_obs, noise)
        online = r + 0.99 * nd * qf(batch.next_obs, a_next).min(0).values
        v = before["value"](s)
        assert torch.allclose(metrics["losses/value_loss"], ((v - torch.minimum(online, y)) ** 2).mean(), rtol=1e-6)
        # 3. VAE: reconstruction masked by 1[Q_1(s, a) > V(s)] (updated Q_1, old V), KL over every sample
        q_data = qf(s, a)[0]
        mu, sigma = before["vae"].encode(s, a)
        recon = before["vae"].decode(s, mu + sigma * eps_vae)
        w = 1.3 * (q_data > v).float()
        kl = -0.5 * (1 + torch.log(sigma**2) - mu**2 - sigma**2).mean()
        expected_vae = (w[:, None] * (recon - a) ** 2).mean() + 0.5 * kl
        assert 0 < (w > 0).sum() < B  # mixed mask: masking is visible to this test
        assert torch.allclose(metrics["losses/vae_loss"], expected_vae, rtol=1e-6)
        assert not torch.allclose(((recon - a) ** 2).mean() * 1.3 + 0.5 * kl, expected_vae, rtol=1e-3)
        # 4. actor: BC target by advantage, weight m = 0.7 1[gen >= V or data > V]
        pi = before["actor"](s)
        q_pi = qf(s, pi)[0]
        lam = 2.5 / q_pi.abs().mean()
        mu_pi, sigma_pi = vae.encode(s, pi)
        generated = vae.decode(s, mu_pi + sigma_pi * eps_actor)
        q_gen = qf(s, generated)[0]
        bc = torch.zeros(())
        masks = []
        for i in range(B):
            target = generated[i] if q_gen[i] - v[i] >= q_data[i] - v[i] else a[i]
            m = 0.7 if (q_gen[i] >= v[i] or q_data[i] > v[i]) else 0.0
            masks.append(m)
            bc = bc + m * ((pi[i] - target) ** 2).sum()
        bc = bc / (B * ACT)
        assert 0.0 in masks and 0.7 in masks
        assert torch.allclose(metrics["losses/bc_loss"], bc, rtol=1e-5)
        assert torch.allclose(metrics["losses/actor_loss"], -lam * q_pi.mean() + bc, rtol=1e-5)


def test_bc_target_and_or_mask():
    v = torch.zeros(5)
    q_data = torch.tensor([1.0, -1.0, 2.0, -1.0, 0.0])  # data > V: yes, no, yes, no, no (tie is not >)
    q_gen = torch.tensor([-1.0, 1.0, 3.0, -2.0, 0.0])  # gen >= V: no, yes, yes, no, yes (tie is >=)
    actions, generated = torch.full((5, 2), 0.5), torch.full((5, 2), -0.5)
    target, m = a2pr.bc_target_and_weight(q_data, q_gen, v, actions, generated, bc_weight=2.0)
    assert m.tolist() == [2.0, 2.0, 2.0, 0.0, 2.0]  # OR, never 2 * bc_weight where both hold
    assert target[:, 0].tolist() == [0.5, -0.5, -0.5, 0.5, -0.5]  # a_gen where A_gen >= A_data (ties: a_gen)


def test_bc_gradient_through_the_vae_unless_detached():
    params = {}
    for detach in (False, True):
        args, modules, optimizers, batch = a2pr_setup(detach_bc_target=detach)
        update = a2pr.make_update(args, modules, optimizers)
        torch.manual_seed(5)
        metrics = update(batch)
        params[detach] = (metrics, [p.clone() for p in modules["actor"].parameters()])
    assert params[False][0]["a2pr/generated_target_fraction"] > 0
    assert torch.equal(params[False][0]["losses/actor_loss"], params[True][0]["losses/actor_loss"])
    assert any(not torch.equal(p, q) for p, q in zip(params[False][1], params[True][1]))


# ---------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------


def test_a2pr_without_vae_branch_is_td3_bc(root, tmp_path):
    td3 = load_checkpoint(td3_bc.main(tiny_td3_bc(tmp_path)))
    plain = load_checkpoint(a2pr.main(tiny_a2pr(tmp_path, vae_branch=False, bc_weight=1.0)))
    full = load_checkpoint(a2pr.main(tiny_a2pr(tmp_path, bc_weight=1.0)))
    for name in ("actor", "actor_target", "qf", "qf_target"):
        for key, value in td3["state"][name].items():
            assert torch.equal(value, plain["state"][name][key]), (name, key)
    assert not torch.equal(td3["state"]["actor"]["net.0.weight"], full["state"]["actor"]["net.0.weight"])
    assert "vae" in full["state"] and "vae" not in plain["state"]


def test_sigterm_saves_a_checkpoint_that_resumes_exactly(root, tmp_path, monkeypatch):
    straight = load_checkpoint(td3_bc.main(tiny_td3_bc(tmp_path / "a")))
    sample, calls = ReplayBuffer.sample, []

    def sample_then_terminated(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # `kill` during the 4th iteration, before its update: the run stops after it
            os.kill(os.getpid(), signal.SIGTERM)
        return sample(self, *args, **kwargs)

    handler = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(ReplayBuffer, "sample", sample_then_terminated)
    with pytest.raises(KeyboardInterrupt):
        td3_bc.main(tiny_td3_bc(tmp_path / "b"))
    monkeypatch.setattr(ReplayBuffer, "sample", sample)
    assert signal.getsignal(signal.SIGTERM) is handler  # restored when the run closes
    run_dir = next((tmp_path / "b" / "runs").iterdir())
    assert load_checkpoint(run_dir / "checkpoints" / "latest.pt")["global_step"] == 4
    resumed = load_checkpoint(td3_bc.main(td3_bc.Args(resume=str(run_dir))))
    for name in ("actor", "qf", "qf_target"):
        for key, value in straight["state"][name].items():
            assert torch.equal(value, resumed["state"][name][key]), (name, key)


def test_offline_runs_evaluate_load_and_resume(root, tmp_path):
    run = a2pr.main(tiny_a2pr(tmp_path, total_steps=8, eval_every=4, checkpoint_every=4))
    lines = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [4, 8] and "normalized_score" in lines[-1]
    assert lines[-1]["normalized_score"] == pytest.approx(100 * (lines[-1]["mean_return"] + 1200.0) / 1100.0)
    policy = mixrl.load_policy(run)
    obs = np.array([[1.0, 0.0, 0.5], [-0.3, 0.9, -4.0]], np.float32)
    # The trained actor on the dataset-normalised observation, rescaled from [-1, 1] to Pendulum's [-2, 2].
    ckpt = load_checkpoint(run)
    actor = DeterministicActor(3, 1, (32, 32))
    actor.load_state_dict(ckpt["state"]["actor"])
    norm = ckpt["obs_normalizer"]
    z = (obs - norm["mean"]) / np.sqrt(norm["var"] + norm["epsilon"])
    expected = 2.0 * actor(torch.as_tensor(z, dtype=torch.float32)).detach().numpy()
    np.testing.assert_allclose(policy(obs), expected, rtol=1e-5, atol=1e-6)
    result = evaluate_checkpoint(run, episodes=1)
    assert result["algo"] == "a2pr" and result["env_id"] == "Pendulum-v1"

    # Stopped at step 3 with policy_freq 2: the resumed run must update the actor at step 4, not at step 5.
    half = a2pr.main(tiny_a2pr(tmp_path, total_steps=3, checkpoint_every=4, run_root=str(tmp_path / "half")))
    resumed = load_checkpoint(a2pr.main(a2pr.Args(resume=str(half), total_steps=8)))
    straight = load_checkpoint(a2pr.main(tiny_a2pr(tmp_path, total_steps=8, run_root=str(tmp_path / "full"))))
    for name in ("actor", "qf", "value", "vae"):
        for key, value in straight["state"][name].items():
            assert torch.equal(value, resumed["state"][name][key]), (name, key)
