"""`mode=predict`: run a trained model on your own background / composite image pairs.

The model: WORKDIR's best checkpoint, or the one `--config.model_path` names (`RUN[:STEP]`).

Input (`config.predict.bg`, `config.predict.bg_fg`): two image files, or two folders whose files
are paired by name without the extension (`bg/room1.jpg` with `bg_fg/room1.png`). Any size and
any format PIL reads (EXIF rotation applied, converted to RGB).

Each pair goes through an `inference.Predictor` (the plate resized to its scene with one
warning line when their sizes differ; the model size from `predict.resolution`, or each side
rounded to the model's stride after scaling the longer side down to `predict.max_side`; the
model's own input statistics from its model card, so no dataset is needed); the predictions
come back at the scene's size.

Written to `predict.output_dir` (default `WORKDIR/predictions_user`), per pair `NAME`:
- `NAME_mask_prob.png`  mask probability, 8-bit grey (0-255 for 0-1)
- `NAME_mask.png`       mask thresholded at `predict.threshold` (0 or 255)
- `NAME_cutout.png`     the scene as RGBA, alpha the mask probability
- `NAME_composite.png`  with `predict.replace_bg` (a colour R,G,B or an image file): the scene
  over that background, weighted by the mask probability
- `NAME_depth.png`      depth (sigmoid output in [0, 1]) through the `predict.colormap` colour map
- `NAME_depth.npy`      depth as float32 (H, W) in [0, 1], the input's original size
- `NAME_side_by_side.png`  bg | bg_fg | mask probability | mask over bg_fg | depth
(no depth files for a model whose depth head was not trained), and `summary.json` listing what
was written and failed, and each pair's plate registration (`config.align`, `align.py`: the
plate is registered onto its scene before the network; `bg` in the side-by-side is the
registered plate).

A pair with a missing partner or an unreadable file is reported by file name and skipped; the
others are still processed. If any pair failed, `run` raises `errors.RunError` (exit 1) naming
every failure, after writing the good pairs. Nothing to predict (inputs not set, a path that
does not exist, empty folders) is an `errors.UsageError` (exit 2).

With `config.predict.video` (a clip from a fixed camera, `predict.bg_fg` empty) the same model,
loaded the same way, predicts every frame against a plate into videos: `video/from_config.py`.
"""

import dataclasses
import functools
import json
import os
from typing import Callable, Optional

import jax
import ml_collections
import numpy as np
from matplotlib import colormaps
from PIL import Image

from jaxsegdepth import align, build, errors, inference, mesh as mesh_lib, models, reporting
from jaxsegdepth.checkpointing import card, select, store
from jaxsegdepth.data import pipeline
from jaxsegdepth.video import from_config as video_from_config

SIDE_BY_SIDE_MAX_TILE = 512  # tiles of the side-by-side picture are scaled down to this


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


