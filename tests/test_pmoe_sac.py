"""PMOE-SAC (`sac --policy gmm`): K = 1 reproduces SAC, "max" back-propagation, the mixing-weight estimators,
saved evaluation rules, option checks, and multimodal learning on MultiGoal."""

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.nn import functional as F

import mixrl
from mixrl.agents import sac
from mixrl.checkpoints import load_checkpoint
from mixrl.envs.multigoal import PMOE_SAC_SETTINGS, follow_policy
from mixrl.policies.critics import QEnsemble
from mixrl.policies.mixture import GaussianMixtureHead, frequency_loss, sample_experts


def tiny_args(tmp_path, **overrides) -> sac.Args:
    defaults = dict(
        env_id="Pendulum-v1",
        total_timesteps=160,
        learning_starts=100,
        batch_size=16,
        hidden_sizes=(16, 16),
        eval_every=0,
        eval_episodes=1,
        checkpoint_every=50,
        log_every=1,
        run_root=str(tmp_path / "runs"),
    )
    return sac.Args(**{**defaults, **overrides})


def scalars(run_dir, prefix: str) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
        if tag.startswith(prefix)
    }


def test_single_expert_pmoe_equals_sac(tmp_path):
    gaussian = sac.main(tiny_args(tmp_path / "sac"))
    mixture = sac.main(tiny_args(tmp_path / "pmoe", policy="gmm", num_experts=1))
    losses = scalars(gaussian, "losses/")
    assert losses.keys() == {
        "losses/qf_loss",
        "losses/actor_loss",
        "losses/alpha_loss",
        "losses/alpha",
        "losses/qf_values",
        "losses/entropy",
    }
    assert len(losses["losses/actor_loss"]) == 61
    assert scalars(mixture, "losses/") == losses
    assert scalars(mixture, "pmoe/") == {
        "pmoe/wins_expert_0": [(step, 1.0) for step in range(100, 161)],
        "pmoe/mixing_entropy": [(step, 0.0) for step in range(100, 161)],
    }
    expected, actual = load_checkpoint(gaussian)["state"], load_checkpoint(mixture)["state"]
    assert actual["actor"].pop("mixing.weight").abs().sum() == actual["actor"].pop("mixing.bias").abs().sum() == 0
    for name in ("actor", "qf", "qf_target"):
        assert actual[name].keys() == expected[name].keys()
        for key, value in expected[name].items():
            assert torch.equal(actual[name][key], value), f"{name}.{key} differs"
    assert torch.equal(actual["log_alpha"], expected["log_alpha"])


@pytest.fixture
def actor_step(monkeypatch):
    """One PMOE actor loss on random data, with the per-expert samples and expert parameters kept for inspection."""
    torch.manual_seed(0)
    actor = GaussianMixtureHead(3, 2, num_experts=4, hidden_sizes=(32, 32))
    qf = QEnsemble(3, 2, 2, (32, 32)).requires_grad_(False)
    obs = torch.randn(64, 3)
    kept: dict[str, torch.Tensor] = {}
    expert_params = actor.expert_params

    def keep_expert_params(x):
        mean, log_std = expert_params(x)
        for name, value in (("mean", mean), ("log_std", log_std)):
            value.retain_grad()
            kept[name] = value
        return mean, log_std

    def keep_samples(mean, log_std):
        kept["actions"], _, _ = samples = sample_experts(mean, log_std)
        return samples

    monkeypatch.setattr(actor, "expert_params", keep_expert_params)
    monkeypatch.setattr(sac, "sample_experts", keep_samples)

    def step(**options) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        actor.zero_grad(set_to_none=True)
        args = sac.Args(policy="gmm", num_experts=4, **options)
        loss, _, metrics = sac.pmoe_actor_loss(args, actor, qf, obs, torch.tensor(0.3))
        loss.backward()
        with torch.no_grad():
            kept["q"] = sac.expert_q(qf, obs, kept["actions"])
        return loss, metrics

    step.actor, step.obs, step.kept = actor, obs, kept
    return step


