"""`mode=train`: one flat loop over global steps, with progressive resizing, evaluation and saves.

`run(config, workdir)` trains `config.model` on `config.dataset` and leaves in `workdir`:
`metrics.jsonl` (one line per epoch), `tensorboard/`, `predictions/epoch_NNN.png` and
`checkpoints/` (latest + best). The loop is `for step in range(start, total_steps)`; the epoch
and the stage (resolution) are derived from the step. Rerunning the same command resumes from
the latest checkpoint, mid-epoch included: the state carries the step, and `resume.Progress`
(put together only where it is saved) the data iterator's position and the epoch's running
train loss. The loop's parts are in `jaxsegdepth/loop.py`.

`config.init_from` starts a new run from another run's checkpoint (see `state`): its
parameters and batch statistics; the optimizer, schedule, RNG and step start fresh. The inputs
are normalised with `config.dataset`'s statistics, as every run is. A run that already has a
checkpoint continues its own.

A run stops early with an `errors.Interrupted` (SIGINT/SIGTERM, after saving a checkpoint) or
an `errors.NonFiniteLoss` (the last good checkpoint is kept), which launch.py reports.
"""

import contextlib
import os
import signal
import sys
import tempfile
import time
from typing import Optional

import jax
import ml_collections
import numpy as np

from jaxsegdepth import (
    build,
    errors,
    loop,
    mesh as mesh_lib,
    names,
    optim,
    reporting,
    signals,
    stages,
    steps,
    weighting,
)
from jaxsegdepth.checkpointing import card, resume, store
from jaxsegdepth.data import datasets, pipeline
from jaxsegdepth.evaluators import base, catalog


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses, in one line, any setting a training run would trip over (before compiling)."""
    schedule = stages.of(config)
    build.validate(config, [stage.resolution for stage in schedule], "stages")
    # crops are training input sizes: the model's stride and the loss's minimum size apply
    build.validate(config, [stage.crop for stage in schedule if stage.crop], "stages (crop)")
    build.validate_optimizer(config)
    steps.StepTrace.validate(config.profile_steps)
    store.validate(config)
    pipeline.validate(config.dataset)
    mesh_lib.check_batch_size(mesh_lib.create_mesh(), config.batch_size)
    catalog.validate(config, training=True)
    for field, minimum in (("log_every_steps", 1), ("steps_per_epoch", 0)):
        if config[field] < minimum:
            raise errors.UsageError(f"{field}={config[field]}: expected >= {minimum}")
    missing = build.missing_targets(config)
    if missing:
        reporting.warn(
            f"dataset {config.dataset.name} has no {' or '.join(missing)} targets: the loss "
            f"trains {list(build.loss_spec(config))} alone"
        )
    monitors = names.monitor_names(build.heads(config), build.loss_spec(config))
    if config.checkpoint.monitor not in monitors:
        raise errors.UsageError(
            f"checkpoint.monitor={config.checkpoint.monitor!r}: expected one of {sorted(monitors)}"
        )


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
        checkpointer = store.Checkpointer(
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


def _trainer(config, mesh, per_epoch, checkpointer, reporter, stop, normalization) -> loop.Trainer:
    train_step, eval_step, predict_step = build.compiled_steps(config, mesh, normalization)
    context = base.Context(config, mesh, build.heads(config), eval_step, predict_step)
    return loop.Trainer(
        config=config,
        mesh=mesh,
        heads=build.heads(config),
        stages=tuple(stages.of(config)),
        steps_per_epoch=per_epoch,
        train_step=train_step,
        eval_step=eval_step,
        predict_step=predict_step,
        schedule=optim.learning_rate_schedule(config, per_epoch),
        weighting=weighting.from_config(config, tuple(build.loss_spec(config))),
        checkpointer=checkpointer,
        reporter=reporter,
        evaluators={
            name: catalog.create(name, context, stop.during_evaluation)
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
    trainer: loop.Trainer, state, progress: resume.Progress, stop: signals.StopSignals
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
    trainer: loop.Trainer,
    state: steps.TrainState,
    progress: resume.Progress,
    stop: signals.StopSignals,
) -> Optional[dict]:
    """Steps from `state.step` to the end; evaluates, reports and saves at every epoch's end.
    Its state: the epoch's running loss, the batches (and their position), the last record,
    the epoch's clock and the step metrics not logged yet."""
    config, per_epoch = trainer.config, trainer.steps_per_epoch
    every = config.checkpoint.every_steps
    batches = loop.TrainBatches(trainer, progress.iterator_stage, progress.iterator)
    epoch_loss, last_record, clock, log = (
        progress.epoch_loss,
        progress.last_record,
        None,
        loop.StepLog(),
    )
    for step in range(int(jax.device_get(state.step)), trainer.total_steps):
        clock = clock or loop.EpochClock.start(trainer, step)
        trainer.trace.before(step)
        state, step_metrics = trainer.train_step(state, batches.next(trainer.stage_of(step)))
        trainer.trace.after(step + 1, state)
        log.add(step_metrics)
        clock.bar.update(config.batch_size)
        done, end_of_epoch = step + 1, (step + 1) % per_epoch == 0
        stopping = stop.after_step(done)
        saves = end_of_epoch or stopping or (every and done % every == 0)
        logs = log.size >= config.log_every_steps or end_of_epoch or stopping
        if saves or logs:  # every finished step is in `epoch_loss` before a save
            log.collect(trainer, state, epoch_loss, clock.bar)
        if logs:
            log.write(trainer, state, done, clock.bar)
        record = None
        if end_of_epoch:
            state, record = _end_epoch(trainer, state, done, epoch_loss, clock, stop)
            clock, epoch_loss, last_record = None, resume.EpochLoss(), record
        if saves:
            _save(trainer, state, epoch_loss, batches, last_record, record)
        if record is not None:  # only once its checkpoint is on disk: never twice, never lost
            trainer.checkpointer.wait()
            trainer.reporter.epoch(record)
        if stopping:
            _stop(trainer, stopping, done, clock)
    return last_record