# -- settings -------------------------------------------------------------------------------


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses, in one line naming the field, settings that would fail every pair alike, and
    inputs that leave nothing to predict (before anything loads)."""
    cfg = config.predict
    build.validate(
        config,
        (cfg.resolution,) if cfg.resolution else (),
        "predict.resolution (0: each image's own size)",
    )
    stride = models.MODELS[config.model].STRIDE
    if cfg.max_side < 0 or 0 < cfg.max_side < stride:
        raise errors.UsageError(
            f"predict.max_side={cfg.max_side}: expected 0 (no cap) or >= "
            f"{stride}, the stride of {config.model}"
        )
    if not 0.0 <= cfg.threshold <= 1.0:
        raise errors.UsageError(
            f"predict.threshold={cfg.threshold}: expected a probability in [0, 1]"
        )
    if cfg.colormap not in colormaps:
        raise errors.UsageError(
            f"predict.colormap={cfg.colormap!r} is not a matplotlib colour "
            "map (e.g. viridis, magma, plasma, inferno, turbo)"
        )
    if cfg.replace_bg and not cfg.video:
        try:
            inference.background(cfg.replace_bg, 1, 1)
        except ValueError as error:
            raise errors.UsageError(f"predict.{error}") from error
    store.validate(config)
    pipeline.validate(config.dataset)
    align.Settings.from_config(config.get("align"))
    if cfg.video:
        video_from_config.validate(config, _model_hw(config))
    else:
        find_pairs(cfg.bg, cfg.bg_fg)


# -- finding and reading the pairs ----------------------------------------------------------


def find_pairs(bg: str, bg_fg: str) -> tuple[list[Pair], list[Failure]]:
    """Pairs from two files or two folders (matched by file name without extension).

    A pair that cannot be made is a `Failure`; nothing to pair at all is an `errors.UsageError`.
    """
    if not bg or not bg_fg:
        raise errors.UsageError(
            "predict.bg and predict.bg_fg: set both (two image files, or two "
            "folders of images matched by file name)"
        )
    for field, path in (("predict.bg", bg), ("predict.bg_fg", bg_fg)):
        if not os.path.exists(path):
            raise errors.UsageError(f"{field}={path!r}: no such file or folder")
    if os.path.isfile(bg) and os.path.isfile(bg_fg):
        return [Pair(os.path.splitext(os.path.basename(bg_fg))[0], bg, bg_fg)], []
    if not (os.path.isdir(bg) and os.path.isdir(bg_fg)):
        raise errors.UsageError(
            f"predict.bg={bg!r} and predict.bg_fg={bg_fg!r}: expected two files or two folders"
        )
    failures = []
    bg_files, bg_fg_files = (_files_by_name(folder, failures) for folder in (bg, bg_fg))
    pairs = []
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
        raise errors.UsageError(
            f"predict.bg={bg!r}, predict.bg_fg={bg_fg!r}: no files in the folders"
        )
    return pairs, failures


def _files_by_name(folder: str, failures: list) -> dict[str, list[str]]:
    """name (without extension) -> [path] for the files of `folder`; a name shared by several
    files is a `Failure` appended to `failures` and maps to []."""
    by_name: dict[str, list[str]] = {}
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if not entry.startswith(".") and os.path.isfile(path):
            by_name.setdefault(os.path.splitext(entry)[0], []).append(path)
    for name, paths in by_name.items():
        if len(paths) > 1:
            failures.append(
                Failure(
                    name,
                    paths,
                    f"{folder}: several files are named {name!r} "
                    f"({', '.join(map(os.path.basename, paths))}); keep one",
                )
            )
            by_name[name] = []
    return by_name


def _model_hw(config: ml_collections.ConfigDict) -> Callable[[int, int], tuple[int, int]]:
    """`inference.model_size` under `config`'s model and `config.predict`: (height, width) ->
    model size."""
    return functools.partial(
        inference.model_size,
        stride=models.MODELS[config.model].STRIDE,
        resolution=config.predict.resolution,
        max_side=config.predict.max_side,
    )


# -- one pair -------------------------------------------------------------------------------


def write_outputs(
    output_dir: str,
    name: str,
    plate: np.ndarray,
    result: inference.Result,
    threshold: float,
    colormap: str,
    replace_bg: str = "",
) -> list[str]:
    """Writes one pair's files (see the module doc); returns their paths."""
    paths = []

    def save(suffix, array):
        paths.append(os.path.join(output_dir, f"{name}_{suffix}"))
        if suffix.endswith(".npy"):
            np.save(paths[-1], array)
        else:
            Image.fromarray(array).save(paths[-1])

    scene, mask = result.scene, result.mask_prob
    binary = result.mask.astype(np.uint8) * 255
    save("mask_prob.png", reporting.to_rgb("mask", mask)[..., 0])
    save("mask.png", binary)
    save("cutout.png", result.cutout())
    if replace_bg:
        save("composite.png", result.composite(replace_bg))
    overlay = scene.astype(np.float32)
    overlay[result.mask] = 0.5 * overlay[result.mask] + 0.5 * np.array([255, 0, 0], np.float32)
    columns = [
        ("bg", [plate]),
        ("bg_fg", [scene]),
        ("mask probability", [mask]),
        (f"mask >= {threshold:g}", [overlay.astype(np.uint8)]),
    ]
    if result.depth is not None:
        colour = reporting.to_rgb("depth", result.depth, colormap)
        save("depth.png", colour)
        save("depth.npy", result.depth)
        columns.append(("depth", [colour]))
    save("side_by_side.png", reporting.image_grid(columns, max_tile=SIDE_BY_SIDE_MAX_TILE))
    return paths


