"""The shapes of what stands on the floor, as part-id patches: person-like silhouettes, smooth
sculptures and boxes (pedestals, benches)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw


class _Body(NamedTuple):
    """Proportions of a person-like silhouette, in pixels of its patch."""

    centre_x: float
    head_radius: float
    shoulder_y: float
    hip_y: float
    shoulder_half: float
    hip_half: float


def person_parts(rng, height: int) -> np.ndarray:
    """Part ids of a person-like silhouette `height` pixels tall: 1 head, 2 torso+arms, 3 legs."""
    aspect = rng.uniform(0.26, 0.38)
    width = max(3, int(round(height * aspect)))
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    body = _Body(
        centre_x=width / 2 + rng.uniform(-0.05, 0.05) * width,
        head_radius=height * rng.uniform(0.055, 0.07),
        shoulder_y=height * rng.uniform(0.16, 0.2),
        hip_y=height * rng.uniform(0.48, 0.54),
        shoulder_half=width * rng.uniform(0.36, 0.46),
        hip_half=width * rng.uniform(0.26, 0.34),
    )
    arm_width = width * rng.uniform(0.1, 0.14)
    swing = rng.uniform(-0.08, 0.08) * width
    _draw_legs(rng, draw, body, width, height)
    _draw_torso(rng, draw, body, height, arm_width, swing)
    _draw_head(draw, body)
    return np.asarray(image, np.uint8)


def _draw_legs(rng, draw, body: _Body, width: int, height: int):
    """Two legs (part 3) from the hips to the bottom row, sometimes a coat or skirt (part 2)."""
    centre_x, hip_y, hip_half = body.centre_x, body.hip_y, body.hip_half
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


def _draw_torso(rng, draw, body: _Body, height: int, arm_width: float, swing: float):
    """The torso, the arms and the rounded shoulders (part 2)."""
    centre_x, shoulder_y, shoulder_half = body.centre_x, body.shoulder_y, body.shoulder_half
    draw.polygon(
        [
            (centre_x - shoulder_half, shoulder_y),
            (centre_x + shoulder_half, shoulder_y),
            (centre_x + body.hip_half, body.hip_y),
            (centre_x - body.hip_half, body.hip_y),
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
            shoulder_y - body.head_radius * 0.3,
            centre_x + shoulder_half * 0.95,
            shoulder_y + body.head_radius * 0.8,
        ],
        fill=2,
    )


def _draw_head(draw, body: _Body):
    """The neck and the head (part 1)."""
    centre_x, radius = body.centre_x, body.head_radius
    head_y = radius * 1.1
    neck_half = radius * 0.45
    draw.rectangle(
        [centre_x - neck_half, head_y, centre_x + neck_half, body.shoulder_y + 1], fill=1
    )
    head_half = radius * 0.85
    box = [centre_x - head_half, head_y - radius, centre_x + head_half, head_y + radius * 1.05]
    draw.ellipse(box, fill=1)


def silhouette(rng: np.random.Generator, height: int) -> np.ndarray:
    """A boolean figure mask `height` pixels tall, drawn as the scenes' figures are: person-like
    (65%) or a smooth sculpture (35%)."""
    if rng.uniform() < 0.65:
        return person_parts(rng, height) > 0
    return blob_parts(rng, height, rng.uniform(0.35, 0.9)) > 0


def blob_parts(rng, height: int, aspect: float) -> np.ndarray:
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


def cutout_parts(rng, height: int, aspect: float) -> np.ndarray:
    """An irregular cut-out (part 1, sometimes with an inner part 2): a star-shaped polygon whose
    radius varies smoothly with the angle (a few random harmonics)."""
    width = max(3, int(round(height * aspect)))
    angles = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    radius = np.ones_like(angles)
    for harmonic in range(2, 6):
        amplitude = rng.uniform(0, 0.35) / harmonic**0.5
        radius += amplitude * np.cos(harmonic * angles + rng.uniform(0, 2 * np.pi))
    radius = np.maximum(radius, 0.25) / np.maximum(radius, 0.25).max()
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    outlines = [(1, 1.0)]
    if rng.uniform() < 0.3:  # an inner part, smaller
        outlines.append((2, rng.uniform(0.3, 0.6)))
    for part, scale in outlines:
        xs = (width - 1) / 2 * (1 + scale * radius * np.cos(angles))
        ys = (height - 1) / 2 * (1 + scale * radius * np.sin(angles))
        draw.polygon(list(zip(xs.tolist(), ys.tolist())), fill=part)
    return np.asarray(image, np.uint8)


def box_parts(height: int, width: int, top_height: int) -> np.ndarray:
    """A box seen from the front: part 1 front face, part 2 top face."""
    parts = np.zeros((height + top_height, width), np.uint8)
    parts[:top_height] = 2
    parts[top_height:] = 1
    return parts
