"""Procedural "museum" scenes that look and behave like MODEST Museum samples.

One sample is a background room (`bg`), the same room with 1-4 figures standing on the floor
(`bg_fg`), the union of the visible figures (`mask`) and the depth of the composite scene
(`depth`, near = bright), all 224x224 and JPEG-encoded like the real set, so both datasets go
through one decoding path.

Scene model (a pinhole camera inside a box-shaped room, metres):
- camera at `camera_height` above the floor, looking down the room; the visible surface of
  every pixel is the nearest of floor, ceiling, left/right wall and back wall (computed with
  inverse depths, which are linear in the pixel coordinates for a plane);
- textured floor (planks, tiles or stone), painted walls (sometimes striped wallpaper), a
  skirting board, framed pictures on the walls, 0-2 background exhibits (pedestals with
  sculptures, benches) that belong to `bg`;
- figures (person-like silhouettes or smooth sculptures) stand on the floor at a depth `z`,
  scaled by perspective, painted far to near with a depth test so that nearer things occlude
  farther ones; colours and textures are sometimes drawn from the wall/exhibit distributions, so
  a figure cannot be told apart from the background by its colour alone;
- capture realism in `bg_fg`: one distant light per sample makes every figure cast a soft
  shadow on the floor (and on a wall it stands near), darkening only the room's own surfaces;
  sometimes the light of the whole shot also changes a little (gain and colour cast). Neither
  is foreground: the mask stays the figures alone, where a background-subtraction threshold
  would take the shadows too;
- depth image = clip((1/z - 1/Z_FAR) / (1/Z_NEAR - 1/Z_FAR), 0, 1) (normalised inverse depth,
  near = bright, like the reference's depth maps); figures are always nearer than the floor and
  walls behind them;
- bg and bg_fg are JPEG-encoded at qualities drawn apart per sample (`JPEG_QUALITY_RGB_RANGE`,
  carried by `render`'s `jpeg_quality`), the targets at `JPEG_QUALITY_TARGET`.

Everything is deterministic for `(seed, index)`: `render(seed, index)` draws from
`np.random.default_rng([seed, index])` and a fixed noise bank.

Speed: `python tools/synthetic_speed.py --speed N` times `generate`. A preview grid of samples:
`python tools/plot.py samples --out preview.png`.
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import io
import math

import cv2
import numpy as np
from PIL import Image, ImageDraw

from jaxsegdepth import names

# Part of every built set's name: bump it whenever `render` or `encode` changes their output,
# so a set made by an older generator is rebuilt rather than silently reused.
GENERATOR_VERSION = 2
SIZE = 224
Z_NEAR = 2.0  # metres mapped to depth 1.0 (anything nearer is clipped)
Z_FAR = 20.0  # metres mapped to depth 0.0
JPEG_QUALITY_RGB = 90  # inputs of a sample that names no quality of its own (and photos.py's)
JPEG_QUALITY_RGB_RANGE = (75, 95)  # inclusive; bg and bg_fg draw theirs apart per sample
JPEG_QUALITY_TARGET = 95
QUALITY_KEY = "jpeg_quality"  # render's (2,) uint8 entry: the qualities of names.INPUTS
KEYS = names.INPUTS + names.HEADS

_INV_NEAR, _INV_FAR = 1.0 / Z_NEAR, 1.0 / Z_FAR
_DEPTH_SCALE = 1.0 / (_INV_NEAR - _INV_FAR)

# Colour distributions (RGB 0..255). Figures draw from these too (see _figure_colour).
_WALL_COLOURS = np.array(
    [
        (232, 226, 214), (205, 203, 198), (216, 198, 168), (150, 48, 50), (58, 92, 76),
        (52, 64, 102), (190, 170, 132), (172, 190, 204), (120, 120, 124), (200, 160, 120),
    ],
    np.float32,
)  # fmt: skip
_FLOOR_COLOURS = np.array(
    [
        (128, 86, 52), (160, 118, 78), (96, 64, 44), (150, 150, 148), (196, 192, 184),
        (70, 70, 74), (176, 140, 100), (110, 100, 90),
    ],
    np.float32,
)  # fmt: skip
_EXHIBIT_COLOURS = np.array(
    [
        (236, 234, 228), (140, 96, 52), (70, 60, 52), (180, 170, 150), (40, 40, 44),
        (200, 180, 120),
    ],
    np.float32,
)  # fmt: skip
_SKIN_COLOURS = np.array(
    [(236, 200, 170), (210, 160, 120), (170, 120, 86), (120, 80, 56), (80, 56, 40)], np.float32
)

# Surface labels of the room; `_Scene.surface` holds the plane ids 0-4 of the visible room and
# _COVERED where an exhibit or a figure hides it.
_FLOOR, _CEILING, _LEFT_WALL, _RIGHT_WALL, _BACK_WALL, _SKIRTING = range(6)
_COVERED = -1

_CIRCLE14 = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * np.pi, 14, endpoint=False)]
_BANK = 512  # side of the precomputed noise textures


@functools.lru_cache(maxsize=None)
def _noise_bank() -> tuple[np.ndarray, np.ndarray]:
    """Smooth (two octaves) and fine noise textures, fixed forever by their seed."""
    rng = np.random.default_rng(20240601)
    smooth = np.zeros((_BANK, _BANK), np.float32)
    for cells, amplitude in ((8, 0.65), (32, 0.35)):
        grid = rng.standard_normal((cells, cells)).astype(np.float32)
        upsampled = Image.fromarray(grid, mode="F").resize((_BANK, _BANK), Image.BICUBIC)
        smooth += amplitude * np.asarray(upsampled, np.float32)
    smooth /= np.abs(smooth).max()
    fine = rng.standard_normal((_BANK, _BANK)).astype(np.float32) * 0.5
    return smooth, fine


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates u (1, W) and v (H, 1): broadcast, not materialised."""
    centres = np.arange(size, dtype=np.float32) + 0.5
    return centres[None, :], centres[:, None]