def test_q_and_entropy_gradients_reach_only_the_best_expert(actor_step):
    _, metrics = actor_step()
    kept = actor_step.kept
    best = kept["q"].argmax(-1)
    winner = F.one_hot(best, 4).bool()  # (B, K)
    assert len(set(best.tolist())) > 1  # the test covers several winners
    for name in ("mean", "log_std"):
        grad = kept[name].grad  # (B, K, A)
        assert (grad[~winner] == 0).all(), f"{name} of a losing expert got gradient"
        assert (grad[winner].abs().sum(-1) > 0).all(), f"{name} of the winner got no gradient"
    wins = torch.stack([metrics[f"pmoe/wins_expert_{k}"] for k in range(4)])
    torch.testing.assert_close(wins, F.one_hot(best, 4).float().mean(0))


def test_mixing_weights_learn_only_from_the_frequency_loss(actor_step):
    actor_step()
    actor, kept = actor_step.actor, actor_step.kept
    mixing_grads = [p.grad.clone() for p in actor.mixing.parameters()]
    w = actor.mixing_logits(actor_step.obs).softmax(-1)
    expected = torch.autograd.grad(frequency_loss(w, kept["q"]), list(actor.mixing.parameters()))
    for grad, reference in zip(mixing_grads, expected, strict=True):
        torch.testing.assert_close(grad, reference, atol=1e-7, rtol=1e-6)
    # The mixture entropy sends gradient to w as well.
    actor_step(gmm_entropy="mixture")
    w = actor.mixing_logits(actor_step.obs).softmax(-1)
    frequency_only = torch.autograd.grad(frequency_loss(w, kept["q"]), actor.mixing.weight)[0]
    assert (actor.mixing.weight.grad - frequency_only).abs().max() > 1e-4


def test_gumbel_and_reinforce_estimators_reach_the_mixing_weights(actor_step):
    actor = actor_step.actor
    for grad in ("gumbel", "reinforce"):
        actor_step(gmm_grad=grad)
        w = actor.mixing_logits(actor_step.obs).softmax(-1)
        frequency_only = torch.autograd.grad(frequency_loss(w, actor_step.kept["q"]), actor.mixing.weight)[0]
        assert (actor.mixing.weight.grad - frequency_only).abs().max() > 1e-4, grad
    # The relaxed blend passes Q and entropy gradients to every expert.
    actor_step(gmm_grad="gumbel")
    assert (actor_step.kept["mean"].grad.abs().sum(-1) > 0).all()


@pytest.mark.parametrize(
    "options",
    [
        {"gmm_grad": "frequency", "gmm_entropy": "mixture", "batch_reward_norm": True},
        {"gmm_grad": "gumbel", "gumbel_tau": 0.5},
        {"gmm_grad": "reinforce"},
    ],
)
def test_estimator_smoke_runs(tmp_path, options):
    run_dir = sac.main(tiny_args(tmp_path, policy="gmm", num_experts=3, checkpoint_every=0, **options))
    ckpt = load_checkpoint(run_dir)
    assert ckpt["algo"] == "pmoe_sac" and ckpt["global_step"] == 160
    assert all(torch.isfinite(v).all() for v in ckpt["state"]["actor"].values())
    logged = scalars(run_dir, "pmoe/")
    assert sorted(logged) == ["pmoe/mixing_entropy", *(f"pmoe/wins_expert_{k}" for k in range(3))]
    wins = np.array([[v for _, v in logged[f"pmoe/wins_expert_{k}"]] for k in range(3)])
    np.testing.assert_allclose(wins.sum(0), 1.0, atol=1e-6)


