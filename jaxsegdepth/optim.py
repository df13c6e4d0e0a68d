"""The one place that turns a config into an Optax optimizer and learning-rate schedule.

Step-driven schedules (constant, step, one-cycle, LR-range sweeps) live inside the optimizer.
Reduce-on-plateau is driven by the validation loss once an epoch, so it is kept apart: its
state holds a `scale` that the train step multiplies into every update (see `steps.py`).
"""

import ml_collections
import optax

from jaxsegdepth import errors, stages

SCHEDULES = ("constant", "step", "plateau", "onecycle")
OPTIMIZERS = ("sgd", "adam", "adamw")
SPACINGS = ("exp", "linear")


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses bad `config.optimizer` and `config.schedule` settings in one line."""
    optimizer, schedule = config.optimizer, config.schedule
    if optimizer.name not in OPTIMIZERS:
        raise errors.UsageError(f"optimizer.name={optimizer.name!r}: expected one of {OPTIMIZERS}")
    if not optimizer.learning_rate > 0:
        raise errors.UsageError(
            f"optimizer.learning_rate={optimizer.learning_rate!r}: expected > 0"
        )
    if schedule.name not in SCHEDULES:
        raise errors.UsageError(f"schedule.name={schedule.name!r}: expected one of {SCHEDULES}")
    if schedule.name in ("plateau", "step") and not 0 < schedule.factor < 1:
        raise errors.UsageError(
            f"schedule.factor={schedule.factor!r}: expected a value in (0, 1) for {schedule.name}"
        )


def learning_rate_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
    """The base learning rate as a function of the global step."""
    lr, schedule = config.optimizer.learning_rate, config.schedule
    if schedule.name in ("constant", "plateau"):
        return optax.constant_schedule(lr)
    if schedule.name == "step":
        boundaries = {
            int(epoch) * steps_per_epoch: schedule.factor for epoch in schedule.boundaries
        }
        return optax.piecewise_constant_schedule(lr, boundaries)
    if schedule.name == "onecycle":
        total_steps = stages.total_epochs(config) * steps_per_epoch
        return optax.cosine_onecycle_schedule(
            total_steps,
            lr,
            pct_start=schedule.pct_start,
            div_factor=schedule.div_factor,
            final_div_factor=schedule.final_div_factor,
        )
    raise errors.UsageError(f"schedule.name={schedule.name!r}: expected one of {SCHEDULES}")


def range_schedule(start_lr: float, end_lr: float, num_steps: int, spacing: str) -> optax.Schedule:
    """An LR range sweep from `start_lr` to `end_lr` over `num_steps`, `exp` or `linear`."""
    if spacing == "exp":
        return lambda step: start_lr * (end_lr / start_lr) ** (step / max(num_steps - 1, 1))
    if spacing == "linear":
        return optax.linear_schedule(start_lr, end_lr, max(num_steps - 1, 1))
    raise errors.UsageError(f"lr_range.spacing={spacing!r}: expected one of {SPACINGS}")


def create_optimizer(
    optimizer: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """SGD (momentum, optional Nesterov), Adam or AdamW following `schedule`, optional clipping."""
    if optimizer.name == "sgd":
        tx = optax.sgd(schedule, momentum=optimizer.momentum or None, nesterov=optimizer.nesterov)
        if optimizer.weight_decay:
            tx = optax.chain(optax.add_decayed_weights(optimizer.weight_decay), tx)
    elif optimizer.name == "adam":
        tx = optax.adam(schedule)
    elif optimizer.name == "adamw":
        tx = optax.adamw(schedule, weight_decay=optimizer.weight_decay)
    else:
        raise errors.UsageError(f"optimizer.name={optimizer.name!r}: expected one of {OPTIMIZERS}")
    if optimizer.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(optimizer.grad_clip_norm), tx)
    return tx


def plateau(config: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
    """Reduce-on-plateau on the validation loss, as PyTorch's ReduceLROnPlateau(mode='min').

    PyTorch reduces once more than `patience` epochs in a row failed to improve (patience 2:
    at the third bad epoch); optax reduces at the `patience`-th, hence the +1. An epoch
    improves when its loss is below best * (1 - rtol) (PyTorch's threshold_mode 'rel').
    Only a `plateau` schedule ever feeds it a loss; for the others its scale stays 1.
    """
    schedule = config.schedule
    return optax.contrib.reduce_on_plateau(
        factor=schedule.factor,
        patience=schedule.patience + 1,
        rtol=schedule.rtol,
        min_scale=schedule.min_lr / config.optimizer.learning_rate,
    )
