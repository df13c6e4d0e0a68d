"""The training loop: stages of progressive resizing, epochs, evaluation, logging, checkpoints.

`run(config, workdir)` trains `config.model` on `config.dataset` and leaves in `workdir`:
`metrics.jsonl` (one line per epoch), `tensorboard/`, `predictions/epoch_NNN.png` and
`checkpoints/` (latest + best). Rerunning the same command resumes from the latest checkpoint,
mid-epoch included (parameters, optimizer, plateau, RNG, data iterator, loop position).

Stops early with an exception the CLI turns into a message and an exit code:
- `Interrupted` on SIGINT/SIGTERM, after finishing the current step and saving a checkpoint;
- `NonFiniteLoss` when a step's loss was NaN/inf (the last good checkpoint is kept).
"""
import math
import signal
import threading
import time
from typing import Callable, Optional

import jax
import ml_collections
import numpy as np

from jaxsegdepth import checkpoints, losses, mesh as mesh_lib, metrics, optim, reporting, steps
from jaxsegdepth.data import builders, pipeline

INPUTS = ("bg", "bg_fg")
EVAL_FETCH_EVERY = 16  # evaluation sums come to the host (float64) every this many batches
IN_FLIGHT = 2  # training steps dispatched ahead of the last finished one


class NonFiniteLoss(RuntimeError):
    """A training step produced a NaN or infinite loss."""


class Interrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; a checkpoint was saved. `signum` is the signal's number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def model_heads(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The heads `config.model` predicts (traced on an abstract input, nothing is computed)."""
    from jaxsegdepth import models
    model = models.create(config.model, config.dtype)
    dummy = jax.ShapeDtypeStruct((1, checkpoints.INIT_RESOLUTION, checkpoints.INIT_RESOLUTION, 3),
                                 np.float32)
    outputs, _ = jax.eval_shape(
        lambda bg, bg_fg: model.init_with_output(jax.random.PRNGKey(0), bg, bg_fg, train=False),
        dummy, dummy)
    return tuple(head for head in steps.HEADS if head in outputs)


def stage_of(config: ml_collections.ConfigDict, epoch_index: int) -> int:
    """The stage (0-based) that trains the 0-based `epoch_index`."""
    bounds = np.cumsum(config.stage_epochs)
    return int(np.searchsorted(bounds, epoch_index, side="right"))


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
    """Full global batches in one pass over the training split, capped by `steps_per_epoch`."""
    train_size = pipeline.split_size(config.dataset, "train")
    steps = train_size // config.batch_size
    if steps == 0:
        raise ValueError(f"the training split has {train_size} samples, fewer than "
                         f"batch_size={config.batch_size}")
    return min(steps, config.steps_per_epoch) if config.steps_per_epoch > 0 else steps


