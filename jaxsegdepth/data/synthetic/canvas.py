"""What every scene family renders into: the image, the inverse depth and the visible surfaces,
and painting an object's part-id patch into them with a depth test."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from jaxsegdepth.data.synthetic.procedural import Source
from jaxsegdepth.data.synthetic.textures import clip_colour, crop, noise_bank

COVERED = -1  # `Canvas.surface` where an object hides the background


@dataclasses.dataclass(frozen=True)
class Look:
    """How an object is painted: `colours[k]` is the RGB of part k (row 0 unused); parts from
    `textured_from` on take a procedural `texture` instead when one is given. Over either lie
    smooth-noise shading (`texture_amplitude`) and a grain (fine noise, blurred by `grain_blur`
    pixels: gravel, fabric, foliage)."""

    colours: np.ndarray
    texture_amplitude: float
    grain_amplitude: float = 0.03
    grain_blur: float = 0.0
    texture: Source | None = None
    textured_from: int = 1


class Canvas:
    """Mutable render state: uint8 image (H, W, 3), float32 inverse depth (H, W) and int8
    surface ids (H, W; COVERED under objects), with the sample's generator and light level."""

    def __init__(self, rng: np.random.Generator, size: int, light_level: float = 1.0):
        self.rng = rng
        self.size = size
        self.light_level = light_level
        self.image = None
        self.inverse_depth = None
        self.surface = None

    def paint(self, parts, left, top, look: Look, inverse_z: float, mask=None, shading=True):
        """Composites the part-id patch `parts` (0 = empty) at (left, top) at `inverse_z`:
        pixels already nearer occlude it. Shading is cylindrical across the patch when
        `shading`; painted pixels join `mask` when given."""
        rng, size = self.rng, self.size
        patch_rows, patch_columns = parts.shape
        row_start, row_end = max(0, top), min(size, top + patch_rows)
        column_start, column_end = max(0, left), min(size, left + patch_columns)
        if row_start >= row_end or column_start >= column_end:
            return
        window = np.s_[row_start:row_end, column_start:column_end]
        patch = np.s_[row_start - top : row_end - top, column_start - left : column_end - left]
        visible_parts = parts[patch]
        inside = (visible_parts > 0) & (self.inverse_depth[window] < inverse_z)
        if not inside.any():
            return
        rows, columns = visible_parts.shape
        ys, xs = np.nonzero(inside)
        shade = _shade(rng, look, rows, columns, ys, xs)
        if shading:
            across = (np.arange(column_start, column_end, dtype=np.float32) - left + 0.5) / (
                patch_columns
            )
            shade *= (0.72 + 0.38 * np.sin(np.pi * across))[xs]  # across is inside (0, 1)
        part = visible_parts[ys, xs]
        colour = look.colours[part]
        if look.texture is not None:
            texture = look.texture.draw(rng, patch_rows, patch_columns)[patch][ys, xs]
            colour = np.where((part >= look.textured_from)[:, None], texture, colour)
        colour = colour * (shade * self.light_level)[:, None]
        self.image[window][ys, xs] = clip_colour(colour).astype(np.uint8)
        self.inverse_depth[window][ys, xs] = inverse_z
        self.surface[window][ys, xs] = COVERED
        if mask is not None:
            mask[window] |= inside


def _shade(rng, look: Look, rows, columns, ys, xs) -> np.ndarray:
    """1 + smooth-noise texture + grain at the pixels (ys, xs) of a rows x columns patch."""
    smooth, fine = noise_bank()
    texture = crop(smooth, rng, rows, columns)
    grain = crop(fine, rng, rows, columns)
    if look.grain_blur > 0:  # coarser grain, back to the fine noise's spread
        grain = cv2.GaussianBlur(grain, (0, 0), look.grain_blur)
        grain *= 0.5 / max(float(grain.std()), 1e-6)
    return 1.0 + look.texture_amplitude * texture[ys, xs] + look.grain_amplitude * grain[ys, xs]
