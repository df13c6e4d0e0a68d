"""The training loop's parts: `Trainer`, what does not change during a run, and the values
that do, each named for what it holds: `TrainBatches` (the batches and their position),
`EpochClock` (the epoch in progress) and `StepLog` (step metrics on their way to the host).
The epoch's running loss is `resume.EpochLoss`; `modes/train.py` runs the loop."""

import dataclasses
import time
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np

from jaxsegdepth import errors, mesh as mesh_lib, names, optim, reporting, steps, weighting
from jaxsegdepth.checkpointing import resume, store
from jaxsegdepth.data import pipeline

IN_FLIGHT = 2  # training steps dispatched ahead of the last finished one


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
    checkpointer: store.Checkpointer
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


class TrainBatches:
    """The training split's batches for the stage being trained, sharded; `position()` is
    where they are (the stage and the iterator's state), which a checkpoint saves. A saved
    position is taken up by its own stage, else that stage starts afresh."""

    def __init__(self, trainer: Trainer, stage: int, saved: Optional[dict]):
        self.trainer, self.stage, self.saved, self.iterator = trainer, stage, saved, None

    def next(self, stage: int) -> dict:
        if self.iterator is None or stage != self.stage:
            settings, config = self.trainer.stages[stage], self.trainer.config
            local_batch = mesh_lib.check_batch_size(self.trainer.mesh, config.batch_size)
            self.iterator = iter(
                pipeline.train_batches(
                    config.dataset, config.seed, settings.resolution, local_batch, settings.crop
                )
            )
            if self.saved is not None and stage == self.stage:
                self.iterator.set_state(store.decode_iterator_state(self.saved))
            self.stage, self.saved = stage, None
        return self.trainer.shard(next(self.iterator))

    def position(self) -> tuple[dict, int]:
        return store.encode_iterator_state(self.iterator.get_state()), self.stage


@dataclasses.dataclass
class EpochClock:
    """The epoch in progress: its progress bar, first step and start time."""

    bar: Any
    first_step: int
    started: float

    @classmethod
    def start(cls, trainer: Trainer, step: int) -> "EpochClock":
        per_epoch, batch = trainer.steps_per_epoch, trainer.config.batch_size
        resolution, _, crop = trainer.stages[trainer.stage_of(step)]
        size = f"{resolution}px" + (f" crops {crop}" if crop else "")
        bar = reporting.progress_bar(
            per_epoch * batch,
            f"epoch {step // per_epoch + 1}/{trainer.total_steps // per_epoch} {size}",
            enabled=jax.process_index() == 0,
            initial=(step % per_epoch) * batch,
        )
        return cls(bar, step, time.time())

    def stop(self, done: int, batch_size: int) -> tuple[float, float]:
        """(train time, samples per second) of the epoch that ends at step `done`."""
        self.bar.close()
        train_time = time.time() - self.started
        return train_time, (done - self.first_step) * batch_size / train_time


class StepLog:
    """Step metrics still on the device (at most `IN_FLIGHT` steps behind the host) and those
    on the host not logged yet."""

    def __init__(self):
        self.pending, self.unlogged = [], []

    @property
    def size(self) -> int:
        return len(self.pending) + len(self.unlogged)

    def add(self, step_metrics: dict) -> None:
        self.pending.append(step_metrics)
        if len(self.pending) > IN_FLIGHT:  # keep the host a few steps ahead, no further
            jax.block_until_ready(self.pending[-1 - IN_FLIGHT]["loss"])

    def collect(self, trainer: Trainer, state, epoch_loss: resume.EpochLoss, bar) -> None:
        """Brings the pending metrics to the host and adds them to `epoch_loss`. Stops on a
        non-finite loss, so that nothing after it is saved."""
        fetched, bad = jax.device_get((self.pending, state.nonfinite_step))
        if int(bad) >= 0:
            bar.close()
            _non_finite(trainer, int(bad))
        for step_metrics in fetched:
            epoch_loss.add(step_metrics, trainer.weighting.tasks)
        self.pending, self.unlogged = [], self.unlogged + fetched

    def write(self, trainer: Trainer, state, done: int, bar) -> None:
        """Logs the means of the host metrics to TensorBoard and the progress bar."""
        scale = jax.device_get(state.plateau.scale)
        means = {k: float(np.mean([m[k] for m in self.unlogged])) for k in self.unlogged[0]}
        lr = trainer.learning_rate(scale, done)
        trainer.reporter.scalars(done, {**means, "lr": lr}, "train/")
        bar.set_postfix(loss=f"{means['loss']:.4f}", refresh=False)
        self.unlogged = []


def _non_finite(trainer: Trainer, bad: int) -> None:
    """Stops on the non-finite loss of step `bad` (0-based), naming the last good checkpoint."""
    trainer.checkpointer.wait()
    good = trainer.checkpointer.latest_step()
    kept = (
        f"the last good checkpoint is step {good} in {trainer.checkpointer.directory}"
        if good is not None
        else "no checkpoint was saved before it"
    )
    raise errors.NonFiniteLoss(
        f"non-finite loss at step {bad + 1} (epoch {bad // trainer.steps_per_epoch + 1}): "
        f"training stopped; {kept}"
    )
