"""`mode=evaluate`: the full metric table of a trained checkpoint on the validation split.

Loads the best checkpoint of `WORKDIR`, or the one `--config.model_path` names (`:STEP` of
WORKDIR, another run's `RUN[:STEP]`), evaluates every validation sample of `config.dataset`
(whatever the checkpoint was trained on, normalised with that dataset's statistics) once at
each resolution asked for, prints a table and writes `WORKDIR/eval.json`:

    {"step": 1234, "checkpoint": "/abs/run", "split": "validation", "num_samples": 120000,
     "model": "dsresnet",
     "resolutions": [224],
     "metrics": {"224": {"loss": ..., "iou": ..., "iou_soft": ..., "rmse": ..., "mae": ...,
                         "abs_rel": ..., "sq_rel": ..., "log10": ..., "delta1": ...,
                         "delta2": ..., "delta3": ..., "mask/bce": ..., ...}}}

`baselines` holds, per resolution, what a model must beat: `difference_iou` (the mask
`max_channel |bg - bg_fg| > difference_threshold`, the threshold chosen on the training split)
and `mean_depth_rmse` etc. (the mean training depth map predicted for every image), and what
no model can beat: `ceiling_iou`, the best IoU any binary mask scores against the soft
(resized, JPEG-coded) targets (`evaluators.baselines.ceiling_iou`).

`photos` holds, per resolution, the mask IoU of the model (`model_iou`), of the best difference
threshold (`difference_iou`, the threshold chosen on other pairs of the same kind) and the
ceiling (`ceiling_iou`) on `evals.photos.pairs` held-out pairs made of real photographs
(`jaxsegdepth.data.photos`: data of another kind than the training set);
`WORKDIR/photos_<res>px.png` draws the first of them. Plates are registered first
(`config.align`); `details` holds each set's per-pair registration estimates, and the
moved-camera sets (`photos_moved_*`) are also scored unaligned (`*_unaligned`).

Which evaluators run is `config.evals` (those with `evaluate=True`): `metrics` holds the
validation evaluator's results, every other evaluator's are under its name.

`iou` is at threshold 0.5, `iou_soft` on the probabilities (the reference's number); depth
metrics are over pixels whose target is > 1e-4 (see `jaxsegdepth.metrics`). Resolutions:
`config.evaluate.resolutions`, or when that is empty the last training stage's
resolution. Metrics are exact over the split: the last partial batch is padded
with repeats of its real samples weighted 0 (the trainer's own `evaluators.validation.Validation`).
"""

import json
import os

import jax
import ml_collections
from PIL import Image

from jaxsegdepth import build, mesh as mesh_lib, names, reporting, stages
from jaxsegdepth.checkpointing import select, store
from jaxsegdepth.data import datasets, pipeline
from jaxsegdepth.evaluators import base, catalog

METRICS = "metrics"  # eval.json's key for the validation evaluator's results


def resolutions(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """`config.evaluate.resolutions`, or the last stage's resolution when that is empty."""
    return tuple(config.evaluate.resolutions) or (stages.of(config)[-1].resolution,)


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses, in one line, settings this mode would trip over (before anything loads)."""
    build.validate(config, resolutions(config), "evaluate.resolutions")
    store.validate(config)
    pipeline.validate(config.dataset)
    mesh_lib.check_batch_size(mesh_lib.create_mesh(), config.batch_size)
    catalog.validate(config)


def format_table(per_resolution: dict, order) -> str:
    """A fixed-width table: one row per metric (`order` first), one column per resolution."""
    columns = list(per_resolution)
    keys = [k for k in order if any(k in m for m in per_resolution.values())]
    keys += sorted({k for m in per_resolution.values() for k in m} - set(keys))
    width = max(len(k) for k in keys)
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{c + 'px':>10}" for c in columns)]
    for key in keys:
        cells = [per_resolution[c].get(key) for c in columns]
        lines.append(
            f"{key:<{width}}  "
            + "  ".join(f"{v:>10.5f}" if v is not None else f"{'-':>10}" for v in cells)
        )
    return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Evaluates the chosen checkpoint; writes `WORKDIR/eval.json` and prints the tables."""
    loaded = select.for_inference(config, workdir)  # fails clearly if there is no model
    model, state, heads = loaded.model, loaded.model.state, build.heads(config)
    source = os.path.abspath(model.run)
    os.makedirs(workdir, exist_ok=True)
    datasets.prepare(config.dataset)
    step = int(jax.device_get(state.step))
    context = base.Context(config, loaded.mesh, heads, loaded.eval_step, loaded.predict_step)
    chosen = {name: catalog.create(name, context) for name in catalog.for_evaluate_mode(config)}
    sections, details = {name: {} for name in chosen}, {}
    for resolution in resolutions(config):
        for name, evaluator in chosen.items():
            result = evaluator.run(state, resolution)
            if result.metrics:
                sections[name][str(resolution)] = result.metrics
            if result.details:
                details.setdefault(name, {})[str(resolution)] = result.details
            for tag, grid in result.images.items():
                if jax.process_index() == 0:
                    Image.fromarray(grid).save(os.path.join(workdir, f"{tag}_{resolution}px.png"))
    result = {
        "step": step,
        "checkpoint": source,
        "weights": model.weights,
        "split": "validation",
        "num_samples": pipeline.split_size(config.dataset, "validation"),
        "model": config.model,
        "dataset": config.dataset.name,
        "resolutions": [int(r) for r in resolutions(config)],
        **{_section(name): values for name, values in sections.items()},
        "details": details,
    }
    path = os.path.join(workdir, "eval.json")
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
    tables = [
        f"{name} - {catalog.title(config, name)}:\n"
        f"{format_table(values, names.metric_names(heads))}"
        for name, values in sections.items()
        if values
    ]
    reporting.say(
        f"Checkpoint step {step} of {source}, {result['num_samples']} validation "
        f"samples of {config.dataset.name}\n" + "\n".join(tables) + f"\nwritten to {path}"
    )
    return result


def _section(name: str) -> str:
    """eval.json's key for evaluator `name`: `metrics` for the validation pass, else its name."""
    return METRICS if name == catalog.VALIDATION else name