def _crop(bank: np.ndarray, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    top = int(rng.integers(0, _BANK - height + 1))
    left = int(rng.integers(0, _BANK - width + 1))
    return bank[top : top + height, left : left + width]


def _clip_colour(values: np.ndarray) -> np.ndarray:
    """`np.clip(values, 0, 255)` at a fraction of its cost on the tiny arrays of colours."""
    return np.minimum(np.maximum(values, 0), 255)


def _per_label(values: np.ndarray, label: np.ndarray) -> np.ndarray:
    """`values[:, label]` for a uint8 label image, (len(values), H, W) float32, by lookup tables
    (faster than `np.take`)."""
    table = np.zeros((len(values), 256), np.float32)
    table[:, : values.shape[1]] = values
    out = np.empty((len(values),) + label.shape, np.float32)
    for row, plane in zip(table, out):
        cv2.LUT(label, row, dst=plane)
    return out


def _jitter(rng, colour, amount=14.0):
    return _clip_colour(colour + rng.uniform(-amount, amount, 3)).astype(np.float32)


def _pick(rng, table):
    return table[int(rng.integers(len(table)))]


def _random_colour(rng) -> np.ndarray:
    """A saturated-ish random colour (clothing)."""
    hue, saturation, value = rng.uniform(0, 1), rng.uniform(0.2, 0.9), rng.uniform(0.25, 0.95)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value), np.float32) * 255


def _figure_colour(rng, wall, floor) -> np.ndarray:
    """Clothing/sculpture colours: often random, sometimes exactly the room's own palette."""
    draw = rng.uniform()
    if draw < 0.2:
        return _jitter(rng, wall, 10)  # the very wall colour of this room
    if draw < 0.3:
        return _jitter(rng, floor, 10)
    if draw < 0.45:
        return _jitter(rng, _pick(rng, _WALL_COLOURS))
    if draw < 0.55:
        return _jitter(rng, _pick(rng, _EXHIBIT_COLOURS))
    return _random_colour(rng)


@dataclasses.dataclass(frozen=True)
class _Standing:
    """An object standing on the floor as it was painted: its part ids and where they went."""

    parts: np.ndarray  # (rows, columns) part ids, 0 = empty
    left: int  # image column of parts[:, 0]
    top: int  # image row of parts[0]
    centre_u: float  # image column of its vertical axis
    foot_v: float  # image row of the floor it stands on
    px_per_m: float  # its scale in the image
    x: float  # world position of its axis on the floor (metres)
    z: float


