"""SAC: checkpoints, load_policy, exact resume, error messages, non-finite losses, and one learning test."""

import json
import math

import numpy as np
import pytest
import torch
from helpers import recording

import mixrl
from mixrl.agents import sac
from mixrl.checkpoints import load_checkpoint
from mixrl.evaluation import evaluate, evaluate_checkpoint
from mixrl.optim import FlatAdam, flatten_parameters
from mixrl.runs import NonFiniteLossError


def tiny_args(tmp_path, **overrides):
    defaults = dict(
        env_id="Pendulum-v1",
        total_timesteps=400,
        learning_starts=200,
        batch_size=32,
        hidden_sizes=(32, 32),
        eval_every=0,
        eval_episodes=1,
        checkpoint_every=100,
        run_root=str(tmp_path / "runs"),
    )
    return sac.Args(**{**defaults, **overrides})


# ---------------------------------------------------------------- losses against hand values


class LinearQ(torch.nn.Module):
    """A fixed two-member ensemble: Q_j(s, a) = scale_j (s + a) + shift_j on one-dimensional s and a -> (2, B)."""

    def __init__(self, scales, shifts):
        super().__init__()
        self.scales, self.shifts = torch.tensor(scales)[:, None], torch.tensor(shifts)[:, None]

    def forward(self, obs, action):
        return self.scales * (obs + action).squeeze(-1) + self.shifts


class FixedSampler(torch.nn.Module):
    """A 'policy' that always draws a = (0.5, -0.5) with log pi = (-1, -2)."""

    def sample(self, obs):
        return torch.tensor([[0.5], [-0.5]]), torch.tensor([-1.0, -2.0])


BATCH = sac.Batch(
    obs=torch.tensor([[1.0], [2.0]]),
    actions=torch.tensor([[0.5], [-0.5]]),
    rewards=torch.tensor([1.0, 2.0]),
    next_obs=torch.tensor([[3.0], [4.0]]),
    terminated=torch.tensor([0.0, 1.0]),
)


