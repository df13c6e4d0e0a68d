"""Predicts a clip from a fixed camera frame by frame against a background plate; writes videos.

Every frame, resized to the model's size, is predicted against the plate (registered onto that
frame first, `align.Tracker`, when registration is on) by a
`predict_fn(bg, bg_fg)` that takes uint8 RGB batches (N, h, w, 3) and returns
{head: (N, h, w, 1) probabilities}; the outputs come back at the clip's size as mp4 videos or
folders of numbered PNGs, with `summary.json`.

Three stages overlap. A reader thread decodes, resizes and batches frames up to
`threads.PREFETCH_BATCHES` ahead. The calling thread runs `predict_fn`, the temporal smoothing
and the flicker figures. One writer thread per output renders and encodes, in frame order.
"""

import dataclasses
import json
import os
import time
from typing import Callable, Optional, Union

import jax
import numpy as np

from jaxsegdepth import align
from jaxsegdepth.video import batches, clips, outputs as outputs_lib, pixels, temporal, threads

ProgressFn = Callable[[int, Optional[int]], None]


class ClipInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped `predict_clip`; the `frames_written` before it are playable."""

    def __init__(self, message: str, frames_written: int):
        super().__init__(message)
        self.frames_written = frames_written


@dataclasses.dataclass(frozen=True)
class ClipOptions:
    """How `predict_clip` predicts and writes a clip, checked once when made: a value it cannot
    work with is a `ValueError` naming its field."""

    model_hw: tuple  # (height, width) the model sees
    batch_size: int = 8  # frames per model call
    outputs: tuple = outputs_lib.DEFAULT_OUTPUTS
    threshold: float = 0.5  # mask probability -> mask
    colormap: str = "viridis"  # the depth output's matplotlib colour map
    temporal_smoothing: float = 0.0  # alpha of a moving average over frames (0: off)
    replace_bg: str = outputs_lib.DEFAULT_BACKGROUND  # the composite's: R,G,B or an image file
    video_format: str = "mp4"  # mp4 | png
    fps: float = clips.DEFAULT_FPS  # a frame folder's frame rate
    alignment: align.Settings = align.Settings(enabled=False)  # plate registration per frame

    def __post_init__(self):
        object.__setattr__(self, "model_hw", tuple(self.model_hw))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        if len(self.model_hw) != 2 or min(self.model_hw) < 1:
            raise ValueError(f"model_hw={self.model_hw}: expected (height, width), both >= 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: expected >= 1")
        unknown = [name for name in self.outputs if name not in outputs_lib.OUTPUTS]
        if unknown or not self.outputs:
            raise ValueError(
                f"outputs={self.outputs}: expected one or more of {', '.join(outputs_lib.OUTPUTS)}"
            )
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold={self.threshold}: expected a probability in [0, 1]")
        pixels.colormap_lut(self.colormap)
        if not 0.0 <= self.temporal_smoothing < 1.0:
            raise ValueError(
                f"temporal_smoothing={self.temporal_smoothing}: expected alpha in [0, 1)"
            )
        if self.video_format not in outputs_lib.VIDEO_FORMATS:
            raise ValueError(
                f"video_format={self.video_format!r}: expected one of {outputs_lib.VIDEO_FORMATS}"
            )
        if not self.fps > 0:
            raise ValueError(f"fps={self.fps}: expected frames per second > 0")
        self.alignment.checked()


class _ClipRun:
    """The state of one `predict_clip`: the stages, the smoothing, the clocks and the counts."""

    def __init__(
        self,
        predict_fn: Callable,
        info: clips.ClipInfo,
        plate_rgb: np.ndarray,
        out_dir: str,
        options: ClipOptions,
        plate_source: str,
        background_rgb: Optional[np.ndarray],
    ):
        self.predict_fn = predict_fn
        self.info = info
        self.out_dir = out_dir
        self.options, self.plate_source = options, plate_source
        self.background_rgb = background_rgb
        self.plate_model_rgb = pixels.resize(plate_rgb, options.model_hw)
        alignment = options.alignment
        self.tracker = align.Tracker(self.plate_model_rgb, alignment) if alignment.enabled else None
        alpha = options.temporal_smoothing
        self.smoothers = None if alpha == 0 else {}  # head -> TemporalSmoother, made on use
        self.flicker_raw, self.flicker_smoothed = temporal.FlickerMeter(), temporal.FlickerMeter()
        self.writers: dict[str, threads.Writer] = {}
        self.files: dict[str, str] = {}
        self.warnings: list[str] = []
        self.reader: Optional[threads.Reader] = None
        self.frames_predicted = 0
        self.model_s = 0.0
        self.first_call_s: Optional[float] = None
        self.wall_s = 0.0

    @property
    def frames_written(self) -> int:
        return min((writer.written for writer in self.writers.values()), default=0)

    @property
    def frames_read(self) -> int:
        return self.reader.frames_read if self.reader else 0

    def process(self, progress: Optional[ProgressFn]) -> None:
        """Reads, predicts and writes every frame; the writers are finished on every path."""
        start = time.perf_counter()
        keep_clip = bool({"composite", "side_by_side"} & set(self.options.outputs))
        frames = batches.from_frames(
            clips.bgr_frames(self.info),
            self.plate_model_rgb,
            self.options.batch_size,
            keep_clip,
            self.tracker,
        )
        self.reader = threads.Reader(frames, self.info.path)
        try:
            for batch in self.reader:
                predicted = self._predict(batch)
                if not self.writers:
                    self._open_writers(set(predicted.probabilities))
                for writer in self.writers.values():
                    writer.put(predicted)
                if progress is not None:
                    progress(self.frames_predicted, self.info.frame_count)
        finally:
            self.reader.close()
            for writer in self.writers.values():
                writer.finish()
            self.wall_s = time.perf_counter() - start
        for writer in self.writers.values():
            writer.raise_if_failed()
        for frame, why in self.tracker.refused if self.tracker else ():
            self.warnings.append(f"{self.info.path} frame {frame}: registration {why}")
        if self.info.frame_count and self.frames_read < self.info.frame_count:
            self.warnings.append(
                f"{self.info.path}: {self.frames_read} frames read, where the container "
                f"announces {self.info.frame_count}"
            )

    def _predict(self, batch: batches.Batch) -> batches.Predicted:
        """Runs `predict_fn` (timed up to the host copy), smooths and measures the flicker."""
        start = time.perf_counter()
        outputs = jax.device_get(self.predict_fn(batch.plate_rgb, batch.model_rgb))
        elapsed = time.perf_counter() - start
        self.model_s += elapsed
        self.frames_predicted += batch.count
        self.first_call_s = elapsed if self.first_call_s is None else self.first_call_s
        raw = {
            head: np.asarray(value[: batch.count, ..., 0], np.float32)
            for head, value in outputs.items()
        }
        smoothed = {head: self._smooth(head, value) for head, value in raw.items()}
        if "mask" in raw:
            self.flicker_raw.update(raw["mask"], batch.static)
            self.flicker_smoothed.update(smoothed["mask"], batch.static)
        return batches.Predicted(batch.count, smoothed, batch.clip_bgr)

    def _smooth(self, head: str, raw: np.ndarray) -> np.ndarray:
        if self.smoothers is None:
            return raw
        smoother = self.smoothers.setdefault(
            head, temporal.TemporalSmoother(self.options.temporal_smoothing)
        )
        return smoother(raw)

    def _open_writers(self, heads: set) -> None:
        """One writer per output the model's `heads` can feed (known after the first batch)."""
        outputs = list(self.options.outputs)
        if "depth" not in heads and "depth" in outputs:
            outputs.remove("depth")
            self.warnings.append("the model has no depth head: no depth output")
        renderer = outputs_lib.Renderer(
            (self.info.height, self.info.width),
            self.options.threshold,
            self.options.colormap,
            self.background_rgb,
            with_depth="depth" in heads,
        )
        for name in outputs:
            height, width = renderer.output_hw(name)
            path, target, warning = outputs_lib.open_output(
                self.out_dir, name, self.options.video_format, self.info.fps, height, width
            )
            self.warnings.extend([warning] if warning else [])
            self.files[name] = path
            self.writers[name] = threads.Writer(name, getattr(renderer, name), target)

    def summary(self, error: Optional[str] = None) -> dict:
        written = self.frames_written
        return {
            "clip": self.info.path,
            "clip_hw": [self.info.height, self.info.width],
            "model_hw": list(self.options.model_hw),
            "batch_size": self.options.batch_size,
            "fps": self.info.fps,
            "fps_source": self.info.fps_source,
            "frames_announced": self.info.frame_count,
            "frames_read": self.frames_read,
            "frames_written": written,
            "wall_s": round(self.wall_s, 3),
            "frames_per_s": round(written / self.wall_s, 2) if self.wall_s else None,
            "model_s": round(self.model_s, 3),
            "model_frames_per_s": (
                round(self.frames_predicted / self.model_s, 2) if self.model_s else None
            ),
            "first_call_s": None if self.first_call_s is None else round(self.first_call_s, 3),
            "waiting_for_frames_s": round(self.reader.wait_s, 3) if self.reader else 0.0,
            "waiting_for_writers_s": round(sum(w.wait_s for w in self.writers.values()), 3),
            "temporal_smoothing": self.options.temporal_smoothing,
            "flicker": {"raw": self.flicker_raw.value, "smoothed": self.flicker_smoothed.value},
            "threshold": self.options.threshold,
            "plate": self.plate_source,
            "registration": self.tracker.summary() if self.tracker else None,
            "outputs": self.files,
            "warnings": self.warnings,
            "error": error,
        }


