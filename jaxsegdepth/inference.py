"""From a plate and a scene to a mask and a depth map: `load(path=None) -> Predictor`.

    import jaxsegdepth
    predictor = jaxsegdepth.load()                   # the model shipped in the package
    result = predictor("plate.jpg", "scene.jpg")     # paths, PIL images or uint8 arrays
    result.mask, result.depth, result.cutout(), result.composite((0, 255, 0))

`path` is None (the bundled `jaxsegdepth/weights/`), a bundle folder (`bundle.py`), a run's
folder or its checkpoints folder (optionally `PATH:STEP`; default its best checkpoint, else
its latest) or a `mode=export` folder. The model card says which model to build and how its
inputs are normalised, so no recipe is needed.

A pair is prepared on the host (`Predictor.prepare`: RGB uint8, the plate resized to the
scene with one warning line), resized (bilinear) to the model's size - `resolution` squared
if set, else its own size with each side rounded to the model's stride after scaling the
longer side down to `max_side` (0: no cap) - predicted, and the probabilities resized back.
Pairs of one model size in a batch go through the model in one call; the model compiles once
per input shape and is reused. `mode=predict`, its clips and the `jaxsegdepth` command all
predict through a `Predictor`.
"""

import dataclasses
import functools
import os
from typing import Callable, NamedTuple, Optional, Sequence, Union

import jax
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from jaxsegdepth import align, artifact, bundle, errors, models, preprocess, reporting, steps
from jaxsegdepth.checkpointing import card as card_lib
from jaxsegdepth.video import outputs as video_outputs, pixels

BUNDLED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
THRESHOLD = 0.5  # mask probability -> mask
MAX_SIDE = 1024  # the longer side the model sees at most (resolution 0)

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]


# -- images ---------------------------------------------------------------------------------


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB, EXIF orientation applied; `ValueError` naming `path` if unreadable."""
    try:
        with Image.open(path) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ValueError(f"{path}: cannot be read as an image ({error})") from error


def as_rgb(image: ImageLike, what: str = "image") -> np.ndarray:
    """A path, PIL image or uint8 array (grey (H, W) or (H, W, 1), RGB, RGBA: alpha dropped)
    as (H, W, 3) uint8 RGB; `ValueError` naming `what` for anything else."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(os.fspath(image))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8 values 0-255, got {array.dtype}")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or min(array.shape[:2]) < 1:
        raise ValueError(
            f"{what}: expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {array.shape}"
        )
    return np.ascontiguousarray(np.broadcast_to(array[..., :3], (*array.shape[:2], 3)))


def model_size(
    height: int, width: int, stride: int, resolution: int = 0, max_side: int = 0
) -> tuple[int, int]:
    """(height, width) the model sees: `resolution` squared, or each side rounded to `stride`."""
    if resolution:
        return resolution, resolution
    scale = min(1.0, max_side / max(height, width)) if max_side else 1.0
    return tuple(
        max(stride, int(round(side * scale / stride)) * stride) for side in (height, width)
    )


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 RGB (H, W, 3) or float (H, W) array to `size` = (h, w)."""
    if image.shape[:2] == tuple(size):
        return image
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR))
    resized = Image.fromarray(np.asarray(image, np.float32)).resize(size[::-1], Image.BILINEAR)
    return np.asarray(resized, np.float32)


def background(value, height: int, width: int) -> np.ndarray:
    """A new background as (H, W, 3) uint8 RGB: a colour (R, G, B) or "R,G,B", an image file,
    PIL image or array (stretched to the size)."""
    if isinstance(value, (tuple, list)) and len(value) == 3:
        value = ",".join(str(int(channel)) for channel in value)
    if isinstance(value, str):
        return video_outputs.replacement_background(value, height, width)
    return pixels.resize(as_rgb(value, "background"), (height, width))


# -- results --------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    """One pair's prediction at the scene's size."""

    scene: np.ndarray  # (H, W, 3) uint8 RGB, as predicted
    mask_prob: np.ndarray  # (H, W) float32 in [0, 1]
    mask: np.ndarray  # (H, W) bool, mask_prob >= the predictor's threshold
    depth: Optional[np.ndarray]  # (H, W) float32 in [0, 1]; None without a trained depth head
    registration: Optional[dict] = None  # the plate's registration (`align.Estimate.to_json`)

    def cutout(self) -> np.ndarray:
        """(H, W, 4) uint8 RGBA: the scene, alpha the mask probability."""
        return np.dstack([self.scene, pixels.to_uint8(self.mask_prob)])

    def composite(self, new_background=(0, 255, 0)) -> np.ndarray:
        """(H, W, 3) uint8 RGB: the scene over `new_background` (see `background`), weighted
        by the mask probability."""
        under = background(new_background, *self.scene.shape[:2]).astype(np.float32)
        weight = self.mask_prob[..., None]
        return (self.scene * weight + under * (1.0 - weight) + 0.5).astype(np.uint8)


# -- the predictor --------------------------------------------------------------------------


class Prepared(NamedTuple):
    """A pair ready for the network: uint8 RGB plate (registered onto the scene) and scene of
    one size, and the registration's estimate."""

    plate: np.ndarray
    scene: np.ndarray
    estimate: align.Estimate
    plate_resized: Optional[str] = None  # "WxH to WxH" when the plate was resized to the scene


