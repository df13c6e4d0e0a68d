"""The installed `jaxsegdepth` command: predict with a trained model, export one, serve one.

    jaxsegdepth predict PLATE SCENE [-o OUT] [--model M] [--replace-bg COLOUR|IMAGE] ...
    jaxsegdepth predict --plate-frames N CLIP [-o OUT] ...
    jaxsegdepth export --model RUN[:STEP] [--format safetensors|jax] [-o DIR]
    jaxsegdepth serve [--model M] [--port 8000] [--size R] ...   (serve/, docs/serving.md)

The plate is registered onto each scene first (`--no-align`: not; `jaxsegdepth/align.py`).
`--model` is a run folder (optionally `:STEP`), an export or a bundle folder; by default the
model shipped in the package. No recipe is needed: the model card says what to build, and the
settings are this command's flags. SCENE is an image (PLATE an image), a folder of images
(PLATE an image shared by all of them, or a folder paired with it by file name) or a clip
(PLATE an image, or `--plate-frames N`); the outputs are those of `mode=predict`
(`modes/predict.py`, `video/`), with the cutouts. `launch.py` stays the training entry point.

Exit status: 0 done; 1 some pairs failed (named at the end; the others are written); 2 a bad
command line or input file, said in one line before the model loads.
"""

import argparse
import dataclasses
import os
import sys
from typing import Optional

import ml_collections
from absl import logging

from jaxsegdepth import align, bundle, errors, inference, reporting, serve
from jaxsegdepth.checkpointing import card as card_lib
from jaxsegdepth.modes import export as export_mode, predict as predict_mode
from jaxsegdepth.video import from_config, pixels

