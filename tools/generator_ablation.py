"""launch.py with one part of the synthetic generator switched off, for the ablation table of
docs/captures.md: `--without planes` (rooms only) or `--without exact_plates` (no clean share).
Everything after `--` is launch.py's command line, which must give the variant a data_dir of
its own (the set's name does not say that a part is off, so a shared one would be reused):

    python tools/generator_ablation.py --without planes -- --config configs/rmse_bce_dice.py \
        --workdir runs/ablation/no_planes --config.dataset.data_dir=runs/ablation/tfds_no_planes

Capture nuisances need no tool: `--config.augment.capture.enabled=False`.
"""

import argparse
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxsegdepth.data.synthetic import samples  # noqa: E402

# --without NAME: the module constant of `samples` it sets, and to what
VARIANTS = {"planes": ("PLANE_SHARE", 0.0), "exact_plates": ("CLEAN_SHARE", 0.0)}
DATA_DIR = "--config.dataset.data_dir="


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--without", choices=sorted(VARIANTS), required=True)
    parser.add_argument("launch_args", nargs=argparse.REMAINDER, help="-- then launch.py's")
    args = parser.parse_args(argv)
    launch_args = args.launch_args[1:] if args.launch_args[:1] == ["--"] else args.launch_args
    if not any(arg.startswith(DATA_DIR) for arg in launch_args):
        parser.error(f"give the variant a set of its own: {DATA_DIR}DIR after --")
    name, value = VARIANTS[args.without]
    setattr(samples, name, value)
    sys.argv = [os.path.join(ROOT, "launch.py"), *launch_args]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