def test_critic_loss_by_hand_with_a_terminal_transition():
    """y = r + gamma (1 - d) (min_j Qbar_j(s', a') - alpha log pi(a'|s')); L = sum_j mean_i (Q_j(s_i, a_i) - y_i)^2.
    Qbar = (s + a, s + a + 1): min at s' + a' = 3.5 for row 0; row 1 is terminal, y = r = 2."""
    args = sac.Args(gamma=0.9)
    qf, qf_target = LinearQ([1.0, 2.0], [0.0, 0.0]), LinearQ([1.0, 1.0], [0.0, 1.0])
    loss, _ = sac.CriticObjective(args, qf, qf_target, FixedSampler().sample)(BATCH, torch.tensor(0.2))
    y0 = 1.0 + 0.9 * (3.5 - 0.2 * -1.0)  # 4.33
    q0, q1 = 1.5, 3.0  # Q_0 = s + a = 1.5 on both rows, Q_1 = 2 (s + a) = 3
    expected = ((q0 - y0) ** 2 + (q0 - 2.0) ** 2) / 2 + ((q1 - y0) ** 2 + (q1 - 2.0) ** 2) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_actor_loss_by_hand():
    """L_pi = mean_i (alpha log pi(a_i|s_i) - min_j Q_j(s_i, a_i)) with a_i from the policy."""
    args = sac.Args()
    qf = LinearQ([1.0, 2.0], [0.0, -4.0])  # Q = (s + a, 2 (s + a) - 4): min picks member 1 on row 0, 0 on row 1
    loss, (log_prob, _) = sac.ActorObjective(args, FixedSampler(), qf)(BATCH.obs, torch.tensor(0.2))
    q_min = [min(1.5, 3.0 - 4.0), min(1.5, 3.0 - 4.0)]  # s + a = 1.5 on both rows
    expected = ((0.2 * -1.0 - q_min[0]) + (0.2 * -2.0 - q_min[1])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert log_prob.tolist() == [-1.0, -2.0]


@pytest.mark.parametrize("log_std_bias", [-3.0, 0.3])  # a narrow policy (entropy below the target), a wide one
def test_temperature_loss_and_step_by_hand(log_std_bias):
    """L_alpha = -mean(log alpha (log pi + H_target)); Adam's first step moves log alpha by lr against its sign,
    so alpha grows when the entropy is below the target and shrinks when it is above."""
    torch.manual_seed(0)
    args = sac.Args(hidden_sizes=(8,), alpha_lr=0.01)
    actor = sac.TanhGaussianActor(1, 1, (8,))
    with torch.no_grad():
        actor.log_std.bias.fill_(log_std_bias)
    qf = sac.QEnsemble(1, 1, 2, (8,))
    qf_target = qf.__class__(1, 1, 2, (8,)).requires_grad_(False)
    log_alpha = torch.tensor(math.log(0.5), requires_grad=True)
    optimizers = [
        FlatAdam(flatten_parameters([actor]), lr=0.0),
        FlatAdam(flatten_parameters([qf]), lr=0.0),
        FlatAdam(log_alpha, lr=args.alpha_lr),
    ]
    target_entropy = -1.0
    metrics = sac.make_update(args, actor, qf, qf_target, log_alpha, optimizers, target_entropy)(BATCH)
    entropy = metrics["losses/entropy"].item()  # -mean log pi of the actor's samples in this update
    assert metrics["losses/alpha"].item() == pytest.approx(0.5)
    assert metrics["losses/alpha_loss"].item() == pytest.approx(-math.log(0.5) * (-entropy + target_entropy), rel=1e-5)
    direction = 1.0 if entropy < target_entropy else -1.0
    assert log_alpha.item() == pytest.approx(math.log(0.5) + direction * args.alpha_lr, rel=1e-4)


def test_checkpoint_is_self_describing_and_load_policy_matches_evaluation(tmp_path):
    run_dir = sac.main(tiny_args(tmp_path, normalize_obs=True))
    ckpt = load_checkpoint(run_dir)
    assert ckpt["algo"] == "sac" and ckpt["env_id"] == "Pendulum-v1" and ckpt["global_step"] == 400
    assert ckpt["obs_normalizer"]["count"] > 400 and ckpt["args"]["normalize_obs"]
    assert json.loads((run_dir / "config.json").read_text())["args"]["hidden_sizes"] == [32, 32]

    policy = mixrl.load_policy(run_dir)
    obs = np.random.default_rng(0).normal(size=(7, 3))
    batched = policy(obs)
    assert batched.shape == (7, 1) and np.all(np.abs(batched) <= 2.0)
    assert np.allclose(policy(obs[3]), batched[3], atol=1e-6)

    # The loaded policy reproduces the trained actor on normalised observations, rescaled to [-2, 2].
    actor = sac.TanhGaussianActor(3, 1, (32, 32))
    actor.load_state_dict(ckpt["state"]["actor"])
    norm = ckpt["obs_normalizer"]
    z = np.clip((obs - norm["mean"]) / np.sqrt(norm["var"] + norm["epsilon"]), -10, 10)
    expected = 2.0 * actor.deterministic(torch.as_tensor(z, dtype=torch.float32)).detach().numpy()
    assert np.allclose(batched, expected, atol=1e-5)

    # `mixrl eval` and evaluate(load_policy(...)) agree episode by episode.
    from_cli = evaluate_checkpoint(run_dir, episodes=2, seed=5)
    direct = evaluate(policy, "Pendulum-v1", episodes=2, seed=5)
    assert from_cli["returns"] == direct["returns"]
    assert json.loads((run_dir / "eval.json").read_text())["returns"] == direct["returns"]


def test_resume_continues_exactly(tmp_path):
    straight = load_checkpoint(sac.main(tiny_args(tmp_path / "a", total_timesteps=600)))
    first_half = sac.main(tiny_args(tmp_path / "b", total_timesteps=300))
    resumed = load_checkpoint(sac.main(sac.Args(resume=str(first_half), total_timesteps=600)))
    assert resumed["global_step"] == straight["global_step"] == 600
    for name in ("actor", "qf", "qf_target"):
        for key, value in straight["state"][name].items():
            assert torch.equal(value, resumed["state"][name][key]), f"{name}.{key} differs after resume"
    assert torch.equal(straight["state"]["log_alpha"], resumed["state"]["log_alpha"])


def test_resume_forgets_what_an_interrupted_run_logged_after_its_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    run_dir = sac.main(tiny_args(tmp_path, total_timesteps=300, eval_every=100))
    # A run that went on past its last checkpoint (step 300) and was killed: what it logged then must go.
    with open(run_dir / "evaluations.jsonl", "a") as f:
        f.write(json.dumps({"step": 400, "mean_return": 1e9, "std_return": 0.0}) + "\n")
    with SummaryWriter(str(run_dir)) as writer:
        writer.add_scalar("eval/return", 1e9, 400)
    sac.main(sac.Args(resume=str(run_dir), total_timesteps=600))
    lines = [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [100, 200, 300, 400, 500, 600]
    assert all(line["mean_return"] < 1e9 for line in lines)
    events = EventAccumulator(str(run_dir))
    events.Reload()
    returns = [(event.step, event.value) for event in events.Scalars("eval/return")]  # duplicates stay visible
    assert [step for step, _ in returns] == [100, 200, 300, 400, 500, 600] and max(v for _, v in returns) < 1e9


def test_resume_with_a_fractional_update_ratio_continues_exactly(tmp_path):
    """With utd 1.5 from step 200 on, half an update is owed after every even step: a run stopped at step 300 and
    resumed must make it."""
    overrides = dict(utd_ratio=1.5, checkpoint_every=0)
    straight = load_checkpoint(sac.main(tiny_args(tmp_path / "a", total_timesteps=320, **overrides)))
    first_part = sac.main(tiny_args(tmp_path / "b", total_timesteps=300, **overrides))
    resumed = load_checkpoint(sac.main(sac.Args(resume=str(first_part), total_timesteps=320)))
    for key, value in straight["state"]["actor"].items():
        assert torch.equal(value, resumed["state"]["actor"][key]), f"actor.{key} differs after resume"


def test_refuses_discrete_action_spaces(tmp_path):
    with pytest.raises(ValueError, match="continuous .*CartPole-v1.*mixrl dqn"):
        sac.main(tiny_args(tmp_path, env_id="CartPole-v1"))


def test_unknown_env_id(tmp_path):
    with pytest.raises(ValueError, match="Unknown environment id 'Pendulm-v1'. Did you mean: Pendulum-v1"):
        sac.main(tiny_args(tmp_path, env_id="Pendulm-v1"))


def test_corrupt_and_missing_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="No run directory or checkpoint"):
        mixrl.load_policy(tmp_path / "nowhere")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt or not a checkpoint"):
        mixrl.load_policy(tmp_path / "bad.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a mixrl checkpoint"):
        mixrl.load_policy(tmp_path / "other.pt")


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    args = tiny_args(
        tmp_path,
        env_id="mixrl_test/Counter-v0",
        learning_starts=50,
        total_timesteps=400,
        checkpoint_every=100,
    )
    import gymnasium as gym

    spec = gym.spec("mixrl_test/Counter-v0")
    spec.kwargs["nan_reward_after"] = 250
    try:
        # The losses are checked at log points and before each checkpoint (no host sync per step): here at 300.
        with pytest.raises(NonFiniteLossError, match=r"Loss 'losses/qf_loss' became nan at step 300"):
            sac.main(args)
    finally:
        spec.kwargs.pop("nan_reward_after")
    run_dir = next((tmp_path / "runs").iterdir())
    ckpt = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert ckpt["global_step"] == 200
    assert all(torch.isfinite(v).all() for v in ckpt["state"]["actor"].values())
    assert not (run_dir / "checkpoints" / "final.pt").exists()


def test_sac_learns_pendulum(tmp_path):
    args = tiny_args(
        tmp_path,
        total_timesteps=5000,
        learning_starts=1000,
        batch_size=128,
        hidden_sizes=(64, 64),
        eval_episodes=5,
        checkpoint_every=0,
        q_lr=1e-3,
        seed=1,
    )
    run_dir = sac.main(args)
    final = json.loads((run_dir / "evaluations.jsonl").read_text().splitlines()[-1])
    # A uniformly random policy scores about -1200; swinging up and balancing scores above -400.
    assert final["mean_return"] > -400, final


def test_compiled_bfloat16_updates_run_and_leave_acting_in_float32(tmp_path, monkeypatch):
    # Each compiled loss and gradient runs with the bfloat16 setting that CPU products consult (oneDNN's
    # fp32_precision "bf16"; on CPUs without AMX, such as the AMD EPYC of the tests, the products still come out
    # as in float32), and acting outside the update in float32.
    gradient_precisions, precisions = [], []
    monkeypatch.setattr(sac, "loss_gradient", recording(sac.loss_gradient, gradient_precisions))
    step = sac.make_sampler

    def recording_sampler(args, actor):
        sample = step(args, actor)

        def recorded(obs):
            precisions.append(torch.get_float32_matmul_precision())
            return sample(obs)

        return recorded

    monkeypatch.setattr(sac, "make_sampler", recording_sampler)
    run_dir = sac.main(tiny_args(tmp_path, total_timesteps=260, compile=True, matmul_precision="medium"))
    final = load_checkpoint(run_dir / "checkpoints" / "final.pt")
    assert all(torch.isfinite(p).all() for p in final["state"]["actor"].values())
    assert gradient_precisions and set(gradient_precisions) == {("medium", "bf16")}
    assert "highest" in precisions and "medium" in precisions  # acting float32, the critic target bfloat16
    assert torch.get_float32_matmul_precision() == "highest" and torch.backends.mkldnn.matmul.fp32_precision == "ieee"