class _Scene:
    """Mutable render state: uint8 image, inverse depth, visible surfaces and the room.

    World coordinates (metres): camera at the origin, x to the right, y up, z down the room.
    """

    def __init__(self, rng: np.random.Generator, size: int):
        self.rng = rng
        self.size = size
        self.focal_px = 180.0 * (size / 224.0) * rng.uniform(0.94, 1.06)
        self.vanishing_u = size * (0.5 + rng.uniform(-0.12, 0.12))  # image of the view axis
        self.vanishing_v = size * rng.uniform(0.40, 0.50)  # also the horizon's row
        self.camera_height = rng.uniform(1.45, 1.75)
        self.ceiling_above_camera = rng.uniform(3.0, 4.0) - self.camera_height
        room_width = rng.uniform(5.0, 9.0)
        self.left_wall_distance = room_width * rng.uniform(0.35, 0.65)
        self.right_wall_distance = room_width - self.left_wall_distance
        self.back_wall_distance = rng.uniform(9.0, 15.0)
        self.light_level = rng.uniform(0.85, 1.1)
        self.wall_colour = _jitter(rng, _pick(rng, _WALL_COLOURS))
        self.floor_colour = _jitter(rng, _pick(rng, _FLOOR_COLOURS))
        self.image = None  # (H, W, 3) uint8
        self.inverse_depth = None  # (H, W) float32
        self.surface = None  # (H, W) int8: room plane id, or _COVERED

    # -- room -------------------------------------------------------------------------------
    def render_room(self):
        rng, size, focal = self.rng, self.size, self.focal_px
        u, v = _pixel_grid(size)
        u_offset, v_offset = u - self.vanishing_u, v - self.vanishing_v  # (1, W), (H, 1)
        # Inverse depth of each plane along every pixel's ray (<= 0 where the ray misses it).
        # Floor/ceiling depend on the row only, the side walls on the column only.
        floor_inv = v_offset * (1.0 / (focal * self.camera_height))
        ceiling_inv = v_offset * (-1.0 / (focal * self.ceiling_above_camera))
        left_inv = u_offset * (-1.0 / (focal * self.left_wall_distance))
        right_inv = u_offset * (1.0 / (focal * self.right_wall_distance))
        row_inv = np.maximum(floor_inv, ceiling_inv)
        row_label = np.where(floor_inv >= ceiling_inv, _FLOOR, _CEILING).astype(np.uint8)
        column_inv = np.maximum(left_inv, right_inv)
        column_label = np.where(left_inv >= right_inv, _LEFT_WALL, _RIGHT_WALL).astype(np.uint8)
        back_inv = np.float32(1.0 / self.back_wall_distance)
        inverse_depth = np.maximum(np.maximum(row_inv, column_inv), back_inv)
        label = np.where(row_inv >= column_inv, row_label, column_label)
        label[inverse_depth == back_inv] = _BACK_WALL
        self.surface = label.astype(np.int8)
        self.inverse_depth = inverse_depth
        z = 1.0 / inverse_depth
        x_world = u_offset * z * (1.0 / focal)

        # Per-surface base colour and the amplitude of its smooth noise; the skirting board is
        # where the walls meet the floor.
        board_height = rng.uniform(0.08, 0.18)
        board = (label >= _LEFT_WALL) & (
            (v_offset * z) > (self.camera_height - board_height) * focal
        )
        label[board] = _SKIRTING
        dim_side = rng.uniform(0.8, 0.95)  # one side wall is lit less
        left_shade, right_shade = (dim_side, 1.0) if rng.uniform() < 0.5 else (1.0, dim_side)
        ceiling = _jitter(rng, np.array([238, 236, 230], np.float32), 10)
        board_colour = _jitter(
            rng, _pick(rng, (self.floor_colour * 0.7, np.full(3, 235.0, np.float32)))
        )
        wall = self.wall_colour
        palette = self.light_level * np.stack(
            [self.floor_colour, ceiling, wall * left_shade, wall * right_shade, wall * 0.97,
             board_colour]
        )  # fmt: skip
        noise_amplitude = np.array(
            [rng.uniform(0.04, 0.12), 0.03, 0.05, 0.05, 0.05, 0.02], np.float32
        )

        smooth, fine = _noise_bank()
        texture = _per_label(noise_amplitude[None], label)[0] * _crop(smooth, rng, size, size)
        shade = 1.0 + texture + 0.02 * _crop(fine, rng, size, size)
        shade *= 0.82 + 0.3 * np.clip((inverse_depth - _INV_FAR) * _DEPTH_SCALE, 0, 1)  # falloff

        pattern, floor_delta = self._floor_pattern(x_world, z, smooth)
        delta = np.zeros((3, 6), np.float32)  # channel-first: fast broadcasting below
        delta[:, _FLOOR] = floor_delta * self.light_level
        image = _per_label(palette.T, label)
        image += _per_label(delta, label) * pattern
        if rng.uniform() < 0.3:  # striped wallpaper on the walls
            stripes_per_m = 1.0 / rng.uniform(0.15, 0.4)
            along_wall = np.where(label == _BACK_WALL, x_world, z)
            stripes = (np.floor(along_wall * stripes_per_m).astype(np.int32) & 1).astype(np.float32)
            stripe_delta = np.zeros((3, 6), np.float32)
            stripe_delta[:, _LEFT_WALL : _BACK_WALL + 1] = (
                wall * rng.uniform(-0.15, 0.15) * self.light_level
            )[:, None]
            image += _per_label(stripe_delta, label) * stripes
        image *= shade
        np.clip(image, 0, 255, out=image)
        self.image = cv2.merge(list(image.astype(np.uint8)))  # (H, W, 3)

    def _floor_pattern(self, x_world, z, smooth):
        """Planks, tiles or stone: (pattern, the floor colour change it scales)."""
        rng = self.rng
        floor_kind = int(rng.integers(3))
        if floor_kind == 0:  # planks along the room
            plank_width = rng.uniform(0.15, 0.3)
            across_planks = x_world * (1.0 / plank_width)
            plank = np.floor(across_planks)
            tone = plank * 0.618034
            tone -= np.floor(tone)
            seam = np.abs(across_planks - plank - 0.5) > 0.46
            return 0.12 * tone + 0.25 * seam, -self.floor_colour * 0.9
        if floor_kind == 1:  # checker tiles
            tiles_per_m = 1.0 / rng.uniform(0.4, 1.0)
            tile_sum = np.floor(x_world * tiles_per_m) + np.floor(z * tiles_per_m)
            pattern = (tile_sum.astype(np.int32) & 1).astype(np.float32)
            other = _jitter(rng, _pick(rng, _FLOOR_COLOURS), 20)
            return pattern, (other - self.floor_colour) * rng.uniform(0.3, 1.0)
        # stone
        return _crop(smooth, rng, self.size, self.size) * 0.5, self.floor_colour * 0.4

    # -- pictures ---------------------------------------------------------------------------
    def _project(self, x, y, z):
        """Image (u, v) of the world point (x, y, z)."""
        return (self.vanishing_u + self.focal_px * x / z, self.vanishing_v - self.focal_px * y / z)

    def render_pictures(self):
        """Framed pictures on the back and side walls, drawn in perspective with PIL."""
        rng = self.rng
        canvas = Image.fromarray(self.image)
        draw = ImageDraw.Draw(canvas)
        quads = []
        # Back wall: slots along its width.
        slots = int(rng.integers(0, 4))
        wall_start, wall_end = -self.left_wall_distance + 0.4, self.right_wall_distance - 0.4
        for slot in range(slots):
            slot_start = wall_start + (wall_end - wall_start) * slot / slots
            slot_end = wall_start + (wall_end - wall_start) * (slot + 1) / slots
            width = min(slot_end - slot_start - 0.2, rng.uniform(0.6, 2.2))
            if width < 0.3:
                continue
            if slot_end - slot_start - 0.2 > width:
                centre = rng.uniform(slot_start + width / 2 + 0.1, slot_end - width / 2 - 0.1)
            else:
                centre = (slot_start + slot_end) / 2
            height = rng.uniform(0.5, 1.6)
            centre_y = rng.uniform(-0.1, 0.7)
            corners = _quad_corners(centre, centre_y, width, height)
            quads.append([self._project(x, y, self.back_wall_distance) for x, y in corners])
        # Side walls: slots along the depth.
        for wall_x, sign in ((-self.left_wall_distance, -1), (self.right_wall_distance, 1)):
            edge_px = self.vanishing_u if sign < 0 else self.size - self.vanishing_u
            z_visible = self.focal_px * abs(wall_x) / max(1.0, edge_px)
            z_start = max(z_visible + 0.3, 2.0)
            z_end = self.back_wall_distance - 0.5
            slots = int(rng.integers(0, 3))
            for slot in range(slots):
                slot_start = z_start + (z_end - z_start) * slot / slots
                slot_end = z_start + (z_end - z_start) * (slot + 1) / slots
                width = min(slot_end - slot_start - 0.2, rng.uniform(0.8, 2.5))
                if width < 0.4:
                    continue
                centre = (slot_start + slot_end) / 2
                height = rng.uniform(0.5, 1.5)
                centre_y = rng.uniform(-0.1, 0.7)
                corners = _quad_corners(centre, centre_y, width, height)
                quads.append([self._project(wall_x, y, z) for z, y in corners])
        for quad in quads:
            self._draw_picture(draw, np.array(quad, np.float32))
        self.image = np.array(canvas)

    def _draw_picture(self, draw, quad):
        """A framed picture in the image quad (top-left, top-right, bottom-right, bottom-left)."""
        rng, light = self.rng, self.light_level
        (ax, ay), (bx, by), (cx, cy), (dx, dy) = quad.tolist()

        def at(s, t):  # bilinear point in the quad (s: left->right, t: top->bottom)
            top_x, top_y = ax + (bx - ax) * s, ay + (by - ay) * s
            bottom_x, bottom_y = dx + (cx - dx) * s, dy + (cy - dy) * s
            return (top_x + (bottom_x - top_x) * t, top_y + (bottom_y - top_y) * t)

        def rectangle(s0, s1, t0, t1):
            return [at(s0, t0), at(s1, t0), at(s1, t1), at(s0, t1)]

        def lit(colour):
            return tuple(int(channel) for channel in _clip_colour(colour * light))

        frame = _pick(rng, ((150, 110, 40), (40, 32, 28), (230, 228, 220), (110, 70, 40)))
        draw.polygon([tuple(p) for p in quad], fill=lit(_jitter(rng, np.array(frame, np.float32))))
        margin = rng.uniform(0.05, 0.12)
        inner_end = 1 - margin
        draw.polygon(rectangle(margin, inner_end, margin, inner_end), fill=lit(_random_colour(rng)))
        kind = int(rng.integers(3))
        if kind == 0:  # landscape: horizontal bands
            band_top = margin
            for _ in range(int(rng.integers(2, 4))):
                band_bottom = min(inner_end, band_top + rng.uniform(0.15, 0.5))
                draw.polygon(
                    rectangle(margin, inner_end, band_top, band_bottom),
                    fill=lit(_random_colour(rng)),
                )
                band_top = band_bottom
        if kind <= 1:  # a round motif (portrait / still life)
            centre_s, centre_t = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.6)
            radius = rng.uniform(0.12, 0.3)
            outline = [at(centre_s + radius * c, centre_t + radius * 1.2 * s) for c, s in _CIRCLE14]
            draw.polygon(outline, fill=lit(_random_colour(rng)))
        else:  # abstract: a few rectangles
            for _ in range(int(rng.integers(1, 4))):
                s0, t0 = rng.uniform(margin, 0.7), rng.uniform(margin, 0.7)
                s1 = min(inner_end, s0 + rng.uniform(0.1, 0.4))
                t1 = min(inner_end, t0 + rng.uniform(0.1, 0.4))
                draw.polygon(rectangle(s0, s1, t0, t1), fill=lit(_random_colour(rng)))

    # -- objects standing on the floor (background exhibits and foreground figures) --------
    def floor_z_range(self, z_min=2.4, z_max=9.5):
        """Depths at which an object's feet are inside the frame and in front of the back wall."""
        z_feet_visible = (
            self.focal_px * self.camera_height / max(1.0, self.size - 3 - self.vanishing_v)
        )
        near = max(z_min, z_feet_visible)
        far = min(z_max, self.back_wall_distance - 0.8)
        return near, max(far, near + 0.1)

    def place(self, z, centre_u, half_width_m):
        """World x of an object seen at column `centre_u`, clamped between the side walls."""
        x = (centre_u - self.vanishing_u) * z / self.focal_px
        lowest = -self.left_wall_distance + half_width_m + 0.1
        return float(min(max(x, lowest), self.right_wall_distance - half_width_m - 0.1))

    def paint(
        self,
        parts: np.ndarray,
        left: int,
        top: int,
        colours: np.ndarray,
        inverse_z: float,
        texture_amplitude: float,
        mask: np.ndarray | None,
    ):
        """Composite a part-id patch (0 = empty) at (left, top) with a depth test.

        `colours[k]` is the RGB of part k; shading is cylindrical across the patch width plus
        smooth-noise texture. Pixels already nearer than `inverse_z` occlude the object.
        """
        rng, size = self.rng, self.size
        patch_rows, patch_columns = parts.shape
        row_start, row_end = max(0, top), min(size, top + patch_rows)
        column_start, column_end = max(0, left), min(size, left + patch_columns)
        if row_start >= row_end or column_start >= column_end:
            return
        window = np.s_[row_start:row_end, column_start:column_end]
        visible_parts = parts[
            row_start - top : row_end - top, column_start - left : column_end - left
        ]
        inside = (visible_parts > 0) & (self.inverse_depth[window] < inverse_z)
        if not inside.any():
            return
        smooth, fine = _noise_bank()
        rows, columns = visible_parts.shape
        across = (
            np.arange(column_start, column_end, dtype=np.float32) - left + 0.5
        ) / patch_columns
        across_shade = 0.72 + 0.38 * np.sin(np.pi * across)  # across is inside (0, 1)
        texture = _crop(smooth, rng, rows, columns)
        grain = _crop(fine, rng, rows, columns)
        ys, xs = np.nonzero(inside)
        shade = across_shade[xs] * (
            1.0 + texture_amplitude * texture[ys, xs] + 0.03 * grain[ys, xs]
        )
        colour = colours[visible_parts[ys, xs]] * (shade * self.light_level)[:, None]
        self.image[window][ys, xs] = _clip_colour(colour).astype(np.uint8)
        self.inverse_depth[window][ys, xs] = inverse_z
        self.surface[window][ys, xs] = _COVERED
        if mask is not None:
            mask[window] |= inside

    # -- shadows ----------------------------------------------------------------------------
    def camera_matrix(self) -> np.ndarray:
        """World (x, y, z) -> homogeneous image (column, row) of pixel indices."""
        return np.array(
            [
                [self.focal_px, 0.0, self.vanishing_u - 0.5],
                [0.0, -self.focal_px, self.vanishing_v - 0.5],
                [0.0, 0.0, 1.0],
            ]
        )

    def walls(self) -> tuple[tuple[int, int, float], ...]:
        """(surface label, world axis, position on that axis) of each wall's plane."""
        return (
            (_LEFT_WALL, 0, -self.left_wall_distance),
            (_RIGHT_WALL, 0, self.right_wall_distance),
            (_BACK_WALL, 2, self.back_wall_distance),
        )