@pytest.mark.parametrize("rule", ["argmax_w", "sampled_k_mean"])
def test_load_policy_uses_the_saved_evaluation_rule(tmp_path, rule):
    run_dir = sac.main(tiny_args(tmp_path, policy="gmm", gmm_eval_rule=rule, checkpoint_every=0))
    ckpt = load_checkpoint(run_dir)
    assert ckpt["policy"]["kwargs"]["eval_rule"] == rule
    head = GaussianMixtureHead(3, 1, num_experts=4, hidden_sizes=(16, 16))
    head.load_state_dict(ckpt["state"]["actor"])
    obs = np.random.default_rng(0).normal(size=(50, 3))
    policy = mixrl.load_policy(run_dir)
    torch.manual_seed(7)  # sampled_k_mean draws k from torch's global stream
    loaded = policy(obs)
    torch.manual_seed(7)
    expected = 2.0 * head.deterministic(torch.as_tensor(obs, dtype=torch.float32), rule).detach().numpy()
    np.testing.assert_allclose(loaded, expected, atol=1e-6)


def test_resume_continues_a_mixture_run_exactly(tmp_path):
    options = dict(policy="gmm", num_experts=3, gmm_eval_rule="sampled_k_mean", log_every=50)
    straight = load_checkpoint(sac.main(tiny_args(tmp_path / "a", total_timesteps=200, **options)))
    first_part = sac.main(tiny_args(tmp_path / "b", total_timesteps=120, **options))
    resumed = load_checkpoint(sac.main(sac.Args(resume=str(first_part), total_timesteps=200)))
    for name in ("actor", "qf", "qf_target"):
        for key, value in straight["state"][name].items():
            assert torch.equal(value, resumed["state"][name][key]), f"{name}.{key} differs after resume"
    assert resumed["policy"]["kwargs"]["eval_rule"] == "sampled_k_mean"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_experts": 2}, "--num-experts: options of the mixture policy only; add --policy gmm"),
        ({"gmm_grad": "gumbel", "gumbel_tau": 0.5}, "--gmm-grad, --gumbel-tau: options of the mixture"),
        ({"policy": "mixture"}, "--policy 'mixture' is not one of"),
        ({"policy": "gmm", "num_experts": 0}, "at least 1"),
        ({"policy": "gmm", "gmm_grad": "pathwise"}, "--gmm-grad 'pathwise'"),
        ({"policy": "gmm", "gmm_entropy": "joint"}, "--gmm-entropy 'joint'"),
        ({"policy": "gmm", "gmm_eval_rule": "argmax_q"}, "argmax_q ranks the experts with a critic"),
        ({"policy": "gmm", "gmm_grad": "gumbel", "gmm_entropy": "mixture"}, "use --gmm-entropy component"),
        ({"policy": "gmm", "gumbel_tau": 0.5}, "--gumbel-tau only applies to --gmm-grad gumbel"),
        ({"policy": "gmm", "gmm_grad": "gumbel", "gumbel_tau": 0.0}, "must be positive"),
    ],
)
def test_refuses_invalid_options(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        sac.main(tiny_args(tmp_path, **options))
    assert not (tmp_path / "runs").exists()


def expert_goals(run_dir) -> list[int | None]:
    """The goal each expert reaches by following its own mean action from the start state (None: none)."""
    ckpt = load_checkpoint(run_dir)
    head = GaussianMixtureHead(**ckpt["policy"]["kwargs"])
    head.load_state_dict(ckpt["policy"]["state_dict"])

    def expert_mean(k: int):
        return lambda obs: torch.tanh(head.expert_params(torch.as_tensor(obs))[0][k]).detach().numpy()

    return [follow_policy(expert_mean(k))[1] for k in range(head.num_experts)]


def test_pmoe_experts_reach_several_goals_on_multigoal(tmp_path):
    """Eight experts on a wide trunk, a small fixed alpha and 3000 uniform-random steps (every goal is in the
    buffer): each expert keeps climbing the mode it starts nearest to, instead of all following one winner.
    Across seeds 1-12 at least three distinct goals were reached every time; about 25 s on one core."""
    args = tiny_args(
        tmp_path,
        env_id="mixrl/MultiGoal-v0",
        **PMOE_SAC_SETTINGS,
        total_timesteps=6000,
        checkpoint_every=0,
        log_every=1000,
        eval_episodes=1,
        seed=1,
    )
    goals = expert_goals(sac.main(args))
    assert len({g for g in goals if g is not None}) >= 3, goals
