"""Held-out pairs made of real photographs: a check beyond the generator's own scenes.

scikit-image ships a few natural photographs inside its wheel (nothing is downloaded). Pair
`index` takes one of them as the background (a random square crop, resized to `size`) and
pastes regions of another photograph through 1-3 object masks of one shape family:
- "silhouette": figures drawn as the synthetic scenes' figures are (`synthetic.silhouette`), the
  shape prior the model learned;
- "blob": smooth star-shaped blobs, a radius made of random low harmonics;
- "contour": outlines cut from photographs (`contour_shapes`), scaled, flipped and placed.
Only the mask is known: these pairs have no depth.

A clean pair's plate is pixel-identical to the composite outside the mask, which flatters
background subtraction. `NUISANCES` make the two images two shots of one scene instead, each
switchable alone so that its cost can be measured: "shadow" (the objects darken the background
near them; the mask stays the objects), "exposure" (the composite's gain and white balance move),
"noise" (fresh sensor noise on each image), "shift" (the plate moves 1-2 px; the mask stays aligned
with the composite), "jpeg" (each image gets its own JPEG quality), and apart from the others
"exposure_step" (auto-exposure stepping between the shots: the composite a quarter to half a
stop brighter or darker, white balance moved up to 5%). The scene and every nuisance
draw from streams of their own, so pairs with one seed and index differ only in what the shapes
and nuisances name.

A moved camera (`Camera`, the `photos_moved_*` sets) re-shoots the plate: the scene and the plate
are two views of the photograph through one resampling, the plate's window shifted by `shift_px`
output pixels in a random direction and turned by an angle drawn in `rotation_deg`, inside the
photograph (true content at the borders, no padding); the mask stays the scene's.

`SETS` names the evaluated sets and `pairs` makes their JPEG bytes; a set's "tuning" split (for
choosing a background-subtraction threshold) and "eval" split never share a pair. Everything
is deterministic per `(seed, index)`.
"""

import dataclasses
import functools
import io
from typing import Optional

import cv2
import numpy as np
import skimage.data
from PIL import Image, ImageDraw
from skimage import measure, segmentation

from jaxsegdepth.data import synthetic

# scikit-image loaders of natural photographs (grayscale ones are made RGB).
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "brick",
    "grass",
    "gravel",
    "stereo_motorcycle",
)
# Photographs whose segments give the "contour" family's outlines (with the horse silhouette).
CONTOUR_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "gravel",
    "stereo_motorcycle",
    "cat",
    "immunohistochemistry",
)
SHAPES = ("silhouette", "blob", "contour")
CAPTURE = ("shadow", "exposure", "noise", "shift", "jpeg")  # photos_capture's, all at once
NUISANCES = (*CAPTURE, "exposure_step")
SPLITS = ("eval", "tuning")
SPLIT_PAIRS = 1 << 20  # split s holds the indices [s * SPLIT_PAIRS, (s + 1) * SPLIT_PAIRS)
JPEG_QUALITIES = (75, 95)  # the "jpeg" nuisance's range, both ends included


def _check_names(shapes: tuple[str, ...], nuisances: tuple[str, ...]) -> None:
    unknown = [name for name in shapes if name not in SHAPES]
    unknown += [name for name in nuisances if name not in NUISANCES]
    if unknown or not shapes:
        raise ValueError(
            f"shapes {shapes!r}, nuisances {nuisances!r}: expected one or more of {SHAPES} "
            f"and any of {NUISANCES}"
        )


@dataclasses.dataclass(frozen=True)
class Camera:
    """How far the camera moved between the plate and the scene: a shift of `shift_px` output
    pixels in a random direction and a rotation drawn in `rotation_deg` (degrees, random
    sign)."""

    shift_px: float = 0.0
    rotation_deg: tuple[float, float] = (0.0, 0.0)


@dataclasses.dataclass(frozen=True)
class PhotoSet:
    """A named set of pairs: the shape families (pair `index` uses `shapes[index % len]`), the
    capture nuisances (names of `NUISANCES`) and the seed."""

    name: str
    shapes: tuple[str, ...] = ("silhouette",)
    nuisances: tuple[str, ...] = ()
    seed: int = 0
    camera: Optional[Camera] = None

    def __post_init__(self):
        _check_names(self.shapes, self.nuisances)