def _end_epoch(
    trainer: loop.Trainer,
    state,
    done: int,
    epoch_loss: resume.EpochLoss,
    clock: loop.EpochClock,
    stop: signals.StopSignals,
) -> tuple[steps.TrainState, dict]:
    """The epoch that ends at step `done`: evaluated, its record made and said, then the state
    advanced past it."""
    train_time, samples_per_sec = clock.stop(done, trainer.config.batch_size)
    started = time.time()
    evaluated = _evaluate(trainer, state, done, stop)
    eval_time = time.time() - started
    timing = {
        "samples_per_sec": samples_per_sec,
        "epoch_time_s": train_time + eval_time,
        "train_time_s": train_time,
        "eval_time_s": eval_time,
    }
    record = _record(trainer, state, done, epoch_loss, evaluated, timing)
    _say_epoch(trainer, record)
    return _advance_epoch(trainer, state, evaluated, epoch_loss), record


def _evaluate(trainer: loop.Trainer, state, done: int, stop: signals.StopSignals) -> dict:
    """The results of the evaluators due after the epoch ending at step `done`, named after
    their entries; their images go to the reporter. A signal during an evaluation stops the
    run after the current batch, saving nothing: the run resumes from its last checkpoint and
    does this epoch's end again."""
    epoch, evaluated = done // trainer.steps_per_epoch, {}
    resolution = trainer.stages[trainer.stage_of(done - 1)].resolution
    for name in catalog.for_training(trainer.config, epoch):
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
    return evaluated


def _record(trainer: loop.Trainer, state, done, epoch_loss, evaluated: dict, timing: dict) -> dict:
    """The metrics.jsonl line of the epoch ending at step `done`: the rate and the loss
    weights it trained with, its train losses, what the evaluators gave, its timing."""
    stage = trainer.stage_of(done - 1)
    train_loss, task_means = epoch_loss.means()
    return {
        "epoch": done // trainer.steps_per_epoch,
        "step": done,
        "stage": stage + 1,
        "resolution": trainer.stages[stage].resolution,
        "lr": trainer.learning_rate(jax.device_get(state.plateau.scale), done),
        "train_loss": train_loss,
        **{f"train_{names.task_loss(task)}": mean for task, mean in task_means.items()},
        "eval_weights": "ema" if state.ema else "trained",  # what validation evaluated
        **evaluated,
        **trainer.weighting.report(state.weighting),
        **timing,
    }


def _say_epoch(trainer: loop.Trainer, record: dict) -> None:
    summary = ", ".join(
        f"{k} {record[k]:.4f}"
        for k in ("train_loss", "val_loss", "val_iou", "val_rmse")
        if k in record
    )
    reporting.say(
        f"epoch {record['epoch']}/{trainer.total_steps // trainer.steps_per_epoch} step "
        f"{record['step']} {record['resolution']}px: {summary} "
        f"({record['samples_per_sec']:.1f} img/s, {record['epoch_time_s']:.0f}s)"
    )


def _advance_epoch(trainer: loop.Trainer, state, evaluated: dict, epoch_loss: resume.EpochLoss):
    """The state past an epoch's end: the plateau stepped on its val_loss, the loss weighting
    told the epoch's task losses."""
    config = trainer.config
    if config.schedule.name == "plateau":
        state = steps.update_plateau(state, optim.plateau(config), evaluated["val_loss"])
    _, task_means = epoch_loss.means()
    return state.replace(weighting=trainer.weighting.after_epoch(state.weighting, task_means))


def _save(
    trainer: loop.Trainer,
    state,
    epoch_loss: resume.EpochLoss,
    batches: loop.TrainBatches,
    last_record: Optional[dict],
    record: Optional[dict],
) -> None:
    """The one place that saves: the state, the loop's progress (put together here), the model
    card and, at an epoch's end, the record's finite numbers (for the best-checkpoint choice)."""
    progress = resume.Progress(
        epoch_loss, *batches.position(), last_record, resume.resume_settings(trainer.config)
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
    trainer.checkpointer.save(state, progress.to_json(), numbers, model_card)


def _stop(trainer: loop.Trainer, signum: int, done: int, clock: Optional[loop.EpochClock]) -> None:
    """The one place that stops on a signal, once the checkpoint of step `done` is written."""
    if clock is not None:
        clock.bar.close()
    trainer.checkpointer.wait()
    name = signal.Signals(signum).name
    raise errors.Interrupted(
        f"interrupted by {name} at step {done} (epoch {done // trainer.steps_per_epoch + 1}): "
        f"checkpoint saved in {trainer.checkpointer.directory}; rerun the same command to resume",
        signum,
    )
