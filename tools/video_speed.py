"""Video prediction: its speed, and what temporal smoothing does, on clips made here from the
synthetic rooms (`jaxsegdepth.data.synthetic.moving_figure`, written as mp4v).

    python tools/video_speed.py speed [--workdir RUN] [--frames 160] [--batch 8]
    python tools/video_speed.py smoothing --workdir RUN [--alphas 0 0.3 0.5 0.8] [--noise 3 8]

`speed`: a 640x360 and a 1280x720 clip (a walk through a room, resized), each predicted by
`predict_clip` with the default outputs and with `mask_prob` alone, after a warm-up that
compiles the model; beside it the model alone, its jitted function called on one batch of the
clip over and over with nothing else running. The model size follows `mode=predict`'s rules
(`--max-side`, the stride). Without `--workdir`, a freshly initialised model of `--config`
(the speed does not depend on the weights).

`smoothing`: mask IoU against the known masks, averaged over the frames and the clips, and the
`smoothed` flicker of `summary.json`, for each alpha of `video.temporal_smoothing` and each
noise level; 224x224 clips of 60 frames (about 3 px a frame), the empty room as the plate.

A script of the repository, run from the root of a clone.
"""

import argparse
import functools
import os
import sys
import tempfile
import time

import cv2
import jax
import numpy as np
from absl import logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `python tools/video_speed.py` puts only tools/ on the path

import configs
from jaxsegdepth import build, inference, mesh as mesh_lib, models
from jaxsegdepth.data import pipeline, synthetic
from jaxsegdepth.modes import predict
from jaxsegdepth.video import outputs as outputs_lib, pixels, prediction

SIZES = ((640, 360), (1280, 720))  # (width, height) of the speed clips
OUTPUT_SETS = {"default": outputs_lib.DEFAULT_OUTPUTS, "mask_prob": ("mask_prob",)}
SMOOTHING_SCENES = ((0, 11), (0, 12), (0, 13), (0, 14))


def load_model(config, workdir: str):
    """`predict_fn(bg, bg_fg)` of WORKDIR's model, or of a fresh one without `workdir`."""
    if workdir:
        return predict.load_predictor(config, workdir).forward
    mesh = mesh_lib.create_mesh(jax.local_devices()[:1])
    state = build.create_state(config, mesh=mesh)
    normalization = pipeline.input_normalization(config.dataset)
    _, _, predict_step = build.compiled_steps(config, mesh, normalization)
    return functools.partial(predict_step, state)


def write_clip(path: str, frames: list, size: tuple) -> str:
    """`frames` (RGB) resized to `size` (width, height), as an mp4v mp4 at 25 frames/s."""
    video = outputs_lib.VideoFile(path, 25.0, size[1], size[0], grey=False)
    for frame in frames:
        video.write(cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)[..., ::-1])
    video.close()
    return path


def model_alone(predict_fn, plate: np.ndarray, frames: list, model_hw, batch: int, calls=8):
    """Frames/s of `predict_fn` on one batch of `frames`, results on the host, after a call."""
    bg = np.repeat(pixels.resize(plate, model_hw)[None], batch, axis=0)
    bg_fg = np.stack([pixels.resize(frame, model_hw) for frame in frames[:batch]])
    jax.device_get(predict_fn(bg, bg_fg))
    start = time.perf_counter()
    for _ in range(calls):
        jax.device_get(predict_fn(bg, bg_fg))
    return calls * batch / (time.perf_counter() - start)


