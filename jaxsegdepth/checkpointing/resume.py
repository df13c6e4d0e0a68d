"""What a run carries across a stop, and whether it may continue: `Progress` (saved with the
state in every checkpoint), the settings a resumed run must share with the run it continues,
and the state a run starts from (its latest checkpoint, a warm start or a new one)."""

import dataclasses
import json
from typing import Optional

import ml_collections
from flax import traverse_util

from jaxsegdepth import build, errors, names, preprocess, reporting, stages, steps
from jaxsegdepth.checkpointing import select, store
from jaxsegdepth.data import pipeline


@dataclasses.dataclass
class EpochLoss:
    """The running train loss of the epoch in progress: sums over its finished steps, added
    one step at a time in step order, so the sum never depends on how steps were grouped."""

    total: float = 0.0
    count: int = 0
    per_task: dict = dataclasses.field(default_factory=dict)  # head -> its loss's sum

    def add(self, step_metrics: dict, tasks) -> None:
        """Adds one step's host metrics (`loss` and each task's `<head>/loss`)."""
        self.total += float(step_metrics["loss"])
        self.count += 1
        for task in tasks:
            loss = float(step_metrics[names.task_loss(task)])
            self.per_task[task] = self.per_task.get(task, 0.0) + loss

    def means(self) -> tuple[float, dict]:
        """(the mean train loss, {head: its mean loss}) over the steps added."""
        count = max(self.count, 1)
        return self.total / count, {task: total / count for task, total in self.per_task.items()}


@dataclasses.dataclass(frozen=True)
class Progress:
    """What the loop carries besides the `TrainState`, put together where it is saved (the
    checkpoint's `loop` item, `to_json`)."""

    epoch_loss: EpochLoss = dataclasses.field(default_factory=EpochLoss)
    iterator: Optional[dict] = None  # the data iterator's state at the save (JSON)
    iterator_stage: int = -1  # the stage that iterator reads for
    last_record: Optional[dict] = None  # the last finished epoch's metrics.jsonl line
    settings: Optional[dict] = None  # `resume_settings` of the run, checked on resume

    def to_json(self) -> dict:
        return {
            "loss_sum": self.epoch_loss.total,
            "loss_count": self.epoch_loss.count,
            "task_loss_sums": dict(self.epoch_loss.per_task),
            "iterator": self.iterator,
            "iterator_stage": self.iterator_stage,
            "last_record": self.last_record,
            "settings": self.settings,
        }

    @classmethod
    def from_json(cls, saved: dict) -> "Progress":
        """The `Progress` a `to_json` (or an older save, without some of its keys) holds."""
        loss = EpochLoss(
            saved.get("loss_sum", 0.0),
            saved.get("loss_count", 0),
            dict(saved.get("task_loss_sums") or {}),
        )
        return cls(
            loss,
            saved.get("iterator"),
            saved.get("iterator_stage", -1),
            saved.get("last_record"),
            saved.get("settings"),
        )


# What a resumed run must share with the run it resumes (dotted config fields). `stages` may
# extend it (see `check_resume`); everything else is free to change.
RESUME_FIELDS = (
    "model",
    "dtype",
    "seed",
    "batch_size",
    "steps_per_epoch",
    "optimizer",
    "schedule",
    "loss",
    "loss_weighting",
    "dataset.name",
    "dataset.num_samples",
    "dataset.seed",
    "dataset.val_fraction",
    "dataset.skip_corrupt",
    "augment",
    "dataset.worker_count",
    "stages",
    "init_from",
    "input_normalization",
    "accumulate_steps",
    "freeze",
    "lr_multipliers",
    "ema_decay",
)
# What the settings of checkpoints written before `stages` existed hold instead of it.
_OLD_STAGE_FIELDS = ("resolutions", "stage_epochs", "crops")


def resume_settings(config: ml_collections.ConfigDict) -> dict:
    """{dotted field: JSON value} of every leaf under `RESUME_FIELDS`."""
    tree = {}
    for field in RESUME_FIELDS:
        value = config
        for part in field.split("."):
            value = value[part]
        tree[field] = value.to_dict() if hasattr(value, "to_dict") else value
    tree["stages"] = stages.as_json(config.stages)
    # The iterator's state is per worker process: the count "auto" resolves to must match.
    tree["dataset.worker_count"] = pipeline.loader_settings(config.dataset).worker_count
    flat = traverse_util.flatten_dict(tree, sep=".")
    # What "auto" resolves to is what trained (and what runs before "auto" saved).
    flat["augment.capture.enabled"] = preprocess.capture_enabled(
        config.augment, config.dataset.name
    )
    return json.loads(json.dumps(flat))


