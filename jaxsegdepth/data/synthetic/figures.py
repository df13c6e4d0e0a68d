"""Objects standing on the floor: the background exhibits (part of `bg`) and the 1-4 foreground
figures (in `mask`), placed between the walls at a depth and painted far to near."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from jaxsegdepth.data.synthetic import procedural
from jaxsegdepth.data.synthetic.canvas import Look
from jaxsegdepth.data.synthetic.room import Scene
from jaxsegdepth.data.synthetic.shapes import blob_parts, box_parts, person_parts
from jaxsegdepth.data.synthetic.textures import (
    EXHIBIT_COLOURS,
    SKIN_COLOURS,
    figure_colour,
    jitter,
    pick,
)

GRAINY_FIGURES = 0.4  # the share of figures with a strong grain
TEXTURED_FIGURES = 0.5  # the share of figures with a procedural texture
TEXTURED_EXHIBITS = 0.4  # and of exhibits
CAMOUFLAGE = 0.5  # the share of textured objects that take a textured surface's own source
_EMPTY = np.zeros(3, np.float32)  # the colour of part 0, never painted


@dataclasses.dataclass(frozen=True)
class Standing:
    """An object standing on the floor as it was painted: its part ids and where they went."""

    parts: np.ndarray  # (rows, columns) part ids, 0 = empty
    left: int  # image column of parts[:, 0]
    top: int  # image row of parts[0]
    centre_u: float  # image column of its vertical axis
    foot_v: float  # image row of the floor it stands on
    px_per_m: float  # its scale in the image
    x: float  # world position of its axis on the floor (metres)
    z: float


def _add_object(scene: Scene, parts_fn, z, centre_u, height_m, look: Look, mask):
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
    scene.paint(parts, left, top, look, 1.0 / z, mask)
    return Standing(parts, left, top, centre_u, foot_v, px_per_m, x, z)


def object_texture(scene, anchor, share: float) -> procedural.Source | None:
    """A procedural texture for an object `share` of the time: then half of the time the very
    source of a textured floor or wall of the scene (camouflage), else one of its own around
    `anchor`'s hue."""
    rng = scene.rng
    if rng.uniform() >= share:
        return None
    if scene.sources and rng.uniform() < CAMOUFLAGE:
        names = sorted(scene.sources)
        return scene.sources[names[int(rng.integers(len(names)))]]
    return procedural.source(rng, anchor)


def render_exhibits(scene: Scene):
    """Background exhibits: pedestals with a sculpture, or benches (part of `bg`)."""
    rng = scene.rng
    near, far = scene.floor_z_range(3.0, 11.0)
    for _ in range(int(rng.choice(3, p=[0.35, 0.45, 0.2]))):
        z = 1.0 / rng.uniform(1.0 / far, 1.0 / near)
        centre_u = rng.uniform(0.1, 0.9) * scene.size
        px_per_m = scene.focal_px / z
        colour = jitter(rng, pick(rng, EXHIBIT_COLOURS))
        texture = object_texture(scene, colour, TEXTURED_EXHIBITS)
        if rng.uniform() < 0.6:  # pedestal + sculpture on it
            pedestal_height, pedestal_width = rng.uniform(0.7, 1.1), rng.uniform(0.4, 0.7)
            top_rows = max(1, int(0.06 * px_per_m))
            pedestal_columns = max(3, int(pedestal_width * px_per_m))
            pedestal = _add_object(
                scene,
                functools.partial(box_parts, width=pedestal_columns, top_height=top_rows),
                z,
                centre_u,
                pedestal_height,
                Look(np.stack([_EMPTY, colour, colour * 1.08]), 0.04, texture=texture),
                None,
            )
            # The sculpture stands on the pedestal's top (drawn as a second object, same depth).
            sculpture_height = rng.uniform(0.3, 0.8)
            sculpture_colours = np.stack(
                [
                    _EMPTY,
                    figure_colour(rng, scene.wall_colour, scene.floor_colour),
                    jitter(rng, pick(rng, EXHIBIT_COLOURS)),
                ]
            )
            parts = blob_parts(rng, max(4, int(sculpture_height * px_per_m)), rng.uniform(0.5, 0.9))
            rows, columns = parts.shape
            pedestal_top_v = (
                scene.vanishing_v + (scene.camera_height - pedestal_height) * px_per_m - top_rows
            )
            sculpture = Look(sculpture_colours, 0.1, texture=object_texture(scene, colour, 0.3))
            left = int(round(pedestal.centre_u - columns / 2))
            top = int(round(pedestal_top_v - rows))
            scene.paint(parts, left, top, sculpture, 1.0 / (z - 0.05))
        else:  # bench
            bench_columns = max(3, int(rng.uniform(1.2, 2.2) * px_per_m))
            seat_rows = max(1, int(0.1 * px_per_m))
            _add_object(
                scene,
                functools.partial(box_parts, width=bench_columns, top_height=seat_rows),
                z,
                centre_u,
                0.45,
                Look(np.stack([_EMPTY, colour * 0.8, colour]), 0.05, texture=texture),
                None,
            )


def figure_look(scene, person: bool) -> Look:
    """A figure's colours and texture: a person's skin (part 1) and clothes (parts 2, 3), or a
    sculpture's two tones; often a strong grain, as real objects have (gravel, fabric,
    leaves): where it matches the background's, single pixels tell nothing and only the
    region does; and a procedural texture `TEXTURED_FIGURES` of the time."""
    rng = scene.rng
    texture_amplitude = rng.uniform(0.05, 0.3)
    grain = (
        (rng.uniform(0.15, 0.45), rng.uniform(0.6, 2.5))
        if rng.uniform() < GRAINY_FIGURES
        else (0.03, 0.0)
    )
    colour = figure_colour(rng, scene.wall_colour, scene.floor_colour)
    if person:
        skin = jitter(rng, pick(rng, SKIN_COLOURS), 10)
        second = figure_colour(rng, scene.wall_colour, scene.floor_colour)
        colours = np.stack([_EMPTY, skin, colour, second])
    else:
        colours = np.stack([_EMPTY, colour, jitter(rng, colour, 30)])
    texture = object_texture(scene, colour, TEXTURED_FIGURES)
    return Look(colours, texture_amplitude, *grain, texture, 2 if person else 1)


def render_figures(scene: Scene, mask: np.ndarray) -> list[Standing]:
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
    for i in np.argsort(-depths):  # far to near
        z, centre_u = float(depths[i]), float(centres_u[i])
        person = rng.uniform() < 0.65
        look = figure_look(scene, person)
        if person:
            height_m = rng.uniform(1.45, 1.9)
            parts_fn = functools.partial(person_parts, rng)
        else:
            parts_fn = functools.partial(blob_parts, rng, aspect=rng.uniform(0.35, 0.9))
            height_m = rng.uniform(0.6, 1.7)
        figures.append(_add_object(scene, parts_fn, z, centre_u, height_m, look, mask))
    return figures
