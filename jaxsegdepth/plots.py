"""`mode=plot`: the metric curves of a run as a PNG; and a preview of synthetic samples.

    python -m jaxsegdepth.plots WORKDIR [--out PATH]
    python launch.py --config CONFIG --workdir WORKDIR --config.mode=plot

reads `WORKDIR/metrics.jsonl` and writes `WORKDIR/curves.png`: IoU, depth RMSE, train and
validation losses, and the learning rate, against the epoch (`charts.curves`).

    python -m jaxsegdepth.plots samples --out preview.png [--n 8] [--seed 0] [--start 0]

draws `synthetic.generate` samples `start`..`start + n - 1` of the set with `seed`, decoded from
their JPEG bytes, one row each: bg | bg_fg | mask | depth (`reporting.image_grid`).
"""
import argparse
import io
import os
import sys

import ml_collections
import numpy as np
from PIL import Image

from jaxsegdepth import charts, errors, names, reporting
from jaxsegdepth.data import synthetic


def validate(config: ml_collections.ConfigDict) -> None:
    """Nothing to refuse: the mode reads only the workdir, whatever the config says."""
    del config


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
    del config
    return plot_run(workdir)


def plot_run(workdir: str, out: str | None = None) -> str:
    """Writes the curves of the run in `workdir` to `out` (default `WORKDIR/curves.png`)."""
    metrics_path = os.path.join(workdir, reporting.METRICS_FILE)
    if not os.path.exists(metrics_path):
        raise errors.RunError(f"no {metrics_path}: is {workdir} the workdir of a training run?")
    try:
        path = charts.curves(reporting.read_metrics(workdir),
                             out or os.path.join(workdir, "curves.png"))
    except ValueError as error:
        raise errors.RunError(f"{metrics_path}: {error}") from None
    reporting.say(f"Wrote {path}")
    return path


def samples(out: str, n: int = 8, seed: int = 0, start: int = 0,
            size: int = synthetic.SIZE) -> str:
    """Writes a grid of synthetic samples `start`..`start + n - 1` to `out` (see the module doc)."""
    if n < 1 or start < 0 or size < 1:
        raise errors.UsageError(f"samples: expected n >= 1, start >= 0 and size >= 1, got n={n}, "
                                f"start={start}, size={size}")
    decoded = [_decode(synthetic.generate(seed, start + i, size)) for i in range(n)]
    grid = reporting.image_grid([(key, [sample[key] for sample in decoded])
                                 for key in synthetic.KEYS])
    Image.fromarray(grid).save(out)
    reporting.say(f"Wrote {out}: samples {start}-{start + n - 1} of seed {seed}, columns "
                  f"{' | '.join(synthetic.KEYS)}")
    return out


def _decode(sample: dict[str, bytes]) -> dict[str, np.ndarray]:
    """JPEG bytes -> uint8 RGB inputs and [0, 1] float targets (drawn grey and colour-mapped)."""
    def read(data: bytes, mode: str) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert(mode))
    return {key: read(data, "RGB") if key in names.INPUTS else read(data, "L") / 255.0
            for key, data in sample.items()}


def main(argv=None) -> int:
    """`python -m jaxsegdepth.plots WORKDIR` or `python -m jaxsegdepth.plots samples`; 0, or the
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
    parser = argparse.ArgumentParser(prog="python -m jaxsegdepth.plots",
                                     description=__doc__.split("\n")[0],
                                     epilog="python -m jaxsegdepth.plots samples --help: the "
                                            "synthetic samples preview")
    parser.add_argument("workdir", help="a training run's workdir (holding metrics.jsonl)")
    parser.add_argument("--out", default=None, help="output PNG (default WORKDIR/curves.png)")
    return parser


def _samples_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxsegdepth.plots samples",
                                     description="A grid of synthetic museum samples as a PNG.")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--n", type=int, default=8, help="samples in the grid (rows)")
    parser.add_argument("--seed", type=int, default=0, help="the synthetic set's seed")
    parser.add_argument("--start", type=int, default=0, help="index of the first sample")
    parser.add_argument("--size", type=int, default=synthetic.SIZE, help="sample side in pixels")
    return parser


if __name__ == "__main__":
    sys.exit(main())
