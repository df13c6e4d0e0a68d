"""`mode=predict`: run a trained model on your own background / composite image pairs.

Input (`config.predict.bg`, `config.predict.bg_fg`): two image files, or two folders whose files
are paired by name without the extension (`bg/room1.jpg` with `bg_fg/room1.png`). Any size and
any format PIL reads (EXIF rotation applied, converted to RGB).

Each pair is resized (bilinear) to a model size - `predict.resolution` squared if set, else its
own size with each side rounded to the nearest multiple of 32 (at least 32), after scaling down
so the longer side is at most `predict.max_side` (0: no cap) - normalised with the dataset's
mean/std (`pipeline.normalization`), and the predictions are resized back to the original size.

Written to `predict.output_dir` (default `WORKDIR/predictions_user`), per pair `NAME`:
- `NAME_mask_prob.png`  mask probability, 8-bit grey (0-255 for 0-1)
- `NAME_mask.png`       mask thresholded at `predict.threshold` (0 or 255)
- `NAME_depth.png`      depth (sigmoid output in [0, 1]) through the `predict.colormap` colour map
- `NAME_depth.npy`      depth as float32 (H, W) in [0, 1], the input's original size
- `NAME_side_by_side.png`  bg | bg_fg | mask probability | mask over bg_fg | depth
(no depth files for a mask-only model), and `summary.json` listing what was written and failed.

A pair with a missing partner, an unreadable file or two images of different sizes is reported by
file name and skipped; the others are still processed. At the end a summary names every failure,
and if there was any, `run` raises `PredictionError` - a `SystemExit` whose message is that
summary, so the command exits with status 1 without a traceback (after writing the good pairs).
Nothing to predict (inputs not set, a path that does not exist) is a `PredictionError` too.
"""
import dataclasses
import json
import os
from typing import Callable, Optional

import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from jaxsegdepth import checkpoints, models, steps
from jaxsegdepth.data import pipeline

MULTIPLE = models.DSRESNET_STRIDE  # DSResNet's input sides must be multiples of this
PANEL_MAX_SIDE = 512  # tiles of the side-by-side image are scaled down to this


class PredictionError(SystemExit):
    """Some pairs failed; `.summary` has the details. Exits with status 1 when uncaught."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


@dataclasses.dataclass
class Pair:
    name: str
    bg: Optional[str]
    bg_fg: Optional[str]


@dataclasses.dataclass
class Failure:
    name: str
    files: list
    error: str


# -- finding and reading the pairs ----------------------------------------------------------

def find_pairs(bg: str, bg_fg: str) -> tuple[list[Pair], list[Failure]]:
    """Pairs from two files or two folders (matched by file name without extension)."""
    if not bg or not bg_fg:
        raise ValueError("set both --config.predict.bg and --config.predict.bg_fg "
                         "(two image files, or two folders of images matched by file name)")
    for path in (bg, bg_fg):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file or folder")
    if os.path.isfile(bg) and os.path.isfile(bg_fg):
        name = os.path.splitext(os.path.basename(bg_fg))[0]
        return [Pair(name, bg, bg_fg)], []
    if not (os.path.isdir(bg) and os.path.isdir(bg_fg)):
        raise ValueError(f"predict.bg={bg!r} and predict.bg_fg={bg_fg!r} must both be files "
                         "or both be folders")
    failures = []
    sides = []
    for folder in (bg, bg_fg):
        by_name: dict[str, list[str]] = {}
        for entry in sorted(os.listdir(folder)):
            path = os.path.join(folder, entry)
            if entry.startswith(".") or not os.path.isfile(path):
                continue
            by_name.setdefault(os.path.splitext(entry)[0], []).append(path)
        for name, paths in list(by_name.items()):
            if len(paths) > 1:
                failures.append(Failure(name, paths, f"{folder}: several files are named "
                                        f"{name!r} ({', '.join(map(os.path.basename, paths))}); "
                                        "keep one"))
                by_name[name] = []
        sides.append(by_name)
    pairs = []
    bg_files, bg_fg_files = sides
    for name in sorted(set(bg_files) | set(bg_fg_files)):
        a, b = bg_files.get(name), bg_fg_files.get(name)
        if a == [] or b == []:
            continue  # ambiguous; already reported
        if a is None:
            failures.append(Failure(name, b, f"{b[0]}: no partner in {bg} (expected {name}.*)"))
        elif b is None:
            failures.append(Failure(name, a, f"{a[0]}: no partner in {bg_fg} (expected {name}.*)"))
        else:
            pairs.append(Pair(name, a[0], b[0]))
    if not pairs and not failures:
        raise FileNotFoundError(f"no files in {bg} and {bg_fg}")
    return pairs, failures


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB, EXIF orientation applied; `ValueError` naming `path` if unreadable."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ValueError(f"{path}: cannot be read as an image ({error})") from error


def model_size(height: int, width: int, resolution: int = 0, max_side: int = 0) -> tuple[int, int]:
    """(height, width) the model sees: `resolution` squared, or each side rounded to 32."""
    if resolution:
        if resolution % MULTIPLE:
            raise ValueError(f"predict.resolution={resolution} must be a multiple of {MULTIPLE}")
        return resolution, resolution
    scale = min(1.0, max_side / max(height, width)) if max_side else 1.0
    return tuple(max(MULTIPLE, int(round(side * scale / MULTIPLE)) * MULTIPLE)
                 for side in (height, width))


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 RGB (H, W, 3) or float (H, W) array to `size` = (h, w)."""
    if image.shape[:2] == tuple(size):
        return image
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR))
    resized = Image.fromarray(np.asarray(image, np.float32)).resize(size[::-1], Image.BILINEAR)
    return np.asarray(resized, np.float32)


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
    """uint8 RGB -> float32 scaled to [0, 1] then standardised per channel."""
    return ((image.astype(np.float32) / 255.0 - np.asarray(mean, np.float32))
            / np.asarray(std, np.float32))


