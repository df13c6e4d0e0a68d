"""The evaluators a config lists: its `config.evals` checked, the ones due, each one made.

Every evaluator type registers itself (`base.register`) when its module is imported; this
module imports them all.
"""

from typing import Callable

import ml_collections

from jaxsegdepth import align, errors
from jaxsegdepth.evaluators import base, validation
from jaxsegdepth.evaluators import baselines, photographs  # noqa: F401 (imported: they register)

VALIDATION = "val"  # the evaluator whose val_loss picks the best checkpoint and steps the plateau


def validate(config: ml_collections.ConfigDict, training: bool = False) -> None:
    """Refuses, in one line, an `evals` entry that cannot run (in a training run: a validation
    that does not run every epoch, whose val_loss the best checkpoint and the plateau read)."""
    for name, settings in config.evals.items():
        field = f"evals.{name}"
        if settings.get("type") not in base.REGISTRY:
            raise errors.UsageError(
                f"{field}.type={settings.get('type')!r}: expected one of {sorted(base.REGISTRY)}"
            )
        if settings.get("every", 0) < 0:
            raise errors.UsageError(
                f"{field}.every={settings.every}: expected >= 0 (epochs "
                "between runs in training; 0: never)"
            )
        base.REGISTRY[settings.type].check(settings, field)
    align.Settings.from_config(config.get("align"))  # the photo sets register their plates
    entry = config.evals.get(VALIDATION)
    if entry is None or entry.type != validation.Validation.TYPE:
        raise errors.UsageError(
            f"evals.{VALIDATION}: expected a validation evaluator (its "
            "val_loss picks the best checkpoint)"
        )
    if training and entry.every != 1:
        raise errors.UsageError(
            f"evals.{VALIDATION}.every={entry.every}: expected 1 (the best checkpoint and "
            "the plateau schedule read val_loss every epoch)"
        )


def for_training(config: ml_collections.ConfigDict, epoch: int) -> list[str]:
    """The names of the evaluators due after training epoch `epoch` (1-based)."""
    return [
        name
        for name, settings in config.evals.items()
        if settings.every and epoch % settings.every == 0
    ]


def for_evaluate_mode(config: ml_collections.ConfigDict) -> list[str]:
    return [name for name, settings in config.evals.items() if settings.evaluate]


def create(name: str, context: base.Context, should_stop: Callable[[], bool] = lambda: False):
    """The evaluator `config.evals[name]` describes."""
    settings = context.config.evals[name]
    return base.REGISTRY[settings.type].create(name, settings, context, should_stop)


def title(config: ml_collections.ConfigDict, name: str) -> str:
    """What the table of evaluator `name` says it shows (its type's `TITLE`)."""
    return base.REGISTRY[config.evals[name].type].TITLE
