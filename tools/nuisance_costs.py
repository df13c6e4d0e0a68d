"""What each capture nuisance costs a trained model and the best background-subtraction
threshold, on held-out real-photo pairs (`jaxsegdepth.data.photos.SETS`).

    python tools/nuisance_costs.py WORKDIR [--config configs/rmse_bce_dice.py] [--pairs 48]
        [--resolution 224] [--json out.json]

For the clean set of other shapes, each single-nuisance set and the set with all of them, the
mask IoU of WORKDIR's model (its best checkpoint, normalised with its model card) beside the
IoU of the best `max_channel |bg - bg_fg|` threshold, chosen on the set's tuning pairs: the
`photos` evaluator of `mode=evaluate`, run once per set. A script of the repository, run from
the root of a clone.
"""

import argparse
import json
import os
import sys

import jax
from absl import logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `python tools/nuisance_costs.py` puts only tools/ on the path

import configs
from jaxsegdepth import build
from jaxsegdepth.checkpointing import select
from jaxsegdepth.data import photos
from jaxsegdepth.evaluators import base, photographs

SETS = ("photos_clean", *(f"photos_{n}" for n in photos.NUISANCES), "photos_capture")


def measure(config, workdir: str, pairs: int, resolution: int) -> dict:
    """{set: photos evaluator metrics} for every set of `SETS`."""
    loaded = select.for_inference(config, workdir)
    context = base.Context(
        config, loaded.mesh, build.heads(config), loaded.eval_step, loaded.predict_step
    )
    return {
        name: photographs.Photos(context, pairs, name, tag=name)
        .run(loaded.model.state, resolution)
        .metrics
        for name in SETS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", help="a training run's folder")
    parser.add_argument("--config", default="configs/rmse_bce_dice.py", help="its recipe")
    parser.add_argument("--pairs", type=int, default=48, help="evaluated pairs per set")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--json", default="", help="write the results here too")
    args = parser.parse_args()
    logging.set_verbosity(logging.ERROR)  # Orbax reports every read-only open at WARNING
    results = measure(configs.load_file(args.config), args.workdir, args.pairs, args.resolution)
    print(f"{'set':<16} {'model IoU':>9} {'threshold IoU':>13} {'threshold':>9}")
    for name, row in results.items():
        print(
            f"{name:<16} {row['model_iou']:>9.4f} {row['difference_iou']:>13.4f} "
            f"{row['difference_threshold']:>9.2f}"
        )
    print(f"{args.pairs} pairs per set at {args.resolution} px, on {jax.device_count()} device(s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
