"""The light of `bg_fg`: one distant light per sample whose figure shadows darken the room's floor
and walls, and the occasional change of the whole shot's light."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from jaxsegdepth.data.synthetic.figures import Standing
from jaxsegdepth.data.synthetic.room import FLOOR, Scene


@dataclasses.dataclass(frozen=True)
class Lighting:
    """How the light of `bg_fg` differs from `bg`'s: one distant light makes the figures cast
    shadows, and sometimes the whole shot's light changes a little."""

    shadow_step: np.ndarray  # (x, z) shift of a shadow point per metre of height above the floor
    umbra_light: float  # fraction of the light left in a full shadow
    penumbra_m: float  # shadow blur (metres at the caster) where it leaves the caster's top
    fade: float  # the shadow's loss of strength from the feet to the caster's top
    gain: np.ndarray | None  # (3,) per-channel gain of bg_fg; None: the same light as bg


def draw_lighting(rng: np.random.Generator) -> Lighting:
    """A sample's light: from any side, 32-68 degrees high; shadows mostly clear, some faint."""
    azimuth = rng.uniform(0, 2 * np.pi)
    step = rng.uniform(0.4, 1.6) * np.array([np.sin(azimuth), np.cos(azimuth)])
    step[1] = max(step[1], -0.5)  # shadows cast towards the camera end well in front of it
    umbra_light = rng.uniform(0.45, 0.85) if rng.uniform() < 0.8 else rng.uniform(0.85, 0.95)
    penumbra_m = rng.uniform(0.02, 0.1)
    fade = rng.uniform(0.0, 0.5)
    relit = rng.uniform() < 0.3
    gain = rng.uniform(0.9, 1.1) * (1.0 + rng.uniform(-0.03, 0.03, 3))
    return Lighting(step, umbra_light, penumbra_m, fade, gain if relit else None)


def _shadow_source(scene: Scene, figure: Standing, lighting: Lighting):
    """A figure's shadow density on its own pixel grid, padded for the penumbra, and the affine
    map from that grid's (column, row, 1) to the world points that cast it (3x3).

    The figure is a cut-out turned to face the light (narrower when lit from the side), so that
    its shadow has its silhouette's shape whatever the light's direction. The density is the
    sharp silhouette at the feet, blurred more towards the top, and weaker by `fade` there.
    """
    rows, columns = figure.parts.shape
    blur_px = lighting.penumbra_m * figure.px_per_m
    pad = int(math.ceil(3 * blur_px)) + 1
    solid = np.zeros((rows + 2 * pad, columns + 2 * pad), np.float32)
    solid[pad : pad + rows, pad : pad + columns] = figure.parts > 0
    density = cv2.GaussianBlur(solid, (0, 0), blur_px)
    height_px = figure.foot_v - figure.top + pad - 0.5 - np.arange(solid.shape[0], dtype=np.float32)
    up = np.minimum(np.maximum(height_px / rows, 0), 1)[:, None]  # 0 at the feet, 1 at the top
    density -= solid
    density *= up
    density += solid
    density *= 1 - lighting.fade * up

    # The cut-out's horizontal axis: across the light, towards +x where it can.
    step_x, step_z = lighting.shadow_step
    step_length = math.hypot(step_x, step_z)
    facing = abs(step_z) / step_length  # 1: lit from the front or the back, 0: from a side
    scale = math.copysign(0.6 + 0.4 * facing, step_z) / step_length
    across_x, across_z = step_z * scale, -step_x * scale
    metres_per_px = 1.0 / figure.px_per_m
    lateral = (figure.left - pad + 0.5 - figure.centre_u) * metres_per_px  # at column 0
    height = (figure.foot_v - figure.top + pad - 0.5) * metres_per_px  # at row 0
    to_world = np.array(
        [
            [across_x * metres_per_px, 0.0, figure.x + across_x * lateral],
            [0.0, -metres_per_px, height - scene.camera_height],
            [across_z * metres_per_px, 0.0, figure.z + across_z * lateral],
        ]
    )
    return density, to_world


