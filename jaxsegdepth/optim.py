"""The one place that turns a config into an Optax optimizer and learning-rate schedule.

Step-driven schedules (constant, step, one-cycle, LR-range sweeps) live inside the optimizer.
Reduce-on-plateau is driven by the validation loss once an epoch, so it is kept apart: its
state holds a `scale` that the train step multiplies into every update (see `steps.py`).

A training run's optimizer (`training_optimizer`) adds to that: frozen parameters and per-layer
rate multipliers (regexes over parameter paths, `parameter_paths`) and gradient accumulation
(`optax.MultiSteps`: one optimizer step every `accumulate_steps` train steps; the schedule counts
optimizer steps).
"""

import re
from typing import Sequence

import jax
import jax.numpy as jnp
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
    accumulate = config.accumulate_steps
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise errors.UsageError(f"accumulate_steps={accumulate!r}: expected an integer >= 1")
    decay = config.ema_decay
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
        raise errors.UsageError(
            f"ema_decay={decay!r}: expected 0 (no moving average) or a decay in (0, 1), e.g. 0.999"
        )
    for regex in config.freeze:
        _compile("freeze", regex)
    for pair in config.lr_multipliers:
        if not _is_rate_pair(pair):
            raise errors.UsageError(
                f"lr_multipliers: {pair!r} is not a (regex, factor >= 0) pair, e.g. "
                "(('enc.*', 0.1),)"
            )
        _compile("lr_multipliers", pair[0])


def validate_paths(config: ml_collections.ConfigDict, paths: Sequence[str]) -> None:
    """Refuses, in one line, a `freeze` or `lr_multipliers` regex that matches none of the
    parameter `paths`."""
    regexes = [("freeze", r) for r in config.freeze]
    regexes += [("lr_multipliers", r) for r, _ in config.lr_multipliers]
    for field, regex in regexes:
        if not any(re.fullmatch(regex, path) for path in paths):
            raise errors.UsageError(
                f"{field}: {regex!r} matches no parameter of {config.model} "
                f"(paths like {paths[0]!r}, matched whole)"
            )


def _is_rate_pair(pair) -> bool:
    """Whether `pair` is a (regex, factor >= 0) pair of `config.lr_multipliers`."""
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        return False
    return isinstance(pair[1], (int, float)) and not isinstance(pair[1], bool) and pair[1] >= 0


def _compile(field: str, regex) -> None:
    try:
        re.compile(regex)
    except (re.error, TypeError) as error:
        raise errors.UsageError(f"{field}: {regex!r} is not a regular expression ({error})")


def parameter_paths(tree) -> list[str]:
    """The path of every leaf of `tree`, its keys joined with "/" (e.g. "enc1/convs/conv1/kernel")."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [
        "/".join(
            str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key)))) for key in path
        )
        for path, _ in leaves
    ]


def learning_rate_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
    """The base learning rate as a function of the optimizer's step count: one per train step,
    or one per `accumulate_steps` train steps (`steps_per_epoch` counts train steps)."""
    lr, schedule = config.optimizer.learning_rate, config.schedule
    accumulate = config.get("accumulate_steps", 1)
    if schedule.name in ("constant", "plateau"):
        return optax.constant_schedule(lr)
    if schedule.name == "step":
        boundaries = {
            int(epoch) * steps_per_epoch // accumulate: schedule.factor
            for epoch in schedule.boundaries
        }
        return optax.piecewise_constant_schedule(lr, boundaries)
    if schedule.name == "onecycle":
        total_steps = max(stages.total_epochs(config) * steps_per_epoch // accumulate, 1)
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


def optimizer_step(config: ml_collections.ConfigDict, step: int) -> int:
    """The optimizer's step count (the schedule's input) during 0-based train step `step`."""
    return step // config.get("accumulate_steps", 1)


def training_optimizer(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.GradientTransformation:
    """`create_optimizer` on `learning_rate_schedule`, with `config.freeze` and
    `config.lr_multipliers` applied to it and `config.accumulate_steps` around it. It trains
    the pair (params, the loss weighting's learnable part), see `steps.train_step`."""
    tx = create_optimizer(config.optimizer, learning_rate_schedule(config, steps_per_epoch))
    tx = per_parameter_rates(tx, tuple(config.freeze), tuple(config.lr_multipliers))
    if config.accumulate_steps > 1:
        tx = optax.MultiSteps(tx, config.accumulate_steps).gradient_transformation()
    return tx


def rate_of(path: str, freeze: Sequence[str], multipliers: Sequence) -> float:
    """The factor on the update of the parameter at `path`: 0 if a `freeze` regex matches it
    whole, else the factor of the first matching `multipliers` (regex, factor) pair, else 1."""
    if any(re.fullmatch(regex, path) for regex in freeze):
        return 0.0
    return next((float(f) for regex, f in multipliers if re.fullmatch(regex, path)), 1.0)


def per_parameter_rates(
    tx: optax.GradientTransformation, freeze: Sequence[str], multipliers: Sequence
) -> optax.GradientTransformation:
    """`tx` with frozen parameters and per-parameter rate factors (`rate_of`) over the trained
    pair's first element, the model's params (the second, the loss weighting's, keeps rate 1).

    Frozen gradients are zeroed before `tx` (so a global-norm clip ignores them) and frozen
    updates after it (so weight decay cannot move them): frozen parameters stay bit-identical.
    The other factors scale `tx`'s updates, as a per-layer learning rate would."""
    if not freeze and not multipliers:
        return tx

    def factors(trained) -> tuple:
        params, learned = trained
        rates = [rate_of(path, freeze, multipliers) for path in parameter_paths(params)]
        return (
            jax.tree.unflatten(jax.tree.structure(params), rates),
            jax.tree.map(lambda _: 1.0, learned),
        )

    def by_factor(frozen_only: bool) -> optax.GradientTransformation:
        def scaled(update, factor):
            if factor == 0.0:
                return jnp.zeros_like(update)
            return update if frozen_only or factor == 1.0 else update * factor

        def update(updates, state, params=None):
            return jax.tree.map(scaled, updates, factors(params)), state

        return optax.GradientTransformation(lambda params: optax.EmptyState(), update)

    return optax.chain(by_factor(frozen_only=True), tx, by_factor(frozen_only=False))


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
