"""The camera and the room: a pinhole camera in a box of floor, ceiling and walls, their textures
(painted colours, planks, tiles, stone, and procedural textures mapped in perspective) and framed
pictures, the inverse depth and surface of every pixel."""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
from PIL import Image, ImageDraw

from jaxsegdepth.data.synthetic import procedural
from jaxsegdepth.data.synthetic.canvas import Canvas
from jaxsegdepth.data.synthetic.textures import (
    FLOOR_COLOURS,
    WALL_COLOURS,
    clip_colour,
    crop,
    jitter,
    noise_bank,
    per_label,
    pick,
    random_colour,
)

Z_NEAR = 2.0  # metres mapped to depth 1.0 (anything nearer is clipped)
Z_FAR = 20.0  # metres mapped to depth 0.0
_INV_NEAR, INV_FAR = 1.0 / Z_NEAR, 1.0 / Z_FAR
DEPTH_SCALE = 1.0 / (_INV_NEAR - INV_FAR)

# Surface labels of the room; `Scene.surface` holds the plane ids 0-4 of the visible room and
# canvas.COVERED where an exhibit or a figure hides it.
FLOOR, CEILING, LEFT_WALL, RIGHT_WALL, BACK_WALL, SKIRTING = range(6)
WALLS = (LEFT_WALL, RIGHT_WALL, BACK_WALL)
TEXTURED_FLOOR = 0.5  # the share of rooms whose floor has a procedural texture
TEXTURED_WALLS = 0.45  # and whose walls have one (murals, wallpaper, stone)
TEXTURED_PICTURES = 0.5  # the share of pictures painted with a procedural texture
_SURFACE_TEXELS = 192  # side of a surface's texture before it is mapped onto the room