def predict_clip(
    predict_fn: Callable,
    clip: str,
    plate: Union[str, int],
    out_dir: str,
    options: ClipOptions,
    progress: Optional[ProgressFn] = None,
) -> dict:
    """Predicts every frame of `clip` against `plate` (an image file, or a number of first frames
    to take the median of), registered onto each frame as `options.alignment` says, and writes
    `options.outputs` to `out_dir` with `summary.json` (the per-frame registration included);
    returns the summary.

    Bad inputs raise `ValueError` naming the file before `predict_fn` is called. A clip that
    breaks off raises `clips.ClipBroken`, Ctrl-C `ClipInterrupted`, each with the count of
    frames written (playable); any failure still writes `summary.json` with its `error`.
    """
    info = clips.probe(clip, options.fps)
    plate_rgb, plate_source, plate_warning = clips.load_plate(plate, info)
    background_rgb = None
    if "composite" in options.outputs:
        background_rgb = outputs_lib.replacement_background(
            options.replace_bg, info.height, info.width
        )
    os.makedirs(out_dir, exist_ok=True)
    run = _ClipRun(predict_fn, info, plate_rgb, out_dir, options, plate_source, background_rgb)
    run.warnings.extend([plate_warning] if plate_warning else [])
    try:
        run.process(progress)
    except BaseException as error:
        failure = _with_count(error, clip, run.frames_written, out_dir)
        _write_summary(out_dir, run.summary(error=f"{type(failure).__name__}: {failure}"))
        if failure is error:
            raise
        raise failure from error
    summary = run.summary()
    _write_summary(out_dir, summary)
    return summary


def _with_count(
    error: BaseException, clip: str, frames_written: int, out_dir: str
) -> BaseException:
    """`clips.ClipBroken` and Ctrl-C as errors that say how many frames were written; others as is."""
    written = f"{frames_written} frames written to {out_dir}"
    if isinstance(error, clips.ClipBroken):
        return clips.ClipBroken(f"{error}; {written}", error.frame_index, frames_written)
    if isinstance(error, KeyboardInterrupt):
        return ClipInterrupted(f"{clip}: interrupted; {written}", frames_written)
    return error


def _write_summary(out_dir: str, summary: dict) -> None:
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