def speed(predict_fn, stride: int, args) -> None:
    """Prints, per clip size and output set, end-to-end and model-alone frames/s."""
    plate, frames, _ = synthetic.moving_figure(args.frames, 360)
    print(f"{'clip':>9} {'model':>8} {'outputs':>9} {'end to end':>10} {'model alone':>11} ratio")
    with tempfile.TemporaryDirectory() as tmp:
        for size in SIZES:
            clip = write_clip(os.path.join(tmp, f"walk_{size[0]}.mp4"), frames, size)
            plate_path = os.path.join(tmp, f"plate_{size[0]}.png")
            cv2.imwrite(plate_path, cv2.resize(plate, size)[..., ::-1])
            model_hw = inference.model_size(size[1], size[0], stride, 0, args.max_side)
            run = functools.partial(
                prediction.predict_clip,
                predict_fn,
                clip,
                plate_path,
                model_hw=model_hw,
                batch_size=args.batch,
            )
            run(os.path.join(tmp, "warmup"), outputs=("mask_prob",))  # compiles
            alone = model_alone(predict_fn, cv2.resize(plate, size), frames, model_hw, args.batch)
            for name, outputs in OUTPUT_SETS.items():
                summary = run(os.path.join(tmp, name), outputs=outputs)
                rate = summary["frames_per_s"]
                clip_size, model = f"{size[0]}x{size[1]}", f"{model_hw[1]}x{model_hw[0]}"
                print(
                    f"{clip_size:>9} {model:>8} {name:>9} {rate:>10.2f} {alone:>11.2f} "
                    f"{rate / alone:.2f}"
                )


def smoothing(predict_fn, args) -> None:
    """Prints, per noise level and alpha, the mean mask IoU and the smoothed flicker."""
    size, count = 224, 60
    print(f"{'noise':>5} {'alpha':>5} {'IoU':>7} {'flicker':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for noise in args.noise:
            clips = []
            for scene in SMOOTHING_SCENES:
                plate, frames, masks = synthetic.moving_figure(count, size, scene, noise)
                name = f"walk_{scene[1]}_{noise:g}"
                clip = write_clip(os.path.join(tmp, f"{name}.mp4"), frames, (size, size))
                plate_path = os.path.join(tmp, f"{name}.png")
                cv2.imwrite(plate_path, plate[..., ::-1])
                clips.append((clip, plate_path, masks))
            for alpha in args.alphas:
                ious, flickers = [], []
                for clip, plate_path, masks in clips:
                    out = os.path.join(tmp, f"out_{alpha:g}")
                    summary = prediction.predict_clip(
                        predict_fn,
                        clip,
                        plate_path,
                        out,
                        prediction.ClipOptions(
                            model_hw=(size, size),
                            outputs=("mask",),
                            temporal_smoothing=alpha,
                            video_format="png",
                        ),
                    )
                    flickers.append(summary["flicker"]["smoothed"])
                    for index, truth in enumerate(masks):
                        path = os.path.join(out, "mask", f"{index:06d}.png")
                        predicted = cv2.imread(path, cv2.IMREAD_GRAYSCALE) > 127
                        union = np.logical_or(predicted, truth).sum()
                        ious.append(np.logical_and(predicted, truth).sum() / max(union, 1))
                print(f"{noise:>5g} {alpha:>5g} {np.mean(ious):>7.4f} {np.mean(flickers):>8.5f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("speed", "smoothing"))
    parser.add_argument("--workdir", default="", help="a training run's folder")
    parser.add_argument("--config", default="configs/rmse_bce_dice.py", help="its recipe")
    parser.add_argument("--frames", type=int, default=160, help="speed: frames per clip")
    parser.add_argument("--batch", type=int, default=8, help="speed: frames per model call")
    parser.add_argument("--max-side", type=int, default=1024, help="speed: predict.max_side")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.8])
    parser.add_argument("--noise", type=float, nargs="+", default=[3.0, 8.0])
    args = parser.parse_args()
    logging.set_verbosity(logging.ERROR)  # Orbax reports every read-only open at WARNING
    config = configs.load_file(args.config)
    if args.what == "smoothing" and not args.workdir:
        parser.error("smoothing needs --workdir: a trained model")
    predict_fn = load_model(config, args.workdir)
    if args.what == "speed":
        speed(predict_fn, models.MODELS[config.model].STRIDE, args)
    else:
        smoothing(predict_fn, args)


if __name__ == "__main__":
    main()
