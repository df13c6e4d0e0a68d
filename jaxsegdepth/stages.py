"""The training schedule, `config.stages`: progressive resizing as one setting.

Each stage is `(resolution, epochs)` or `(resolution, epochs, crop)`: train `epochs` epochs on
images resized to `resolution`, on random `crop` x `crop` windows of them when `crop` is given
and not 0 (validation always sees whole images). `--config.stages='((64, 1),)'` is a whole
one-epoch schedule; `((96, 5), (128, 1), (224, 2, 128))` is the default.
"""

from typing import NamedTuple

import ml_collections

from jaxsegdepth import errors


class Stage(NamedTuple):
    resolution: int
    epochs: int
    crop: int = 0  # 0: whole images


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse(stages) -> list[Stage]:
    """`config.stages` as a list of `Stage`s; a one-line `errors.UsageError` naming the stage
    for anything else. Checks the shapes only: `train.validate` checks the sizes against the
    model."""
    if isinstance(stages, (tuple, list)) and len(stages) >= 2 and all(map(_is_int, stages)):
        raise errors.UsageError(
            f"stages={tuple(stages)} is one stage, not a tuple of stages: "
            f"write --config.stages='({tuple(stages)},)'"
        )
    if not isinstance(stages, (tuple, list)) or not stages:
        raise errors.UsageError(
            f"stages={stages!r}: expected a non-empty tuple of "
            "(resolution, epochs) or (resolution, epochs, crop) stages, "
            "e.g. --config.stages='((96, 3), (224, 1))'"
        )
    parsed = []
    for number, stage in enumerate(stages, 1):
        if (
            not isinstance(stage, (tuple, list))
            or len(stage) not in (2, 3)
            or not all(map(_is_int, stage))
        ):
            raise errors.UsageError(
                f"stages: stage {number} is {stage!r}: expected "
                "(resolution, epochs) or (resolution, epochs, crop) integers"
            )
        stage = Stage(*stage)
        if stage.epochs < 0:
            raise errors.UsageError(
                f"stages: stage {number} {tuple(stage)} has {stage.epochs} epochs: expected >= 0"
            )
        if not 0 <= stage.crop <= stage.resolution:
            raise errors.UsageError(
                f"stages: stage {number} {tuple(stage)} crops {stage.crop} px "
                f"windows: expected 0 (whole images) up to its resolution "
                f"{stage.resolution}"
            )
        parsed.append(stage)
    return parsed


def of(config: ml_collections.ConfigDict) -> list[Stage]:
    """The parsed stages of `config`."""
    return parse(config.stages)


def total_epochs(config: ml_collections.ConfigDict) -> int:
    return sum(stage.epochs for stage in of(config))


def as_json(stages) -> list[list[int]]:
    """Stages as `[resolution, epochs, crop]` lists: how a checkpoint records them."""
    return [list(stage) for stage in parse(stages)]
