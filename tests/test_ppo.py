"""PPO and PMOE-PPO: GAE, the first importance ratio, normalisation in checkpoints, resume, and one learning test."""

import copy
import dataclasses
import json
import math
import os
import signal

import numpy as np
import pytest
import torch
from helpers import assert_unbiased
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import mixrl
from mixrl.agents import ppo
from mixrl.buffers import RolloutBuffer, compute_gae
from mixrl.checkpoints import load_checkpoint
from mixrl.envs.factory import TorchVecEnv, make_vec_env
from mixrl.evaluation import evaluate, evaluate_checkpoint
from mixrl.optim import FlatAdam, flatten_parameters, loss_gradient
from mixrl.policies.gaussian import DiagonalGaussianActor
from mixrl.policies.mixture import DiagonalGaussianMixtureActor, auxiliary_q
from mixrl.runs import NonFiniteLossError


def tiny_args(tmp_path, **overrides):
    defaults = dict(
        env_id="Pendulum-v1",
        num_envs=2,
        num_steps=64,
        num_minibatches=4,
        update_epochs=2,
        total_timesteps=256,
        hidden_sizes=(16, 16),
        eval_every=0,
        eval_episodes=1,
        checkpoint_every=128,
        run_root=str(tmp_path / "runs"),
    )
    return ppo.Args(**{**defaults, **overrides})


def collect(args: ppo.Args, seed: int = 0):
    """One rollout exactly as ppo.main collects it -> (batch, actor, critic, qf)."""
    torch.manual_seed(seed)
    envs = make_vec_env(args.env_id, args.num_envs, seed, normalize_obs=True, normalize_reward_gamma=args.gamma)
    obs_dim, action_dim = envs.obs_dim, envs.single_action_space.shape[0]
    if args.policy == "gmm":
        actor = DiagonalGaussianMixtureActor(obs_dim, action_dim, args.num_experts, args.hidden_sizes)
        qf = auxiliary_q(obs_dim, action_dim, args.q_hidden_sizes)
    else:
        actor, qf = DiagonalGaussianActor(obs_dim, action_dim, args.hidden_sizes), None
    critic = ppo.make_critic(obs_dim, args.hidden_sizes)
    rollout = RolloutBuffer(args.num_steps, args.num_envs, obs_dim, action_dim)
    obs = envs.reset()
    with torch.no_grad():
        for t in range(args.num_steps):
            actions, _ = actor.sample(obs)
            next_obs, rewards, terminated, truncated, final_obs = envs.step(actions)
            rollout.add(t, obs, actions, rewards, final_obs, terminated, truncated)
            obs = next_obs
        return ppo.rollout_batch(args, rollout, actor, critic), actor, critic, qf