def _quad_corners(centre, centre_y, width, height):
    """Corners of an upright rectangle on a wall: top-left, top-right, bottom-right, bottom-left."""
    return (
        (centre - width / 2, centre_y + height / 2),
        (centre + width / 2, centre_y + height / 2),
        (centre + width / 2, centre_y - height / 2),
        (centre - width / 2, centre_y - height / 2),
    )


def _person_parts(rng, height: int) -> np.ndarray:
    """Part ids of a person-like silhouette `height` pixels tall: 1 head, 2 torso+arms, 3 legs."""
    aspect = rng.uniform(0.26, 0.38)
    width = max(3, int(round(height * aspect)))
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    centre_x = width / 2 + rng.uniform(-0.05, 0.05) * width
    head_radius = height * rng.uniform(0.055, 0.07)
    head_y = head_radius * 1.1
    shoulder_y, hip_y = height * rng.uniform(0.16, 0.2), height * rng.uniform(0.48, 0.54)
    shoulder_half = width * rng.uniform(0.36, 0.46)
    hip_half = width * rng.uniform(0.26, 0.34)
    arm_width = width * rng.uniform(0.1, 0.14)
    swing = rng.uniform(-0.08, 0.08) * width
    # legs
    stance = rng.uniform(0.02, 0.12) * width
    leg_width = width * rng.uniform(0.13, 0.17)
    bottom = height - 1
    for side in (-1, 1):
        top_inner, top_outer = centre_x + side * 0.02 * width, centre_x + side * hip_half
        foot = centre_x + side * (leg_width + stance)
        draw.polygon(
            [
                (top_inner, hip_y - 2),
                (top_outer, hip_y - 2),
                (foot + side * leg_width * 0.6, bottom),
                (foot - side * leg_width * 0.9, bottom),
            ],
            fill=3,
        )
    if rng.uniform() < 0.3:  # coat or skirt over the upper legs
        hem_y, hem_half = height * 0.75, hip_half * 1.35
        draw.polygon(
            [
                (centre_x - hip_half, hip_y - 2),
                (centre_x + hip_half, hip_y - 2),
                (centre_x + hem_half, hem_y),
                (centre_x - hem_half, hem_y),
            ],
            fill=2,
        )
    # torso and arms
    draw.polygon(
        [
            (centre_x - shoulder_half, shoulder_y),
            (centre_x + shoulder_half, shoulder_y),
            (centre_x + hip_half, hip_y),
            (centre_x - hip_half, hip_y),
        ],
        fill=2,
    )
    hand_y = height * 0.56
    for side in (-1, 1):
        shoulder_x = centre_x + side * shoulder_half
        hand = shoulder_x + side * arm_width * 0.3 + swing * side * rng.uniform(0.5, 1.5)
        draw.polygon(
            [
                (shoulder_x - side * arm_width, shoulder_y),
                (shoulder_x, shoulder_y + arm_width * 0.3),
                (hand, hand_y),
                (hand - side * arm_width, hand_y),
            ],
            fill=2,
        )
    draw.ellipse(
        [
            centre_x - shoulder_half * 0.95,
            shoulder_y - head_radius * 0.3,
            centre_x + shoulder_half * 0.95,
            shoulder_y + head_radius * 0.8,
        ],
        fill=2,
    )
    # neck and head
    neck_half = head_radius * 0.45
    draw.rectangle([centre_x - neck_half, head_y, centre_x + neck_half, shoulder_y + 1], fill=1)
    head_half = head_radius * 0.85
    draw.ellipse(
        [
            centre_x - head_half,
            head_y - head_radius,
            centre_x + head_half,
            head_y + head_radius * 1.05,
        ],
        fill=1,
    )
    return np.asarray(image, np.uint8)


