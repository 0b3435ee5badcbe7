"""A missing optional extra stops the command that needs it with one line naming the extra and how to install it,
before anything is written: export (onnx, onnxscript), sweep (ray), bench (stable_baselines3, for a
Stable-Baselines3 base policy) and warp (mujoco_warp, for --backend warp)."""

from __future__ import annotations

import sys

import pytest
from tiny import sac_args

from mixrl.agents import sac
from mixrl.cli import main as cli_main
from mixrl.envs.factory import make_vec_env
from mixrl.errors import UsageError
from mixrl.export import export_policy


def hide(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Make `import module` (and its submodules) raise ImportError, as when its extra is not installed."""
    for name in [name for name in sys.modules if name.startswith(f"{module}.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, module, None)


def cli_error(argv: list[str]) -> str:
    """The message `mixrl ARGV` exits with."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    return str(exit_info.value.code)


def files(folder) -> list:
    return sorted(folder.rglob("*"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny SAC run to export."""
    return sac.main(sac_args(tmp_path_factory.mktemp("extras")))


@pytest.mark.parametrize("module", ["onnx", "onnxscript"])
def test_onnx_export_needs_the_export_extra(run, module, monkeypatch, tmp_path):
    hide(monkeypatch, module)
    before = files(run)
    with pytest.raises(UsageError, match=r"--format onnx needs the export extra .*: pip install 'mixrl\[export\]'"):
        export_policy(run, "onnx", tmp_path / "out" / "policy.onnx")
    message = cli_error(["export", str(run)])  # the default output: <run>/policy.onnx
    assert "needs the export extra" in message and "pip install 'mixrl[export]'" in message and "\n" not in message
    assert not (tmp_path / "out").exists() and files(run) == before
    export_policy(run, "torchscript", tmp_path / "policy.pt")  # TorchScript needs no extra


def test_sweep_needs_the_sweep_extra(monkeypatch, tmp_path):
    hide(monkeypatch, "ray")
    argv = ["sweep", "--name", "small", "--agents", "sac", "--env-ids", "Pendulum-v1", "--flags", "total-timesteps=200"]
    message = cli_error(argv)
    assert "needs the sweep extra" in message and "pip install 'mixrl[sweep]'" in message and "\n" not in message
    assert not (tmp_path / "sweeps").exists()  # no sweeps/small/ left behind
    cli_main([*argv, "--dry-run"])  # listing the trials needs no Ray
    assert not (tmp_path / "sweeps").exists()


def test_stable_baselines3_base_needs_the_bench_extra(monkeypatch, tmp_path):
    hide(monkeypatch, "stable_baselines3")
    model = tmp_path / "model.zip"
    model.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip: the extra is checked before the file is read
    with pytest.raises(UsageError, match=r"needs the bench extra .*: pip install 'mixrl\[bench\]'"):
        sac.main(sac_args(tmp_path, base_policy=str(model)))
    message = cli_error(["ppo", "--env-id", "Pendulum-v1", "--base-policy", str(model), "--run-root", "runs"])
    assert "needs the bench extra" in message and "pip install 'mixrl[bench]'" in message and "\n" not in message
    assert files(tmp_path) == [model]  # no run directory


def test_warp_backend_needs_the_warp_extra(monkeypatch, tmp_path):
    hide(monkeypatch, "mujoco_warp")
    monkeypatch.delitem(sys.modules, "mixrl.envs.warp.vec_env", raising=False)  # imported afresh, without it
    with pytest.raises(UsageError, match=r"pip install 'mixrl\[warp\]'"):
        make_vec_env("Hopper-v5", 2, backend="warp")
    message = cli_error(["sac", "--env-id", "Hopper-v5", "--backend", "warp", "--run-root", "runs"])
    assert "pip install 'mixrl[warp]'" in message and "\n" not in message
    assert files(tmp_path) == []  # no run directory