MOVES = {
    "0px": Camera(),
    "1px": Camera(1.0),
    "2px": Camera(2.0),
    "4px": Camera(4.0),
    "8px_1deg": Camera(8.0, (0.5, 1.0)),
}
# One seed: the sets share their photographs' crops pair by pair, so they differ only in shapes
# and nuisances ("photos" is the set mode=evaluate has always used).
# "photos_<nuisance>": the clean set's pairs with that one nuisance, to see what each costs.
SETS = {
    photo_set.name: photo_set
    for photo_set in (
        PhotoSet("photos"),
        PhotoSet("photos_clean", ("blob", "contour")),
        PhotoSet("photos_capture", ("blob", "contour"), CAPTURE),
        *(
            PhotoSet(f"photos_{nuisance}", ("blob", "contour"), (nuisance,))
            for nuisance in NUISANCES
        ),
        *(
            PhotoSet(f"photos_moved_{name}", ("blob", "contour"), camera=camera)
            for name, camera in MOVES.items()
        ),
    )
}
# The moved-camera sets mode=evaluate reports (not the per-epoch evaluators): the plate re-shot
# from a camera moved by 0 (the same resampling, for reference), 1, 2, 4 px, and 8 px with a
# 0.5-1 degree rotation.


@functools.cache
def photo(name: str) -> np.ndarray:
    """The photograph `name` of scikit-image as a uint8 (H, W, 3) array."""
    image = getattr(skimage.data, name)()
    image = image[0] if isinstance(image, tuple) else image  # the motorcycle: its left view
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]


def _outlines(labels: np.ndarray, min_pixels: int = 900) -> list[np.ndarray]:
    """The regions of a label image (0: none) that make objects: inside the image, neither tiny
    nor most of it, neither convex nor shards; holes filled, edges smoothed, cropped to their
    box."""
    height, width = labels.shape
    shapes = []
    for region in measure.regionprops(labels):
        top, left, bottom, right = region.bbox
        inside = top > 0 and left > 0 and bottom < height and right < width
        if not inside or not min_pixels <= region.area <= 0.4 * height * width:
            continue
        padded = np.pad(region.image, 4)
        outside = measure.label(~padded, connectivity=1)
        filled = outside != outside[0, 0]
        smooth = cv2.GaussianBlur(filled.astype(np.float32), (0, 0), 1.5) > 0.5
        (shape,) = measure.regionprops(smooth.astype(np.uint8))
        top, left, bottom, right = shape.bbox
        slender = min(bottom - top, right - left) < 0.25 * max(bottom - top, right - left)
        if 0.45 <= shape.solidity <= 0.95 and not slender:
            shapes.append(shape.image)
    return shapes


@functools.cache
def contour_shapes() -> tuple[np.ndarray, ...]:
    """Boolean object masks with natural outlines: the horse silhouette and the regions of
    Felzenszwalb segmentations (three scales) of `CONTOUR_PHOTOS` at 320 px."""
    shapes = _outlines(measure.label(~skimage.data.horse()))
    for name in CONTOUR_PHOTOS:
        image = photo(name)
        scale = 320 / max(image.shape[:2])
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        for coarseness in (200, 500, 1200):
            labels = segmentation.felzenszwalb(small, scale=coarseness, sigma=1.0, min_size=300)
            shapes += _outlines(labels + 1)
    return tuple(shapes)


def square_box(rng: np.random.Generator, image: np.ndarray) -> tuple[int, int, int]:
    """A random square (top, left, side) with a side 50-100% of the shorter one."""
    height, width = image.shape[:2]
    side = int(min(height, width) * rng.uniform(0.5, 1.0))
    top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    return int(top), int(left), side


def crop(image: np.ndarray, box: tuple[int, int, int], size: int) -> np.ndarray:
    top, left, side = box
    crop = Image.fromarray(image[top : top + side, left : left + side])
    return np.asarray(crop.resize((size, size), Image.BILINEAR))