class _StopSignals:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks after every step.

    A second SIGINT falls through to Python's default (KeyboardInterrupt).
    """

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        self.signum = signum
        _say(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint")
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


class _Trainer:
    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config, self.workdir = config, workdir
        self.mesh = mesh_lib.create_mesh()
        self.local_batch = mesh_lib.check_batch_size(self.mesh, config.batch_size)
        self.heads = model_heads(config)
        self.steps_per_epoch = steps_per_epoch(config)
        self.total_epochs = int(sum(config.stage_epochs))
        loss_fn = losses.compose(config.loss)
        self.train_step, self.eval_step, self.predict_step = steps.jit_steps(self.mesh, loss_fn)
        self.plateau = optim.plateau(config)
        self.lr_schedule = optim.learning_rate_schedule(config, self.steps_per_epoch)
        self.primary = jax.process_index() == 0
        self.reporter = reporting.Reporter(workdir, enabled=self.primary)
        self.ckpt = checkpoints.Checkpointer(workdir, config.checkpoint.monitor,
                                             config.checkpoint.mode)
        self.iterator, self.iterator_stage = None, None

    # -- state ------------------------------------------------------------------------------

    def initial_state(self) -> tuple[steps.TrainState, dict]:
        latest = self.ckpt.latest_step()
        if latest is None:
            state = checkpoints.create_state(self.config, self.steps_per_epoch, self.mesh)
            return state, {"epoch": 0, "step_in_epoch": 0}
        target = checkpoints.abstract_state(self.config, self.mesh, self.steps_per_epoch)
        state, loop = self.ckpt.restore(target, latest)
        _say(f"resuming from {self.ckpt.directory} step {latest}: {loop['epoch']} epoch(s) "
             f"done, {loop.get('step_in_epoch', 0)} step(s) into the next")
        return state, loop

    def batch(self, host_batch: dict) -> dict:
        keys = INPUTS + self.heads
        return mesh_lib.shard_batch(self.mesh, {k: host_batch[k] for k in keys})

    def learning_rate(self, plateau_scale: float, step: int) -> float:
        """The rate step `step` used: the schedule's, times the plateau scale (on the host)."""
        return float(self.lr_schedule(max(step - 1, 0))) * float(plateau_scale)

    # -- data -------------------------------------------------------------------------------

    def train_iterator(self, stage: int, loop: dict):
        if self.iterator_stage != stage:
            self.iterator = iter(pipeline.create_loader(
                self.config.dataset, "train", resolution=self.config.resolutions[stage],
                batch_size=self.local_batch, shuffle=True, seed=self.config.seed,
                num_epochs=None, drop_remainder=True))
            if loop.get("iterator") is not None and loop.get("iterator_stage") == stage:
                self.iterator.set_state(checkpoints.decode_iterator_state(loop["iterator"]))
            self.iterator_stage = stage
        return self.iterator

    def loop_position(self, epoch: int, step_in_epoch: int, stage: int,
                      loss_sum: float, loss_count: int) -> dict:
        return {"epoch": epoch, "step_in_epoch": step_in_epoch, "stage": stage,
                "iterator_stage": stage,
                "iterator": checkpoints.encode_iterator_state(self.iterator.get_state()),
                "epoch_loss_sum": loss_sum, "epoch_loss_count": loss_count}

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> Optional[dict]:
        config = self.config
        state, loop = self.initial_state()
        epoch = int(loop["epoch"])
        if epoch >= self.total_epochs:
            _say(f"{epoch} epoch(s) already done (stage_epochs={tuple(config.stage_epochs)}): "
                 "nothing to train")
            return None
        record = None
        with _StopSignals() as stop:
            _say(f"training from epoch {epoch + 1} to {self.total_epochs}, {self.steps_per_epoch} "
                 f"steps of {config.batch_size} per epoch; SIGINT/SIGTERM: save and stop")
            while epoch < self.total_epochs:
                state, record = self.train_epoch(state, epoch, loop, stop)
                loop = {}
                epoch += 1
        return record

    def train_epoch(self, state, epoch: int, loop: dict, stop: _StopSignals):
        config = self.config
        stage = stage_of(config, epoch)
        resolution = config.resolutions[stage]
        iterator = self.train_iterator(stage, loop)
        first = int(loop.get("step_in_epoch", 0))
        loss_sum = float(loop.get("epoch_loss_sum", 0.0))
        loss_count = int(loop.get("epoch_loss_count", 0))
        step = int(jax.device_get(state.step))
        batch_size = config.batch_size
        bar = reporting.progress_bar(self.steps_per_epoch * batch_size,
                                     f"epoch {epoch + 1}/{self.total_epochs} {resolution}px",
                                     enabled=self.primary, initial=first * batch_size)
        pending, started = [], time.time()

        def flush():
            """Brings the pending step metrics to the host; stops on a non-finite loss."""
            nonlocal loss_sum, loss_count, pending
            if not pending:
                return
            fetched, bad, scale = jax.device_get(
                (pending, state.nonfinite_step, state.plateau.scale))
            bar.update(batch_size * min(len(pending), IN_FLIGHT))  # those the loop did not count
            pending = []
            if int(bad) >= 0:
                bar.close()
                self.ckpt.wait()
                good = self.ckpt.latest_step()
                kept = (f"the last good checkpoint is step {good} in {self.ckpt.directory}"
                        if good is not None else "no checkpoint was saved before it")
                raise NonFiniteLoss(f"non-finite loss at step {int(bad) + 1} (epoch {epoch + 1}): "
                                    f"training stopped; {kept}")
            values = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
            loss_sum += float(np.sum([m["loss"] for m in fetched]))
            loss_count += len(fetched)
            self.reporter.scalars(step, {**values, "lr": self.learning_rate(scale, step)}, "train/")
            bar.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)

        try:
            for k in range(first, self.steps_per_epoch):
                state, step_metrics = self.train_step(state, self.batch(next(iterator)))
                pending.append(step_metrics)
                step += 1
                if len(pending) > IN_FLIGHT:  # keep the host a few steps ahead, no further:
                    jax.block_until_ready(pending[-1 - IN_FLIGHT]["loss"])  # no transfer
                    bar.update(batch_size)  # so the bar's rate and ETA are real
                last = k + 1 == self.steps_per_epoch
                if len(pending) >= config.log_every_steps or last:
                    flush()
                every = config.checkpoint.every_steps
                if every > 0 and step % every == 0 and not last:
                    flush()
                    self.ckpt.save(state, self.loop_position(epoch, k + 1, stage, loss_sum,
                                                             loss_count))
                if stop.signum is not None:
                    flush()
                    self.ckpt.save(state, self.loop_position(epoch, k + 1, stage, loss_sum,
                                                             loss_count))
                    self.ckpt.wait()
                    raise Interrupted(
                        f"interrupted by {signal.Signals(stop.signum).name} at step {step} "
                        f"(epoch {epoch + 1}): checkpoint saved in {self.ckpt.directory}; "
                        "rerun the same command to resume", stop.signum)
            flush()
        finally:
            bar.close()
        train_time = time.time() - started
        steps_done = self.steps_per_epoch - first

        eval_started = time.time()
        val = self.evaluate(state, resolution, preview_epoch=epoch + 1, step=step)
        eval_time = time.time() - eval_started
        lr = self.learning_rate(jax.device_get(state.plateau.scale), step)
        if config.schedule.name == "plateau":
            state = steps.update_plateau(state, self.plateau, val["val_loss"])
        record = {"epoch": epoch + 1, "step": step, "stage": stage + 1, "resolution": resolution,
                  "lr": lr, "train_loss": loss_sum / max(loss_count, 1), **val,
                  "samples_per_sec": steps_done * config.batch_size / max(train_time, 1e-9),
                  "epoch_time_s": train_time + eval_time, "train_time_s": train_time,
                  "eval_time_s": eval_time}
        self.reporter.epoch(record)
        summary = ", ".join(f"{k} {record[k]:.4f}" for k in
                            ("train_loss", "val_loss", "val_iou", "val_rmse") if k in record)
        _say(f"epoch {epoch + 1}/{self.total_epochs} step {step} {resolution}px: {summary} "
             f"({record['samples_per_sec']:.1f} img/s, {record['epoch_time_s']:.0f}s)")
        self.ckpt.save(state, self.loop_position(epoch + 1, 0, stage, 0.0, 0),
                       metrics=_numbers(record))
        if stop.signum is not None and epoch + 1 < self.total_epochs:
            self.ckpt.wait()
            raise Interrupted(
                f"interrupted by {signal.Signals(stop.signum).name} after epoch {epoch + 1}: "
                f"checkpoint saved in {self.ckpt.directory}; rerun the same command to resume",
                stop.signum)
        return state, record

    # -- evaluation -------------------------------------------------------------------------

    def evaluate(self, state, resolution: int, preview_epoch: int, step: int) -> dict:
        """`evaluate_split` at `resolution`; the first batch also draws the preview."""
        def first_batch(batch, host, real):
            if self.config.num_preview > 0:
                self.preview(state, batch, host, real, preview_epoch, step)

        return evaluate_split(self.config, self.mesh, self.eval_step, state, resolution,
                              first_batch=first_batch)

    def preview(self, state, batch: dict, host: dict, real: int, epoch: int, step: int) -> None:
        """The first `num_preview` validation samples: inputs, targets and predictions."""
        from jax.experimental import multihost_utils
        predictions = self.predict_step(state, batch["bg"], batch["bg_fg"])
        predictions = multihost_utils.process_allgather(predictions, tiled=True)
        if not self.primary:
            return
        n = max(1, min(self.config.num_preview, real))
        norm = pipeline.normalization(self.config.dataset)
        columns = [(name, pipeline.denormalize(host[name][:n], *norm[name])) for name in INPUTS]
        for head in self.heads:
            columns += [(f"{head}", host[head][:n]),
                        (f"pred {head}", np.asarray(predictions[head])[:n])]
        self.reporter.predictions(epoch, step, reporting.prediction_grid(columns))


