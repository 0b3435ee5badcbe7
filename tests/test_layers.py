"""Importing mixrl changes nothing global (torch's threads, glibc's allocator, MuJoCo Warp's functions), and the
commands import one way (the layer contracts themselves are checked by `lint-imports`, in `make test`).
Each check runs in a fresh interpreter, so that no other test has imported or set anything before it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

HAS_WARP = importlib.util.find_spec("warp") is not None and importlib.util.find_spec("mujoco_warp") is not None


def run(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True)


def test_importing_mixrl_and_its_agents_keeps_torchs_threads():
    run(
        "import torch\n"
        "torch.set_num_threads(2)\n"
        "import mixrl, mixrl.cli, mixrl.envs.warp\n"
        "from mixrl.agents import AGENTS\n"
        "for module in AGENTS.values():\n"
        "    __import__(module)\n"
        "assert torch.get_num_threads() == 2, torch.get_num_threads()\n"
    )


@pytest.mark.skipif(not HAS_WARP, reason="the warp extra is not installed")
def test_importing_the_warp_backend_patches_nothing():
    """The plane-capsule contact frame (mixrl.envs.warp.contact) and warp's quiet mode are set when a WarpVecEnv is
    built, not at import."""
    run(
        "import mujoco_warp._src.collision_primitive as collision_primitive\n"
        "import warp as wp\n"
        "original, quiet = collision_primitive.plane_capsule, getattr(wp.config, 'quiet', None)\n"
        "import torch\n"
        "torch.set_num_threads(2)\n"
        "import mixrl.envs.warp.vec_env\n"
        "assert collision_primitive.plane_capsule is original, 'patched at import'\n"
        "assert getattr(wp.config, 'quiet', None) == quiet\n"
        "assert torch.get_num_threads() == 2\n"
        "from mixrl.envs.warp.contact import install_mujoco_c_plane_capsule_frame, plane_capsule_mujoco_c_frame\n"
        "install_mujoco_c_plane_capsule_frame()\n"
        "install_mujoco_c_plane_capsule_frame()  # once per process: a second call neither patches nor warns\n"
        "assert collision_primitive.plane_capsule is plane_capsule_mujoco_c_frame\n"
    )


def test_importing_mixrl_leaves_glibcs_allocator_alone():
    """keep_freed_memory() calls mallopt when a run calls it, never at import (a spy on ctypes sees both)."""
    run(
        "import ctypes\n"
        "calls = []\n"
        "class Spy(ctypes.CDLL):\n"
        "    def __getattr__(self, name):\n"
        "        if name == 'mallopt':\n"
        "            calls.append(name)\n"
        "        return super().__getattr__(name)\n"
        "ctypes.CDLL = Spy\n"
        "import mixrl, mixrl.cli, mixrl.optim, mixrl.agents.rlif\n"
        "assert calls == [], calls\n"
        "mixrl.optim.keep_freed_memory()\n"
        "import platform\n"
        "assert calls == ['mallopt'] or platform.libc_ver()[0] != 'glibc', calls  # the spy sees the call\n"
    )


def test_sweeps_read_the_agent_table_without_importing_the_cli():
    run(
        "import sys\n"
        "import mixrl.sweep\n"
        "from mixrl.agents import AGENTS\n"
        "assert 'mixrl.cli' not in sys.modules\n"
        "from mixrl import cli\n"
        "assert cli.AGENTS is AGENTS and 'sac' in AGENTS\n"
    )