# -- many pairs -----------------------------------------------------------------------------


def predict_pairs(
    predictor: inference.Predictor,
    pairs: list[Pair],
    output_dir: str,
    *,
    colormap: str = "viridis",
    replace_bg: str = "",
    failures: Optional[list[Failure]] = None,
) -> dict:
    """Predicts and writes every pair (its plate registered onto its scene as the predictor's
    `alignment` says); a failing pair is recorded, not raised. Returns the summary written to
    `summary.json`."""
    os.makedirs(output_dir, exist_ok=True)
    failures = list(failures or [])
    written, registration = {}, {}
    for pair in pairs:
        try:
            prepared = predictor.prepare(pair.bg, pair.bg_fg, pair.name)
            result = predictor.predict([prepared])[0]
            registration[pair.name] = result.registration
            written[pair.name] = write_outputs(
                output_dir,
                pair.name,
                prepared.plate,
                result,
                predictor.threshold,
                colormap,
                replace_bg,
            )
            scene = prepared.scene
            reporting.say(f"predicted {pair.name} ({scene.shape[1]}x{scene.shape[0]})")
        except Exception as error:  # one bad pair must not stop the others
            message = (
                str(error)
                if isinstance(error, ValueError)
                else (f"{pair.bg}, {pair.bg_fg}: {type(error).__name__}: {error}")
            )
            failures.append(Failure(pair.name, [pair.bg, pair.bg_fg], message))
    summary = {
        "output_dir": output_dir,
        "written": written,
        "failed": [dataclasses.asdict(f) for f in failures],
        "registration": registration,
    }
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def check_summary(summary: dict) -> None:
    """Raises `errors.RunError` naming every failed pair of `summary` (exit 1), else says where
    the outputs went."""
    done = f"{len(summary['written'])} pair(s) written to {summary['output_dir']}"
    if summary["failed"]:
        raise errors.RunError(
            f"{len(summary['failed'])} pair(s) failed ({done}; details in "
            f"summary.json): " + "; ".join(f["error"] for f in summary["failed"])
        )
    reporting.say(f"Predicted {done}")


def load_predictor(config: ml_collections.ConfigDict, workdir: str) -> inference.Predictor:
    """The model to predict with on one device, under `config.predict`'s and `config.align`'s
    settings."""
    loaded = select.for_inference(config, workdir, mesh_lib.create_mesh(jax.local_devices()[:1]))
    model = loaded.model
    model_card = model.card or card.create(config, loaded.normalization, 0, build.heads(config))
    return inference.Predictor(
        functools.partial(loaded.predict_step, model.state),
        model_card,
        model.source,
        threshold=config.predict.threshold,
        resolution=config.predict.resolution,
        max_side=config.predict.max_side,
        alignment=align.Settings.from_config(config.get("align")),
    )


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Predicts every pair of `config.predict` (or every frame of its `video`) on one device;
    returns the summary, or raises `errors.RunError` naming every failed pair after writing the
    good ones."""
    cfg = config.predict
    if cfg.video:
        predictor = load_predictor(config, workdir)
        return video_from_config.run(config, workdir, predictor.forward, predictor.model_hw)
    pairs, failures = find_pairs(cfg.bg, cfg.bg_fg)
    summary = predict_pairs(
        load_predictor(config, workdir),
        pairs,
        cfg.output_dir or os.path.join(workdir, "predictions_user"),
        colormap=cfg.colormap,
        replace_bg=cfg.replace_bg,
        failures=failures,
    )
    check_summary(summary)
    return summary