def evaluate_split(config: ml_collections.ConfigDict, mesh, eval_step: Callable, state,
                   resolution: int, first_batch: Optional[Callable] = None) -> dict:
    """Loss, loss terms and metrics of `state` over the whole validation split at `resolution`.

    Keys are `val_loss`, `val_<metric>` and `val_<head>/<term>`. The last partial batch is
    padded to the batch size with repeats of its real samples, weighted 0, so the metric sums
    are exact; `val_loss` averages the batch losses weighted by their numbers of real samples.
    `first_batch(batch, host_batch, real)` is called on the first batch (the trainer draws its
    preview there). Used by the trainer after each epoch and by `mode=evaluate`.
    """
    local_batch = mesh_lib.check_batch_size(mesh, config.batch_size)
    heads = model_heads(config)
    loader = pipeline.create_loader(
        config.dataset, "validation", resolution=resolution, batch_size=local_batch,
        shuffle=False, seed=config.seed, num_epochs=1, drop_remainder=False, augment=False)
    per_process = math.ceil(pipeline.split_size(config.dataset, "validation")
                            / jax.process_count())
    num_batches = math.ceil(per_process / local_batch)
    iterator, last_real = iter(loader), None
    totals: dict = {}
    pending = []

    def fetch():
        for sums, batch_loss, terms in jax.device_get(pending):
            weight = float(sums.get("images", 1.0))
            _add(totals, {k: float(v) for k, v in sums.items()})
            _add(totals, {"loss": weight * float(batch_loss), "weight": weight,
                          **{k: weight * float(v) for k, v in terms.items()}})
        pending.clear()

    for index in range(num_batches):
        host = next(iterator, None)
        if host is None:  # this process ran out before another: an all-padding batch
            host, real = last_real, 0
        else:
            host = {k: np.asarray(host[k]) for k in INPUTS + heads}
            real = len(host["bg"])
            last_real = host
        take = np.arange(local_batch) % len(host["bg"])
        padded = {k: v[take] for k, v in host.items()}
        padded["weights"] = (np.arange(local_batch) < real).astype(np.float32)
        batch = mesh_lib.shard_batch(mesh, padded)
        out = eval_step(state, batch)
        terms = {k: v for k, v in out.items() if k not in ("loss", "sums")}
        pending.append((out["sums"], out["loss"], terms))
        if index == 0 and first_batch is not None:
            first_batch(batch, padded, real)
        if len(pending) >= EVAL_FETCH_EVERY:
            fetch()
    fetch()
    weight = totals.pop("weight", 0.0)
    result = {"val_loss": totals.pop("loss") / weight if weight else float("nan")}
    sums = {k: totals[k] for k in list(totals) if "/" not in k}
    result.update({f"val_{k}": v for k, v in metrics.summarize(sums).items()})
    result.update({f"val_{k}": totals[k] / weight for k in totals if "/" in k})
    return result


def _add(totals: dict, values: dict) -> None:
    for key, value in values.items():
        totals[key] = totals.get(key, 0.0) + value


def _numbers(record: dict) -> dict:
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def run(config: ml_collections.ConfigDict, workdir: str) -> Optional[dict]:
    """Trains (or resumes) the run in `workdir`; returns the last epoch's record."""
    builders.prepare(config.dataset)
    trainer = _Trainer(config, workdir)
    try:
        return trainer.run()
    finally:
        trainer.ckpt.wait()
        trainer.ckpt.close()
        trainer.reporter.close()