def silhouette(rng: np.random.Generator, height: int) -> np.ndarray:
    """A boolean figure mask `height` pixels tall, drawn as the scenes' figures are: person-like
    (65%) or a smooth sculpture (35%)."""
    if rng.uniform() < 0.65:
        return _person_parts(rng, height) > 0
    return _blob_parts(rng, height, rng.uniform(0.35, 0.9)) > 0


def _blob_parts(rng, height: int, aspect: float) -> np.ndarray:
    """A smooth sculpture: a solid-of-revolution profile or a stack of ellipses (part 1/2)."""
    width = max(3, int(round(height * aspect)))
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    if rng.uniform() < 0.5:
        ys = np.linspace(0, height - 1, 14)
        t = ys / max(1, height - 1)
        waves, phase = rng.uniform(0.6, 1.6), rng.uniform(0, np.pi)
        radius = width / 2 * (0.45 + 0.55 * np.abs(np.sin(np.pi * waves * t + phase)))
        radius[0] = max(radius[0] * 0.5, 1.0)
        radius[-1] = max(radius[-1], width * 0.3)
        left_side = [(width / 2 - r, y) for r, y in zip(radius, ys)]
        right_side = [(width / 2 + r, y) for r, y in zip(radius[::-1], ys[::-1])]
        draw.polygon(left_side + right_side, fill=1)
    else:
        bottom = height - 1
        for i in range(int(rng.integers(1, 4))):
            ellipse_height = max(2.0, (height / 2) * rng.uniform(0.5, 1.1))
            half_width = width / 2 * rng.uniform(0.55, 1.0) * (0.85**i)
            top = max(0.0, bottom - ellipse_height)
            draw.ellipse(
                [width / 2 - half_width, top, width / 2 + half_width, bottom], fill=1 + i % 2
            )
            bottom = top + ellipse_height * 0.2
            if bottom <= 1:
                break
    return np.asarray(image, np.uint8)


