"""Procedural textures with the statistics of natural images, for walls, floors, pictures,
exhibits, figures and the plane scenes.

Three kinds, each drawn by a `Source` (a kind and a palette), so that a background and an object
can share their statistics, or their very source (camouflage):
- dead leaves: occluding discs, ellipses and squares with a power-law size distribution
  (density ~ r^-3, scale invariant, so edges at every scale), coloured from a natural palette,
  some leaves with 1/f noise of their own;
- 1/f colour noise: fields whose power spectrum falls as f^-slope with a slope around 2 (made by
  FFT), one luminance field and two weaker colour fields around a base colour;
- multi-scale patterns: stripes or checks warped by smooth noise, over a colour gradient.

The geometry comes from banks computed once per process from fixed seeds (the leaves' ids and
the noise fields, `BANK` pixels square); a texture is a random window of a bank (flipped or
transposed, sometimes zoomed) coloured by a per-draw palette through a lookup table, so drawing
one costs a crop and a table lookup, not the shapes or the FFT.
"""

from __future__ import annotations

import dataclasses
import functools

import cv2
import numpy as np

from jaxsegdepth.data.synthetic.textures import crop, noise_bank

BANK = 512
LEAF_SHAPES = ("disc", "ellipse", "square")  # one leaves bank per shape
LEAF_RADII = (1.5, 120.0)  # smallest and largest leaf radius in bank pixels
LEAF_COUNT = 24000  # leaves per bank: they cover it about four times over
PINK_SLOPES = (1.6, 1.9, 2.2, 2.5)  # power-spectrum slopes of the 1/f banks
KINDS = ("leaves", "pink", "pattern")
PALETTE = 256  # colours of a palette: one per leaf id


def power_law_radii(rng: np.random.Generator, count: int, smallest: float, largest: float):
    """`count` radii with density ~ r^-3 on [smallest, largest] (inverse of its CDF)."""
    low, high = smallest**-2.0, largest**-2.0
    return (low - rng.uniform(size=count) * (low - high)) ** -0.5


def dead_leaves_ids(rng: np.random.Generator, size: int, count: int, shape: str) -> np.ndarray:
    """A dead-leaves image of leaf ids (uint8, random per leaf): `count` leaves of `shape` with
    power-law radii `LEAF_RADII`, dropped at uniform positions, each later one on top."""
    ids = np.full((size, size), rng.integers(256), np.uint8)
    radii = power_law_radii(rng, count, *LEAF_RADII)
    margin = LEAF_RADII[1]
    centres = rng.uniform(-margin, size + margin, (count, 2))
    labels = rng.integers(0, 256, count)
    aspects = rng.uniform(0.3, 1.0, count)
    angles = rng.uniform(0, 180, count)
    for (x, y), radius, label, aspect, angle in zip(centres, radii, labels, aspects, angles):
        centre, colour = (int(x), int(y)), int(label)
        if shape == "disc":
            cv2.circle(ids, centre, int(radius), colour, -1)
        elif shape == "ellipse":
            axes = (int(radius), max(1, int(radius * aspect)))
            cv2.ellipse(ids, centre, axes, float(angle), 0, 360, colour, -1)
        else:
            box = cv2.boxPoints(((x, y), (2 * radius, 2 * radius), float(angle)))
            cv2.fillConvexPoly(ids, box.astype(np.int32), colour)
    return ids


def pink_field(rng: np.random.Generator, size: int, slope: float) -> np.ndarray:
    """A (size, size) float32 Gaussian field of zero mean and unit std whose power spectrum
    falls as f^-slope (white noise shaped in the Fourier domain)."""
    spectrum = np.fft.rfft2(rng.standard_normal((size, size)))
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    frequency = np.hypot(fx, fy)
    frequency[0, 0] = 1.0
    spectrum *= frequency ** (-slope / 2)
    spectrum[0, 0] = 0.0
    field = np.fft.irfft2(spectrum, s=(size, size))
    return (field / field.std()).astype(np.float32)


@functools.lru_cache(maxsize=None)
def leaves_bank() -> np.ndarray:
    """(len(LEAF_SHAPES), BANK, BANK) uint8 leaf ids, fixed forever by their seed."""
    rng = np.random.default_rng(20261207)
    return np.stack([dead_leaves_ids(rng, BANK, LEAF_COUNT, shape) for shape in LEAF_SHAPES])


@functools.lru_cache(maxsize=None)
def pink_bank() -> np.ndarray:
    """(len(PINK_SLOPES), BANK, BANK) float32 1/f fields, fixed forever by their seed."""
    rng = np.random.default_rng(20261208)
    return np.stack([pink_field(rng, BANK, slope) for slope in PINK_SLOPES])


def window(rng: np.random.Generator, bank: np.ndarray, height: int, width: int) -> np.ndarray:
    """A random window of a bank image, seen at a random one of its 8 orientations and, half of
    the time, zoomed in up to 3x (nearest neighbour: leaf edges stay sharp)."""
    zoom = rng.uniform(1.0, 3.0) if rng.uniform() < 0.5 else 1.0
    rows = min(BANK, max(2, int(np.ceil(height / zoom))))
    columns = min(BANK, max(2, int(np.ceil(width / zoom))))
    transpose = rng.uniform() < 0.5
    if transpose:
        rows, columns = columns, rows
    out = crop(bank, rng, rows, columns)
    if transpose:
        out = out.T
    out = out[:: int(rng.choice((-1, 1))), :: int(rng.choice((-1, 1)))]
    if out.shape != (height, width):
        out = cv2.resize(
            np.ascontiguousarray(out), (width, height), interpolation=cv2.INTER_NEAREST
        )
    return out


