"""PegInsertion: put a square peg held by a position-controlled end effector into a hole with 1 mm clearance.

The end effector (EE) has three slide joints driven by position servos; the peg hangs rigidly below it at a
grasp offset. The hole is the gap between four walls standing on the table. Per episode the hole's position,
the grasp offset and the EE's start are drawn uniformly from ranges set by `randomness` (low, medium, high).

Action a in [-1, 1]^3: the servo targets move to EE position + MAX_STEP a + e, e ~ N(0, tracking_noise^2 I)
(at most 1 cm per step, 50 Hz; the tracking error e is why open-loop action sequences miss the hole).
Observation (14): EE position, peg tip - EE (the grasp offset), hole - peg tip (hole = centre of the hole's
mouth), all in metres; tanh(xy of hole - peg tip / FINE_SCALE), the alignment at millimetre scale; EE velocity / 10
(m/s); all clipped to [-1, 1].
Reward: 1 on the step the peg is fully inserted (tip within INSERTED_HEIGHT of the table inside the hole),
which terminates the episode (`info["is_success"]`); 0 otherwise. The time limit (HORIZON steps) comes from
the registration. `scripted_expert()` returns a noisy approach-align-descend controller for demonstrations.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

PEG_HALF_WIDTH = 0.01
CLEARANCE = 0.001  # hole width - peg width
HOLE_HALF_WIDTH = PEG_HALF_WIDTH + CLEARANCE / 2
HOLE_DEPTH = 0.03
WALL = 0.01  # wall thickness
PEG_HALF_LENGTH = 0.04
PEG_BELOW_EE = 0.05  # peg centre below the EE
TRACKING_NOISE = 0.0005  # std of the Gaussian error added to each servo target, metres
FINE_SCALE = 0.002  # metres: the observation's fine alignment feature is tanh(xy offset / FINE_SCALE)
MAX_STEP = 0.01  # metres of servo-target motion per unit action and step
INSERTED_HEIGHT = 0.005  # success: peg tip below this height, inside the hole
ALIGNED = 0.00025  # scripted expert: descends once the tip is this close to the hole's axis
HOVER = 0.01  # scripted expert: height above the mouth where it aligns
START_HEIGHT = 0.17  # EE height at reset (peg tip 0.08 above the table)
HORIZON = 100
FRAME_SKIP = 5

# randomness level -> (hole xy half-range, grasp-offset xy half-range, EE start xy half-range), metres
RANDOMNESS = {
    "low": (0.02, 0.002, 0.02),
    "medium": (0.05, 0.005, 0.05),
    "high": (0.10, 0.008, 0.10),
}


def clip(x: float, low: float, high: float) -> float:
    """x clipped to [low, high] (NaN stays NaN, as with np.clip); builtin min and max cost several times more."""
    return low if x < low else high if x > high else x


_OUTER = HOLE_HALF_WIDTH + WALL / 2  # centre of a wall
_LONG = HOLE_HALF_WIDTH + WALL  # half length of the +-x walls (they cover the corners)
XML = f"""
<mujoco model="peg_insertion">
  <option timestep="0.004" gravity="0 0 0" integrator="implicitfast"/>
  <visual><global offwidth="640" offheight="480"/><quality shadowsize="1024"/></visual>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1=".75 .75 .75" rgb2=".65 .65 .65" width="64" height="64"/>
    <material name="grid" texture="grid" texrepeat="8 8"/>
  </asset>
  <worldbody>
    <light pos="0.1 -0.2 0.6" dir="-0.2 0.3 -1" diffuse=".9 .9 .9"/>
    <geom name="table" type="plane" size="0.3 0.3 0.01" material="grid"/>
    <body name="hole">
      <geom type="box" pos="{_OUTER} 0 {HOLE_DEPTH / 2}" size="{WALL / 2} {_LONG} {HOLE_DEPTH / 2}" rgba=".2 .4 .8 1"/>
      <geom type="box" pos="{-_OUTER} 0 {HOLE_DEPTH / 2}" size="{WALL / 2} {_LONG} {HOLE_DEPTH / 2}" rgba=".2 .4 .8 1"/>
      <geom type="box" pos="0 {_OUTER} {HOLE_DEPTH / 2}" size="{HOLE_HALF_WIDTH} {WALL / 2} {HOLE_DEPTH / 2}"
            rgba=".2 .4 .8 1"/>
      <geom type="box" pos="0 {-_OUTER} {HOLE_DEPTH / 2}" size="{HOLE_HALF_WIDTH} {WALL / 2} {HOLE_DEPTH / 2}"
            rgba=".2 .4 .8 1"/>
    </body>
    <camera name="insertion" mode="targetbody" target="hole" pos="0.16 -0.2 0.2"/>
    <body name="ee" pos="0 0 0">
      <joint name="x" type="slide" axis="1 0 0" range="-0.2 0.2"/>
      <joint name="y" type="slide" axis="0 1 0" range="-0.2 0.2"/>
      <joint name="z" type="slide" axis="0 0 1" range="0.05 0.3"/>
      <geom type="sphere" size="0.012" mass="0.15" rgba=".3 .3 .3 1" contype="0" conaffinity="0"/>
      <body name="peg" pos="0 0 {-PEG_BELOW_EE}">
        <geom type="box" size="{PEG_HALF_WIDTH} {PEG_HALF_WIDTH} {PEG_HALF_LENGTH}" mass="0.05" rgba=".9 .5 .1 1"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <position joint="x" kp="2000" kv="40"/>
    <position joint="y" kp="2000" kv="40"/>
    <position joint="z" kp="2000" kv="40"/>
  </actuator>
