"""Depth RMSE and mask IoU of a model on the synthetic validation split, per scene family (rooms,
planes): which family a set's depth error comes from.

    python tools/family_scores.py RUN_OR_BUNDLE [--samples 2000] [--count 300] [--size 224]

Renders the first `--count` validation samples of the `--samples`-sample set (seed 0, the
current generator) as arrays (no JPEG round trip), predicts at `--size` without registration,
and pools squared depth errors over the pixels with depth and mask intersections and unions
over the samples of each family.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxsegdepth import align, inference, metrics  # noqa: E402
from jaxsegdepth.data import synthetic  # noqa: E402
from jaxsegdepth.data.builders import reference_split  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a run folder, a bundle or an export")
    parser.add_argument("--samples", type=int, default=2000, help="size of the set (its split)")
    parser.add_argument("--count", type=int, default=300, help="validation samples scored")
    parser.add_argument("--size", type=int, default=224, help="the model's input size")
    args = parser.parse_args(argv)
    predictor = inference.load(
        args.model, resolution=args.size, alignment=align.Settings(enabled=False)
    )
    _, validation = reference_split(args.samples, 0.3)
    sums = {family: np.zeros(4) for family in synthetic.FAMILIES}
    for index in validation[: args.count]:
        family, _ = synthetic.kind(0, int(index))
        sample = synthetic.render(0, int(index))
        result = predictor(sample["bg"], sample["bg_fg"])
        target = sample["depth"] / 255.0
        valid = target > metrics.MIN_DEPTH
        truth = sample["mask"] > 127
        sums[family] += (
            np.sum((result.depth - target)[valid] ** 2),
            np.sum(valid),
            np.sum(result.mask & truth),
            np.sum(result.mask | truth),
        )
    sums["all"] = sum(sums.values())
    scores = {
        family: {"depth_rmse": float(np.sqrt(s[0] / s[1])), "mask_iou": float(s[2] / s[3])}
        for family, s in sums.items()
        if s[1]
    }
    for family, score in scores.items():
        print(f"{family:6s} depth RMSE {score['depth_rmse']:.4f}  mask IoU {score['mask_iou']:.4f}")
    return scores


if __name__ == "__main__":
    main()