def natural_palette(rng: np.random.Generator, count: int, anchor=None) -> np.ndarray:
    """(count, 3) float32 RGB colours as natural scenes hold them: a few hues (one of them
    `anchor`'s when given), mostly low saturation, lightness spread wide."""
    hues = rng.uniform(0, 360, int(rng.integers(1, 4)))
    if anchor is not None:
        anchor_hsv = cv2.cvtColor(np.float32(anchor).reshape(1, 1, 3) / 255, cv2.COLOR_RGB2HSV)
        hues[0] = anchor_hsv[0, 0, 0]
    hue = (hues[rng.integers(len(hues), size=count)] + rng.normal(0, 12, count)) % 360
    saturation = rng.beta(1.3, 3.0, count) * rng.uniform(0.4, 1.0)
    value = rng.beta(2.0, 2.0, count) * rng.uniform(0.7, 1.0) + 0.04
    hsv = np.stack([hue, saturation, value], -1).astype(np.float32)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0] * 255


@dataclasses.dataclass(frozen=True)
class Source:
    """A texture's statistics: its kind, its palette and the bank it draws its geometry from.
    Every `draw` is a new window of the same source."""

    kind: str
    palette: np.ndarray  # (PALETTE, 3) float32 RGB
    bank_index: int
    textured_leaves: float  # leaves: the share of leaves with 1/f noise of their own

    def draw(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """A (height, width, 3) float32 RGB texture, mostly in [0, 255]: whoever paints it
        clips once, after its own shading."""
        if self.kind == "leaves":
            return self._leaves(rng, height, width)
        if self.kind == "pink":
            return self._pink(rng, height, width)
        return self._pattern(rng, height, width)

    def _leaves(self, rng, height, width):
        ids = window(rng, leaves_bank()[self.bank_index], height, width)
        ids = np.ascontiguousarray(ids)
        image = cv2.LUT(cv2.merge([ids] * 3), self.palette[None])  # palette[ids], faster
        if self.textured_leaves > 0:
            textured = rng.uniform(size=PALETTE) < self.textured_leaves
            amplitude = cv2.LUT(ids, np.where(textured, 0.25, 0.0).astype(np.float32))
            noise = window(rng, pink_bank()[1], height, width)
            image *= (1.0 + amplitude * noise)[..., None]
        return image

    def _pink(self, rng, height, width):
        fields = pink_bank()[self.bank_index % len(PINK_SLOPES)]
        base = self.palette[int(rng.integers(PALETTE))]
        luminance = window(rng, fields, height, width) * rng.uniform(0.12, 0.35)
        image = base * (1.0 + luminance[..., None])
        for channel, amount in zip((0, 2), rng.uniform(4, 20, 2)):
            image[..., channel] += amount * window(rng, fields, height, width)
        return image

    def _pattern(self, rng, height, width):
        y = np.arange(height, dtype=np.float32)[:, None]
        x = np.arange(width, dtype=np.float32)[None, :]
        smooth, _ = noise_bank()
        warp = crop(smooth, rng, height, width) * np.float32(rng.uniform(0.0, 1.5))
        start, end = self.palette[rng.integers(PALETTE, size=2)]
        fields = [_ramp(rng, x, y, max(height, width)) * np.float32(rng.uniform(0.0, 1.0))]
        colours = [end - start]  # the gradient between two palette colours
        for period in sorted(rng.uniform(3, 40, int(rng.integers(1, 3))), reverse=True):
            angle = rng.uniform(0, np.pi)
            wave = np.sin(2 * np.pi * (_ramp(None, x, y, period, angle) + warp))
            if rng.uniform() < 0.4:  # checks: the product of two crossing waves
                across = _ramp(None, x, y, period, angle + np.pi / 2) + warp
                wave *= np.sin(2 * np.pi * across)
            edge = np.clip(wave * np.float32(rng.uniform(1.0, 6.0)), -1, 1)  # soft to sharp
            fields.append(0.5 + 0.5 * edge)
            colour = self.palette[int(rng.integers(PALETTE))] - (start + end) / 2
            colours.append(colour * np.float32(rng.uniform(0.3, 0.9)))
        colour_matrix = np.concatenate([np.stack(colours, 1), start[:, None]], 1)
        return cv2.transform(cv2.merge(fields), colour_matrix.astype(np.float32))


def _ramp(rng, x, y, scale, angle=None) -> np.ndarray:
    """(x cos + y sin) / scale at `angle` (drawn from `rng` when None), shifted to start at 0."""
    if angle is None:
        angle = rng.uniform(0, 2 * np.pi)
    cos, sin = np.float32(np.cos(angle) / scale), np.float32(np.sin(angle) / scale)
    ramp = x * cos + y * sin
    return ramp - ramp.min()


def source(rng: np.random.Generator, anchor=None, kinds=KINDS) -> Source:
    """A random texture source of one of `kinds`, its palette around `anchor` when given."""
    kind = kinds[int(rng.integers(len(kinds)))]
    banks = len(LEAF_SHAPES) if kind == "leaves" else len(PINK_SLOPES)
    palette = natural_palette(rng, PALETTE, anchor)
    textured = rng.uniform(0.0, 0.5) if rng.uniform() < 0.5 else 0.0
    return Source(kind, palette, int(rng.integers(banks)), textured)