def _box_parts(height: int, width: int, top_height: int) -> np.ndarray:
    """A box seen from the front: part 1 front face, part 2 top face."""
    parts = np.zeros((height + top_height, width), np.uint8)
    parts[:top_height] = 2
    parts[top_height:] = 1
    return parts


def _add_object(scene: _Scene, parts_fn, z, centre_u, height_m, colours, texture_amplitude, mask):
    """Paints the patch `parts_fn(height_px)` standing on the floor at depth `z`, column
    `centre_u` (clamped between the walls)."""
    px_per_m = scene.focal_px / z
    parts = parts_fn(max(4, int(round(height_m * px_per_m))))
    patch_rows, patch_columns = parts.shape
    x = scene.place(z, centre_u, patch_columns / px_per_m / 2)
    centre_u = scene.vanishing_u + x * px_per_m
    foot_v = scene.vanishing_v + scene.camera_height * px_per_m
    left = int(round(centre_u - patch_columns / 2))
    top = int(round(foot_v - patch_rows))
    scene.paint(parts, left, top, colours, 1.0 / z, texture_amplitude, mask)
    return _Standing(parts, left, top, centre_u, foot_v, px_per_m, x, z)


def _render_exhibits(scene: _Scene):
    """Background exhibits: pedestals with a sculpture, or benches (part of `bg`)."""
    rng = scene.rng
    near, far = scene.floor_z_range(3.0, 11.0)
    for _ in range(int(rng.choice(3, p=[0.35, 0.45, 0.2]))):
        z = 1.0 / rng.uniform(1.0 / far, 1.0 / near)
        centre_u = rng.uniform(0.1, 0.9) * scene.size
        px_per_m = scene.focal_px / z
        colour = _jitter(rng, _pick(rng, _EXHIBIT_COLOURS))
        empty = np.zeros(3, np.float32)
        if rng.uniform() < 0.6:  # pedestal + sculpture on it
            pedestal_height, pedestal_width = rng.uniform(0.7, 1.1), rng.uniform(0.4, 0.7)
            top_rows = max(1, int(0.06 * px_per_m))
            pedestal_columns = max(3, int(pedestal_width * px_per_m))
            pedestal = _add_object(
                scene,
                lambda rows: _box_parts(rows, pedestal_columns, top_rows),
                z,
                centre_u,
                pedestal_height,
                np.stack([empty, colour, colour * 1.08]),
                0.04,
                None,
            )
            # The sculpture stands on the pedestal's top (drawn as a second object, same depth).
            sculpture_height = rng.uniform(0.3, 0.8)
            sculpture_colours = np.stack(
                [
                    empty,
                    _figure_colour(rng, scene.wall_colour, scene.floor_colour),
                    _jitter(rng, _pick(rng, _EXHIBIT_COLOURS)),
                ]
            )
            parts = _blob_parts(
                rng, max(4, int(sculpture_height * px_per_m)), rng.uniform(0.5, 0.9)
            )
            rows, columns = parts.shape
            pedestal_top_v = (
                scene.vanishing_v + (scene.camera_height - pedestal_height) * px_per_m - top_rows
            )
            scene.paint(
                parts,
                int(round(pedestal.centre_u - columns / 2)),
                int(round(pedestal_top_v - rows)),
                sculpture_colours,
                1.0 / (z - 0.05),
                0.1,
                None,
            )
        else:  # bench
            bench_columns = max(3, int(rng.uniform(1.2, 2.2) * px_per_m))
            seat_rows = max(1, int(0.1 * px_per_m))
            _add_object(
                scene,
                lambda rows: _box_parts(rows, bench_columns, seat_rows),
                z,
                centre_u,
                0.45,
                np.stack([empty, colour * 0.8, colour]),
                0.05,
                None,
            )