def check_resume(config: ml_collections.ConfigDict, saved: Optional[dict], directory: str) -> None:
    """Refuses (exit 2, naming the fields) to resume a run under settings it was not trained
    with. More epochs are allowed where that is well defined: the stages so far unchanged,
    the last one longer or new ones after it, and a schedule whose length is not fixed (not
    one-cycle, which is laid out over the whole run)."""
    current, saved = resume_settings(config), _with_stages(_with_new_names(saved or {}))
    changed = [f for f in current if f in saved and saved[f] != current[f]]
    extended = "stages" in changed and _extends(saved["stages"], current["stages"])
    spans_run = config.schedule.name == "onecycle"
    if extended and not spans_run:
        changed.remove("stages")
    if not changed:
        return
    note = (
        " (a one-cycle schedule spans the whole run: it cannot be extended)"
        if (extended and spans_run)
        else ""
    )
    if "dataset.worker_count" in changed:
        note += (
            f" (dataset.worker_count={config.dataset.worker_count} is resolved on this "
            f"host; give --config.dataset.worker_count={saved['dataset.worker_count']}, "
            "the checkpoint's)"
        )
    shown = ", ".join(f"{f} ({saved[f]} -> {current[f]})" for f in changed)
    raise errors.UsageError(
        f"cannot resume the run in {directory}: {shown} differ from its "
        f"checkpoint{note}; set them back, or use another --workdir"
    )


def _with_new_names(saved: dict) -> dict:
    """Settings saved under names that have since moved (`names.RENAMED_FIELDS`) under the new."""
    return {names.renamed(field) or field: value for field, value in saved.items()}


def _with_stages(saved: dict) -> dict:
    """Settings saved before `stages` existed (resolutions, stage_epochs, crops) as `stages`."""
    if "stages" in saved or "resolutions" not in saved:
        return saved
    crops = saved.get("crops") or [0] * len(saved["resolutions"])
    rest = {k: v for k, v in saved.items() if k not in _OLD_STAGE_FIELDS}
    return {
        **rest,
        "stages": [
            list(stage) for stage in zip(saved["resolutions"], saved["stage_epochs"], crops)
        ],
    }


def _extends(old: list, new: list) -> bool:
    """Whether stages `new` continue stages `old`: those done unchanged, the last one as
    long or longer at the same size and crop, new stages after it."""
    n = len(old)
    if len(new) < n or new[: n - 1] != old[: n - 1]:
        return False
    (resolution, epochs, crop), (new_resolution, new_epochs, new_crop) = old[-1], new[n - 1]
    return (new_resolution, new_crop) == (resolution, crop) and new_epochs >= epochs


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """What a new run takes from `config.init_from`: the model's variables and its card."""

    variables: dict
    card: Optional[dict]
    source: str


def warm_start(config, workdir: str, mesh) -> Optional[WarmStart]:
    """The model `config.init_from` names, checked and read before anything is built or
    compiled; None without it, or when `workdir` has a checkpoint to resume from."""
    if not config.init_from or store.has_checkpoint(workdir):
        return None
    variables, model_card, source = select.load_variables(config, mesh)
    reporting.say(
        f"starting from the parameters and batch statistics of {source}; "
        "optimizer, schedule and step start fresh"
    )
    return WarmStart(variables, model_card, source)


def restore_or_create(
    config, checkpointer, mesh, per_epoch, warm: Optional[WarmStart]
) -> tuple[steps.TrainState, Progress, dict]:
    """The run's latest checkpoint, its `Progress` and input normalisation, checked against
    `config`; else a new state (with `warm`'s variables, if any), an empty `Progress` and the
    normalisation of `warm`'s model or of the dataset (`select.input_normalization`)."""
    latest = checkpointer.latest_step()
    if latest is None:
        state, progress = (
            build.create_state(config, per_epoch, mesh),
            Progress(settings=resume_settings(config)),
        )
        if warm is None:
            return state, progress, pipeline.input_normalization(config.dataset)
        normalization = select.input_normalization(config, warm.card, warm.source)
        ema = steps.initial_ema(warm.variables) if state.ema else {}
        return state.replace(ema=ema, **warm.variables), progress, normalization
    target = build.abstract_state(config, mesh, per_epoch)
    state, saved = checkpointer.restore(target, latest)
    check_resume(config, saved.get("settings"), checkpointer.directory)
    progress = dataclasses.replace(Progress.from_json(saved), settings=resume_settings(config))
    reporting.say(
        f"resuming from {checkpointer.directory} step {latest}: "
        f"{latest // per_epoch} epoch(s) done, {latest % per_epoch} step(s) into the next"
    )
    normalization = select.input_normalization(
        config, checkpointer.restore_card(latest), f"step {latest} of {checkpointer.directory}"
    )
    return state, progress, normalization
