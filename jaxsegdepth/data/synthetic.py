"""Procedural "museum" scenes that look and behave like MODEST Museum samples.

One sample is a background room (`bg`), the same room with 1-4 figures standing on the floor
(`bg_fg`), the union of the visible figures (`mask`) and the depth of the composite scene
(`depth`, near = bright), all 224x224 and JPEG-encoded like the real set, so both datasets go
through one decoding path.

Scene model (a pinhole camera inside a box-shaped room, metres):
- camera at height `hc` above the floor, looking down the room; the visible surface of every
  pixel is the nearest of floor, ceiling, left/right wall and back wall (computed with inverse
  depths, which are linear in the pixel coordinates for a plane);
- textured floor (planks, tiles or stone), painted walls (sometimes striped wallpaper), a
  skirting board, framed pictures on the walls, 0-2 background exhibits (pedestals with
  sculptures, benches) that belong to `bg`;
- figures (person-like silhouettes or smooth sculptures) stand on the floor at a depth `z`,
  scaled by perspective, painted far to near with a depth test so that nearer things occlude
  farther ones; colours and textures are sometimes drawn from the wall/exhibit distributions, so
  a figure cannot be told apart from the background by its colour alone;
- depth image = clip((1/z - 1/Z_FAR) / (1/Z_NEAR - 1/Z_FAR), 0, 1) (normalised inverse depth,
  near = bright, like the reference's depth maps); figures are always nearer than the floor and
  walls behind them.

Everything is deterministic for `(seed, index)`: `render(seed, index)` draws from
`np.random.default_rng([seed, index])` and a fixed noise bank.

Command: `python -m jaxsegdepth.data.synthetic --speed N` times `generate`. A preview grid of
samples is drawn above the data layer: `python -m jaxsegdepth.plots samples --out preview.png`.
"""
from __future__ import annotations

import argparse
import functools
import io
import math
import time

import numpy as np
from PIL import Image, ImageDraw

from jaxsegdepth import names

# Part of every built set's name: bump it whenever `render` or `encode` changes their output,
# so a set made by an older generator is rebuilt rather than silently reused.
GENERATOR_VERSION = 1
SIZE = 224
Z_NEAR = 2.0  # metres mapped to depth 1.0 (anything nearer is clipped)
Z_FAR = 20.0  # metres mapped to depth 0.0
JPEG_QUALITY_RGB = 90
JPEG_QUALITY_TARGET = 95
KEYS = names.INPUTS + names.HEADS

_INV_NEAR, _INV_FAR = 1.0 / Z_NEAR, 1.0 / Z_FAR
_DEPTH_SCALE = 1.0 / (_INV_NEAR - _INV_FAR)

# Colour distributions (RGB 0..255). Figures draw from these too (see _figure_colour).
_WALL_COLOURS = np.array([
    (232, 226, 214), (205, 203, 198), (216, 198, 168), (150, 48, 50), (58, 92, 76),
    (52, 64, 102), (190, 170, 132), (172, 190, 204), (120, 120, 124), (200, 160, 120),
], np.float32)
_FLOOR_COLOURS = np.array([
    (128, 86, 52), (160, 118, 78), (96, 64, 44), (150, 150, 148), (196, 192, 184),
    (70, 70, 74), (176, 140, 100), (110, 100, 90),
], np.float32)
_EXHIBIT_COLOURS = np.array([
    (236, 234, 228), (140, 96, 52), (70, 60, 52), (180, 170, 150), (40, 40, 44), (200, 180, 120),
], np.float32)
_SKIN_COLOURS = np.array([
    (236, 200, 170), (210, 160, 120), (170, 120, 86), (120, 80, 56), (80, 56, 40),
], np.float32)

_CIRCLE14 = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * np.pi, 14, endpoint=False)]
_BANK = 512  # side of the precomputed noise textures


@functools.lru_cache(maxsize=None)
def _noise_bank() -> tuple[np.ndarray, np.ndarray]:
    """Smooth (two octaves) and fine noise textures, fixed forever by their seed."""
    rng = np.random.default_rng(20240601)
    smooth = np.zeros((_BANK, _BANK), np.float32)
    for cells, amp in ((8, 0.65), (32, 0.35)):
        grid = rng.standard_normal((cells, cells)).astype(np.float32)
        img = Image.fromarray(grid, mode="F").resize((_BANK, _BANK), Image.BICUBIC)
        smooth += amp * np.asarray(img, np.float32)
    smooth /= np.abs(smooth).max()
    fine = rng.standard_normal((_BANK, _BANK)).astype(np.float32) * 0.5
    return smooth, fine


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = np.arange(size, dtype=np.float32) + 0.5
    return c[None, :], c[:, None]  # u (1, W), v (H, 1): broadcast, not materialised


