"""`mode=predict` on a clip (`config.predict.video`, with the clip-only `config.video` block):
the checks `validate` runs before anything loads, and the run around `prediction.predict_clip`
with its progress bar, its report and its failures as `errors` (exit 2 for a bad setting or file, 1 for a clip that breaks off, 130 for
Ctrl-C; what was written before either stays playable).

The mode loads the model; this module takes its `predict_fn(bg, bg_fg)` and `model_hw(height,
width)`, the model's input size for a clip of that size (the image rules: `predict.resolution`,
`predict.max_side`, the model's stride).
"""

import os
import signal
from typing import Callable, Union

import ml_collections

from jaxsegdepth import align, errors, names, reporting
from jaxsegdepth.video import clips, outputs as outputs_lib, prediction

ModelSizeFn = Callable[[int, int], tuple[int, int]]


def validate(config: ml_collections.ConfigDict, model_hw: ModelSizeFn) -> None:
    """Refuses, in one line naming the field or the file, video settings `run` cannot work with:
    checks the options, opens the clip and loads the plate (a plate of another size is one
    warning line)."""
    cfg, video = config.predict, config.video
    if cfg.bg_fg:
        raise errors.UsageError(
            f"predict.bg_fg={cfg.bg_fg!r} and predict.video={cfg.video!r}: leave predict.bg_fg "
            "empty to predict a clip (its frames are the bg_fg images)"
        )
    if video.plate_frames < 0 or (video.plate_frames > 0 and cfg.bg):
        raise errors.UsageError(
            f"video.plate_frames={video.plate_frames} with predict.bg={cfg.bg!r}: expected "
            "either N > 0 (the plate is the median of the first N frames) or predict.bg"
        )
    if not video.plate_frames and not cfg.bg:
        raise errors.UsageError(
            "predict.video needs a plate: predict.bg=IMAGE (the empty scene) or "
            "video.plate_frames=N (the per-pixel median of the first N frames)"
        )
    info = _probe(config)
    options = clip_options(config, model_hw(info.height, info.width))
    if "composite" in options.outputs:
        try:
            outputs_lib.replacement_background(options.replace_bg, info.height, info.width)
        except ValueError as error:
            raise errors.UsageError(f"predict.{error}") from error
    try:
        _, _, warning = clips.load_plate(_plate(config), info)
    except ValueError as error:  # names the file
        raise errors.UsageError(str(error)) from error
    if warning:
        reporting.warn(warning)


def clip_options(config: ml_collections.ConfigDict, model_hw: tuple) -> prediction.ClipOptions:
    """`config`'s clip settings (`predict`, `video`, `align`) as one checked value; a bad one is
    an `errors.UsageError` naming its field."""
    cfg, video = config.predict, config.video
    alignment = align.Settings.from_config(config.get("align"))  # names its own fields
    try:
        return prediction.ClipOptions(
            model_hw=model_hw,
            batch_size=video.batch_size,
            outputs=tuple(cfg.outputs),
            threshold=cfg.threshold,
            colormap=cfg.colormap,
            temporal_smoothing=video.temporal_smoothing,
            replace_bg=cfg.replace_bg,
            video_format=video.video_format,
            fps=video.fps,
            alignment=alignment,
        )
    except ValueError as error:  # each names its field, of predict or video
        block = "video" if str(error).split("=")[0] in names.VIDEO_FIELDS else "predict"
        raise errors.UsageError(f"{block}.{error}") from error


def output_dir(cfg: ml_collections.ConfigDict, workdir: str) -> str:
    """`predict.output_dir`, else WORKDIR/predictions_video/<the clip's file or folder name>."""
    if cfg.output_dir:
        return cfg.output_dir
    stem = os.path.splitext(os.path.basename(os.path.normpath(cfg.video)))[0]
    return os.path.join(workdir, "predictions_video", stem)


def run(
    config: ml_collections.ConfigDict, workdir: str, predict_fn: Callable, model_hw: ModelSizeFn
) -> dict:
    """Predicts the clip of `config.predict.video` with `predict_fn`, the plate registered onto
    every frame as `config.align` says, and writes its outputs; returns the summary (also in
    summary.json)."""
    cfg, video = config.predict, config.video
    info = _probe(config)
    size = model_hw(info.height, info.width)
    out = output_dir(cfg, workdir)
    frames = f"{info.frame_count} frames" if info.frame_count else "frames"
    reporting.say(
        f"predicting {info.path} ({info.width}x{info.height}, {frames}) at "
        f"{size[1]}x{size[0]}, batch {video.batch_size}"
    )
    bar = reporting.progress_bar(info.frame_count, "frames", unit="frame")

    def progress(done: int, total: Union[int, None]) -> None:
        if bar.total is None and total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        summary = prediction.predict_clip(
            predict_fn, info.path, _plate(config), out, clip_options(config, size), progress
        )
    except clips.ClipBroken as error:
        raise errors.RunError(f"{error} (playable; details in summary.json)") from error
    except ValueError as error:
        raise errors.UsageError(str(error)) from error
    except prediction.ClipInterrupted as error:
        raise errors.Interrupted(
            f"{error} (playable up to there; rerun to predict the whole clip)", signal.SIGINT
        ) from error
    finally:
        bar.close()
    _report(summary, out)
    return summary


def _report(summary: dict, out: str) -> None:
    """The clip's warnings, outputs, registration and rates, said once it is written."""
    for warning in summary["warnings"]:
        if not warning.startswith("plate "):  # the plate's was said by `validate`
            reporting.warn(warning)
    reporting.say(f"Predicted {summary['frames_written']} frames into {out}:")
    for name, path in summary["outputs"].items():
        reporting.say(f"  {name}: {path}")
    if summary["registration"]:
        refused = len(summary["registration"]["refused"])
        reporting.say(f"plate registered onto every frame ({refused} frame(s) refused)")
    reporting.say(
        f"{summary['frames_per_s']} frames/s end to end, {summary['model_frames_per_s']} in the "
        f"model (its first call, compiling, took {summary['first_call_s']} s)"
    )


def _probe(config: ml_collections.ConfigDict) -> clips.ClipInfo:
    try:
        return clips.probe(config.predict.video, config.video.fps)
    except ValueError as error:
        raise errors.UsageError(f"predict.video: {error}") from error


def _plate(config: ml_collections.ConfigDict) -> Union[str, int]:
    plate_frames = config.video.plate_frames
    return plate_frames if plate_frames > 0 else config.predict.bg
