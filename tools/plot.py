"""Pictures from the command line: a run's metric curves, and a preview of synthetic samples.

    python tools/plot.py WORKDIR [--out PATH]

writes the curves of `mode=plot` (`WORKDIR/curves.png`) without a config;

    python tools/plot.py samples --out preview.png [--n 8] [--seed 0] [--start 0] [--size 224]

draws `synthetic.generate` samples `start`..`start + n - 1` of the set with `seed`, decoded as
the loader decodes them, one row each: bg | bg_fg | mask | depth (`reporting.image_grid`).
A script of the repository, run from the root of a clone.
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `python tools/plot.py` puts only tools/ on the path

from jaxsegdepth import errors, names, reporting
from jaxsegdepth.data import pipeline, synthetic
from jaxsegdepth.modes.plot import plot_run


def samples(out: str, n: int = 8, seed: int = 0, start: int = 0, size: int = synthetic.SIZE) -> str:
    """Writes a grid of synthetic samples `start`..`start + n - 1` to `out` (see the module doc)."""
    if n < 1 or start < 0 or size < 1:
        raise errors.UsageError(
            f"samples: expected n >= 1, start >= 0 and size >= 1, got n={n}, "
            f"start={start}, size={size}"
        )
    decoded = [_decode(synthetic.generate(seed, start + i, size), size) for i in range(n)]
    grid = reporting.image_grid(
        [(key, [sample[key] for sample in decoded]) for key in synthetic.KEYS]
    )
    Image.fromarray(grid).save(out)
    reporting.say(
        f"Wrote {out}: samples {start}-{start + n - 1} of seed {seed}, columns "
        f"{' | '.join(synthetic.KEYS)}"
    )
    return out


def _decode(sample: dict[str, bytes], size: int) -> dict[str, np.ndarray]:
    """JPEG bytes -> uint8 RGB inputs and [0, 1] float targets (drawn grey and colour-mapped),
    through the datasets' own decoder."""
    return {
        key: pipeline.decode_image(data, "RGB", size)
        if key in names.INPUTS
        else pipeline.decode_image(data, "L", size) / 255.0
        for key, data in sample.items()
    }


def main(argv=None) -> int:
    """`python tools/plot.py WORKDIR` or `python tools/plot.py samples`; 0, or the
    exit status of the error it printed."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["samples"]:
            args = _samples_parser().parse_args(argv[1:])
            samples(args.out, args.n, args.seed, args.start, args.size)
        else:
            args = _curves_parser().parse_args(argv)
            plot_run(args.workdir, args.out)
    except (errors.UsageError, errors.RunError) as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


def _curves_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python tools/plot.py",
        description="A run's metric curves as a PNG.",
        epilog="python tools/plot.py samples --help: the synthetic samples preview",
    )
    parser.add_argument("workdir", help="a training run's workdir (holding metrics.jsonl)")
    parser.add_argument("--out", default=None, help="output PNG (default WORKDIR/curves.png)")
    return parser


def _samples_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python tools/plot.py samples",
        description="A grid of synthetic museum samples as a PNG.",
    )
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--n", type=int, default=8, help="samples in the grid (rows)")
    parser.add_argument("--seed", type=int, default=0, help="the synthetic set's seed")
    parser.add_argument("--start", type=int, default=0, help="index of the first sample")
    parser.add_argument("--size", type=int, default=synthetic.SIZE, help="sample side in pixels")
    return parser


if __name__ == "__main__":
    sys.exit(main())