def _crop(bank: np.ndarray, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    y = int(rng.integers(0, _BANK - h + 1))
    x = int(rng.integers(0, _BANK - w + 1))
    return bank[y:y + h, x:x + w]


def _jitter(rng, colour, amount=14.0):
    return np.clip(colour + rng.uniform(-amount, amount, 3), 0, 255).astype(np.float32)


def _pick(rng, table):
    return table[int(rng.integers(len(table)))]


def _random_colour(rng) -> np.ndarray:
    """A saturated-ish random colour (clothing)."""
    h = rng.uniform(0, 1)
    s = rng.uniform(0.2, 0.9)
    v = rng.uniform(0.25, 0.95)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, np.float32) * 255


def _figure_colour(rng, wall, floor) -> np.ndarray:
    """Clothing/sculpture colours: often random, sometimes exactly the room's own palette."""
    r = rng.uniform()
    if r < 0.2:
        return _jitter(rng, wall, 10)  # the very wall colour of this room
    if r < 0.3:
        return _jitter(rng, floor, 10)
    if r < 0.45:
        return _jitter(rng, _pick(rng, _WALL_COLOURS))
    if r < 0.55:
        return _jitter(rng, _pick(rng, _EXHIBIT_COLOURS))
    return _random_colour(rng)


class _Scene:
    """Mutable render state: uint8 image, inverse depth and the room parameters."""

    def __init__(self, rng: np.random.Generator, size: int):
        self.rng = rng
        self.size = size
        s = size / 224.0
        self.f = 180.0 * s * rng.uniform(0.94, 1.06)  # focal length (pixels)
        self.vx = size * (0.5 + rng.uniform(-0.12, 0.12))  # vanishing point
        self.vy = size * rng.uniform(0.40, 0.50)
        self.hc = rng.uniform(1.45, 1.75)  # camera height
        self.hu = rng.uniform(3.0, 4.0) - self.hc  # ceiling above the camera
        width = rng.uniform(5.0, 9.0)
        self.wl = width * rng.uniform(0.35, 0.65)
        self.wr = width - self.wl
        self.d = rng.uniform(9.0, 15.0)  # back wall distance
        self.light = rng.uniform(0.85, 1.1)
        self.wall = _jitter(rng, _pick(rng, _WALL_COLOURS))
        self.floor = _jitter(rng, _pick(rng, _FLOOR_COLOURS))
        self.img = None  # (H, W, 3) float32, 0..255
        self.inv = None  # (H, W) float32 inverse depth

    # -- room -------------------------------------------------------------------------------
    def render_room(self):
        rng, n, f = self.rng, self.size, self.f
        u, v = _pixel_grid(n)
        du, dv = u - self.vx, v - self.vy  # (1, W), (H, 1)
        # Inverse depth of each plane along every pixel's ray (<= 0 where the ray misses it).
        # Floor/ceiling depend on the row only, the side walls on the column only.
        floor_i, ceil_i = dv * (1.0 / (f * self.hc)), dv * (-1.0 / (f * self.hu))
        left_i, right_i = du * (-1.0 / (f * self.wl)), du * (1.0 / (f * self.wr))
        row_i = np.maximum(floor_i, ceil_i)
        row_l = np.where(floor_i >= ceil_i, 0, 1).astype(np.uint8)
        col_i = np.maximum(left_i, right_i)
        col_l = np.where(left_i >= right_i, 2, 3).astype(np.uint8)
        inv = np.maximum(np.maximum(row_i, col_i), np.float32(1.0 / self.d))
        label = np.where(row_i >= col_i, row_l, col_l)
        label[inv == np.float32(1.0 / self.d)] = 4  # back wall
        self.inv = inv
        z = 1.0 / inv
        x_world = du * z * (1.0 / f)

        # Per-surface base colour and the amplitude of its smooth noise; label 5 is the skirting
        # board where the walls meet the floor.
        board_h = rng.uniform(0.08, 0.18)
        board = (label >= 2) & ((dv * z) > (self.hc - board_h) * f)
        label[board] = 5
        side = rng.uniform(0.8, 0.95)  # one side wall is lit less
        left_f, right_f = (side, 1.0) if rng.uniform() < 0.5 else (1.0, side)
        ceiling = _jitter(rng, np.array([238, 236, 230], np.float32), 10)
        board_colour = _jitter(rng, _pick(rng, (self.floor * 0.7, np.full(3, 235.0, np.float32))))
        palette = np.stack([
            self.floor, ceiling, self.wall * left_f, self.wall * right_f, self.wall * 0.97,
            board_colour]) * self.light
        amp = np.array([rng.uniform(0.04, 0.12), 0.03, 0.05, 0.05, 0.05, 0.02], np.float32)

        smooth, fine = _noise_bank()
        shade = 1.0 + np.take(amp, label) * _crop(smooth, rng, n, n) + 0.02 * _crop(fine, rng, n, n)
        shade *= 0.82 + 0.3 * np.clip((inv - _INV_FAR) * _DEPTH_SCALE, 0, 1)  # light falloff

        pattern, floor_delta = self._floor_pattern(x_world, z, smooth)
        delta = np.zeros((3, 6), np.float32)  # channel-first: fast broadcasting below
        delta[:, 0] = floor_delta * self.light
        img = np.take(palette.T, label, axis=1)  # (3, H, W)
        img += np.take(delta, label, axis=1) * pattern
        if rng.uniform() < 0.3:  # striped wallpaper on the walls
            sw = 1.0 / rng.uniform(0.15, 0.4)
            coord = np.where(label == 4, x_world, z)
            stripes = (np.floor(coord * sw).astype(np.int32) & 1).astype(np.float32)
            wdelta = np.zeros((3, 6), np.float32)
            wdelta[:, 2:5] = (self.wall * rng.uniform(-0.15, 0.15) * self.light)[:, None]
            img += np.take(wdelta, label, axis=1) * stripes
        img *= shade
        np.clip(img, 0, 255, out=img)
        self.img = np.ascontiguousarray(img.astype(np.uint8).transpose(1, 2, 0))

    def _floor_pattern(self, x_world, z, smooth):
        """Planks, tiles or stone: (pattern, the floor colour change it scales)."""
        rng, n = self.rng, self.size
        floor_kind = int(rng.integers(3))
        if floor_kind == 0:  # planks along the room
            pw = rng.uniform(0.15, 0.3)
            xp = x_world * (1.0 / pw)
            plank = np.floor(xp)
            tone = plank * 0.618034
            tone -= np.floor(tone)
            pattern = 0.12 * tone + 0.25 * (np.abs(xp - plank - 0.5) > 0.46)
            floor_delta = -self.floor * 0.9
        elif floor_kind == 1:  # checker tiles
            ts = 1.0 / rng.uniform(0.4, 1.0)
            pattern = ((np.floor(x_world * ts) + np.floor(z * ts)).astype(np.int32) & 1).astype(np.float32)
            other = _jitter(rng, _pick(rng, _FLOOR_COLOURS), 20)
            floor_delta = (other - self.floor) * rng.uniform(0.3, 1.0)
        else:  # stone
            pattern = _crop(smooth, rng, n, n) * 0.5
            floor_delta = self.floor * 0.4
        return pattern, floor_delta

    # -- pictures ---------------------------------------------------------------------------
    def _project(self, x, y, z):
        return (self.vx + self.f * x / z, self.vy - self.f * y / z)

    def render_pictures(self):
        """Framed pictures on the back and side walls, drawn in perspective with PIL."""
        rng = self.rng
        canvas = Image.fromarray(self.img)
        draw = ImageDraw.Draw(canvas)
        quads = []
        # Back wall: slots along its width.
        k = int(rng.integers(0, 4))
        x0, x1 = -self.wl + 0.4, self.wr - 0.4
        for i in range(k):
            a = x0 + (x1 - x0) * i / k
            b = x0 + (x1 - x0) * (i + 1) / k
            w = min(b - a - 0.2, rng.uniform(0.6, 2.2))
            if w < 0.3:
                continue
            c = rng.uniform(a + w / 2 + 0.1, b - w / 2 - 0.1) if b - a - 0.2 > w else (a + b) / 2
            h = rng.uniform(0.5, 1.6)
            yc = rng.uniform(-0.1, 0.7)
            quads.append([self._project(x, y, self.d) for x, y in (
                (c - w / 2, yc + h / 2), (c + w / 2, yc + h / 2),
                (c + w / 2, yc - h / 2), (c - w / 2, yc - h / 2))])
        # Side walls: slots along the depth.
        for wall_x, sign in ((-self.wl, -1), (self.wr, 1)):
            z_visible = self.f * abs(wall_x) / max(1.0, (self.vx if sign < 0 else self.size - self.vx))
            z0 = max(z_visible + 0.3, 2.0)
            k = int(rng.integers(0, 3))
            for i in range(k):
                a = z0 + (self.d - 0.5 - z0) * i / k
                b = z0 + (self.d - 0.5 - z0) * (i + 1) / k
                w = min(b - a - 0.2, rng.uniform(0.8, 2.5))
                if w < 0.4:
                    continue
                c = (a + b) / 2
                h = rng.uniform(0.5, 1.5)
                yc = rng.uniform(-0.1, 0.7)
                quads.append([self._project(wall_x, y, z) for z, y in (
                    (c - w / 2, yc + h / 2), (c + w / 2, yc + h / 2),
                    (c + w / 2, yc - h / 2), (c - w / 2, yc - h / 2))])
        for quad in quads:
            self._draw_picture(draw, np.array(quad, np.float32))
        self.img = np.array(canvas)

    def _draw_picture(self, draw, quad):
        rng, light = self.rng, self.light

        (ax, ay), (bx, by), (cx, cy), (dx, dy) = quad.tolist()

        def at(s, t):  # bilinear point in the quad (s: left->right, t: top->bottom)
            tx, ty = ax + (bx - ax) * s, ay + (by - ay) * s
            btx, bty = dx + (cx - dx) * s, dy + (cy - dy) * s
            return (tx + (btx - tx) * t, ty + (bty - ty) * t)

        def poly(s0, s1, t0, t1):
            return [at(s0, t0), at(s1, t0), at(s1, t1), at(s0, t1)]

        def col(c):
            return tuple(int(x) for x in np.clip(c * light, 0, 255))

        frame = _pick(rng, ((150, 110, 40), (40, 32, 28), (230, 228, 220), (110, 70, 40)))
        draw.polygon([tuple(p) for p in quad], fill=col(_jitter(rng, np.array(frame, np.float32))))
        m = rng.uniform(0.05, 0.12)
        draw.polygon(poly(m, 1 - m, m, 1 - m), fill=col(_random_colour(rng)))
        kind = int(rng.integers(3))
        if kind == 0:  # landscape: horizontal bands
            t = m
            for _ in range(int(rng.integers(2, 4))):
                t1 = min(1 - m, t + rng.uniform(0.15, 0.5))
                draw.polygon(poly(m, 1 - m, t, t1), fill=col(_random_colour(rng)))
                t = t1
        if kind <= 1:  # a round motif (portrait / still life)
            cs, ct, r = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.6), rng.uniform(0.12, 0.3)
            pts = [at(cs + r * c, ct + r * 1.2 * sn) for c, sn in _CIRCLE14]
            draw.polygon(pts, fill=col(_random_colour(rng)))
        else:  # abstract: a few rectangles
            for _ in range(int(rng.integers(1, 4))):
                s0, t0 = rng.uniform(m, 0.7), rng.uniform(m, 0.7)
                draw.polygon(poly(s0, min(1 - m, s0 + rng.uniform(0.1, 0.4)), t0,
                                  min(1 - m, t0 + rng.uniform(0.1, 0.4))),
                             fill=col(_random_colour(rng)))

    # -- objects standing on the floor (background exhibits and foreground figures) --------
    def floor_z_range(self, z_min=2.4, z_max=9.5):
        n = self.size
        z_feet_visible = self.f * self.hc / max(1.0, n - 3 - self.vy)  # feet inside the frame
        lo = max(z_min, z_feet_visible)
        hi = min(z_max, self.d - 0.8)
        return lo, max(hi, lo + 0.1)

    def place(self, z, u_center, half_width_m):
        """Clamp a position so the object stays between the side walls."""
        x = (u_center - self.vx) * z / self.f
        x = float(np.clip(x, -self.wl + half_width_m + 0.1, self.wr - half_width_m - 0.1))
        return x

    def paint(self, parts: np.ndarray, x0: int, y0: int, colours: np.ndarray, inv_z: float,
              texture_amp: float, mask: np.ndarray | None):
        """Composite a part-id patch (0 = empty) at (x0, y0) with a depth test.

        `colours[k]` is the RGB of part k; shading is cylindrical across the patch width plus
        smooth-noise texture. Pixels already nearer than `inv_z` occlude the object.
        """
        rng, n = self.rng, self.size
        ph, pw = parts.shape
        ya, yb = max(0, y0), min(n, y0 + ph)
        xa, xb = max(0, x0), min(n, x0 + pw)
        if ya >= yb or xa >= xb:
            return
        p = parts[ya - y0:yb - y0, xa - x0:xb - x0]
        inside = (p > 0) & (self.inv[ya:yb, xa:xb] < inv_z)
        if not inside.any():
            return
        smooth, fine = _noise_bank()
        h, w = p.shape
        xs = (np.arange(xa, xb, dtype=np.float32) - x0 + 0.5) / pw
        shade = 0.72 + 0.38 * np.sin(np.pi * np.clip(xs, 0, 1))[None, :]
        shade = shade * (1.0 + texture_amp * _crop(smooth, rng, h, w) + 0.03 * _crop(fine, rng, h, w))
        col = colours[p][inside] * (shade * self.light)[inside][:, None]
        region = self.img[ya:yb, xa:xb]
        region[inside] = np.clip(col, 0, 255).astype(np.uint8)
        self.inv[ya:yb, xa:xb][inside] = inv_z
        if mask is not None:
            mask[ya:yb, xa:xb] |= inside


