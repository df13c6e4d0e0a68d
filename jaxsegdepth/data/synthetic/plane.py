"""The plane family: a textured plane seen at a tilt (dead leaves, 1/f noise or a pattern, mapped
in perspective), 0-3 textured cut-outs in front of it that belong to the plate, and 1-4 that are
foreground, all of the plane's texture statistics and often of its very texture source
(camouflage), occluding each other by depth. Each cut-out stands parallel to the image plane
nearer than the nearest point of the plane; the light casts its shadow on the plane, offset by
its gap. Depth has cues, as in the rooms: a cut-out has a real-world height (a person's, or a
sculpture's), so its size in the image says how far it is, and the plane's distance varies
less than the rooms' walls."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from jaxsegdepth.data.synthetic import procedural
from jaxsegdepth.data.synthetic.canvas import Canvas, Look
from jaxsegdepth.data.synthetic.textures import clip_colour
from jaxsegdepth.data.synthetic.shapes import blob_parts, cutout_parts, person_parts

PLANE = 0  # `surface` of the plane's pixels
PLANE_Z = (5.0, 10.0)  # depth of the plane at the image centre, metres (within Z_FAR)
NEAREST_Z = 2.05  # metres: cut-outs stay farther than Z_NEAR
GAP = 1.15  # a cut-out is at least this many times nearer than the plane's nearest point
PERSON_HEIGHT_M = (1.45, 1.9)  # as the rooms' figures
OBJECT_HEIGHT_M = (0.5, 1.7)  # sculptures and irregular cut-outs
CAMOUFLAGE = 0.45  # the share of cut-outs textured from the plane's own source
FOCAL_PX = 180.0  # at 224 px, as the rooms'
_TEXELS = 256  # side of the plane's texture before it is mapped onto the plane


@dataclasses.dataclass(frozen=True)
class Cutout:
    """A cut-out as it was painted: its part ids, where they went and its inverse depth."""

    parts: np.ndarray
    left: int
    top: int
    inverse_z: float


class Plane(Canvas):
    """The plane family's canvas: a tilted textured plane and the cut-outs in front of it."""

    def __init__(self, rng: np.random.Generator, size: int):
        super().__init__(rng, size, rng.uniform(0.85, 1.1))
        self.focal_px = FOCAL_PX * size / 224.0
        self.source = procedural.source(rng)
        self.plane_inverse_depth = None

    def render_plane(self):
        """The plane: inverse depth linear in the pixel coordinates (any plane's is), its
        texture mapped from the world (x, y) of its points, which are an affine image of the
        plane's own coordinates."""
        rng, size = self.rng, self.size
        centre_z = 1.0 / rng.uniform(1.0 / PLANE_Z[1], 1.0 / PLANE_Z[0])
        centred = np.arange(size, dtype=np.float32) + 0.5 - size / 2
        angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.7)
        tilt = strength * np.array([math.cos(angle), math.sin(angle)])  # inverse depth slope
        across = centred * np.float32(tilt[0] / size)
        down = centred * np.float32(tilt[1] / size)
        inverse_depth = (1.0 + across[None, :] + down[:, None]) * np.float32(1.0 / centre_z)
        z = 1.0 / inverse_depth
        # Texels per metre: the plane's visible width fits in the texture (no mirrored tiles).
        texels_per_m = min(rng.uniform(15.0, 60.0), _TEXELS * self.focal_px / (size * z.max()))
        half_span = texels_per_m * size * float(z.max()) / (2 * self.focal_px)
        offset = half_span + rng.uniform(0, max(0.0, _TEXELS - 2 * half_span), 2)
        scale = np.float32(texels_per_m / self.focal_px)
        map_x = centred[None, :] * z * scale + np.float32(offset[0])
        map_y = centred[:, None] * z * scale + np.float32(offset[1])
        texture = clip_colour(self.source.draw(rng, _TEXELS, _TEXELS) * self.light_level)
        self.image = cv2.remap(texture.astype(np.uint8), map_x, map_y, cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101)  # fmt: skip
        self.inverse_depth = inverse_depth
        self.plane_inverse_depth = inverse_depth.copy()
        self.surface = np.full((size, size), PLANE, np.int8)

    def render_cutouts(self, count: int, mask: np.ndarray | None) -> list[Cutout]:
        """`count` cut-outs, far to near, into the image (and `mask` when given)."""
        rng, size = self.rng, self.size
        farthest = max(NEAREST_Z, 1.0 / (GAP * float(self.plane_inverse_depth.max())))
        drawn = []
        for _ in range(count):
            z = rng.uniform(NEAREST_Z, farthest)
            parts = _shape(rng, self.focal_px / z)
            rows, columns = parts.shape
            left = int(rng.uniform(-0.1, 1.1) * (size - columns))
            top = int(rng.uniform(-0.1, 1.1) * (size - rows))
            drawn.append(Cutout(parts, left, top, 1.0 / z))
        for cutout in sorted(drawn, key=lambda cutout: cutout.inverse_z):
            self.paint(cutout.parts, cutout.left, cutout.top, self._look(), cutout.inverse_z,
                       mask, shading=rng.uniform() < 0.5)  # fmt: skip
        return drawn

    def _look(self) -> Look:
        """A cut-out's texture: the plane's own source (camouflage) or one of its own, whose
        palette is anchored on a colour of the plane's half of the time."""
        rng = self.rng
        if rng.uniform() < CAMOUFLAGE:
            texture = self.source
        else:
            palette = self.source.palette
            anchor = palette[int(rng.integers(len(palette)))] if rng.uniform() < 0.5 else None
            texture = procedural.source(rng, anchor)
        colours = np.zeros((4, 3), np.float32)
        return Look(colours, rng.uniform(0.0, 0.15), texture=texture)