# -- one pair -------------------------------------------------------------------------------

def predict_pair(predict_fn: Callable, bg: np.ndarray, bg_fg: np.ndarray, normalization: dict,
                 resolution: int = 0, max_side: int = 0) -> dict:
    """{head: (H, W) float32 probability} at the input's size for one uint8 RGB pair."""
    height, width = bg.shape[:2]
    size = model_size(height, width, resolution, max_side)
    inputs = {name: normalize(resize(image, size), *normalization[name])[None]
              for name, image in (("bg", bg), ("bg_fg", bg_fg))}
    outputs = jax.device_get(predict_fn(inputs["bg"], inputs["bg_fg"]))
    return {head: np.clip(resize(np.asarray(value[0, ..., 0], np.float32), (height, width)), 0, 1)
            for head, value in outputs.items()}


def _to_uint8(probability: np.ndarray) -> np.ndarray:
    return (np.clip(probability, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def colorize(depth: np.ndarray, colormap: str) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 through a matplotlib colour map."""
    from matplotlib import colormaps
    return _to_uint8(colormaps[colormap](np.clip(depth, 0.0, 1.0))[..., :3])


def side_by_side(tiles: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """Labelled (title, uint8 RGB) tiles in one row, scaled so no side exceeds PANEL_MAX_SIDE."""
    height, width = tiles[0][1].shape[:2]
    scale = min(1.0, PANEL_MAX_SIDE / max(height, width))
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    label, pad = 16, 4
    canvas = Image.new("RGB", (len(tiles) * (w + pad) - pad, h + label), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (title, tile) in enumerate(tiles):
        canvas.paste(Image.fromarray(tile).resize((w, h), Image.BILINEAR), (i * (w + pad), label))
        draw.text((i * (w + pad) + 2, 2), title, fill=(0, 0, 0))
    return np.asarray(canvas)


def write_outputs(output_dir: str, name: str, bg: np.ndarray, bg_fg: np.ndarray,
                  outputs: dict, threshold: float, colormap: str) -> list[str]:
    """Writes one pair's files (see the module doc); returns their paths."""
    paths = []

    def save(suffix, array):
        path = os.path.join(output_dir, f"{name}_{suffix}")
        if suffix.endswith(".npy"):
            np.save(path, array)
        else:
            Image.fromarray(array).save(path)
        paths.append(path)

    mask = outputs["mask"]
    binary = (mask >= threshold).astype(np.uint8) * 255
    save("mask_prob.png", _to_uint8(mask))
    save("mask.png", binary)
    overlay = bg_fg.astype(np.float32)
    overlay[binary > 0] = 0.5 * overlay[binary > 0] + 0.5 * np.array([255, 0, 0], np.float32)
    tiles = [("bg", bg), ("bg_fg", bg_fg), ("mask probability", np.repeat(_to_uint8(mask)[..., None], 3, -1)),
             (f"mask >= {threshold:g}", overlay.astype(np.uint8))]
    if "depth" in outputs:
        depth = outputs["depth"].astype(np.float32)
        colour = colorize(depth, colormap)
        save("depth.png", colour)
        save("depth.npy", depth)
        tiles.append(("depth", colour))
    save("side_by_side.png", side_by_side(tiles))
    return paths


# -- many pairs -----------------------------------------------------------------------------

def predict_pairs(predict_fn: Callable, pairs: list[Pair], output_dir: str, normalization: dict,
                  *, threshold: float = 0.5, resolution: int = 0, max_side: int = 0,
                  colormap: str = "viridis", failures: Optional[list[Failure]] = None) -> dict:
    """Predicts and writes every pair; a failing pair is recorded, not raised. Returns a summary."""
    os.makedirs(output_dir, exist_ok=True)
    failures = list(failures or [])
    written = {}
    for pair in pairs:
        try:
            bg, bg_fg = read_image(pair.bg), read_image(pair.bg_fg)
            if bg.shape != bg_fg.shape:
                raise ValueError(f"{pair.bg} is {bg.shape[1]}x{bg.shape[0]} but {pair.bg_fg} is "
                                 f"{bg_fg.shape[1]}x{bg_fg.shape[0]} (width x height): the two "
                                 "images of a pair must have the same size")
            outputs = predict_pair(predict_fn, bg, bg_fg, normalization, resolution, max_side)
            written[pair.name] = write_outputs(output_dir, pair.name, bg, bg_fg, outputs,
                                               threshold, colormap)
            logging.info("predicted %s (%dx%d)", pair.name, bg.shape[1], bg.shape[0])
        except Exception as error:  # one bad pair must not stop the others
            message = str(error) if isinstance(error, ValueError) else (
                f"{pair.bg}, {pair.bg_fg}: {type(error).__name__}: {error}")
            failures.append(Failure(pair.name, [pair.bg, pair.bg_fg], message))
            logging.warning("skipped %s: %s", pair.name, message)
    summary = {"output_dir": output_dir, "written": written,
               "failed": [dataclasses.asdict(f) for f in failures]}
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"Predicted {len(summary['written'])} pair(s) into {summary['output_dir']}"]
    if summary["failed"]:
        lines.append(f"{len(summary['failed'])} failed:")
        lines += [f"  - {failure['error']}" for failure in summary["failed"]]
    return "\n".join(lines)


def predict_function(state: steps.TrainState) -> Callable:
    """Jitted `(bg, bg_fg) -> {head: probability}`; recompiles once per model input size."""
    step = jax.jit(steps.predict_step,
                   compiler_options=steps.compiler_options(jax.default_backend()))
    return lambda bg, bg_fg: step(state, bg, bg_fg)


def _check_settings(cfg: ml_collections.ConfigDict) -> None:
    """Settings that would fail every pair alike are refused before anything loads."""
    from matplotlib import colormaps
    if cfg.resolution < 0 or cfg.resolution % MULTIPLE:
        raise ValueError(f"predict.resolution={cfg.resolution}: expected 0 (each image's own "
                         f"size) or a positive multiple of {MULTIPLE}")
    if cfg.max_side < 0 or 0 < cfg.max_side < MULTIPLE:
        raise ValueError(f"predict.max_side={cfg.max_side}: expected 0 (no cap) or >= {MULTIPLE}")
    if not 0.0 <= cfg.threshold <= 1.0:
        raise ValueError(f"predict.threshold={cfg.threshold}: expected a probability in [0, 1]")
    if cfg.colormap not in colormaps:
        raise ValueError(f"predict.colormap={cfg.colormap!r} is not a matplotlib colour map "
                         "(e.g. viridis, magma, plasma, inferno, turbo)")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Predicts every pair of `config.predict`; raises `PredictionError` if any pair failed."""
    cfg = config.predict
    try:
        _check_settings(cfg)
        pairs, failures = find_pairs(cfg.bg, cfg.bg_fg)
    except (ValueError, FileNotFoundError) as error:  # nothing to predict: say why in one line
        raise PredictionError(f"predict: {error}", {"written": {}, "failed": []}) from error
    state = checkpoints.load_for_inference(config, workdir)
    normalization = pipeline.normalization(config.dataset)
    output_dir = cfg.output_dir or os.path.join(workdir, "predictions_user")
    summary = predict_pairs(predict_function(state), pairs, output_dir, normalization,
                            threshold=cfg.threshold, resolution=cfg.resolution,
                            max_side=cfg.max_side, colormap=cfg.colormap, failures=failures)
    message = format_summary(summary)
    if summary["failed"]:
        raise PredictionError(message, summary)
    print(message)
    return summary