def _person_parts(rng, h: int) -> np.ndarray:
    """Part ids of a person-like silhouette of height h: 1 head, 2 torso+arms, 3 legs."""
    aspect = rng.uniform(0.26, 0.38)
    w = max(3, int(round(h * aspect)))
    img = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(img)
    cx = w / 2 + rng.uniform(-0.05, 0.05) * w
    r = h * rng.uniform(0.055, 0.07)
    hy = r * 1.1
    shoulder, hip = h * rng.uniform(0.16, 0.2), h * rng.uniform(0.48, 0.54)
    sw, hw = w * rng.uniform(0.36, 0.46), w * rng.uniform(0.26, 0.34)
    arm = w * rng.uniform(0.1, 0.14)
    swing = rng.uniform(-0.08, 0.08) * w
    # legs
    stance = rng.uniform(0.02, 0.12) * w
    leg = w * rng.uniform(0.13, 0.17)
    for sgn in (-1, 1):
        top_in, top_out = cx + sgn * 0.02 * w, cx + sgn * hw
        foot = cx + sgn * (leg + stance)
        d.polygon([(top_in, hip - 2), (top_out, hip - 2), (foot + sgn * leg * 0.6, h - 1),
                   (foot - sgn * leg * 0.9, h - 1)], fill=3)
    if rng.uniform() < 0.3:  # coat or skirt over the upper legs
        d.polygon([(cx - hw, hip - 2), (cx + hw, hip - 2), (cx + hw * 1.35, h * 0.75),
                   (cx - hw * 1.35, h * 0.75)], fill=2)
    # torso and arms
    d.polygon([(cx - sw, shoulder), (cx + sw, shoulder), (cx + hw, hip), (cx - hw, hip)], fill=2)
    for sgn in (-1, 1):
        x_sh = cx + sgn * sw
        hand = x_sh + sgn * arm * 0.3 + swing * sgn * rng.uniform(0.5, 1.5)
        d.polygon([(x_sh - sgn * arm, shoulder), (x_sh, shoulder + arm * 0.3),
                   (hand, h * 0.56), (hand - sgn * arm, h * 0.56)], fill=2)
    d.ellipse([cx - sw * 0.95, shoulder - r * 0.3, cx + sw * 0.95, shoulder + r * 0.8], fill=2)
    # neck and head
    d.rectangle([cx - r * 0.45, hy, cx + r * 0.45, shoulder + 1], fill=1)
    d.ellipse([cx - r * 0.85, hy - r, cx + r * 0.85, hy + r * 1.05], fill=1)
    return np.asarray(img, np.uint8)