</mujoco>
"""


class PegInsertionEnv(gym.Env):
    """Peg-in-hole with 1 mm clearance and a sparse success reward; see the module docstring."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        randomness: str = "low",
        tracking_noise: float = TRACKING_NOISE,
        render_mode: str | None = None,
        width: int = 320,
        height: int = 240,
    ):
        if randomness not in RANDOMNESS:
            raise ValueError(f"randomness={randomness!r} is not one of: {', '.join(RANDOMNESS)}.")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r} is not one of {self.metadata['render_modes']}.")
        self.randomness, self.tracking_noise = randomness, tracking_noise
        self.render_mode, self.width, self.height = render_mode, width, height
        self.model = mujoco.MjModel.from_xml_string(XML)
        self.data = mujoco.MjData(self.model)
        self._hole = self.model.body("hole").id
        self._peg = self.model.body("peg").id
        self._joint_low, self._joint_high = self.model.jnt_range[:, 0].tolist(), self.model.jnt_range[:, 1].tolist()
        self._renderer: mujoco.Renderer | None = None
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (14,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)

    # Geometry read from the simulation (world coordinates in metres, as Python floats: a step computes with a
    # handful of numbers, where numpy's per-call overhead would cost more than the physics).
    def peg_tip(self) -> tuple[float, float, float]:
        x, y, z = self.data.xpos[self._peg].tolist()
        return x, y, z - PEG_HALF_LENGTH

    def hole_mouth(self) -> tuple[float, float, float]:
        x, y, z = self.model.body_pos[self._hole].tolist()
        return x, y, z + HOLE_DEPTH

    def inserted(self, tip: tuple[float, float, float], mouth: tuple[float, float, float]) -> bool:
        """Whether a peg tip at `tip` is fully inserted into the hole whose mouth is at `mouth`: below
        INSERTED_HEIGHT, inside the hole."""
        inside = abs(tip[0] - mouth[0]) < HOLE_HALF_WIDTH and abs(tip[1] - mouth[1]) < HOLE_HALF_WIDTH
        return tip[2] < INSERTED_HEIGHT and inside

    def _obs(self, tip: tuple[float, float, float], mouth: tuple[float, float, float]) -> np.ndarray:
        ee_x, ee_y, ee_z = self.data.qpos.tolist()
        tip_x, tip_y, tip_z = tip
        mouth_x, mouth_y, mouth_z = mouth
        to_hole_x, to_hole_y, to_hole_z = mouth_x - tip_x, mouth_y - tip_y, mouth_z - tip_z
        vel_x, vel_y, vel_z = self.data.qvel.tolist()
        parts = (
            *(ee_x, ee_y, ee_z),
            *(tip_x - ee_x, tip_y - ee_y, tip_z - ee_z),
            *(to_hole_x, to_hole_y, to_hole_z),
            *(math.tanh(to_hole_x / FINE_SCALE), math.tanh(to_hole_y / FINE_SCALE)),
            *(vel_x / 10.0, vel_y / 10.0, vel_z / 10.0),
        )
        return np.array([clip(v, -1.0, 1.0) for v in parts], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        hole_range, grasp_range, start_range = RANDOMNESS[self.randomness]
        rng = self.np_random
        self.model.body_pos[self._hole][:2] = rng.uniform(-hole_range, hole_range, 2)
        self.model.body_pos[self._peg][:2] = rng.uniform(-grasp_range, grasp_range, 2)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:2] = rng.uniform(-start_range, start_range, 2)
        self.data.qpos[2] = START_HEIGHT
        self.data.ctrl[:] = self.data.qpos[:3]
        mujoco.mj_forward(self.model, self.data)
        return self._obs(self.peg_tip(), self.hole_mouth()), {"is_success": False}

    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=np.float64).tolist()
        noise = self.np_random.standard_normal(3).tolist()
        self.data.ctrl[:] = [
            clip(q + MAX_STEP * clip(a, -1.0, 1.0) + self.tracking_noise * e, low, high)
            for q, a, e, low, high in zip(self.data.qpos.tolist(), action, noise, self._joint_low, self._joint_high)
        ]
        mujoco.mj_step(self.model, self.data, nstep=FRAME_SKIP)
        tip, mouth = self.peg_tip(), self.hole_mouth()
        success = self.inserted(tip, mouth)
        return self._obs(tip, mouth), float(success), success, False, {"is_success": success}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.height, self.width)
        self._renderer.update_scene(self.data, camera="insertion")
        return self._renderer.render()

    def scripted_expert(self, noise: float = 0.0, seed: int | None = None):
        """The noisy approach-align-descend controller of this task (`mixrl dataset collect --policy scripted`)."""
        return scripted_expert(noise, seed)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


def scripted_expert(noise: float = 0.0, seed: int | None = None):
    """obs -> action: a P-controller that brings the peg tip to HOVER above the hole's mouth, aligns it to within
    ALIGNED, then descends to the table, keeping it centred; `noise` is the std of Gaussian action noise.

        e = target - tip,   a = clip(e / MAX_STEP + noise N(0, I), -1, 1)
    """
    rng = np.random.default_rng(seed)

    def act(obs: np.ndarray) -> np.ndarray:
        error = np.asarray(obs, dtype=np.float64)[6:9].copy()  # hole mouth - peg tip
        outside = error[2] < -0.001  # tip above the mouth
        if outside and np.abs(error[:2]).max() > ALIGNED:
            error[2] += HOVER  # align at the hover height
        else:
            error[2] -= HOLE_DEPTH  # go down to the table
        action = error / MAX_STEP + noise * rng.standard_normal(3)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    return act
