"""MuJoCo C's contact frame for plane-capsule contacts, installed into MuJoCo Warp.

MuJoCo C orients a plane-capsule contact's first tangent along the capsule axis projected onto the plane
(`mjc_PlaneCapsule`, then `mju_makeFrame`). MuJoCo Warp 4.0 replaces that tangent by a fixed world axis whenever
the capsule stands within 30 degrees of the plane's normal. Both frames are valid, but the pyramidal friction cone
(MuJoCo's default) turns with its tangents, so the friction forces on such contacts differ: Ant-v5's feet, often
that steep, then leave one step with velocities 0.2 apart from Gymnasium's. With MuJoCo C's frame the step agrees
within float32 rounding (tests/test_warp.py).

Importing this module changes nothing: building a `WarpVecEnv` installs the frame
(`install_mujoco_c_plane_capsule_frame`).
"""

from __future__ import annotations

import warnings

import mujoco_warp._src.collision_primitive as collision_primitive
import warp as wp
from mujoco_warp._src.collision_primitive_core import mat23f, plane_sphere
from mujoco_warp._src.math import normalize_with_norm
from mujoco_warp._src.types import MJ_MINVAL
from mujoco_warp._src.warp_util import _KERNEL_CACHE


@wp.func
def plane_capsule_mujoco_c_frame(
    plane_normal: wp.vec3,
    plane_pos: wp.vec3,
    capsule_pos: wp.vec3,
    capsule_axis: wp.vec3,
    capsule_radius: float,
    capsule_half_length: float,
) -> tuple[wp.vec2, mat23f, wp.mat33]:
    """Distances and positions of the contacts at both capsule ends, and their frame [normal; tangent; binormal]
    with the tangent along the capsule axis projected onto the plane (x if the axis is the normal), as MuJoCo C."""
    n = plane_normal
    tangent, norm = normalize_with_norm(capsule_axis - n * wp.dot(n, capsule_axis))
    if norm < MJ_MINVAL:
        tangent = wp.vec3(1.0, 0.0, 0.0)
    binormal = wp.cross(n, tangent)
    frame = wp.mat33(n[0], n[1], n[2], tangent[0], tangent[1], tangent[2], binormal[0], binormal[1], binormal[2])
    segment = capsule_axis * capsule_half_length
    dist1, pos1 = plane_sphere(n, plane_pos, capsule_pos + segment, capsule_radius)
    dist2, pos2 = plane_sphere(n, plane_pos, capsule_pos - segment, capsule_radius)
    return wp.vec2(dist1, dist2), mat23f(pos1[0], pos1[1], pos1[2], pos2[0], pos2[1], pos2[2]), frame


def use_mujoco_c_plane_capsule_frame() -> None:
    """Make MuJoCo Warp's plane-capsule collision use MuJoCo C's contact frame. Effective for collision kernels
    built afterwards (warp builds them on a model's first step), so call it before stepping any model."""
    if any("_primitive_narrowphase" in key for key in _KERNEL_CACHE):
        warnings.warn(
            "MuJoCo Warp built its collision kernels before mixrl set MuJoCo C's plane-capsule contact frame: "
            "capsule-floor friction in this process follows MuJoCo Warp's own frame",
            stacklevel=2,
        )
    # plane_capsule_wrapper calls the name plane_capsule of its module; warp resolves it when it builds the kernel.
    collision_primitive.plane_capsule = plane_capsule_mujoco_c_frame


def install_mujoco_c_plane_capsule_frame() -> None:
    """use_mujoco_c_plane_capsule_frame() once per process: what building a WarpVecEnv does; later calls do nothing."""
    if collision_primitive.plane_capsule is not plane_capsule_mujoco_c_frame:
        use_mujoco_c_plane_capsule_frame()