def scalars(run_dir) -> dict[str, list[float]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# ---------------------------------------------------------------- GAE


def test_gae_matches_a_hand_computation_with_terminations_and_truncations():
    gamma, lam = 0.9, 0.8
    # Env 0: truncated at t = 1 (its final observation is worth 9), terminated at t = 3 (the 5 must be ignored).
    # Env 1: no episode end; the last step bootstraps from V(s'_3) = 2.
    rewards = torch.tensor([[1.0, 0.5], [2.0, 0.5], [3.0, 0.5], [4.0, 0.5]])
    values = torch.tensor([[0.5, 1.0], [0.6, 1.0], [0.7, 1.0], [0.8, 1.0]])
    next_values = torch.tensor([[0.6, 1.0], [9.0, 1.0], [0.8, 1.0], [5.0, 2.0]])
    terminated = torch.tensor([[False, False], [False, False], [False, False], [True, False]])
    truncated = torch.tensor([[False, False], [True, False], [False, False], [False, False]])
    advantages, returns = compute_gae(rewards, values, next_values, terminated, terminated | truncated, gamma, lam)

    d0, d1, d2, d3 = 1 + 0.9 * 0.6 - 0.5, 2 + 0.9 * 9.0 - 0.6, 3 + 0.9 * 0.8 - 0.7, 4 - 0.8
    env0 = [d0 + 0.72 * d1, d1, d2 + 0.72 * d3, d3]  # the truncation at t = 1 cuts the sum
    e = [0.5 + 0.9 * 1.0 - 1.0] * 3 + [0.5 + 0.9 * 2.0 - 1.0]
    env1 = [e[0] + 0.72 * e[1] + 0.72**2 * e[2] + 0.72**3 * e[3], e[1] + 0.72 * e[2] + 0.72**2 * e[3]]
    env1 += [e[2] + 0.72 * e[3], e[3]]
    expected = torch.tensor([env0, env1]).T
    assert torch.allclose(advantages, expected, atol=1e-5)
    assert torch.allclose(returns, expected + values, atol=1e-5)


def test_truncated_steps_bootstrap_from_the_final_observation(tmp_path):
    """Counter env: obs = (t, episode), reward t, truncated after 5 steps; with V(s) = t the lambda-return of
    the truncated step is r + gamma V(final obs) = 5 + 5, not 5 + V(reset obs) = 5 + 0."""

    class Clock(torch.nn.Module):
        def forward(self, obs):
            return obs[..., 0]

    args = tiny_args(tmp_path, env_id="mixrl_test/Counter-v0", num_envs=1, num_steps=7, gamma=1.0, gae_lambda=0.0)
    envs = make_vec_env(args.env_id, 1, seed=0)
    rollout = RolloutBuffer(args.num_steps, 1, 2, 1)
    obs = envs.reset()
    for t in range(args.num_steps):
        next_obs, rewards, terminated, truncated, final_obs = envs.step(torch.zeros(1, 1))
        rollout.add(t, obs, torch.zeros(1, 1), rewards, final_obs, terminated, truncated)
        obs = next_obs
    batch = ppo.rollout_batch(args, rollout, DiagonalGaussianActor(2, 1, (4,)), Clock())
    assert rollout.truncated[:, 0].tolist() == [False] * 4 + [True, False, False]
    assert batch.returns.tolist() == [1 + 1, 2 + 2, 3 + 3, 4 + 4, 5 + 5, 1 + 1, 2 + 2]


# ---------------------------------------------------------------- losses against hand values


class FixedPolicyAndCritic(torch.nn.Module):
    """log pi(a|s) = log of the given ratios (pi_old = 1) and V(s) = the given values, whatever s and a."""

    def __init__(self, ratios, values):
        super().__init__()
        self.log_ratios, self.values = torch.tensor(ratios).log(), torch.tensor(values)

    def log_prob(self, obs, actions):
        return self.log_ratios

    def forward(self, obs):
        return self.values


@pytest.mark.parametrize("clip_vloss", [True, False])
def test_clipped_surrogate_and_value_losses_by_hand(tmp_path, clip_vloss):
    """eps = 0.2. Ratios (1.5, 0.5, 1.1, 0.7) with advantages (1, 1, -1, -1): min(rho A, clip(rho) A) =
    (1.2, 0.5, -1.1, -0.8), L_clip = -mean = 0.05. V_old = (0, 0, 1, 1), V = (0.5, -0.1, 1.3, 0.9), R = (1, 1, 0, 2):
    squared errors (0.25, 1.21, 1.69, 1.21), clipped V = (0.2, -0.1, 1.2, 0.9) with errors (0.64, 1.21, 1.44, 1.21);
    L_V = 1/2 mean(max) = 0.59375 clipped, 1/2 mean = 0.545 unclipped."""
    args = tiny_args(tmp_path, clip_coef=0.2, vf_coef=0.5, clip_vloss=clip_vloss)
    net = FixedPolicyAndCritic([1.5, 0.5, 1.1, 0.7], [0.5, -0.1, 1.3, 0.9])
    mb = ppo.Batch(
        obs=torch.zeros(4, 1),
        actions=torch.zeros(4, 1),
        log_probs=torch.zeros(4),
        advantages=torch.tensor([1.0, 1.0, -1.0, -1.0]),
        returns=torch.tensor([1.0, 1.0, 0.0, 2.0]),
        values=torch.tensor([0.0, 0.0, 1.0, 1.0]),
    )
    loss, log_ratio, terms = ppo.ppo_loss(args, net, net, None, mb)
    value_loss = 0.59375 if clip_vloss else 0.545
    assert terms["losses/policy_loss"].item() == pytest.approx(0.05, abs=1e-6)
    assert terms["losses/value_loss"].item() == pytest.approx(value_loss, abs=1e-6)
    assert loss.item() == pytest.approx(0.05 + 0.5 * value_loss, abs=1e-6)
    torch.testing.assert_close(log_ratio, net.log_ratios)


# ---------------------------------------------------------------- ratio and the mixture head


@pytest.mark.parametrize("policy", ["gaussian", "gmm"])
def test_importance_ratio_is_exactly_one_on_the_first_minibatch(tmp_path, policy):
    # One env: the rollout forward runs on single rows, the update's on minibatches of rows.
    args = tiny_args(tmp_path, policy=policy, num_envs=1, num_steps=256, num_minibatches=4)
    batch, actor, critic, qf = collect(args)
    first = torch.randperm(args.num_steps)[: args.num_steps // args.num_minibatches]
    _, log_ratio, terms = ppo.ppo_loss(args, actor, critic, qf, ppo.Batch(*(field[first] for field in batch)))
    assert torch.all(log_ratio == 0.0)
    assert all(torch.isfinite(value) for value in terms.values())


def test_compiled_minibatch_gradient_equals_autograd(tmp_path):
    args = tiny_args(tmp_path, clip_vloss=True)
    batch, actor, critic, _ = collect(args)
    flat = flatten_parameters([actor, critic])
    objective, mb = ppo.Objective(args, actor, critic, None), ppo.Batch(*(field[:64] for field in batch))
    with torch.no_grad():  # move the policy off pi_old, so that the clipping matters
        flat.add_(0.05 * torch.randn_like(flat))
    eager_loss, (eager_log_ratio, _) = loss_gradient(objective, flat)(mb)
    eager_grad = flat.grad.clone()
    loss, (log_ratio, _) = loss_gradient(objective, flat, compile=True)(mb)
    torch.testing.assert_close(flat.grad, eager_grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss, eager_loss)
    torch.testing.assert_close(log_ratio, eager_log_ratio)


def test_compiled_update_takes_the_eager_steps_also_once_guards_are_skipped(tmp_path):
    """The second compiled update runs with TorchDynamo's guard checks skipped: it still takes autograd's steps."""
    args = tiny_args(tmp_path, update_epochs=1, num_minibatches=2)
    batch, actor, critic, _ = collect(args)
    torch.compiler.reset()
    results = []
    for compile in (False, True):
        networks = [copy.deepcopy(actor), copy.deepcopy(critic)]
        flat = flatten_parameters(networks)
        update = ppo.make_update(dataclasses.replace(args, compile=compile), *networks, None, FlatAdam(flat, 1e-3))
        torch.manual_seed(0)  # the same minibatches
        for _ in range(3):
            update(batch)
        results.append(flat.detach().clone())
    eager, compiled = results
    assert not torch.equal(eager, flatten_parameters([actor, critic]))
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_ratio_estimator_trains_the_mixing_weights_through_the_surrogate_alone(tmp_path):
    args = tiny_args(tmp_path, policy="gmm", num_experts=3, gmm_grad="ratio")
    batch, actor, critic, _ = collect(args)
    with torch.no_grad():  # move the policy off pi_old, so that the ratio differs from 1
        for p in actor.parameters():
            p.add_(0.1 * torch.randn_like(p))
    loss, _, terms = ppo.ppo_loss(args, actor, critic, None, ppo.Batch(*(field[:64] for field in batch)))
    assert set(terms) == {"losses/policy_loss", "losses/value_loss"}
    (mixing_grad,) = torch.autograd.grad(terms["losses/policy_loss"], actor.mixing.weight)
    assert mixing_grad.abs().sum() > 0


def test_pmoe_clips_the_agent_and_the_q_network_gradients_each_on_its_own(tmp_path):
    """Large returns make both gradients far larger than max_grad_norm: each group is clipped to it on its own (one
    norm over all parameters would leave each group below it, the Q network's gradient shrinking the PPO step)."""
    args = tiny_args(tmp_path, policy="gmm", num_experts=3, num_minibatches=1, update_epochs=1, max_grad_norm=0.5)
    batch, actor, critic, qf = collect(args)
    batch = batch._replace(returns=1000.0 * batch.returns)
    flat = flatten_parameters([actor, critic, qf])
    ppo.make_update(args, actor, critic, qf, FlatAdam(flat, lr=1e-4))(batch)
    num_agent = sum(p.numel() for module in (actor, critic) for p in module.parameters())
    agent_grad, q_grad = flat.grad[:num_agent], flat.grad[num_agent:]  # the last minibatch's clipped gradient
    assert q_grad.norm() == pytest.approx(0.5, rel=1e-4)
    assert agent_grad.norm() == pytest.approx(0.5, rel=1e-4)
    assert all(p.grad.norm() > 0 for p in qf.parameters())


def test_pmoe_with_one_expert_gives_the_gaussian_ratio():
    torch.manual_seed(3)
    gaussian = DiagonalGaussianActor(4, 3, (16, 16))
    torch.manual_seed(3)
    mixture = DiagonalGaussianMixtureActor(4, 3, num_experts=1, hidden_sizes=(16, 16))
    for name, value in gaussian.state_dict().items():
        assert torch.equal(mixture.state_dict()[name].reshape(value.shape), value), name
    obs = torch.randn(32, 4)
    torch.manual_seed(4)
    action, log_prob = gaussian.sample(obs)
    torch.manual_seed(4)
    mixture_action, mixture_log_prob = mixture.sample(obs)
    assert torch.equal(action, mixture_action) and torch.allclose(log_prob, mixture_log_prob, atol=1e-6)

    # After the same parameter change the two policies give the same ratio pi / pi_old.
    with torch.no_grad():
        for name, p in gaussian.named_parameters():
            delta = 0.1 * torch.randn_like(p)
            p.add_(delta)
            dict(mixture.named_parameters())[name].add_(delta.reshape(dict(mixture.named_parameters())[name].shape))
        ratio = (gaussian.log_prob(obs, action) - log_prob).exp()
        mixture_ratio = (mixture.log_prob(obs, action) - mixture_log_prob).exp()
    assert not torch.allclose(ratio, torch.ones_like(ratio))
    assert torch.allclose(ratio, mixture_ratio, rtol=1e-5)


def test_mixture_log_prob_is_finite_for_17_dimensional_far_away_actions():
    torch.manual_seed(0)
    actor = DiagonalGaussianMixtureActor(5, 17, num_experts=5)
    obs, action = torch.randn(8, 5), torch.full((8, 17), 60.0)
    log_prob = actor.log_prob(obs, action)
    log_prob.sum().backward()
    assert torch.isfinite(log_prob).all()
    assert all(torch.isfinite(p.grad).all() for p in actor.parameters())
    # The direct form log(sum_k w_k exp(log N_k)) underflows to -inf here; logsumexp keeps the value
    # log N(60; ~0, 1)^17 ~ -17 (60^2 / 2 + log(2 pi) / 2) ~ -30615.
    logits, mean, log_std = actor.distribution_params(obs)
    per_expert = (-0.5 * (action.unsqueeze(-2) - mean).square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    assert torch.isinf((logits.softmax(-1) * per_expert.exp()).sum(-1).log()).all()
    assert torch.allclose(log_prob, torch.full_like(log_prob, -17 * (1800 + 0.5 * math.log(2 * math.pi))), rtol=1e-3)


def test_mixture_evaluation_rules():
    torch.manual_seed(0)
    actor = DiagonalGaussianMixtureActor(3, 2, num_experts=4, hidden_sizes=(8,))
    with torch.no_grad():
        actor.log_std.copy_(torch.tensor([[-1.0], [0.0], [0.5], [-0.5]]).expand(4, 2))
    obs = torch.randn(10, 3)
    logits, mean, _ = actor.distribution_params(obs)
    w = logits.softmax(-1)
    assert torch.equal(actor.deterministic(obs), mean[torch.arange(10), logits.argmax(-1)])  # default: argmax_w
    torch.testing.assert_close(actor.deterministic(obs, "weighted_mean"), (w[..., None] * mean).sum(-2))

    many = obs[:1].expand(40_000, 3)
    chosen = actor.deterministic(many, "sampled_k_mean")
    k = (chosen[:, None, :] == mean[:1]).all(-1).double()
    assert (k.sum(-1) == 1).all()
    assert_unbiased(k, w[0].double())  # k ~ Cat(w)
    sampled = actor.deterministic(many, "sample").double()
    assert_unbiased(sampled, (w[0, :, None] * mean[0]).sum(0).double())  # E[a] is the mixture's mean
    assert_unbiased(sampled.square(), (w[0, :, None] * (mean[0].square() + actor.log_std.exp().square())).sum(0))
    with pytest.raises(ValueError, match="rule"):
        actor.deterministic(obs, "argmax_q")  # needs a critic, which the actor does not carry


def test_eval_rule_is_saved_and_replaceable_at_evaluation(tmp_path):
    run_dir = ppo.main(tiny_args(tmp_path, policy="gmm", num_experts=3, gmm_eval_rule="weighted_mean"))
    ckpt = load_checkpoint(run_dir)
    assert ckpt["policy"]["kwargs"]["eval_rule"] == "weighted_mean"
    assert mixrl.load_policy(run_dir).actor.eval_rule == "weighted_mean"
    sampled = evaluate_checkpoint(run_dir, episodes=2, seed=3, eval_rule="sample")
    assert sampled["eval_rule"] == "sample"
    assert json.loads((run_dir / "eval.json").read_text())["eval_rule"] == "sample"
    assert evaluate_checkpoint(run_dir, episodes=2, seed=3, eval_rule="sample")["returns"] == sampled["returns"]
    assert evaluate_checkpoint(run_dir, episodes=2, seed=3)["returns"] != sampled["returns"]

    gaussian = ppo.main(tiny_args(tmp_path / "gaussian"))
    with pytest.raises(ValueError, match="mixture policies only"):
        mixrl.load_policy(gaussian, eval_rule="sample")
    with pytest.raises(ValueError, match="--eval-rule 'mode' is not one of"):
        mixrl.load_policy(run_dir, eval_rule="mode")


def test_flat_adam_matches_torch_fused_adam():
    torch.manual_seed(0)
    net, reference = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    reference.load_state_dict(net.state_dict())
    flat = flatten_parameters([net])
    optimizer = FlatAdam(flat, lr=1e-2, eps=1e-5)
    torch_optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2, eps=1e-5, fused=True)
    for _ in range(3):
        x = torch.randn(7, 5)
        flat.grad.zero_()
        net(x).square().sum().backward()
        optimizer.step()
        torch_optimizer.zero_grad()
        reference(x).square().sum().backward()
        torch_optimizer.step()
    assert torch.equal(net.weight, reference.weight) and torch.equal(net.bias, reference.bias)


# ---------------------------------------------------------------- runs, checkpoints, resume


@pytest.mark.parametrize("policy", ["gaussian", "gmm", "gmm-ratio"])
def test_smoke_run_logs_cleanrl_tags_and_writes_checkpoints(tmp_path, policy):
    extra = {"policy": "gmm", "num_experts": 3} if policy.startswith("gmm") else {}
    if policy == "gmm-ratio":
        extra["gmm_grad"] = "ratio"
    # Pendulum episodes last 200 steps; losses logged after every iteration of 128 steps
    run_dir = ppo.main(tiny_args(tmp_path, total_timesteps=512, log_every=128, **extra))
    ckpt = load_checkpoint(run_dir)
    assert ckpt["algo"] == ("ppo" if policy == "gaussian" else "pmoe_ppo") and ckpt["global_step"] == 512
    tags = scalars(run_dir)
    for tag in ("SPS", "learning_rate", "episodic_return"):
        assert f"charts/{tag}" in tags, tag
    for tag in ("value_loss", "policy_loss", "entropy", "old_approx_kl", "approx_kl", "clipfrac", "explained_variance"):
        assert f"losses/{tag}" in tags, tag
    assert "eval/return" in tags
    assert tags["charts/learning_rate"] == pytest.approx([3e-4, 2.25e-4, 1.5e-4, 0.75e-4])
    frequency = policy == "gmm"  # the ratio estimator has neither the frequency loss nor the Q network
    assert ("losses/frequency_loss" in tags) == ("losses/q_loss" in tags) == ("qf" in ckpt["state"]) == frequency
    assert (run_dir / "checkpoints" / "final.pt").is_file()


def test_normalisation_statistics_survive_the_checkpoint_and_load_policy_uses_them(tmp_path):
    run_dir = ppo.main(tiny_args(tmp_path))
    ckpt = load_checkpoint(run_dir)
    norm = ckpt["obs_normalizer"]
    assert norm["count"] > 256 and not np.allclose(norm["mean"], 0.0)
    assert ckpt["env_state"]["reward_scaler"]["count"] >= 256
    assert np.array_equal(ckpt["env_state"]["obs_normalizer"]["mean"], norm["mean"])

    policy = mixrl.load_policy(run_dir)
    obs = np.random.default_rng(0).normal(size=(7, 3)) * 3.0
    actor = DiagonalGaussianActor(3, 1, (16, 16))
    actor.load_state_dict(ckpt["state"]["actor"])
    z = np.clip((obs - norm["mean"]) / np.sqrt(norm["var"] + norm["epsilon"]), -10, 10)
    expected = 2.0 * actor.deterministic(torch.as_tensor(z, dtype=torch.float32)).detach().numpy().clip(-1, 1)
    assert np.allclose(policy(obs), expected, atol=1e-5)

    from_cli = evaluate_checkpoint(run_dir, episodes=2, seed=5)
    assert from_cli["returns"] == evaluate(policy, "Pendulum-v1", episodes=2, seed=5)["returns"]


@pytest.mark.parametrize("policy", ["gaussian", "gmm"])
def test_resume_continues_exactly(tmp_path, policy):
    extra = {"policy": policy, "num_experts": 3} if policy == "gmm" else {}
    straight = load_checkpoint(ppo.main(tiny_args(tmp_path / "a", total_timesteps=384, **extra)))
    first_part = ppo.main(tiny_args(tmp_path / "b", total_timesteps=128, **extra))
    resumed = load_checkpoint(ppo.main(ppo.Args(resume=str(first_part), total_timesteps=384)))
    assert resumed["global_step"] == straight["global_step"] == 384
    for name, state in straight["state"].items():
        if name == "optimizer":
            continue
        for key, value in state.items():
            assert torch.equal(value, resumed["state"][name][key]), f"{name}.{key} differs after resume"
    for key in ("exp_avg", "exp_avg_sq", "steps"):
        assert torch.equal(straight["state"]["optimizer"][key], resumed["state"]["optimizer"][key])
    assert np.array_equal(straight["obs_normalizer"]["mean"], resumed["obs_normalizer"]["mean"])
    assert torch.equal(straight["obs"], resumed["obs"])


def test_ctrl_c_mid_rollout_saves_the_last_whole_iteration_and_resume_stays_exact(tmp_path, monkeypatch):
    straight = load_checkpoint(ppo.main(tiny_args(tmp_path / "a", total_timesteps=384)))
    step, calls = TorchVecEnv.step, []

    def interrupted_step(self, actions):
        calls.append(1)
        if len(calls) == 64 + 20:  # Ctrl-C 20 steps into the second rollout: the run stops after that iteration
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, actions)

    monkeypatch.setattr(TorchVecEnv, "step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        ppo.main(tiny_args(tmp_path / "b", total_timesteps=384, checkpoint_every=0))  # only Ctrl-C saves
    monkeypatch.setattr(TorchVecEnv, "step", step)
    run_dir = next((tmp_path / "b" / "runs").iterdir())
    assert load_checkpoint(run_dir / "checkpoints" / "latest.pt")["global_step"] == 256
    resumed = load_checkpoint(ppo.main(ppo.Args(resume=str(run_dir))))
    for key, value in straight["state"]["actor"].items():
        assert torch.equal(value, resumed["state"]["actor"][key]), key
    assert torch.equal(straight["obs"], resumed["obs"])


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    import gymnasium as gym

    spec = gym.spec("mixrl_test/Counter-v0")
    spec.kwargs["nan_reward_after"] = 100  # per env: inside the second rollout of 64 steps
    try:
        with pytest.raises(NonFiniteLossError, match=r"Loss 'losses/policy_loss' became nan at step 256"):
            ppo.main(tiny_args(tmp_path, env_id="mixrl_test/Counter-v0", normalize_reward=False))
    finally:
        spec.kwargs.pop("nan_reward_after")
    run_dir = next((tmp_path / "runs").iterdir())
    assert load_checkpoint(run_dir / "checkpoints" / "latest.pt")["global_step"] == 128
    assert not (run_dir / "checkpoints" / "final.pt").exists()


def test_refuses_discrete_actions_and_bad_minibatches(tmp_path):
    with pytest.raises(ValueError, match="continuous .*CartPole-v1.*mixrl dqn"):
        ppo.main(tiny_args(tmp_path, env_id="CartPole-v1"))
    with pytest.raises(ValueError, match="--num-minibatches 5 must divide"):
        ppo.main(tiny_args(tmp_path, num_minibatches=5))
    with pytest.raises(ValueError, match="--num-experts only apply to the mixture policy"):
        ppo.main(tiny_args(tmp_path, num_experts=3))
    with pytest.raises(ValueError, match="--ent-coef"):
        ppo.main(tiny_args(tmp_path, policy="gmm", ent_coef=0.01))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("policy", ["gaussian", "gmm"])
def test_ppo_learns_inverted_pendulum(tmp_path, policy):
    extra = {"policy": "gmm", "num_experts": 3} if policy == "gmm" else {}
    args = tiny_args(
        tmp_path,
        **extra,
        env_id="InvertedPendulum-v5",
        num_envs=4,
        num_steps=256,
        num_minibatches=8,
        update_epochs=10,
        total_timesteps=16384,
        hidden_sizes=(64, 64),
        learning_rate=1e-3,
        eval_episodes=5,
        checkpoint_every=0,
        seed=1,
    )
    run_dir = ppo.main(args)
    final = json.loads((run_dir / "evaluations.jsonl").read_text().splitlines()[-1])
    # A random policy drops the pole after about 5-10 steps (return = steps); 1000 is the episode cap.
    assert final["mean_return"] > 300, final
