"""`mode=evaluate`: the full metric table of a trained checkpoint on the validation split.

Loads the best checkpoint of `WORKDIR` (or `--config.checkpoint.step=N`), or of another run
with `--config.init_from=PATH[:STEP]`, evaluates every validation sample of `config.dataset`
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
(resized, JPEG-coded) targets (`evaluation.ceiling_iou`).

`photos` holds, per resolution, the mask IoU of the model (`model_iou`), of that same
difference threshold (`difference_iou`) and the ceiling (`ceiling_iou`) on
`config.evaluate.photos` held-out pairs made of
real photographs (`jaxsegdepth.data.photos`: data of another kind than the training set);
`WORKDIR/photos_<res>px.png` draws the first of them.

`iou` is at threshold 0.5, `iou_soft` on the probabilities (the reference's number); depth
metrics are over pixels whose target is > 1e-4 (see `jaxsegdepth.metrics`). Resolutions:
`config.evaluate.resolutions`, or when that is empty the last training stage's
resolution. Metrics are exact over the split: the last partial batch is padded
with repeats of its real samples weighted 0 (the trainer's own `evaluation.evaluate_split`).
"""
import json
import os

import jax
import ml_collections
from PIL import Image

from jaxsegdepth import (checkpoints, errors, evaluation, mesh as mesh_lib, names, reporting,
                         stages, state as state_lib)
from jaxsegdepth.data import builders, photos, pipeline


def resolutions(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """`config.evaluate.resolutions`, or the last stage's resolution when that is empty."""
    return tuple(config.evaluate.resolutions) or (stages.of(config)[-1].resolution,)


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses, in one line, settings this mode would trip over (before anything loads)."""
    state_lib.validate(config, resolutions(config), "evaluate.resolutions")
    checkpoints.validate(config)
    pipeline.validate(config.dataset)
    mesh = mesh_lib.create_mesh()
    mesh_lib.check_batch_size(mesh, config.batch_size)
    if config.evaluate.photos < 0:
        raise errors.UsageError(f"evaluate.photos={config.evaluate.photos}: expected >= 0")
    if config.evaluate.photos:
        mesh_lib.check_batch_size(mesh, config.evaluate.photos, "evaluate.photos")


def format_table(per_resolution: dict, order) -> str:
    """A fixed-width table: one row per metric (`order` first), one column per resolution."""
    columns = list(per_resolution)
    keys = [k for k in order if any(k in m for m in per_resolution.values())]
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
    state = state_lib.load_for_inference(config, workdir, mesh)  # fails clearly if none
    source = os.path.abspath(state_lib.parse_init_from(config.init_from)[0] or workdir)
    os.makedirs(workdir, exist_ok=True)
    builders.prepare(config.dataset)
    step = int(jax.device_get(state.step))
    heads = state_lib.heads(config)
    _, eval_step, predict_step = state_lib.jit_steps(
        config, mesh, pipeline.input_normalization(config.dataset))
    per_resolution, baselines, photo_pairs = {}, {}, {}
    pairs = ([photos.generate(0, index) for index in range(config.evaluate.photos)]
             if "mask" in heads else [])  # rendered once, decoded at each resolution
    for resolution in resolutions(config):  # the trainer's own pass; keys lose its "val_"
        values = evaluation.evaluate_split(config, mesh, eval_step, state, resolution, heads)
        per_resolution[str(resolution)] = {k.removeprefix("val_"): v for k, v in values.items()}
        baselines[str(resolution)] = evaluation.trivial_baselines(config, resolution, heads)
        if pairs:
            photo_pairs[str(resolution)], grid = evaluation.photo_pairs(
                config, mesh, predict_step, state, resolution,
                baselines[str(resolution)]["difference_threshold"], pairs)
            if jax.process_index() == 0:
                Image.fromarray(grid).save(os.path.join(workdir, f"photos_{resolution}px.png"))
    result = {"step": step, "checkpoint": source, "split": "validation",
              "num_samples": pipeline.split_size(config.dataset, "validation"),
              "model": config.model, "dataset": config.dataset.name,
              "resolutions": [int(r) for r in per_resolution], "metrics": per_resolution,
              "baselines": baselines, "photos": photo_pairs}
    path = os.path.join(workdir, "eval.json")
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
    reporting.say(f"Checkpoint step {step} of {source}, {result['num_samples']} validation "
                  f"samples of {config.dataset.name} (iou: threshold 0.5; iou_soft: on "
                  f"probabilities):\n"
                  f"{format_table(per_resolution, names.metric_names(heads))}\n"
                  f"Trivial predictors on the same images (difference_iou: max-channel "
                  f"|bg - bg_fg| > a threshold chosen on the training split; mean_depth_*: the "
                  f"mean training depth map for every image; ceiling_iou: the best any "
                  f"binary mask scores against the soft targets):\n"
                  f"{format_table(baselines, ())}\n"
                  + (f"Held-out pairs of real photographs (masks only; model_iou against "
                     f"difference_iou at the same threshold):\n{format_table(photo_pairs, ())}\n"
                     if photo_pairs else "")
                  + f"written to {path}")
    return result
