"""`mode=plot`: the metric curves of a run as a PNG.

    python launch.py --config CONFIG --workdir WORKDIR --config.mode=plot

reads `WORKDIR/metrics.jsonl` and writes `WORKDIR/curves.png`: IoU, depth RMSE, train and
validation losses, and the learning rate, against the epoch (`charts.curves`). Without a
config: `python tools/plot.py WORKDIR`, which also previews synthetic samples.
"""

import os

import ml_collections

from jaxsegdepth import charts, errors, reporting


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
        path = charts.curves(
            reporting.read_metrics(workdir), out or os.path.join(workdir, "curves.png")
        )
    except ValueError as error:
        raise errors.RunError(f"{metrics_path}: {error}") from None
    reporting.say(f"Wrote {path}")
    return path