def _shifted_crop(
    image: np.ndarray, box: tuple[int, int, int], size: int, dy: float, dx: float
) -> np.ndarray:
    """`_crop` with its box moved by (dy, dx) output pixels (sub-pixel: the same filter samples
    the photograph there); beyond the photograph's edges it is mirrored."""
    top, left, side = box
    scale = side / size
    margin = int(np.ceil(2 * scale)) + 2
    padded = np.pad(image, ((margin, margin), (margin, margin), (0, 0)), mode="reflect")
    x0, y0 = left + margin + dx * scale, top + margin + dy * scale
    window = (x0, y0, x0 + side, y0 + side)
    return np.asarray(Image.fromarray(padded).resize((size, size), Image.BILINEAR, box=window))


def view(
    image: np.ndarray, box: tuple[int, int, int], size: int, move=(0.0, 0.0), angle_deg=0.0
) -> np.ndarray:
    """The square `box` of `image` seen at `size` pixels (anti-aliased, bilinear), the window
    moved by `move` (dx, dy) output pixels and turned by `angle_deg` about its centre."""
    top, left, side = box
    scale = side / size
    if scale > 1:
        image = cv2.GaussianBlur(image, (0, 0), 0.5 * scale)
    turn = np.deg2rad(angle_deg)
    linear = scale * np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    centre = np.array([left + side / 2, top + side / 2])
    offset = linear @ (0.5 - size / 2 + np.asarray(move, float)) + centre - 0.5
    warp = np.hstack([linear, offset[:, None]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(image, warp, (size, size), flags=flags, borderMode=cv2.BORDER_REFLECT)


def _camera_views(
    seed: int, index: int, image: np.ndarray, box: tuple[int, int, int], size: int, camera: Camera
) -> tuple[np.ndarray, np.ndarray]:
    """(the scene's view, the moved camera's plate) of `box`, inset so that both windows stay
    inside the photograph."""
    rng = np.random.default_rng([int(seed), int(index), 3])
    direction = rng.uniform(0, 2 * np.pi)
    angle = rng.uniform(*camera.rotation_deg) * rng.choice((-1.0, 1.0))
    move = camera.shift_px * np.array([np.cos(direction), np.sin(direction)])
    top, left, side = box
    reach = camera.shift_px + 0.75 * size * np.sin(np.deg2rad(camera.rotation_deg[1]))
    margin = int(np.ceil(side / size * reach)) + 3
    height, width = image.shape[:2]
    side = min(side, min(height, width) - 2 * margin)
    inset = (
        int(np.clip(top, margin, height - side - margin)),
        int(np.clip(left, margin, width - side - margin)),
        side,
    )
    return view(image, inset, size), view(image, inset, size, move, angle)


def paste(mask: np.ndarray, shape: np.ndarray, top: int, left: int) -> None:
    """mask |= shape placed at (top, left), clipped to the mask."""
    height, width = shape.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, mask.shape[0]), min(left + width, mask.shape[1])
    if y1 > y0 and x1 > x0:
        mask[y0:y1, x0:x1] |= shape[y0 - top : y1 - top, x0 - left : x1 - left]


def _silhouettes(rng: np.random.Generator, size: int) -> np.ndarray:
    """1-3 figures 25-70% of the image tall, standing anywhere, a third at most off the side."""
    mask = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(1, 4))):
        shape = synthetic.silhouette(rng, int(size * rng.uniform(0.25, 0.7)))
        height, width = shape.shape
        top = int(rng.integers(0, size - height + 1))
        left = int(rng.integers(-(width // 3), size - 2 * width // 3))
        paste(mask, shape, top, left)
    return mask


def blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    """1-3 star-shaped blobs: radius(angle) = r exp(sum of harmonics 1-5 with random phases and
    amplitudes falling as 1/k), stretched (aspect 0.5-1) and turned; r 8-25% of the image."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    angles = np.linspace(0, 2 * np.pi, 128, endpoint=False)
    harmonics = np.arange(1, 6)[:, None]
    for _ in range(int(rng.integers(1, 4))):
        amplitudes = rng.normal(0, 0.3, (5, 1)) / harmonics
        phases = rng.uniform(0, 2 * np.pi, (5, 1))
        log_radius = np.sum(amplitudes * np.cos(harmonics * angles + phases), axis=0)
        radius = size * rng.uniform(0.08, 0.25) * np.exp(log_radius - log_radius.mean())
        x, y = radius * np.cos(angles), radius * np.sin(angles) * rng.uniform(0.5, 1.0)
        turn = rng.uniform(0, 2 * np.pi)
        centre_x, centre_y = rng.uniform(0.1, 0.9, 2) * size
        xs = centre_x + x * np.cos(turn) - y * np.sin(turn)
        ys = centre_y + x * np.sin(turn) + y * np.cos(turn)
        draw.polygon(list(zip(xs.tolist(), ys.tolist())), fill=255)
    return np.asarray(canvas) > 0


def _contours(rng: np.random.Generator, size: int) -> np.ndarray:
    """1-3 of `contour_shapes`, the longer side 25-70% of the image, mirrored half the time,
    at most a quarter off any edge."""
    bank = contour_shapes()
    mask = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(1, 4))):
        shape = bank[int(rng.integers(len(bank)))]
        if rng.uniform() < 0.5:
            shape = shape[:, ::-1]
        scale = size * rng.uniform(0.25, 0.7) / max(shape.shape)
        width, height = (max(1, round(side * scale)) for side in shape.shape[::-1])
        resized = (
            cv2.resize(shape.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
            > 0.5
        )
        top = int(rng.integers(-(height // 4), size - 3 * height // 4 + 1))
        left = int(rng.integers(-(width // 4), size - 3 * width // 4 + 1))
        paste(mask, resized, top, left)
    return mask


_SHAPE_MAKERS = {"silhouette": _silhouettes, "blob": blobs, "contour": _contours}


def _nuisance_rng(seed: int, index: int, name: str) -> np.random.Generator:
    """The draws of nuisance `name` for pair `index`: a stream apart from the scene's."""
    return np.random.default_rng([int(seed), int(index), 2, NUISANCES.index(name)])


def _shade(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Per-pixel factor of the objects' soft shadow: the mask moved 3-10% of the image along a
    random direction, blurred (sigma 1-4%), darkening to 0.5-0.85 at its core, 1 on the objects."""
    size = mask.shape[0]
    angle, distance = rng.uniform(0, 2 * np.pi), size * rng.uniform(0.03, 0.1)
    move = np.float32([[1, 0, distance * np.cos(angle)], [0, 1, distance * np.sin(angle)]])
    cast = cv2.warpAffine(mask.astype(np.float32), move, (size, size))
    cast = cv2.GaussianBlur(cast, (0, 0), size * rng.uniform(0.01, 0.04))
    darkness = 1.0 - rng.uniform(0.5, 0.85)
    return np.where(mask, 1.0, 1.0 - darkness * cast).astype(np.float32)


def _noisy(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """image + Gaussian sensor noise of a standard deviation of 1-4 grey levels."""
    return image + rng.normal(0.0, rng.uniform(1.0, 4.0), image.shape).astype(np.float32)


def _uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render(
    seed: int,
    index: int,
    size: int = synthetic.SIZE,
    shapes: tuple[str, ...] = ("silhouette",),
    nuisances: tuple[str, ...] = (),
    camera: Optional[Camera] = None,
) -> dict[str, np.ndarray]:
    """Pair `index`: uint8 bg, bg_fg (size, size, 3) and mask (size, size) of 0/255, before
    JPEG. Its objects are of the family `shapes[index % len(shapes)]`; `nuisances` (names of
    `NUISANCES`) make bg and bg_fg two shots, else bg_fg equals bg outside the mask; `camera`
    re-shoots the plate from a moved camera."""
    _check_names(shapes, nuisances)
    rng = np.random.default_rng([int(seed), int(index), 1])  # apart from the scenes' streams
    back, front = rng.choice(len(PHOTOS), 2, replace=False)
    plate_box = square_box(rng, photo(PHOTOS[back]))
    bg = crop(photo(PHOTOS[back]), plate_box, size)
    pasted = crop(photo(PHOTOS[front]), square_box(rng, photo(PHOTOS[front])), size)
    mask = _SHAPE_MAKERS[shapes[index % len(shapes)]](rng, size)
    if camera is not None:
        bg, plate = _camera_views(seed, index, photo(PHOTOS[back]), plate_box, size, camera)
        return {
            "bg": plate,
            "bg_fg": np.where(mask[..., None], pasted, bg),
            "mask": mask.astype(np.uint8) * 255,
        }
    bg_fg = np.where(mask[..., None], pasted, bg)
    if nuisances:
        scene, plate = bg_fg.astype(np.float32), bg.astype(np.float32)
        if "shift" in nuisances:
            shift_rng = _nuisance_rng(seed, index, "shift")
            angle, distance = shift_rng.uniform(0, 2 * np.pi), shift_rng.uniform(1.0, 2.0)
            dy, dx = distance * np.sin(angle), distance * np.cos(angle)
            plate = _shifted_crop(photo(PHOTOS[back]), plate_box, size, dy, dx).astype(np.float32)
        if "shadow" in nuisances:
            scene *= _shade(_nuisance_rng(seed, index, "shadow"), mask)[..., None]
        if "exposure" in nuisances:
            exposure_rng = _nuisance_rng(seed, index, "exposure")
            scene *= np.float32(exposure_rng.uniform(0.85, 1.15))
            scene *= exposure_rng.uniform(0.95, 1.05, 3).astype(np.float32)
        if "exposure_step" in nuisances:
            step_rng = _nuisance_rng(seed, index, "exposure_step")
            stops = step_rng.uniform(0.25, 0.5) * step_rng.choice((-1.0, 1.0))
            scene *= np.float32(2.0**stops)
            scene *= step_rng.uniform(0.95, 1.05, 3).astype(np.float32)
        if "noise" in nuisances:
            noise_rng = _nuisance_rng(seed, index, "noise")
            plate, scene = _noisy(noise_rng, plate), _noisy(noise_rng, scene)
        bg, bg_fg = _uint8(plate), _uint8(scene)
    return {"bg": bg, "bg_fg": bg_fg, "mask": mask.astype(np.uint8) * 255}


def generate(
    seed: int,
    index: int,
    size: int = synthetic.SIZE,
    shapes: tuple[str, ...] = ("silhouette",),
    nuisances: tuple[str, ...] = (),
    camera: Optional[Camera] = None,
) -> dict[str, bytes]:
    """Pair `index` as JPEG bytes keyed bg, bg_fg, mask: the synthetic set's qualities, or with
    the "jpeg" nuisance a quality of `JPEG_QUALITIES` drawn for each image."""
    pair = render(seed, index, size, shapes, nuisances, camera)
    qualities = {"bg": synthetic.JPEG_QUALITY_RGB, "bg_fg": synthetic.JPEG_QUALITY_RGB}
    if "jpeg" in nuisances:
        drawn = _nuisance_rng(seed, index, "jpeg").integers(*JPEG_QUALITIES, 2, endpoint=True)
        qualities = dict(zip(qualities, drawn.tolist()))
    qualities["mask"] = synthetic.JPEG_QUALITY_TARGET
    return {key: synthetic.encode_jpeg(image, qualities[key]) for key, image in pair.items()}


def pairs(
    photo_set: PhotoSet, start: int, count: int, size: int = synthetic.SIZE, split: str = "eval"
) -> list[dict[str, bytes]]:
    """Pairs `start` to `start + count` of `split` ("eval" or "tuning") of `photo_set`, as
    `generate`'s JPEG bytes."""
    return [
        generate(
            photo_set.seed, index, size, photo_set.shapes, photo_set.nuisances, photo_set.camera
        )
        for index in indices(split, start, count)
    ]


def indices(split: str, start: int, count: int) -> range:
    """The pair indices of pairs `start` to `start + count` of `split` ("eval" or "tuning"):
    the splits are disjoint ranges of indices."""
    if split not in SPLITS or start < 0 or count < 0 or start + count > SPLIT_PAIRS:
        raise ValueError(
            f"split {split!r}, pairs {start}..{start + count}: expected one of {SPLITS} "
            f"and 0 <= start <= start + count <= {SPLIT_PAIRS}"
        )
    first = SPLITS.index(split) * SPLIT_PAIRS + start
    return range(first, first + count)


def decode(pair: dict[str, bytes]) -> dict[str, np.ndarray]:
    """JPEG bytes -> uint8 arrays: bg, bg_fg (H, W, 3), mask (H, W)."""
    return {
        key: np.asarray(Image.open(io.BytesIO(data)).convert("L" if key == "mask" else "RGB"))
        for key, data in pair.items()
    }