def _render_figures(scene: _Scene, mask: np.ndarray) -> list[_Standing]:
    """The 1-4 foreground figures, far to near, into the image and `mask`."""
    rng = scene.rng
    near, far = scene.floor_z_range()
    count = int(rng.integers(1, 5))
    depths = 1.0 / rng.uniform(1.0 / far, 1.0 / near, count)  # uniform in image row of the feet
    centres_u = rng.uniform(0.12, 0.88, count) * scene.size
    for i in range(1, count):
        if rng.uniform() < 0.35:  # stand close to (and possibly overlap) an earlier figure
            centres_u[i] = (
                centres_u[i - 1] + rng.uniform(-0.5, 0.5) * scene.focal_px * 0.5 / depths[i]
            )
    figures = []
    empty = np.zeros(3, np.float32)
    for i in np.argsort(-depths):  # far to near
        z, centre_u = float(depths[i]), float(centres_u[i])
        texture_amplitude = rng.uniform(0.05, 0.3)
        if rng.uniform() < 0.65:
            colours = np.stack(
                [
                    empty,
                    _jitter(rng, _pick(rng, _SKIN_COLOURS), 10),
                    _figure_colour(rng, scene.wall_colour, scene.floor_colour),
                    _figure_colour(rng, scene.wall_colour, scene.floor_colour),
                ]
            )
            height_m = rng.uniform(1.45, 1.9)
            parts_fn = functools.partial(_person_parts, rng)
        else:
            colour = _figure_colour(rng, scene.wall_colour, scene.floor_colour)
            colours = np.stack([empty, colour, _jitter(rng, colour, 30)])
            parts_fn = functools.partial(_blob_parts, rng, aspect=rng.uniform(0.35, 0.9))
            height_m = rng.uniform(0.6, 1.7)
        figures.append(
            _add_object(scene, parts_fn, z, centre_u, height_m, colours, texture_amplitude, mask)
        )
    return figures


