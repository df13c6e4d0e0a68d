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

Modules: `samples` (`render`, `encode`, `generate` and the set's constants), `room` (the camera,
the room, its pictures and the depth-tested painting), `shapes` (silhouettes, sculptures,
boxes), `figures` (placing the exhibits and figures), `shadows` (the light of bg_fg) and
`textures` (colours and noise); `walk` makes a clip from a fixed camera with known masks.
"""

from jaxsegdepth.data.synthetic import room, samples
from jaxsegdepth.data.synthetic.room import Z_FAR, Z_NEAR
from jaxsegdepth.data.synthetic.samples import (
    GENERATOR_VERSION,
    JPEG_QUALITY_RGB,
    JPEG_QUALITY_RGB_RANGE,
    JPEG_QUALITY_TARGET,
    KEYS,
    QUALITY_KEY,
    SIZE,
    encode,
    encode_jpeg,
    generate,
    render,
)
from jaxsegdepth.data.synthetic.shapes import silhouette
from jaxsegdepth.data.synthetic.walk import moving_figure

__all__ = [
    "GENERATOR_VERSION",
    "JPEG_QUALITY_RGB",
    "JPEG_QUALITY_RGB_RANGE",
    "JPEG_QUALITY_TARGET",
    "KEYS",
    "QUALITY_KEY",
    "SIZE",
    "Z_FAR",
    "Z_NEAR",
    "encode",
    "encode_jpeg",
    "generate",
    "moving_figure",
    "render",
    "silhouette",
]

# What tests/test_synthetic.py reaches into: the render with shadows optional, and the room.
_render, _Scene = samples._render, room.Scene
_CEILING, _LEFT_WALL = room.CEILING, room.LEFT_WALL
_RIGHT_WALL, _BACK_WALL = room.RIGHT_WALL, room.BACK_WALL