_CIRCLE14 = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * np.pi, 14, endpoint=False)]


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates u (1, W) and v (H, 1): broadcast, not materialised."""
    centres = np.arange(size, dtype=np.float32) + 0.5
    return centres[None, :], centres[:, None]


class Scene(Canvas):
    """The room family's canvas: the camera, the room's geometry and its textures.

    World coordinates (metres): camera at the origin, x to the right, y up, z down the room.
    """

    def __init__(self, rng: np.random.Generator, size: int):
        super().__init__(rng, size)
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
        self.wall_colour = jitter(rng, pick(rng, WALL_COLOURS))
        self.floor_colour = jitter(rng, pick(rng, FLOOR_COLOURS))
        self.sources = {}  # "floor"/"walls": the procedural.Source of a textured surface

    # -- room -------------------------------------------------------------------------------
    def render_room(self):
        """The floor, ceiling, walls and skirting board into `image`, `inverse_depth` and
        `surface`."""
        rng, size = self.rng, self.size
        label, z = self._geometry()
        u, v = _pixel_grid(size)
        x_world = (u - self.vanishing_u) * z * (1.0 / self.focal_px)
        y_world = (v - self.vanishing_v) * z * (-1.0 / self.focal_px)
        board = (label >= LEFT_WALL) & (y_world < rng.uniform(0.08, 0.18) - self.camera_height)
        label[board] = SKIRTING
        palette, noise_amplitude = self._palette()
        smooth, fine = noise_bank()
        texture = per_label(noise_amplitude[None], label)[0] * crop(smooth, rng, size, size)
        shade = 1.0 + texture + 0.02 * crop(fine, rng, size, size)
        depth = np.clip((self.inverse_depth - INV_FAR) * DEPTH_SCALE, 0, 1)
        shade *= 0.82 + 0.3 * depth  # falloff

        pattern, floor_delta = self._floor_pattern(x_world, z, smooth)
        delta = np.zeros((3, 6), np.float32)  # channel-first: fast broadcasting below
        delta[:, FLOOR] = floor_delta * self.light_level
        image = per_label(palette.T, label)
        image += per_label(delta, label) * pattern
        along_wall = np.where(label == BACK_WALL, x_world, z)
        if rng.uniform() < 0.3:  # striped wallpaper on the walls
            stripes_per_m = 1.0 / rng.uniform(0.15, 0.4)
            stripes = (np.floor(along_wall * stripes_per_m).astype(np.int32) & 1).astype(np.float32)
            stripe_delta = np.zeros((3, 6), np.float32)
            stripe_delta[:, LEFT_WALL : BACK_WALL + 1] = (
                self.wall_colour * rng.uniform(-0.15, 0.15) * self.light_level
            )[:, None]
            image += per_label(stripe_delta, label) * stripes
        self._texture_surfaces(image, label, (x_world, z), (along_wall, y_world))
        image *= shade
        np.clip(image, 0, 255, out=image)
        self.image = cv2.merge(list(image.astype(np.uint8)))  # (H, W, 3)

    def _geometry(self) -> tuple[np.ndarray, np.ndarray]:
        """Sets `inverse_depth` and `surface` (plane ids 0-4) of every pixel's nearest plane;
        returns (a uint8 copy of the labels, the depth z in metres)."""
        u, v = _pixel_grid(self.size)
        u_offset, v_offset = u - self.vanishing_u, v - self.vanishing_v  # (1, W), (H, 1)
        focal = self.focal_px
        # Inverse depth of each plane along every pixel's ray (<= 0 where the ray misses it).
        # Floor/ceiling depend on the row only, the side walls on the column only.
        floor_inv = v_offset * (1.0 / (focal * self.camera_height))
        ceiling_inv = v_offset * (-1.0 / (focal * self.ceiling_above_camera))
        left_inv = u_offset * (-1.0 / (focal * self.left_wall_distance))
        right_inv = u_offset * (1.0 / (focal * self.right_wall_distance))
        row_inv = np.maximum(floor_inv, ceiling_inv)
        row_label = np.where(floor_inv >= ceiling_inv, FLOOR, CEILING).astype(np.uint8)
        column_inv = np.maximum(left_inv, right_inv)
        column_label = np.where(left_inv >= right_inv, LEFT_WALL, RIGHT_WALL).astype(np.uint8)
        back_inv = np.float32(1.0 / self.back_wall_distance)
        inverse_depth = np.maximum(np.maximum(row_inv, column_inv), back_inv)
        label = np.where(row_inv >= column_inv, row_label, column_label)
        label[inverse_depth == back_inv] = BACK_WALL
        self.surface = label.astype(np.int8)
        self.inverse_depth = inverse_depth
        return label, 1.0 / inverse_depth

    def _palette(self) -> tuple[np.ndarray, np.ndarray]:
        """(6, 3) colours of the surface labels under this room's light, and (6,) amplitudes of
        their smooth noise."""
        rng = self.rng
        dim_side = rng.uniform(0.8, 0.95)  # one side wall is lit less
        left_shade, right_shade = (dim_side, 1.0) if rng.uniform() < 0.5 else (1.0, dim_side)
        ceiling = jitter(rng, np.array([238, 236, 230], np.float32), 10)
        board_colour = jitter(
            rng, pick(rng, (self.floor_colour * 0.7, np.full(3, 235.0, np.float32)))
        )
        wall = self.wall_colour
        palette = self.light_level * np.stack(
            [self.floor_colour, ceiling, wall * left_shade, wall * right_shade, wall * 0.97,
             board_colour]
        )  # fmt: skip
        noise_amplitude = np.array(
            [rng.uniform(0.04, 0.12), 0.03, 0.05, 0.05, 0.05, 0.02], np.float32
        )
        return palette, noise_amplitude

    def _texture_surfaces(self, image, label, floor_coords, wall_coords):
        """Blends procedural textures, mapped in perspective from the surfaces' own coordinates
        (metres: (x, z) on the floor, (along, height) on the walls), into a share of floors and
        walls of the channel-first `image`."""
        rng, texels = self.rng, _SURFACE_TEXELS
        surfaces = (
            ("floor", (FLOOR,), self.floor_colour, TEXTURED_FLOOR, floor_coords),
            ("walls", WALLS, self.wall_colour, TEXTURED_WALLS, wall_coords),
        )
        for name, labels, anchor, share, (across, along) in surfaces:
            if rng.uniform() >= share:
                continue
            source = procedural.source(rng, anchor if rng.uniform() < 0.7 else None)
            self.sources[name] = source
            texture = clip_colour(source.draw(rng, texels, texels) * self.light_level)
            texels_per_m = rng.uniform(8.0, 30.0)
            map_x = (across * texels_per_m + rng.uniform(0, texels)).astype(np.float32)
            map_y = (along * texels_per_m + rng.uniform(0, texels)).astype(np.float32)
            mapped = cv2.remap(texture.astype(np.uint8), map_x, map_y, cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101)  # fmt: skip
            strengths = np.zeros((1, SKIRTING + 1), np.float32)
            strengths[0, list(labels)] = rng.uniform(0.6, 1.0)
            strength = per_label(strengths, label)[0]
            for channel, plane in zip(image, cv2.split(mapped)):
                channel += strength * (plane - channel)

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
            other = jitter(rng, pick(rng, FLOOR_COLOURS), 20)
            return pattern, (other - self.floor_colour) * rng.uniform(0.3, 1.0)
        # stone
        return crop(smooth, rng, self.size, self.size) * 0.5, self.floor_colour * 0.4

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
        textured = [self._draw_picture(draw, np.array(quad, np.float32)) for quad in quads]
        self.image = np.array(canvas)
        for inner in textured:
            if inner is not None:
                self._texture_quad(np.array(inner, np.float32))

    def _draw_picture(self, draw, quad):
        """A framed picture in the image quad (top-left, top-right, bottom-right, bottom-left),
        painted with PIL's flat colours; for a textured one only the frame, and the quad inside
        it is returned (else None)."""
        rng, light = self.rng, self.light_level
        (ax, ay), (bx, by), (cx, cy), (dx, dy) = quad.tolist()

        def at(s, t):  # bilinear point in the quad (s: left->right, t: top->bottom)
            top_x, top_y = ax + (bx - ax) * s, ay + (by - ay) * s
            bottom_x, bottom_y = dx + (cx - dx) * s, dy + (cy - dy) * s
            return (top_x + (bottom_x - top_x) * t, top_y + (bottom_y - top_y) * t)

        def rectangle(s0, s1, t0, t1):
            return [at(s0, t0), at(s1, t0), at(s1, t1), at(s0, t1)]

        def lit(colour):
            return tuple(int(channel) for channel in clip_colour(colour * light))

        frame = pick(rng, ((150, 110, 40), (40, 32, 28), (230, 228, 220), (110, 70, 40)))
        draw.polygon([tuple(p) for p in quad], fill=lit(jitter(rng, np.array(frame, np.float32))))
        margin = rng.uniform(0.05, 0.12)
        inner_end = 1 - margin
        inner = rectangle(margin, inner_end, margin, inner_end)
        if rng.uniform() < TEXTURED_PICTURES:
            return inner
        draw.polygon(inner, fill=lit(random_colour(rng)))
        kind = int(rng.integers(3))
        if kind == 0:  # landscape: horizontal bands
            band_top = margin
            for _ in range(int(rng.integers(2, 4))):
                band_bottom = min(inner_end, band_top + rng.uniform(0.15, 0.5))
                draw.polygon(
                    rectangle(margin, inner_end, band_top, band_bottom),
                    fill=lit(random_colour(rng)),
                )
                band_top = band_bottom
        if kind <= 1:  # a round motif (portrait / still life)
            centre_s, centre_t = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.6)
            radius = rng.uniform(0.12, 0.3)
            outline = [at(centre_s + radius * c, centre_t + radius * 1.2 * s) for c, s in _CIRCLE14]
            draw.polygon(outline, fill=lit(random_colour(rng)))
        else:  # abstract: a few rectangles
            for _ in range(int(rng.integers(1, 4))):
                s0, t0 = rng.uniform(margin, 0.7), rng.uniform(margin, 0.7)
                s1 = min(inner_end, s0 + rng.uniform(0.1, 0.4))
                t1 = min(inner_end, t0 + rng.uniform(0.1, 0.4))
                draw.polygon(rectangle(s0, s1, t0, t1), fill=lit(random_colour(rng)))

    def _texture_quad(self, quad):
        """Paints a procedural texture into the image quad (top-left, top-right, bottom-right,
        bottom-left) with its perspective."""
        rng, texels = self.rng, 64
        left, top = np.floor(quad.min(0)).astype(int)
        right, bottom = np.ceil(quad.max(0)).astype(int) + 1
        left, top = max(left, 0), max(top, 0)
        right, bottom = min(right, self.size), min(bottom, self.size)
        if left >= right or top >= bottom:
            return
        corners = np.float32([[0, 0], [texels, 0], [texels, texels], [0, texels]])
        to_window = cv2.getPerspectiveTransform(corners, quad - np.float32([left, top]))
        texture = procedural.source(rng).draw(rng, texels, texels) * self.light_level
        shape = (right - left, bottom - top)
        painted = cv2.warpPerspective(clip_colour(texture), to_window, shape)
        inside = cv2.warpPerspective(np.ones((texels, texels), np.float32), to_window, shape)
        window = self.image[top:bottom, left:right]
        blend = window + inside[..., None] * (painted - window)
        window[:] = clip_colour(blend + 0.5).astype(np.uint8)

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
            (LEFT_WALL, 0, -self.left_wall_distance),
            (RIGHT_WALL, 0, self.right_wall_distance),
            (BACK_WALL, 2, self.back_wall_distance),
        )


def _quad_corners(centre, centre_y, width, height):
    """Corners of an upright rectangle on a wall: top-left, top-right, bottom-right, bottom-left."""
    return (
        (centre - width / 2, centre_y + height / 2),
        (centre + width / 2, centre_y + height / 2),
        (centre + width / 2, centre_y - height / 2),
        (centre - width / 2, centre_y - height / 2),
    )