class Predictor:
    """`predictor(plate, scene) -> Result`; lists of scenes (and one plate or a list) give a
    list. `model_fn(bg, bg_fg)` is the model on uint8 NHWC batches, {head: (N, h, w, 1)
    probabilities}; `forward` the same for the heads it was trained on."""

    def __init__(
        self,
        model_fn: Callable,
        model_card: dict,
        source: str,
        *,
        threshold: float = THRESHOLD,
        resolution: int = 0,
        max_side: int = MAX_SIDE,
        alignment: align.Settings = align.Settings(),
    ):
        self.model_fn = model_fn
        self.alignment = alignment.checked()
        self.card = model_card
        self.source = source
        self.heads = tuple(model_card.get("trained_heads", model_card["heads"]))
        self.stride = int(model_card["stride"])
        self.threshold, self.resolution, self.max_side = threshold, resolution, max_side

    def forward(self, bg: np.ndarray, bg_fg: np.ndarray) -> dict:
        """The model on uint8 (N, h, w, 3) batches at a model size: {head: (N, h, w, 1)
        probabilities} for the heads it was trained on (what clips are predicted with)."""
        outputs = self.model_fn(bg, bg_fg)
        return {head: value for head, value in outputs.items() if head in self.heads}

    def model_hw(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) the model sees for an image of (height, width) (`model_size`)."""
        return model_size(height, width, self.stride, self.resolution, self.max_side)

    def prepare(
        self, plate: ImageLike, scene: ImageLike, name: str = "", warn=reporting.warn
    ) -> Prepared:
        """The host side before the network: both as uint8 RGB, the plate at the scene's size
        (resized, with one `warn` line, when it is not), then registered onto the scene
        (`align`; a refused estimate is one `warn` line naming the pair, the plate kept)."""
        plate_rgb, scene_rgb = as_rgb(plate, "plate"), as_rgb(scene, "scene")
        resized = None
        if plate_rgb.shape != scene_rgb.shape:
            (height, width), (to_height, to_width) = plate_rgb.shape[:2], scene_rgb.shape[:2]
            resized = f"{width}x{height} to {to_width}x{to_height}"
            warn(
                f"plate {_name(plate)} is {width}x{height} but the scene {_name(scene)} is "
                f"{to_width}x{to_height}: resized to the scene's size"
            )
            plate_rgb = resize(plate_rgb, scene_rgb.shape[:2])
        plate_rgb, estimate = align.register(plate_rgb, scene_rgb, self.alignment)
        if estimate.refused:
            warn(f"{name or _name(scene)}: registration {estimate.status}; plate used as it is")
        return Prepared(plate_rgb, scene_rgb, estimate, resized)

    def __call__(self, plate, scene) -> Union[Result, list[Result]]:
        if not isinstance(scene, (list, tuple)):
            return self.predict([self.prepare(plate, scene)])[0]
        plates = plate if isinstance(plate, (list, tuple)) else [plate] * len(scene)
        if len(plates) != len(scene):
            raise ValueError(f"{len(plates)} plates for {len(scene)} scenes: give one or as many")
        return self.predict([self.prepare(p, s) for p, s in zip(plates, scene)])

    def predict(self, pairs: Sequence[Prepared]) -> list[Result]:
        """Results of prepared pairs (`prepare`); one model call per model size."""
        results: list[Optional[Result]] = [None] * len(pairs)
        by_size: dict[tuple, list[int]] = {}
        for index, (_, scene, *_) in enumerate(pairs):
            by_size.setdefault(self.model_hw(*scene.shape[:2]), []).append(index)
        for size, indices in by_size.items():
            inputs = [np.stack([resize(pairs[i][k], size) for i in indices]) for k in (0, 1)]
            outputs = jax.device_get(self.forward(*inputs))
            for row, index in enumerate(indices):
                scene = pairs[index][1]
                back = {
                    head: np.clip(
                        resize(np.asarray(value[row, ..., 0], np.float32), scene.shape[:2]), 0, 1
                    )
                    for head, value in outputs.items()
                }
                registration = pairs[index].estimate.to_json()
                results[index] = Result(
                    scene,
                    back["mask"],
                    back["mask"] >= self.threshold,
                    back.get("depth"),
                    registration,
                )
        return results


def _name(image) -> str:
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else "(array)"


# -- loading --------------------------------------------------------------------------------


def load(
    path: Optional[str] = None,
    *,
    threshold: float = THRESHOLD,
    resolution: int = 0,
    max_side: int = MAX_SIDE,
    alignment: align.Settings = align.Settings(),
) -> Predictor:
    """The predictor of the model at `path` (module doc); `ValueError` naming the path when
    there is no model there."""
    settings = dict(
        threshold=threshold, resolution=resolution, max_side=max_side, alignment=alignment
    )
    folder = os.fspath(path or BUNDLED)
    if path is None and not bundle.is_bundle(folder):
        raise ValueError(
            f"{BUNDLED}: this install has no bundled model ({bundle.WEIGHTS}); pass a run, "
            "an export or a bundle folder"
        )
    if os.path.isfile(os.path.join(folder, artifact.ARTIFACT)):
        return _from_export(folder, settings)
    return from_variables(*read_variables(folder), **settings)


def read_variables(path: str) -> tuple[dict, dict, str]:
    """(variables as host arrays, model card, a phrase naming them) of a bundle folder or a
    run (`RUN[:STEP]`, `checkpointing.select.resolve`); `ValueError` naming the path."""
    if bundle.is_bundle(path):
        return (*bundle.load(path), path)
    from jaxsegdepth.checkpointing import select  # Orbax and grain load only for runs

    try:
        where = select.resolve(path, None, "model")
        if where.kind != "run":
            raise errors.UsageError(f"{path}: an export holds a compiled function, no weights")
        return select.read_model(where)
    except errors.UsageError as error:
        raise ValueError(f"{path}: {str(error).removeprefix(f'model={path}: ')}") from error


def make_state(variables: dict, model_card: dict) -> steps.TrainState:
    """A `steps.inference_state` of `model_card`'s model holding `variables`."""
    model = models.create(model_card["model"], model_card.get("dtype", "float32"))
    return steps.inference_state(model.apply, variables)


def from_variables(variables: dict, model_card: dict, source: str, **settings) -> Predictor:
    """A predictor of `model_card`'s model with `variables`, on the first local device."""
    state = jax.device_put(make_state(variables, model_card), jax.local_devices()[0])
    normalization = preprocess.from_normalization(card_lib.normalization(model_card))
    predict = jax.jit(functools.partial(steps.predict_step, preprocess=normalization))
    return Predictor(functools.partial(predict, state), model_card, source, **settings)


def _from_export(folder: str, settings: dict) -> Predictor:
    """A `mode=export` artifact: its fixed input side is the model's size for every pair."""
    exported = artifact.load(folder)
    meta = exported.metadata
    model_card = meta.get("card") or {
        "model": meta.get("model", "?"),
        "heads": sorted(meta.get("outputs", {"mask": None})),
        "stride": 1,
    }
    settings = {**settings, "resolution": int(exported.exported.in_avals[0].shape[1])}
    return Predictor(exported, model_card, folder, **settings)
