"""Plate registration (`jaxsegdepth/align.py`): its cost, and what it gives on moved cameras.

    python tools/align_speed.py speed [--repeats 30]
    python tools/align_speed.py sets [--pairs 48] [--resolution 224]
    python tools/align_speed.py clips [--workdir RUN] [--clips 3] [--frames 48]

`speed`: the median time of `align.estimate` and `align.apply` on 224x224 pairs (16 of the
8 px, 1 degree set) and on 1280x720 frames of a photograph, the camera moved by 1-8 pixels.

`sets`: the best `max_channel |plate - scene|` threshold's IoU (chosen on each set's tuning
pairs, as the `photos` evaluator does) with and without registration, on the moved-camera sets
and the capture set. The model's figures on the same sets: `mode=evaluate`.

`clips`: held-out clips of a photograph from a shaky camera (`photo_clips.shaky_clip`: 1.5 px of
shake per frame around a drift of 6 px and 0.5 degree) and the same clips from a still camera,
scored per frame against the true masks: the threshold (0.08), and with `--workdir` the run's
model (its best checkpoint), each with and without per-frame registration (`align.Tracker`).

A script of the repository, run from the root of a clone.
"""

import argparse
import os
import statistics
import sys
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `python tools/align_speed.py` puts only tools/ on the path

from jaxsegdepth import align
from jaxsegdepth.data import photo_clips, photos

CLIP_THRESHOLD = 0.08
SHAKE = dict(jitter_px=1.5, drift_px=6.0, drift_deg=0.5)
SETS = (*(f"photos_moved_{move}" for move in photos.MOVES), "photos_capture")
THRESHOLDS = np.round(np.arange(0.01, 0.51, 0.01), 2)


def _median_ms(function, inputs: list, repeats: int) -> tuple[float, float]:
    """(median wall-clock ms, median CPU ms of this process) of `function(*args)` over every
    `args` of `inputs`, each `repeats` times: on a machine shared with other jobs the CPU
    time is the fairer figure."""
    function(*inputs[0])  # warm-up
    wall, cpu = [], []
    for args in inputs * repeats:
        start, start_cpu = time.perf_counter(), time.process_time()
        function(*args)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return 1000 * statistics.median(wall), 1000 * statistics.median(cpu)


def _frames_720p() -> list:
    """(plate, scene) 1280x720 views of a photograph, the camera moved 1-8 px and 0-1 degree,
    a flat object over a tenth of the scene."""
    image = cv2.resize(photos.photo("astronaut"), (1600, 1600), interpolation=cv2.INTER_CUBIC)
    frames = []
    for move, degrees in (((1.0, 0.0), 0.0), ((3.0, -2.0), 0.4), ((-8.0, 5.0), -1.0)):
        scene = photos.view(image, (100, 100, 1280), 1280)[:720].copy()
        scene[200:500, 400:700] = (90, 140, 60)
        frames.append((photos.view(image, (100, 100, 1280), 1280, move, degrees)[:720], scene))
    return frames


def speed(repeats: int) -> None:
    settings = align.Settings()
    pairs = [photos.decode(p) for p in photos.pairs(photos.SETS["photos_moved_8px_1deg"], 0, 16)]
    print(f"{'input':<28} {'estimate ms':>16} {'apply ms':>16} {'total ms':>16}  (wall / CPU)")
    for name, inputs in {
        "224x224 (16 pairs, 8 px)": [(p["bg"], p["bg_fg"]) for p in pairs],
        "1280x720 (3 frames)": _frames_720p(),
    }.items():
        found = [(plate, scene, align.estimate(plate, scene, settings)) for plate, scene in inputs]
        estimate_ms = _median_ms(lambda p, s: align.estimate(p, s, settings), inputs, repeats)
        apply_ms = _median_ms(align.apply, found, repeats)
        total = [a + b for a, b in zip(estimate_ms, apply_ms)]
        cells = [f"{wall:>7.1f} / {cpu:>6.1f}" for wall, cpu in (estimate_ms, apply_ms, total)]
        print(f"{name:<28} " + " ".join(cells))


