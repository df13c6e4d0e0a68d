"""A sample of the set: the scene rendered as uint8 arrays (`render`), JPEG-encoded like the real
set (`encode`), or both (`generate`), and the constants of the set's format."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from jaxsegdepth import names
from jaxsegdepth.data.synthetic.figures import render_exhibits, render_figures
from jaxsegdepth.data.synthetic.plane import Plane, drop_shadows
from jaxsegdepth.data.synthetic.room import DEPTH_SCALE, INV_FAR, Scene
from jaxsegdepth.data.synthetic.shadows import cast_shadows, draw_lighting, relight

# Part of every built set's name: bump it whenever `render` or `encode` changes their output,
# so a set made by an older generator is rebuilt rather than silently reused.
GENERATOR_VERSION = 5
SIZE = 224
JPEG_QUALITY_RGB = 90  # inputs of a sample that names no quality of its own (and photos.py's)
JPEG_QUALITY_RGB_RANGE = (75, 95)  # inclusive; bg and bg_fg draw theirs apart per sample
JPEG_QUALITY_TARGET = 95
QUALITY_KEY = "jpeg_quality"  # render's (2,) uint8 entry: the qualities of names.INPUTS
KEYS = names.INPUTS + names.HEADS
FAMILIES = ("room", "plane")
PLANE_SHARE = 0.35  # the share of samples of the plane family
CLEAN_SHARE = 0.3  # the share of exact plates: the same light and one JPEG quality for both
_KIND_STREAM = 1  # the generator of a sample's kind, apart from its scene's


def kind(seed: int, index: int) -> tuple[str, bool]:
    """(family, clean) of sample `index` of the set with `seed`: its scene family (`FAMILIES`)
    and whether its plate is exact (no light change, one JPEG quality: only the figures and
    their shadows differ)."""
    draws = np.random.default_rng([int(seed), int(index), _KIND_STREAM]).uniform(size=2)
    return FAMILIES[int(draws[0] < PLANE_SHARE)], bool(draws[1] < CLEAN_SHARE)


def _scene(rng, family: str, size: int, mask: np.ndarray, shadows: bool):
    """Renders a scene of `family` into `mask`: (the canvas with bg_fg's image, bg, the
    lighting of bg_fg)."""
    if family == "room":
        scene = Scene(rng, size)
        scene.render_room()
        scene.render_pictures()
        render_exhibits(scene)
        bg = scene.image.copy()
        figures = render_figures(scene, mask)
        lighting = draw_lighting(rng)
        if shadows:
            cast_shadows(scene, figures, lighting)
        return scene, bg, lighting
    scene = Plane(rng, size)
    scene.render_plane()
    scene.render_cutouts(int(rng.integers(0, 4)), None)
    bg = scene.image.copy()
    cutouts = scene.render_cutouts(int(rng.integers(1, 5)), mask)
    lighting = draw_lighting(rng)
    if shadows:
        drop_shadows(scene, cutouts, lighting)
    return scene, bg, lighting


def _render(
    seed: int, index: int, size: int = SIZE, *, shadows: bool = True
) -> dict[str, np.ndarray]:
    """`render`, with the shadows optional: the same random draws either way, so the two
    differ exactly by the shadows."""
    family, clean = kind(seed, index)
    rng = np.random.default_rng([int(seed), int(index)])
    mask = np.zeros((size, size), bool)
    scene, bg, lighting = _scene(rng, family, size, mask, shadows)
    lowest, highest = JPEG_QUALITY_RGB_RANGE
    qualities = rng.integers(lowest, highest + 1, len(names.INPUTS)).astype(np.uint8)
    if clean:
        qualities[:] = qualities[0]
    bg_fg = scene.image if clean else relight(scene.image, lighting.gain)
    return {
        "bg": bg,
        "bg_fg": bg_fg,
        "mask": mask.astype(np.uint8) * 255,
        "depth": depth_image(scene.inverse_depth),
        QUALITY_KEY: qualities,
    }


def depth_image(inverse_depth: np.ndarray) -> np.ndarray:
    """The uint8 depth target of an inverse depth (1/metres): normalised between Z_FAR (0) and
    Z_NEAR (255), rounded, clipped."""
    depth = (inverse_depth - INV_FAR) * (DEPTH_SCALE * 255.0) + 0.5
    return np.clip(depth, 0, 255).astype(np.uint8)


def render(seed: int, index: int, size: int = SIZE) -> dict[str, np.ndarray]:
    """Renders sample `index` of the set with `seed`: uint8 arrays bg, bg_fg (H,W,3), mask,
    depth (H,W) and `QUALITY_KEY` (2,); mask is 0/255 (union of the visible figures), depth
    near = bright, and the last holds the JPEG qualities `encode` gives bg and bg_fg."""
    return _render(seed, index, size)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """`image` as JPEG bytes at `quality` (PIL's encoder)."""
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
