"""`mode=train`: one flat loop over global steps, with progressive resizing, evaluation and saves.

`run(config, workdir)` trains `config.model` on `config.dataset` and leaves in `workdir`:
`metrics.jsonl` (one line per epoch), `tensorboard/`, `predictions/epoch_NNN.png` and
`checkpoints/` (latest + best). The loop is `for step in range(start, total_steps)`; the epoch
and the stage (resolution) are derived from the step. Rerunning the same command resumes from
the latest checkpoint, mid-epoch included: the state carries the step, and `Progress` carries
the data iterator's position and the epoch's running train loss.

`config.init_from` starts a new run from another run's checkpoint (see `state`): its
parameters and batch statistics; the optimizer, schedule, RNG and step start fresh. The inputs
are normalised with `config.dataset`'s statistics, as every run is. A run that already has a
checkpoint continues its own.

A run stops early with an `errors.Interrupted` (SIGINT/SIGTERM, after saving a checkpoint) or
an `errors.NonFiniteLoss` (the last good checkpoint is kept), which launch.py reports.
"""

import contextlib
import dataclasses
import os
import signal
import sys
import tempfile
import time
from typing import Callable, Optional

import jax
import ml_collections
import numpy as np

from jaxsegdepth import (
    card,
    checkpoints,
    errors,
    evaluators,
    mesh as mesh_lib,
    names,
    optim,
    reporting,
    resume,
    setup,
    signals,
    stages,
    steps,
    weighting,
)
from jaxsegdepth.data import datasets, pipeline

IN_FLIGHT = 2  # training steps dispatched ahead of the last finished one


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses, in one line, any setting a training run would trip over (before compiling)."""
    schedule = stages.of(config)
    setup.validate(config, [stage.resolution for stage in schedule], "stages")
    # crops are training input sizes: the model's stride and the loss's minimum size apply
    setup.validate(config, [stage.crop for stage in schedule if stage.crop], "stages (crop)")
    setup.validate_optimizer(config)
    steps.StepTrace.validate(config.profile_steps)
    checkpoints.validate(config)
    pipeline.validate(config.dataset)
    mesh_lib.check_batch_size(mesh_lib.create_mesh(), config.batch_size)
    evaluators.validate(config, training=True)
    for field, minimum in (("log_every_steps", 1), ("steps_per_epoch", 0)):
        if config[field] < minimum:
            raise errors.UsageError(f"{field}={config[field]}: expected >= {minimum}")
    missing = setup.missing_targets(config)
    if missing:
        reporting.warn(
            f"dataset {config.dataset.name} has no {' or '.join(missing)} targets: the loss "
            f"trains {list(setup.loss_spec(config))} alone"
        )
    monitors = names.monitor_names(setup.heads(config), setup.loss_spec(config))
    if config.checkpoint.monitor not in monitors:
        raise errors.UsageError(
            f"checkpoint.monitor={config.checkpoint.monitor!r}: expected one of {sorted(monitors)}"
        )


@dataclasses.dataclass(frozen=True)
class Trainer:
    """What does not change during a run: the config, the compiled steps, the writers."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    heads: tuple
    stages: tuple  # of `stages.Stage`
    steps_per_epoch: int
    train_step: Callable
    eval_step: Callable
    predict_step: Callable
    schedule: Callable
    weighting: weighting.Weighting
    checkpointer: checkpoints.Checkpointer
    reporter: reporting.Reporter
    evaluators: dict  # name -> the evaluators that run during training
    normalization: dict  # {input: (mean, std)} the steps normalise with, kept in the model card
    trace: steps.StepTrace  # config.profile_steps

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * sum(stage.epochs for stage in self.stages)

    def stage_of(self, step: int) -> int:
        """The stage (0-based) of the 0-based global `step`."""
        bounds = np.cumsum([stage.epochs for stage in self.stages]) * self.steps_per_epoch
        return int(np.searchsorted(bounds, step, side="right"))

    def learning_rate(self, plateau_scale, step: int) -> float:
        """The rate step `step` (1-based) used: the schedule's times the plateau's scale."""
        count = optim.optimizer_step(self.config, max(step - 1, 0))
        return float(self.schedule(count)) * float(plateau_scale)

    def shard(self, host_batch: dict) -> dict:
        keys = names.INPUTS + self.heads + (names.INDEX,)
        return mesh_lib.shard_batch(self.mesh, {k: host_batch[k] for k in keys})


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
    """Full global batches in one pass over the training split, capped by `steps_per_epoch`."""
    train_size = pipeline.split_size(config.dataset, "train")
    full = train_size // config.batch_size
    if full == 0:
        raise errors.UsageError(
            f"the training split has {train_size} samples, fewer than "
            f"batch_size={config.batch_size}"
        )
    return min(full, config.steps_per_epoch) if config.steps_per_epoch > 0 else full