def _onto_plane(to_world: np.ndarray, light: np.ndarray, axis: int, position: float) -> np.ndarray:
    """`to_world` followed by the projection along `light` onto the plane world[axis] = position."""
    travel = to_world[axis] * (-1.0 / light[axis])
    travel[2] += position / light[axis]
    return to_world + light[:, None] * travel


def cast_shadows(scene: Scene, figures: list[Standing], lighting: Lighting) -> None:
    """Darkens the room's visible floor and walls where the figures' shadows fall.

    Each figure's shadow density is warped onto every plane it reaches with one homography
    (grid -> caster -> plane along the light -> image); shadows combine by their maximum (one
    light), and only pixels that show that plane are darkened, never brightened.
    """
    size = scene.size
    light = np.array([lighting.shadow_step[0], -1.0, lighting.shadow_step[1]])
    camera = scene.camera_matrix()
    # The walls the light travels towards, steeply enough for a shadow of some length.
    lit_walls = [
        (label, axis, position)
        for label, axis, position in scene.walls()
        if light[axis] * position > 0.1 * abs(position)
    ]
    occlusion = np.zeros((size, size), np.float32)
    top, left, bottom, right = size, size, 0, 0
    for figure in figures:
        density, to_world = _shadow_source(scene, figure, lighting)
        rows, columns = density.shape
        corners = np.array([[-0.5, columns - 0.5, -0.5, columns - 0.5],
                            [-0.5, -0.5, rows - 0.5, rows - 0.5], [1, 1, 1, 1]])  # fmt: skip
        on_floor = _onto_plane(to_world, light, 1, -scene.camera_height)
        reach = on_floor @ corners  # where the shadow would fall if the floor went on forever
        planes = [(FLOOR, on_floor)]
        for label, axis, position in lit_walls:  # a wall only where the shadow runs past it
            if (reach[axis] * position > position * position).any():
                planes.append((label, _onto_plane(to_world, light, axis, position)))
        for label, on_plane in planes:
            to_image = camera @ on_plane
            us, vs, depths = (to_image @ corners).tolist()
            if min(depths) < 0.1:  # reaches behind the camera
                continue
            us = [u / depth for u, depth in zip(us, depths)]
            vs = [v / depth for v, depth in zip(vs, depths)]
            u_start, u_end = max(0, int(min(us))), min(size, int(max(us)) + 2)
            v_start, v_end = max(0, int(min(vs))), min(size, int(max(vs)) + 2)
            if u_start >= u_end or v_start >= v_end:
                continue
            to_window = np.array([[1, 0, -u_start], [0, 1, -v_start], [0, 0, 1]]) @ to_image
            shadow = cv2.warpPerspective(
                density, to_window, (u_end - u_start, v_end - v_start), flags=cv2.INTER_LINEAR
            )
            window = np.s_[v_start:v_end, u_start:u_end]
            shadow[scene.surface[window] != label] = 0
            np.maximum(occlusion[window], shadow, out=occlusion[window])
            top, left = min(top, v_start), min(left, u_start)
            bottom, right = max(bottom, v_end), max(right, u_end)
    if top >= bottom:
        return
    keep = 1.0 - (1.0 - lighting.umbra_light) * occlusion[top:bottom, left:right]
    region = scene.image[top:bottom, left:right]
    darker = region * cv2.merge([keep] * 3) + 0.5  # keep <= 1, rounded: never brighter
    region[:] = darker.astype(np.uint8)


def relight(image: np.ndarray, gain: np.ndarray | None) -> np.ndarray:
    """The image under a light `gain` times as strong per channel (None: unchanged)."""
    if gain is None:
        return image
    table = np.clip(np.arange(256)[:, None] * gain + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(image, table[None])