def silhouette(rng: np.random.Generator, height: int) -> np.ndarray:
    """A boolean figure mask `height` pixels tall, drawn as the scenes' figures are: person-like
    (65%) or a smooth sculpture (35%)."""
    if rng.uniform() < 0.65:
        return _person_parts(rng, height) > 0
    return _blob_parts(rng, height, rng.uniform(0.35, 0.9)) > 0


def _blob_parts(rng, h: int, aspect: float) -> np.ndarray:
    """A smooth sculpture: a solid-of-revolution profile or a stack of ellipses (part 1/2)."""
    w = max(3, int(round(h * aspect)))
    img = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(img)
    if rng.uniform() < 0.5:
        ys = np.linspace(0, h - 1, 14)
        t = ys / max(1, h - 1)
        k, ph = rng.uniform(0.6, 1.6), rng.uniform(0, np.pi)
        r = w / 2 * (0.45 + 0.55 * np.abs(np.sin(np.pi * k * t + ph)))
        r[0] = max(r[0] * 0.5, 1.0)
        r[-1] = max(r[-1], w * 0.3)
        pts = [(w / 2 - ri, yi) for ri, yi in zip(r, ys)] + \
              [(w / 2 + ri, yi) for ri, yi in zip(r[::-1], ys[::-1])]
        d.polygon(pts, fill=1)
    else:
        y = h - 1
        for i in range(int(rng.integers(1, 4))):
            eh = max(2.0, (h / 2) * rng.uniform(0.5, 1.1))
            ew = w / 2 * rng.uniform(0.55, 1.0) * (0.85 ** i)
            top = max(0.0, y - eh)
            d.ellipse([w / 2 - ew, top, w / 2 + ew, y], fill=1 + i % 2)
            y = top + eh * 0.2
            if y <= 1:
                break
    return np.asarray(img, np.uint8)