def run(config: ml_collections.ConfigDict, workdir: str) -> Optional[dict]:
    """Trains (or resumes) the run in `workdir`; returns the last epoch's record."""
    _check_writable(workdir)
    with signals.StopSignals() as stop:
        mesh = mesh_lib.create_mesh()
        warm = resume.warm_start(config, workdir, mesh)
        datasets.prepare(config.dataset)
        _say_loader(config)
        per_epoch = steps_per_epoch(config)
        checkpointer = checkpoints.Checkpointer(
            workdir, config.checkpoint.monitor, config.checkpoint.mode
        )
        try:
            state, progress, normalization = resume.restore_or_create(
                config, checkpointer, mesh, per_epoch, warm
            )
            start = int(jax.device_get(state.step))
            reporter = reporting.Reporter(workdir, jax.process_index() == 0, start)
            reporter.resume(start // per_epoch, progress.last_record)
            trainer = _trainer(config, mesh, per_epoch, checkpointer, reporter, stop, normalization)
            try:
                record = _train(trainer, state, progress, stop)
                checkpointer.wait()
                return record
            finally:
                trainer.trace.close()
                reporter.close()
        except OSError as error:
            raise errors.RunError(
                f"cannot write in {workdir} ({error}): rerun the same command "
                "to resume from its last checkpoint once it is writable"
            ) from None
        finally:
            # Waits for a save still in flight. While an error is on its way out, a failed save
            # (the same full disk) must not replace it with a traceback.
            with (
                contextlib.suppress(OSError, errors.RunError)
                if sys.exc_info()[0]
                else contextlib.nullcontext()
            ):
                checkpointer.close()


def _check_writable(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.TemporaryFile(dir=workdir):
            pass
    except OSError as error:
        raise errors.UsageError(f"workdir {workdir} is not writable: {error}") from None


def _say_loader(config) -> None:
    """The loader's processes and threads, once, with what "auto" was resolved from."""
    settings = pipeline.loader_settings(config.dataset)
    reporting.say(
        f"loader: {settings.worker_count} worker process(es), "
        f"{settings.read_threads} read thread(s) each"
        + (f" (from {settings.reason})" if settings.reason else "")
    )


def _trainer(config, mesh, per_epoch, checkpointer, reporter, stop, normalization) -> Trainer:
    train_step, eval_step, predict_step = setup.compiled_steps(config, mesh, normalization)
    context = evaluators.Context(config, mesh, setup.heads(config), eval_step, predict_step)
    return Trainer(
        config=config,
        mesh=mesh,
        heads=setup.heads(config),
        stages=tuple(stages.of(config)),
        steps_per_epoch=per_epoch,
        train_step=train_step,
        eval_step=eval_step,
        predict_step=predict_step,
        schedule=optim.learning_rate_schedule(config, per_epoch),
        weighting=weighting.from_config(config, tuple(setup.loss_spec(config))),
        checkpointer=checkpointer,
        reporter=reporter,
        evaluators={
            name: evaluators.create(name, context, stop.during_evaluation)
            for name, settings in config.evals.items()
            if settings.every
        },
        normalization=normalization,
        trace=steps.StepTrace(
            config.profile_steps,
            os.path.join(os.path.dirname(checkpointer.directory), "profile"),
            jax.process_index() == 0,
        ),
    )


def _train(
    trainer: Trainer, state, progress: resume.Progress, stop: signals.StopSignals
) -> Optional[dict]:
    start, per_epoch = int(jax.device_get(state.step)), trainer.steps_per_epoch
    if start >= trainer.total_steps:
        reporting.say(
            f"{start // per_epoch} epoch(s) already done (stages="
            f"{tuple(trainer.config.stages)}): nothing to train"
        )
        return None
    stop.raise_if_signalled()
    stop.immediate = False  # before the line below: a signal after it stops with a checkpoint
    reporting.say(
        f"training from epoch {start // per_epoch + 1} to "
        f"{trainer.total_steps // per_epoch}, {per_epoch} steps of "
        f"{trainer.config.batch_size} per epoch; SIGINT/SIGTERM: save and stop"
    )
    return train_loop(trainer, state, progress, stop)


def train_loop(
    trainer: Trainer, state: steps.TrainState, progress: resume.Progress, stop: signals.StopSignals
) -> Optional[dict]:
    """Steps from `state.step` to the end; evaluates, reports and saves at every epoch's end."""
    config, per_epoch = trainer.config, trainer.steps_per_epoch
    every = config.checkpoint.every_steps
    iterator, bar, record = None, None, None
    pending, unlogged = [], []  # step metrics on the device; on the host, not logged yet
    for step in range(int(jax.device_get(state.step)), trainer.total_steps):
        epoch, stage = step // per_epoch, trainer.stage_of(step)
        if progress.iterator_stage != stage or iterator is None:
            iterator = _open_iterator(trainer, stage, progress)
        if bar is None:
            bar, epoch_start, started = _epoch_bar(trainer, epoch, step), step, time.time()
        trainer.trace.before(step)
        state, step_metrics = trainer.train_step(state, trainer.shard(next(iterator)))
        trainer.trace.after(step + 1, state)
        pending.append(step_metrics)
        if len(pending) > IN_FLIGHT:  # keep the host a few steps ahead, no further
            jax.block_until_ready(pending[-1 - IN_FLIGHT]["loss"])
        bar.update(config.batch_size)
        done, end_of_epoch = step + 1, (step + 1) % per_epoch == 0
        stopping = stop.after_step(done)
        saves = end_of_epoch or stopping or (every and done % every == 0)
        logs = len(pending) + len(unlogged) >= config.log_every_steps or end_of_epoch or stopping
        if saves or logs:  # every finished step is in `progress` before a save
            unlogged += _collect_steps(trainer, state, pending, progress, bar)
            pending = []
        if logs:
            _log_steps(trainer, state, unlogged, done, bar)
            unlogged = []
        record = None
        if end_of_epoch:
            bar.close()
            train_time = time.time() - started
            state, record = _end_epoch(
                trainer,
                state,
                progress,
                done,
                train_time,
                (done - epoch_start) * config.batch_size / train_time,
                stop,
            )
            bar = None
            progress = resume.Progress(
                iterator_stage=stage, last_record=record, settings=progress.settings
            )
        if saves:
            _save(trainer, state, progress, iterator, record)
        if record is not None:  # only once its checkpoint is on disk: never twice, never lost
            trainer.checkpointer.wait()
            trainer.reporter.epoch(record)
        if stopping:
            _stop(trainer, stopping, done, bar)
    return record


def _open_iterator(trainer: Trainer, stage: int, progress: resume.Progress):
    """The training batches of `stage`, from where `progress` left them when it is that stage's."""
    config = trainer.config
    iterator = iter(
        pipeline.create_loader(
            config.dataset,
            "train",
            resolution=trainer.stages[stage].resolution,
            batch_size=mesh_lib.check_batch_size(trainer.mesh, config.batch_size),
            shuffle=True,
            seed=config.seed,
            num_epochs=None,
            drop_remainder=True,
            crop=trainer.stages[stage].crop,
        )
    )
    if progress.iterator is not None and progress.iterator_stage == stage:
        iterator.set_state(checkpoints.decode_iterator_state(progress.iterator))
    progress.iterator_stage = stage
    return iterator


def _epoch_bar(trainer: Trainer, epoch: int, step: int):
    per_epoch, batch = trainer.steps_per_epoch, trainer.config.batch_size
    resolution, _, crop = trainer.stages[trainer.stage_of(step)]
    size = f"{resolution}px" + (f" crops {crop}" if crop else "")
    return reporting.progress_bar(
        per_epoch * batch,
        f"epoch {epoch + 1}/{trainer.total_steps // per_epoch} {size}",
        enabled=jax.process_index() == 0,
        initial=(step % per_epoch) * batch,
    )


def _collect_steps(trainer: Trainer, state, pending: list, progress: resume.Progress, bar) -> list:
    """Brings the pending step metrics to the host and adds them to `progress`; returns them.
    Stops on a non-finite loss, so that nothing after it is saved."""
    fetched, bad = jax.device_get((pending, state.nonfinite_step))
    if int(bad) >= 0:
        bar.close()
        trainer.checkpointer.wait()
        good = trainer.checkpointer.latest_step()
        kept = (
            f"the last good checkpoint is step {good} in {trainer.checkpointer.directory}"
            if good is not None
            else "no checkpoint was saved before it"
        )
        raise errors.NonFiniteLoss(
            f"non-finite loss at step {int(bad) + 1} (epoch "
            f"{int(bad) // trainer.steps_per_epoch + 1}): training "
            f"stopped; {kept}"
        )
    for step_metrics in fetched:  # one by one, so the sum never depends on the grouping
        progress.loss_sum += float(step_metrics["loss"])
        progress.loss_count += 1
        for head in trainer.weighting.tasks:
            progress.task_loss_sums[head] = progress.task_loss_sums.get(head, 0.0) + float(
                step_metrics[names.task_loss(head)]
            )
    return fetched


def _log_steps(trainer: Trainer, state, fetched: list, done: int, bar) -> None:
    """Logs the means of the host step metrics `fetched` to TensorBoard and the progress bar."""
    scale = jax.device_get(state.plateau.scale)
    means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    trainer.reporter.scalars(done, {**means, "lr": trainer.learning_rate(scale, done)}, "train/")
    bar.set_postfix(loss=f"{means['loss']:.4f}", refresh=False)


def _end_epoch(
    trainer: Trainer,
    state,
    progress: resume.Progress,
    done: int,
    train_time: float,
    samples_per_sec: float,
    stop: signals.StopSignals,
) -> tuple[steps.TrainState, dict]:
    """Evaluates the epoch that ends at step `done`, steps the plateau; returns its record.
    A signal during the evaluation stops the run after the current batch, saving nothing: the
    run resumes from its last checkpoint and does this epoch's end again."""
    config = trainer.config
    epoch, stage = done // trainer.steps_per_epoch, trainer.stage_of(done - 1)
    resolution = trainer.stages[stage].resolution

    started, evaluated = time.time(), {}
    for name in evaluators.for_training(config, epoch):
        result = trainer.evaluators[name].run(state, resolution)
        if result is None:
            trainer.checkpointer.wait()
            raise errors.Interrupted(
                f"interrupted by {signal.Signals(stop.signum).name} while evaluating epoch "
                f"{epoch}: the last checkpoint is step {trainer.checkpointer.latest_step()} in "
                f"{trainer.checkpointer.directory}; rerun the same command to resume",
                stop.signum,
            )
        evaluated.update({f"{name}_{key}": value for key, value in result.metrics.items()})
        for tag, grid in result.images.items():
            trainer.reporter.image(tag, epoch, done, grid)
    eval_time = time.time() - started
    lr = trainer.learning_rate(jax.device_get(state.plateau.scale), done)
    if config.schedule.name == "plateau":
        state = steps.update_plateau(state, optim.plateau(config), evaluated["val_loss"])
    weights = trainer.weighting.report(state.weighting)  # those the epoch trained with
    count = max(progress.loss_count, 1)
    task_means = {task: total / count for task, total in progress.task_loss_sums.items()}
    state = state.replace(weighting=trainer.weighting.after_epoch(state.weighting, task_means))
    record = {
        "epoch": epoch,
        "step": done,
        "stage": stage + 1,
        "resolution": resolution,
        "lr": lr,
        "train_loss": progress.loss_sum / count,
        **{f"train_{names.task_loss(task)}": mean for task, mean in task_means.items()},
        "eval_weights": "ema" if state.ema else "trained",  # what validation evaluated
        **evaluated,
        **weights,
        "samples_per_sec": samples_per_sec,
        "epoch_time_s": train_time + eval_time,
        "train_time_s": train_time,
        "eval_time_s": eval_time,
    }
    summary = ", ".join(
        f"{k} {record[k]:.4f}"
        for k in ("train_loss", "val_loss", "val_iou", "val_rmse")
        if k in record
    )
    reporting.say(
        f"epoch {epoch}/{trainer.total_steps // trainer.steps_per_epoch} step {done} "
        f"{resolution}px: {summary} ({samples_per_sec:.1f} img/s, "
        f"{record['epoch_time_s']:.0f}s)"
    )
    return state, record


def _save(
    trainer: Trainer, state, progress: resume.Progress, iterator, record: Optional[dict]
) -> None:
    """The one place that saves: the state, the loop's progress with the iterator's position,
    the model card and, at an epoch's end, the record's finite numbers (for the best-checkpoint
    choice)."""
    saved = dataclasses.replace(
        progress, iterator=checkpoints.encode_iterator_state(iterator.get_state())
    )
    numbers = (
        None
        if record is None
        else {
            k: float(v)
            for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
        }
    )
    resolution = trainer.stages[trainer.stage_of(int(jax.device_get(state.step)) - 1)].resolution
    model_card = card.create(trainer.config, trainer.normalization, resolution, trainer.heads)
    trainer.checkpointer.save(state, dataclasses.asdict(saved), numbers, model_card)


def _stop(trainer: Trainer, signum: int, done: int, bar) -> None:
    """The one place that stops on a signal, once the checkpoint of step `done` is written."""
    if bar is not None:
        bar.close()
    trainer.checkpointer.wait()
    name = signal.Signals(signum).name
    raise errors.Interrupted(
        f"interrupted by {name} at step {done} (epoch {done // trainer.steps_per_epoch + 1}): "
        f"checkpoint saved in {trainer.checkpointer.directory}; rerun the same command to resume",
        signum,
    )
