"""`mode=evaluate`: the full metric table of a trained checkpoint on the validation split.

Loads the best checkpoint of `WORKDIR` (or `--config.checkpoint.step=N`), evaluates every
validation sample once at each resolution asked for, prints a table and writes
`WORKDIR/eval.json`:

    {"step": 1234, "split": "validation", "num_samples": 120000, "model": "dsresnet",
     "resolutions": [224],
     "metrics": {"224": {"loss": ..., "iou": ..., "iou_soft": ..., "rmse": ..., "mae": ...,
                         "abs_rel": ..., "sq_rel": ..., "log10": ..., "delta1": ...,
                         "delta2": ..., "delta3": ..., "mask/bce": ..., ...}}}

`iou` is at threshold 0.5, `iou_soft` on the probabilities (the reference's number); depth
metrics are over pixels whose target is > 1e-4 (see `jaxsegdepth.metrics`). Resolutions:
`config.evaluate.resolutions`, or when that is empty the last training stage's
resolution. Metrics are exact over the split: the last partial batch is padded
with repeats of its real samples weighted 0 (the trainer's own `train.evaluate_split`).
"""
import json
import os

import jax
import ml_collections

from jaxsegdepth import checkpoints, losses, mesh as mesh_lib, steps, train
from jaxsegdepth.data import builders, pipeline

METRIC_ORDER = ("loss", "iou", "iou_soft", "rmse", "mae", "abs_rel", "sq_rel", "log10",
                "delta1", "delta2", "delta3")


def resolutions(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """`config.evaluate.resolutions`, or `(config.resolutions[-1],)` when that is empty."""
    chosen = tuple(int(r) for r in config.evaluate.resolutions) or (int(config.resolutions[-1]),)
    multiple = 32 if config.model == "dsresnet" else 1  # five 2x poolings
    for r in chosen:
        if r <= 0 or r % multiple:
            raise ValueError(f"evaluate.resolutions: {r} is not a positive multiple of {multiple}, "
                             f"which {config.model} needs")
    return chosen


def evaluate_state(config: ml_collections.ConfigDict, state, resolution: int, mesh=None) -> dict:
    """Loss, loss terms and metrics of `state` over the validation split at `resolution`.

    The trainer's own validation pass (`train.evaluate_split`), so `evaluate` and the
    per-epoch validation can never disagree; keys lose its `val_` prefix.
    """
    mesh = mesh_lib.create_mesh() if mesh is None else mesh
    _, eval_step, _ = steps.jit_steps(mesh, losses.compose(config.loss))
    values = train.evaluate_split(config, mesh, eval_step, state, resolution)
    return {key.removeprefix("val_"): value for key, value in values.items()}


def format_table(per_resolution: dict) -> str:
    """A fixed-width table: one row per metric, one column per resolution."""
    columns = list(per_resolution)
    keys = [k for k in METRIC_ORDER if any(k in m for m in per_resolution.values())]
    keys += sorted({k for m in per_resolution.values() for k in m} - set(keys))
    width = max(len(k) for k in keys)
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{c + 'px':>10}" for c in columns)]
    for key in keys:
        cells = [per_resolution[c].get(key) for c in columns]
        lines.append(f"{key:<{width}}  " + "  ".join(
            f"{v:>10.5f}" if v is not None else f"{'-':>10}" for v in cells))
    return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Evaluates the chosen checkpoint; writes `WORKDIR/eval.json` and prints the table."""
    mesh = mesh_lib.create_mesh()
    state = checkpoints.load_for_inference(config, workdir, mesh)  # fails clearly if none
    builders.prepare(config.dataset)
    step = int(jax.device_get(state.step))
    per_resolution = {}
    for resolution in resolutions(config):
        per_resolution[str(resolution)] = evaluate_state(config, state, resolution, mesh)
    result = {"step": step, "split": "validation",
              "num_samples": pipeline.split_size(config.dataset, "validation"),
              "model": config.model, "dataset": config.dataset.name,
              "resolutions": [int(r) for r in per_resolution], "metrics": per_resolution}
    path = os.path.join(workdir, "eval.json")
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
        print(f"Checkpoint step {step} of {workdir}, {result['num_samples']} validation samples "
              f"(iou: threshold 0.5; iou_soft: on probabilities):\n"
              f"{format_table(per_resolution)}\nwritten to {path}")
    return result