CLIP_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
VIDEO_DEFAULTS = dict(  # the clip settings `video/from_config.py` reads, at their defaults
    batch_size=8, temporal_smoothing=0.0, video_format="mp4", fps=25.0
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxsegdepth", description="Foreground mask and depth from a plate and a scene."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _predict_options(commands)
    _export_options(commands)
    serve.add_parser(commands)
    return parser


def _predict_options(commands) -> None:
    predict = commands.add_parser(
        "predict",
        help="predict a pair, a folder or a clip",
        description="Writes mask, mask probability, depth (when trained), cutout (RGBA), "
        "side by side and, with --replace-bg, the composite, per scene.",
    )
    predict.add_argument(
        "paths", nargs="+", metavar="PLATE SCENE", help="PLATE SCENE, or CLIP with --plate-frames"
    )
    predict.add_argument(
        "-o", "--output", default="predictions", help="output folder (%(default)s)"
    )
    predict.add_argument(
        "--model",
        default=None,
        help="run[:STEP], export or bundle folder (default: the bundled model)",
    )
    predict.add_argument(
        "--plate-frames",
        type=int,
        default=0,
        help="a clip's plate: the median of its first N frames",
    )
    predict.add_argument(
        "--replace-bg",
        default="",
        help="also write the scene over this background: R,G,B or an image file",
    )
    predict.add_argument(
        "--threshold",
        type=float,
        default=inference.THRESHOLD,
        help="mask probability -> mask (%(default)s)",
    )
    predict.add_argument(
        "--resolution",
        type=int,
        default=0,
        help="model input side, a multiple of the stride (0: each image's size)",
    )
    predict.add_argument(
        "--max-side",
        type=int,
        default=inference.MAX_SIDE,
        help="with resolution 0: the longer side scaled down to this (%(default)s; 0: no cap)",
    )
    predict.add_argument(
        "--colormap",
        default="viridis",
        help="matplotlib colour map of the depth picture (%(default)s)",
    )
    predict.add_argument(
        "--align",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="register the plate onto each scene first: a moved camera costs nothing (on)",
    )


def _export_options(commands) -> None:
    export = commands.add_parser(
        "export",
        help="write a run's model as a bundle or a jax.export artifact",
        description="safetensors: model.safetensors + card.json (what the package ships); "
        "jax: model.jax_exported + model.json (mode=export's artifact).",
    )
    export.add_argument(
        "--model", required=True, help="run folder (optionally :STEP) or bundle folder"
    )
    export.add_argument("--format", choices=("safetensors", "jax"), default="safetensors")
    export.add_argument(
        "--dtype",
        choices=bundle.DTYPES,
        default="float16",
        help="safetensors: the weights' dtype (%(default)s)",
    )
    export.add_argument(
        "--resolution", type=int, default=224, help="jax: the fixed input side (%(default)s)"
    )
    export.add_argument("--batch-size", type=int, default=0, help="jax: a fixed batch (0: any)")
    export.add_argument("-o", "--output", required=True, help="output folder")


def _check_settings(args) -> None:
    """Refuses, in one line, settings that would fail every scene alike."""
    if not 0.0 <= args.threshold <= 1.0:
        raise errors.UsageError(f"--threshold={args.threshold}: expected a probability in [0, 1]")
    if args.resolution < 0 or args.max_side < 0:
        raise errors.UsageError("--resolution and --max-side: expected >= 0")
    try:
        pixels.colormap_lut(args.colormap)
    except ValueError as error:
        raise errors.UsageError(f"--{error}") from error
    if args.replace_bg:
        try:
            inference.background(args.replace_bg, 1, 1)
        except ValueError as error:
            raise errors.UsageError(f"--replace-bg={str(error).partition('=')[2]}") from error
    if args.plate_frames < 0 or len(args.paths) != (1 if args.plate_frames else 2):
        raise errors.UsageError(
            f"predict {' '.join(args.paths)}: expected PLATE SCENE, or --plate-frames N CLIP"
        )


def _load(args) -> inference.Predictor:
    try:
        predictor = inference.load(
            args.model,
            threshold=args.threshold,
            resolution=args.resolution,
            max_side=args.max_side,
            alignment=align.Settings(enabled=args.align),
        )
    except ValueError as error:
        raise errors.UsageError(f"--model: {error}") from error
    if args.resolution and args.resolution % predictor.stride:
        raise errors.UsageError(
            f"--resolution={args.resolution}: not a multiple of {predictor.stride}, the stride "
            f"of {predictor.card['model']}"
        )
    return predictor


def predict(args) -> None:
    """`jaxsegdepth predict`: one pair, a folder or a clip (module doc)."""
    _check_settings(args)
    scene = args.paths[-1]
    plate = args.paths[0] if not args.plate_frames else args.plate_frames
    if not os.path.exists(scene) or (isinstance(plate, str) and not os.path.exists(plate)):
        missing = scene if not os.path.exists(scene) else plate
        raise errors.UsageError(f"{missing}: no such file or folder")
    if scene.lower().endswith(CLIP_EXTENSIONS) or args.plate_frames:
        return _predict_clip(args, plate, scene)
    if os.path.isfile(scene):
        try:  # one pair: a bad file is said before the model loads
            for path in (plate, scene):
                inference.read_image(path)
        except ValueError as error:
            raise errors.UsageError(str(error)) from error
    if os.path.isdir(scene) and os.path.isfile(plate):
        pairs, failures = _scenes_of(plate, scene)
    else:
        pairs, failures = predict_mode.find_pairs(plate, scene)
    summary = predict_mode.predict_pairs(
        _load(args),
        pairs,
        args.output,
        colormap=args.colormap,
        replace_bg=args.replace_bg,
        failures=failures,
    )
    predict_mode.check_summary(summary)


def _scenes_of(plate: str, folder: str) -> tuple[list, list]:
    """Every file of `folder` paired with the one `plate`."""
    names = sorted(
        entry
        for entry in os.listdir(folder)
        if not entry.startswith(".") and os.path.isfile(os.path.join(folder, entry))
    )
    if not names:
        raise errors.UsageError(f"{folder}: no files to predict")
    pairs = [
        predict_mode.Pair(os.path.splitext(name)[0], plate, os.path.join(folder, name))
        for name in names
    ]
    return pairs, []


def _predict_clip(args, plate, clip: str) -> None:
    """A clip through `video/from_config.py`, with this command's settings."""
    outputs = ("mask_prob", "mask", "depth", "side_by_side")
    config = ml_collections.ConfigDict(
        dict(
            predict=dict(
                video=clip,
                bg="" if args.plate_frames else plate,
                bg_fg="",
                output_dir=args.output,
                outputs=outputs + (("composite",) if args.replace_bg else ()),
                threshold=args.threshold,
                colormap=args.colormap,
                replace_bg=args.replace_bg,
            ),
            video=dict(plate_frames=args.plate_frames, **VIDEO_DEFAULTS),
            align=dataclasses.asdict(align.Settings(enabled=args.align)),
        )
    )
    predictor = _load(args)
    from_config.validate(config, predictor.model_hw)
    from_config.run(config, args.output, predictor.forward, predictor.model_hw)


def export(args) -> None:
    """`jaxsegdepth export`: a run's (or a bundle's) model as a bundle or an artifact."""
    try:
        variables, model_card, source = inference.read_variables(args.model)
    except ValueError as error:
        raise errors.UsageError(f"--model: {error}") from error
    if args.format == "safetensors":
        paths = bundle.save(args.output, variables, model_card, args.dtype, {"source": source})
    else:
        paths = [_export_artifact(args, variables, model_card, source)]
    reporting.say(f"Exported {model_card['model']} ({source}): {', '.join(paths)}")


def _export_artifact(args, variables: dict, model_card: dict, source: str) -> str:
    stride = int(model_card["stride"])
    if args.resolution <= 0 or args.resolution % stride or args.batch_size < 0:
        raise errors.UsageError(
            f"--resolution={args.resolution} --batch-size={args.batch_size}: expected a "
            f"positive multiple of {stride} and a batch >= 0"
        )
    path, _ = export_mode.export_state(
        inference.make_state(variables, model_card),
        args.output,
        card_lib.normalization(model_card),
        resolution=args.resolution,
        batch_size=args.batch_size,
        metadata={"model": model_card["model"], "card": model_card, "source": source},
    )
    return path


def main(argv: Optional[list] = None) -> int:
    """Runs the command; returns its exit status (module doc)."""
    args = _parser().parse_args(argv)
    logging.set_verbosity(logging.ERROR)  # Orbax warns about read-only checkpoint folders
    try:
        {"predict": predict, "export": export, "serve": serve.main}[args.command](args)
    except (errors.UsageError, errors.RunError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    return 0


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