@dataclasses.dataclass(frozen=True)
class _Lighting:
    """How the light of `bg_fg` differs from `bg`'s: one distant light makes the figures cast
    shadows, and sometimes the whole shot's light changes a little."""

    shadow_step: np.ndarray  # (x, z) shift of a shadow point per metre of height above the floor
    umbra_light: float  # fraction of the light left in a full shadow
    penumbra_m: float  # shadow blur (metres at the caster) where it leaves the caster's top
    fade: float  # the shadow's loss of strength from the feet to the caster's top
    gain: np.ndarray | None  # (3,) per-channel gain of bg_fg; None: the same light as bg


def _draw_lighting(rng: np.random.Generator) -> _Lighting:
    """A sample's light: from any side, 32-68 degrees high; shadows mostly clear, some faint."""
    azimuth = rng.uniform(0, 2 * np.pi)
    step = rng.uniform(0.4, 1.6) * np.array([np.sin(azimuth), np.cos(azimuth)])
    step[1] = max(step[1], -0.5)  # shadows cast towards the camera end well in front of it
    umbra_light = rng.uniform(0.45, 0.85) if rng.uniform() < 0.8 else rng.uniform(0.85, 0.95)
    penumbra_m = rng.uniform(0.02, 0.1)
    fade = rng.uniform(0.0, 0.5)
    relit = rng.uniform() < 0.3
    gain = rng.uniform(0.9, 1.1) * (1.0 + rng.uniform(-0.03, 0.03, 3))
    return _Lighting(step, umbra_light, penumbra_m, fade, gain if relit else None)


def _shadow_source(scene: _Scene, figure: _Standing, lighting: _Lighting):
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


def _cast_shadows(scene: _Scene, figures: list[_Standing], lighting: _Lighting) -> None:
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
        planes = [(_FLOOR, on_floor)]
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


def _relight(image: np.ndarray, gain: np.ndarray | None) -> np.ndarray:
    """The image under a light `gain` times as strong per channel (None: unchanged)."""
    if gain is None:
        return image
    table = np.clip(np.arange(256)[:, None] * gain + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(image, table[None])


def _render(
    seed: int, index: int, size: int = SIZE, *, shadows: bool = True
) -> dict[str, np.ndarray]:
    """`render`, with the shadows optional: the same random draws either way, so the two
    differ exactly by the shadows."""
    rng = np.random.default_rng([int(seed), int(index)])
    scene = _Scene(rng, size)
    scene.render_room()
    scene.render_pictures()
    _render_exhibits(scene)
    bg = scene.image.copy()
    mask = np.zeros((size, size), bool)
    figures = _render_figures(scene, mask)
    lighting = _draw_lighting(rng)
    lowest, highest = JPEG_QUALITY_RGB_RANGE
    qualities = rng.integers(lowest, highest + 1, len(names.INPUTS)).astype(np.uint8)
    if shadows:
        _cast_shadows(scene, figures, lighting)
    bg_fg = _relight(scene.image, lighting.gain)
    depth = (scene.inverse_depth - _INV_FAR) * (_DEPTH_SCALE * 255.0) + 0.5
    return {
        "bg": bg,
        "bg_fg": bg_fg,
        "mask": mask.astype(np.uint8) * 255,
        "depth": np.clip(depth, 0, 255).astype(np.uint8),
        QUALITY_KEY: qualities,
    }


def render(seed: int, index: int, size: int = SIZE) -> dict[str, np.ndarray]:
    """Renders sample `index` of the set with `seed`: uint8 arrays bg, bg_fg (H,W,3), mask,
    depth (H,W) and `QUALITY_KEY` (2,); mask is 0/255 (union of the visible figures), depth
    near = bright, and the last holds the JPEG qualities `encode` gives bg and bg_fg."""
    return _render(seed, index, size)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode(sample: dict[str, np.ndarray]) -> dict[str, bytes]:
    """JPEG-encodes a rendered sample: bg and bg_fg at the sample's `QUALITY_KEY` qualities
    (JPEG_QUALITY_RGB for arrays without them), mask and depth at JPEG_QUALITY_TARGET."""
    inputs = sample.get(QUALITY_KEY, (JPEG_QUALITY_RGB,) * len(names.INPUTS))
    qualities = dict.fromkeys(names.HEADS, JPEG_QUALITY_TARGET)
    qualities.update(zip(names.INPUTS, (int(quality) for quality in inputs)))
    return {key: encode_jpeg(sample[key], qualities[key]) for key in KEYS}


def generate(seed: int, index: int, size: int = SIZE) -> dict[str, bytes]:
    """Sample `index` of the synthetic set with `seed`, as JPEG bytes keyed bg/bg_fg/mask/depth."""
    return encode(render(seed, index, size))