def _box_parts(h: int, w: int, top_h: int) -> np.ndarray:
    """A box seen from the front: part 1 front face, part 2 top face."""
    img = np.zeros((h + top_h, w), np.uint8)
    img[:top_h] = 2
    img[top_h:] = 1
    return img


def _add_object(scene: _Scene, rng, parts_fn, z, u, height_m, colours, amp, mask):
    px_per_m = scene.f / z
    h = max(4, int(round(height_m * px_per_m)))
    parts = parts_fn(h)
    ph, pw = parts.shape
    x = scene.place(z, u, pw / px_per_m / 2)
    uc = scene.vx + x * px_per_m
    v_foot = scene.vy + scene.hc * px_per_m
    x0 = int(round(uc - pw / 2))
    y0 = int(round(v_foot - ph))
    scene.paint(parts, x0, y0, colours, 1.0 / z, amp, mask)
    return uc, pw


def _render_exhibits(scene: _Scene):
    """Background exhibits: pedestals with a sculpture, or benches (part of `bg`)."""
    rng = scene.rng
    lo, hi = scene.floor_z_range(3.0, 11.0)
    for _ in range(int(rng.choice(3, p=[0.35, 0.45, 0.2]))):
        z = 1.0 / rng.uniform(1.0 / hi, 1.0 / lo)
        u = rng.uniform(0.1, 0.9) * scene.size
        px = scene.f / z
        colour = _jitter(rng, _pick(rng, _EXHIBIT_COLOURS))
        if rng.uniform() < 0.6:  # pedestal + sculpture on it
            ped_h, ped_w = rng.uniform(0.7, 1.1), rng.uniform(0.4, 0.7)
            top = max(1, int(0.06 * px))
            colours = np.stack([np.zeros(3, np.float32), colour, colour * 1.08])
            uc, _ = _add_object(scene, rng, lambda h: _box_parts(h, max(3, int(ped_w * px)), top),
                                z, u, ped_h, colours, 0.04, None)
            # The sculpture stands on the pedestal's top (drawn as a second object, same depth).
            sh = rng.uniform(0.3, 0.8)
            sc = np.stack([np.zeros(3, np.float32), _figure_colour(rng, scene.wall, scene.floor),
                           _jitter(rng, _pick(rng, _EXHIBIT_COLOURS))])
            parts = _blob_parts(rng, max(4, int(sh * px)), rng.uniform(0.5, 0.9))
            ph, pw = parts.shape
            v_top = scene.vy + (scene.hc - ped_h) * px - top
            scene.paint(parts, int(round(uc - pw / 2)), int(round(v_top - ph)), sc,
                        1.0 / (z - 0.05), 0.1, None)
        else:  # bench
            bw = rng.uniform(1.2, 2.2)
            colours = np.stack([np.zeros(3, np.float32), colour * 0.8, colour])
            _add_object(scene, rng, lambda h: _box_parts(h, max(3, int(bw * px)), max(1, int(0.1 * px))),
                        z, u, 0.45, colours, 0.05, None)


