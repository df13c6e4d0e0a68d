"""A model against background subtraction as one capture nuisance grows: the scene's exposure
(a gain on the whole composite, as auto-exposure gives) or sensor noise on both shots.

    python tools/nuisance_sweep.py MODEL [--pairs 48] [--size 224]
        [--gains 0.7,0.8,0.9,1.1,1.2,1.3,1.4] [--noise 2,4,8] [--json out.json]

The `photos_clean` set's pairs (held-out real photographs, `jaxsegdepth/data/photos.py`) are
rendered, given the nuisance, JPEG-coded at the synthetic set's quality and decoded. The model
(a run, a bundle or an export; plates registered as by default) predicts at `--size`; the
`max_channel |plate - scene|` threshold is the best on as many pairs of the tuning split with
the same nuisance. Mean per-pair mask IoU (smoothed as `metrics.iou`), the model's at 0.5.
A script of the repository, run from the root of a clone.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxsegdepth import inference, metrics  # noqa: E402
from jaxsegdepth.data import photos, synthetic  # noqa: E402
from jaxsegdepth.evaluators import baselines  # noqa: E402


def shot_pairs(split: str, count: int, size: int, gain: float, noise: float) -> list[dict]:
    """Decoded pairs of `photos_clean`'s `split`: the scene times `gain`, Gaussian noise of
    std `noise` grey levels on each shot (a stream per pair)."""
    chosen = photos.SETS["photos_clean"]
    decoded = []
    for index in photos.indices(split, 0, count):
        pair = photos.render(chosen.seed, index, size, chosen.shapes)
        rng = np.random.default_rng([index, 7])
        shots = {"bg": pair["bg"].astype(np.float32), "bg_fg": pair["bg_fg"] * np.float32(gain)}
        coded = {"mask": synthetic.encode_jpeg(pair["mask"], synthetic.JPEG_QUALITY_TARGET)}
        for key, image in shots.items():
            image = np.clip(np.rint(image + rng.normal(0.0, noise, image.shape)), 0, 255)
            coded[key] = synthetic.encode_jpeg(image.astype(np.uint8), synthetic.JPEG_QUALITY_RGB)
        decoded.append(photos.decode(coded))
    return decoded


def difference_and_mask(decoded: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """max_channel |bg - bg_fg| and the mask, (N, H, W, 1) in [0, 1]."""
    images = {key: np.stack([p[key] for p in decoded]) / np.float32(255) for key in decoded[0]}
    return baselines.channel_difference(images), images["mask"][..., None]


def score(predictor, count: int, size: int, gain: float, noise: float) -> dict:
    """Model and threshold IoU on the eval pairs; the threshold chosen on the tuning pairs."""
    tuning = difference_and_mask(shot_pairs("tuning", count, size, gain, noise))
    threshold = baselines.best_threshold(
        np.asarray(baselines.threshold_iou_sums(*tuning, baselines.DIFF_THRESHOLDS))
    )
    evaluated = shot_pairs("eval", count, size, gain, noise)
    difference, mask = difference_and_mask(evaluated)
    results = predictor([p["bg"] for p in evaluated], [p["bg_fg"] for p in evaluated])
    predicted = np.stack([r.mask for r in results])[..., None].astype(np.float32)
    return {
        "model_iou": float(metrics.iou(predicted, mask)),
        "threshold_iou": float(metrics.iou((difference > threshold).astype(np.float32), mask)),
        "threshold": threshold,
    }


def floats(text: str) -> list[float]:
    return [float(value) for value in text.split(",") if value]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a run folder, a bundle or an export")
    parser.add_argument("--pairs", type=int, default=48, help="eval (and tuning) pairs")
    parser.add_argument("--size", type=int, default=224, help="pairs' and model's size")
    parser.add_argument("--gains", type=floats, default=floats("0.7,0.8,0.9,1.1,1.2,1.3,1.4"))
    parser.add_argument("--noise", type=floats, default=floats("2,4,8"), help="grey levels")
    parser.add_argument("--json", default="", help="write the results here too")
    args = parser.parse_args(argv)
    predictor = inference.load(args.model, resolution=args.size)
    rows = [("clean", 1.0, 0.0)]
    rows += [(f"gain {gain:g}", gain, 0.0) for gain in args.gains]
    rows += [(f"noise {noise:g}", 1.0, noise) for noise in args.noise]
    results = {}
    print(f"{'nuisance':<12} {'model IoU':>9} {'threshold IoU':>13} {'threshold':>9}")
    for name, gain, noise in rows:
        row = results[name] = score(predictor, args.pairs, args.size, gain, noise)
        print(
            f"{name:<12} {row['model_iou']:>9.4f} {row['threshold_iou']:>13.4f} "
            f"{row['threshold']:>9.2f}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
