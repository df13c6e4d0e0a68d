"""The colours and noise the scenes are painted with: the colour distributions of walls, floors,
exhibits and skin, a fixed noise bank, and the small array helpers that apply them."""

from __future__ import annotations

import colorsys
import functools

import cv2
import numpy as np
from PIL import Image

# Colour distributions (RGB 0..255). Figures draw from these too (see figure_colour).
WALL_COLOURS = np.array(
    [
        (232, 226, 214), (205, 203, 198), (216, 198, 168), (150, 48, 50), (58, 92, 76),
        (52, 64, 102), (190, 170, 132), (172, 190, 204), (120, 120, 124), (200, 160, 120),
    ],
    np.float32,
)  # fmt: skip
FLOOR_COLOURS = np.array(
    [
        (128, 86, 52), (160, 118, 78), (96, 64, 44), (150, 150, 148), (196, 192, 184),
        (70, 70, 74), (176, 140, 100), (110, 100, 90),
    ],
    np.float32,
)  # fmt: skip
EXHIBIT_COLOURS = np.array(
    [
        (236, 234, 228), (140, 96, 52), (70, 60, 52), (180, 170, 150), (40, 40, 44),
        (200, 180, 120),
    ],
    np.float32,
)  # fmt: skip
SKIN_COLOURS = np.array(
    [(236, 200, 170), (210, 160, 120), (170, 120, 86), (120, 80, 56), (80, 56, 40)], np.float32
)

_BANK = 512  # side of the precomputed noise textures


@functools.lru_cache(maxsize=None)
def noise_bank() -> tuple[np.ndarray, np.ndarray]:
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


def crop(bank: np.ndarray, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random `height` x `width` window of a noise-bank texture."""
    top = int(rng.integers(0, _BANK - height + 1))
    left = int(rng.integers(0, _BANK - width + 1))
    return bank[top : top + height, left : left + width]


def clip_colour(values: np.ndarray) -> np.ndarray:
    """`np.clip(values, 0, 255)` at a fraction of its cost on the tiny arrays of colours."""
    return np.minimum(np.maximum(values, 0), 255)


def per_label(values: np.ndarray, label: np.ndarray) -> np.ndarray:
    """`values[:, label]` for a uint8 label image, (len(values), H, W) float32, by lookup tables
    (faster than `np.take`)."""
    table = np.zeros((len(values), 256), np.float32)
    table[:, : values.shape[1]] = values
    out = np.empty((len(values),) + label.shape, np.float32)
    for row, plane in zip(table, out):
        cv2.LUT(label, row, dst=plane)
    return out


def jitter(rng, colour, amount=14.0):
    """`colour` moved by up to `amount` per channel, kept within 0..255."""
    return clip_colour(colour + rng.uniform(-amount, amount, 3)).astype(np.float32)


def pick(rng, table):
    """A random entry of `table`."""
    return table[int(rng.integers(len(table)))]


def random_colour(rng) -> np.ndarray:
    """A saturated-ish random colour (clothing)."""
    hue, saturation, value = rng.uniform(0, 1), rng.uniform(0.2, 0.9), rng.uniform(0.25, 0.95)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value), np.float32) * 255


def figure_colour(rng, wall, floor) -> np.ndarray:
    """Clothing/sculpture colours: often random, sometimes exactly the room's own palette."""
    draw = rng.uniform()
    if draw < 0.2:
        return jitter(rng, wall, 10)  # the very wall colour of this room
    if draw < 0.3:
        return jitter(rng, floor, 10)
    if draw < 0.45:
        return jitter(rng, pick(rng, WALL_COLOURS))
    if draw < 0.55:
        return jitter(rng, pick(rng, EXHIBIT_COLOURS))
    return random_colour(rng)