def _shape(rng: np.random.Generator, px_per_m: float) -> np.ndarray:
    """A cut-out's part ids at `px_per_m` (its depth's scale): a person-like silhouette, a
    sculpture or an irregular cut-out, as tall in pixels as its real-world height makes it."""
    draw = rng.uniform()
    heights_m = PERSON_HEIGHT_M if draw < 0.35 else OBJECT_HEIGHT_M
    height = max(8, int(round(rng.uniform(*heights_m) * px_per_m)))
    if draw < 0.35:
        return person_parts(rng, height)
    if draw < 0.6:
        return blob_parts(rng, height, rng.uniform(0.35, 0.9))
    return cutout_parts(rng, height, rng.uniform(0.4, 1.6))


def drop_shadows(plane: Plane, cutouts: list[Cutout], lighting) -> None:
    """Darkens the plane (only the plane: never a cut-out) where the cut-outs' shadows fall
    under `lighting` (a `shadows.Lighting`: its direction, umbra and penumbra):
    each silhouette shifted along the light by its gap to the plane and blurred more the
    farther it falls, combined by their maximum (one light)."""
    size = plane.size
    direction = lighting.shadow_step / max(float(np.hypot(*lighting.shadow_step)), 1e-6)
    occlusion = np.zeros((size, size), np.float32)
    for cutout in cutouts:
        # 0: on the plane, towards 1: far in front of it
        gap = 1.0 - _plane_behind(plane, cutout) / cutout.inverse_z
        shift = direction * gap * cutout.parts.shape[0] * 0.4
        to_frame = np.float32([[1, 0, cutout.left + shift[0]], [0, 1, cutout.top + shift[1]]])
        solid = (cutout.parts > 0).astype(np.float32)
        shadow = cv2.warpAffine(solid, to_frame, (size, size))
        blur = max(0.3, lighting.penumbra_m * 40 * gap)
        np.maximum(occlusion, cv2.GaussianBlur(shadow, (0, 0), blur), out=occlusion)
    occlusion[plane.surface != PLANE] = 0
    keep = 1.0 - (1.0 - lighting.umbra_light) * occlusion
    darker = plane.image * keep[..., None] + 0.5  # keep <= 1, rounded: never brighter
    plane.image[:] = darker.astype(np.uint8)


def _plane_behind(plane: Plane, cutout: Cutout) -> float:
    """The plane's nearest inverse depth behind a cut-out's box (clamped into the image): at a
    corner, as the inverse depth of a plane is linear in the pixel coordinates."""
    rows, columns = cutout.parts.shape
    last = plane.size - 1
    row_ends = [min(max(row, 0), last) for row in (cutout.top, cutout.top + rows - 1)]
    column_ends = [min(max(column, 0), last) for column in (cutout.left, cutout.left + columns - 1)]
    return float(plane.plane_inverse_depth[np.ix_(row_ends, column_ends)].max())