def _best_threshold_iou(pairs: list, settings: align.Settings, threshold=None) -> tuple:
    """(best threshold on `pairs` or the one given, its mean IoU) after registration."""
    differences, masks = [], []
    for pair in map(photos.decode, pairs):
        plate, _ = align.register(pair["bg"], pair["bg_fg"], settings)
        differences.append(np.abs(plate / 255.0 - pair["bg_fg"] / 255.0).max(-1))
        masks.append(pair["mask"] / 255.0)
    differences, masks = np.stack(differences), np.stack(masks)

    def iou(cut):
        predicted = (differences > cut).astype(np.float64)
        overlap = (predicted * masks).sum((1, 2))
        return np.mean((overlap + 1e-6) / ((predicted + masks).sum((1, 2)) - overlap + 1e-6))

    if threshold is None:
        threshold = THRESHOLDS[int(np.argmax([iou(cut) for cut in THRESHOLDS]))]
    return threshold, iou(threshold)


def sets(pairs: int, resolution: int) -> None:
    print(f"{'set':<24} {'unaligned':>9} {'registered':>10}")
    for name in SETS:
        row = []
        for settings in (align.Settings(enabled=False), align.Settings()):
            tuning = photos.pairs(photos.SETS[name], 0, pairs, resolution, "tuning")
            threshold, _ = _best_threshold_iou(tuning, settings)
            evaluated = photos.pairs(photos.SETS[name], 0, pairs, resolution)
            row.append(_best_threshold_iou(evaluated, settings, threshold)[1])
        print(f"{name:<24} {row[0]:>9.4f} {row[1]:>10.4f}")


def _model(workdir: str, config_file: str):
    """`predict_fn(plates, scenes)` of a run's best checkpoint, or None without a run."""
    if not workdir:
        return None
    import configs
    from jaxsegdepth.modes import predict

    return predict.load_predictor(configs.load_file(config_file), workdir).forward


def _clip_ious(clip: photo_clips.Clip, settings: align.Settings, predict_fn) -> dict:
    """Mean per-frame IoU of the threshold (and the model) on `clip`."""
    tracker = align.Tracker(clip.plate, settings)
    plates = np.stack([tracker(frame) for frame in clip.frames])
    frames, masks = np.stack(clip.frames), np.stack(clip.masks)
    predictions = {"threshold": np.abs(plates / 255.0 - frames / 255.0).max(-1) > CLIP_THRESHOLD}
    if predict_fn is not None:
        probabilities = np.concatenate(
            [
                np.asarray(predict_fn(plates[i : i + 8], frames[i : i + 8])["mask"])[..., 0]
                for i in range(0, len(frames), 8)
            ]
        )
        predictions["model"] = probabilities > 0.5
    result = {}
    for name, predicted in predictions.items():
        overlap = (predicted & masks).sum((1, 2))
        result[name] = float(np.mean((overlap + 1e-6) / ((predicted | masks).sum((1, 2)) + 1e-6)))
    result["refused"] = len(tracker.refused)
    return result


def clips(workdir: str, config_file: str, count: int, frames: int) -> None:
    predict_fn = _model(workdir, config_file)
    print(f"{'clip':<6} {'camera':<7} {'registration':<13} {'threshold':>9} {'model':>7} refused")
    for index in range(count):
        for camera, shake in (("still", {}), ("shaky", SHAKE)):
            clip = photo_clips.shaky_clip(index, frames, **shake)
            for settings in (align.Settings(enabled=False), align.Settings()):
                ious = _clip_ious(clip, settings, predict_fn)
                model = f"{ious['model']:>7.4f}" if "model" in ious else f"{'-':>7}"
                print(
                    f"{index:<6} {camera:<7} {'on' if settings.enabled else 'off':<13} "
                    f"{ious['threshold']:>9.4f} {model} {ious['refused']}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    timing = commands.add_parser("speed", help="time estimate and apply")
    timing.add_argument("--repeats", type=int, default=5)
    photo_sets = commands.add_parser("sets", help="the threshold on the moved-camera sets")
    photo_sets.add_argument("--pairs", type=int, default=48)
    photo_sets.add_argument("--resolution", type=int, default=224)
    shaky = commands.add_parser("clips", help="shaky against still clips")
    shaky.add_argument("--workdir", default="", help="a training run: score its model too")
    shaky.add_argument("--config", default="configs/rmse_bce_dice.py", help="its recipe")
    shaky.add_argument("--clips", type=int, default=3)
    shaky.add_argument("--frames", type=int, default=48)
    args = parser.parse_args()
    if args.command == "speed":
        speed(args.repeats)
    elif args.command == "sets":
        sets(args.pairs, args.resolution)
    else:
        clips(args.workdir, args.config, args.clips, args.frames)


if __name__ == "__main__":
    main()