def _render_figures(scene: _Scene, mask: np.ndarray):
    rng = scene.rng
    lo, hi = scene.floor_z_range()
    count = int(rng.integers(1, 5))
    zs = 1.0 / rng.uniform(1.0 / hi, 1.0 / lo, count)  # uniform in image row of the feet
    us = rng.uniform(0.12, 0.88, count) * scene.size
    for i in range(1, count):
        if rng.uniform() < 0.35:  # stand close to (and possibly overlap) an earlier figure
            us[i] = us[i - 1] + rng.uniform(-0.5, 0.5) * scene.f * 0.5 / zs[i]
    for i in np.argsort(-zs):  # far to near
        z, u = float(zs[i]), float(us[i])
        amp = rng.uniform(0.05, 0.3)
        if rng.uniform() < 0.65:
            colours = np.stack([
                np.zeros(3, np.float32), _jitter(rng, _pick(rng, _SKIN_COLOURS), 10),
                _figure_colour(rng, scene.wall, scene.floor),
                _figure_colour(rng, scene.wall, scene.floor)])
            _add_object(scene, rng, lambda h: _person_parts(rng, h), z, u,
                        rng.uniform(1.45, 1.9), colours, amp, mask)
        else:
            c = _figure_colour(rng, scene.wall, scene.floor)
            colours = np.stack([np.zeros(3, np.float32), c, _jitter(rng, c, 30)])
            aspect = rng.uniform(0.35, 0.9)
            _add_object(scene, rng, lambda h: _blob_parts(rng, h, aspect), z, u,
                        rng.uniform(0.6, 1.7), colours, amp, mask)


