"""Names shared by the data, the models, the losses and the reports, defined once.

A batch is a dict keyed by `INPUTS`, the heads and `INDEX`; a model returns a dict keyed by
the heads it declares (`models.MODELS[name].HEADS`, a subset of `HEADS`); metrics and loss
terms are reported as `val_<metric>` and `val_<head>/<term>`. Config fields that moved keep
their old names here (`RENAMED_FIELDS`).
"""

from typing import Optional

INPUTS = ("bg", "bg_fg")
HEADS = ("mask", "depth")  # every head a model may predict, in display order
# A batch's global element indices (epoch * n + position in the shuffled order), which draw
# the train step's augmentation; not the records' own `index` field (their place in the split).
INDEX = "index"
MASK_METRICS = ("iou", "iou_soft")
DEPTH_METRICS = ("rmse", "mae", "abs_rel", "sq_rel", "log10", "delta1", "delta2", "delta3")


def task_loss(head: str) -> str:
    """The key of a head's whole loss (its weighted terms summed) among the loss terms."""
    return f"{head}/loss"


def metric_names(heads) -> tuple[str, ...]:
    """The metrics evaluation reports for a model with `heads`, in display order."""
    names = ("loss",)
    if "mask" in heads:
        names += MASK_METRICS
    if "depth" in heads:
        names += DEPTH_METRICS
    return names


def monitor_names(heads, loss_spec) -> tuple[str, ...]:
    """Every per-epoch value a checkpoint can be chosen by: `train_loss`, `val_<metric>`,
    `val_<head>/<term>` for each term of `loss_spec` ({head: {term: weight}}) and
    `val_<head>/loss` for each of its heads."""
    terms = tuple(f"val_{head}/{term}" for head, spec in loss_spec.items() for term in spec)
    terms += tuple(f"val_{task_loss(head)}" for head in loss_spec)
    return ("train_loss",) + tuple(f"val_{name}" for name in metric_names(heads)) + terms


VIDEO_FIELDS = ("plate_frames", "video_format", "batch_size", "temporal_smoothing", "fps")

# Config fields that moved: old dotted name -> new. launch.py refuses an old name on the
# command line or in a recipe, naming the new one; a run saved under the old names still
# resumes (`checkpointing.resume`).
RENAMED_FIELDS = {
    "checkpoint.step": "model_path",
    "dataset.augment": "augment.photometric",
    "dataset.hsv_prob": "augment.hsv_prob",
    "dataset.contrast_prob": "augment.contrast_prob",
    "dataset.capture": "augment.capture",
    "loss_weighting": "loss_weighting.method",
    "dwa_temperature": "loss_weighting.temperature",
    **{f"predict.{field}": f"video.{field}" for field in VIDEO_FIELDS},
}


def renamed(field: str) -> Optional[str]:
    """The new name of dotted config `field` if it, or a block holding it, moved; else None."""
    if field in RENAMED_FIELDS:
        return RENAMED_FIELDS[field]
    for old, new in RENAMED_FIELDS.items():
        if field.startswith(old + ".") and not new.startswith(old + "."):
            return new + field[len(old) :]
    return None
