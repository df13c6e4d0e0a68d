"""Procedural scenes that look and behave like MODEST Museum samples, textured like photographs.

One sample is a background (`bg`), the same scene with 1-4 foreground objects (`bg_fg`), the
union of the visible objects (`mask`) and the depth of the composite scene (`depth`, near =
bright), all 224x224 and JPEG-encoded like the real set, so both datasets go through one
decoding path. Two scene families (`kind(seed, index)` says which, `PLANE_SHARE` of planes):

- rooms (a pinhole camera inside a box-shaped room, metres): camera at `camera_height` above
  the floor, looking down the room; the visible surface of every pixel is the nearest of floor,
  ceiling, left/right wall and back wall (computed with inverse depths, which are linear in the
  pixel coordinates for a plane); floors of planks, tiles or stone, painted walls (sometimes
  striped wallpaper), a skirting board, and in a share of rooms a procedural texture mapped in
  perspective on the floor or the walls; framed pictures on the walls (flat motifs or
  procedural textures); 0-2 background exhibits (pedestals with sculptures, benches) that
  belong to `bg`; figures (person-like silhouettes or smooth sculptures) stand on the floor at
  a depth `z`, scaled by perspective, painted far to near with a depth test so that nearer
  things occlude farther ones;
- planes: a textured plane seen at a tilt, with textured cut-outs in front of it (0-3 in `bg`,
  1-4 foreground) occluding each other, each nearer than the plane behind it.

Textures (`procedural`) have the statistics of natural images: dead leaves (occluding shapes
with power-law sizes, some leaves textured themselves), 1/f colour noise with a power-spectrum
slope around 2, and warped stripes and checks over gradients, coloured from natural palettes.
Objects take them too, often from the background's own texture source (camouflage), and their
colours are sometimes the room's own, so an object cannot be told apart by colour or texture
alone.

Capture realism in `bg_fg`: one distant light per sample makes every object cast a soft shadow
on the background (the room's floor and walls, or the plane), darkening only the background;
sometimes the light of the whole shot also changes a little (gain and colour cast). Neither is
foreground: the mask stays the objects alone, where a background-subtraction threshold would
take the shadows too. bg and bg_fg are JPEG-encoded at qualities drawn apart per sample
(`JPEG_QUALITY_RGB_RANGE`, carried by `render`'s `jpeg_quality`), the targets at
`JPEG_QUALITY_TARGET`. A `CLEAN_SHARE` of samples keeps an exact plate: no light change and one
JPEG quality for both shots, so only the objects and their shadows differ.

Depth image = clip((1/z - 1/Z_FAR) / (1/Z_NEAR - 1/Z_FAR), 0, 1) (normalised inverse depth,
near = bright, like the reference's depth maps); objects are always nearer than the surface
behind them.

Everything is deterministic for `(seed, index)`: `render(seed, index)` draws from
`np.random.default_rng([seed, index])` (the sample's kind from a stream of its own), the fixed
noise bank and the fixed texture banks.

Speed: `python tools/synthetic_speed.py --speed N` times `generate`. A preview grid of samples:
`python tools/plot.py samples --out preview.png`.

Modules: `samples` (`render`, `encode`, `generate`, `kind` and the set's constants), `canvas`
(the image, depth and surfaces, and depth-tested painting), `room` (the camera, the room and
its pictures), `plane` (the plane family), `shapes` (silhouettes, sculptures, cut-outs, boxes),
`figures` (placing the exhibits and figures), `shadows` (the light of bg_fg in the rooms),
`procedural` (the natural-image textures) and `textures` (colour tables and noise); `walk`
makes a clip from a fixed camera with known masks.
"""

from jaxsegdepth.data.synthetic import plane, room, samples
from jaxsegdepth.data.synthetic.room import Z_FAR, Z_NEAR
from jaxsegdepth.data.synthetic.samples import (
    CLEAN_SHARE,
    FAMILIES,
    GENERATOR_VERSION,
    JPEG_QUALITY_RGB,
    JPEG_QUALITY_RGB_RANGE,
    JPEG_QUALITY_TARGET,
    KEYS,
    PLANE_SHARE,
    QUALITY_KEY,
    SIZE,
    encode,
    encode_jpeg,
    generate,
    kind,
    render,
)
from jaxsegdepth.data.synthetic.shapes import silhouette
from jaxsegdepth.data.synthetic.walk import moving_figure

__all__ = [
    "CLEAN_SHARE",
    "FAMILIES",
    "GENERATOR_VERSION",
    "JPEG_QUALITY_RGB",
    "JPEG_QUALITY_RGB_RANGE",
    "JPEG_QUALITY_TARGET",
    "KEYS",
    "PLANE_SHARE",
    "QUALITY_KEY",
    "SIZE",
    "Z_FAR",
    "Z_NEAR",
    "encode",
    "encode_jpeg",
    "generate",
    "kind",
    "moving_figure",
    "render",
    "silhouette",
]

# What tests/test_synthetic.py reaches into: the render with shadows optional, the room, the
# plane and the depth target of an inverse depth.
_render, _Scene, _Plane = samples._render, room.Scene, plane.Plane
_depth_image = samples.depth_image
_CEILING, _LEFT_WALL = room.CEILING, room.LEFT_WALL
_RIGHT_WALL, _BACK_WALL = room.RIGHT_WALL, room.BACK_WALL