def render(seed: int, index: int, size: int = SIZE) -> dict[str, np.ndarray]:
    """Renders sample `index` of the set with `seed`: uint8 arrays bg, bg_fg (H,W,3), mask,
    depth (H,W); mask is 0/255 (union of the visible figures), depth near = bright."""
    rng = np.random.default_rng([int(seed), int(index)])
    scene = _Scene(rng, size)
    scene.render_room()
    scene.render_pictures()
    _render_exhibits(scene)
    bg = scene.img.copy()
    mask = np.zeros((size, size), bool)
    _render_figures(scene, mask)
    bg_fg = scene.img
    depth = np.clip((scene.inv - _INV_FAR) * (_DEPTH_SCALE * 255.0) + 0.5, 0, 255).astype(np.uint8)
    return {"bg": bg, "bg_fg": bg_fg, "mask": mask.astype(np.uint8) * 255, "depth": depth}


def encode_jpeg(array: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode(sample: dict[str, np.ndarray]) -> dict[str, bytes]:
    """JPEG-encodes a rendered sample (inputs at quality 90, targets at 95)."""
    return {k: encode_jpeg(sample[k], JPEG_QUALITY_RGB if k in ("bg", "bg_fg") else JPEG_QUALITY_TARGET)
            for k in KEYS}


def generate(seed: int, index: int, size: int = SIZE) -> dict[str, bytes]:
    """Sample `index` of the synthetic set with `seed`, as JPEG bytes keyed bg/bg_fg/mask/depth."""
    return encode(render(seed, index, size))


def measure_speed(num: int = 200, seed: int = 0, size: int = SIZE) -> tuple[float, float]:
    """Samples/s of `generate` (render + 4 JPEG encodes) in this process: (per CPU second of this
    process, per wall-clock second). On a busy shared machine the first is the meaningful one."""
    generate(seed, 10 ** 6, size)  # warm the caches
    t, c = time.perf_counter(), time.process_time()
    for i in range(num):
        generate(seed, i, size)
    return num / (time.process_time() - c), num / (time.perf_counter() - t)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--speed", type=int, required=True, metavar="N",
                        help="time generating this many samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=SIZE)
    args = parser.parse_args(argv)
    cpu, wall = measure_speed(args.speed, args.seed, args.size)
    print(f"generate: {cpu:.0f} samples per CPU-second ({wall:.0f}/s wall clock) at "
          f"{args.size}x{args.size}, render + 4 JPEG encodes, one process")


if __name__ == "__main__":
    main()
