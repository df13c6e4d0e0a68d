"""Which checkpoint a mode reads, and reading it: for inference or for a warm start.

`config.init_from` is `PATH` or `PATH:STEP`, PATH a run's workdir or its checkpoints folder,
STEP one of its checkpoints (default: the best, else the latest). Training takes the model's
variables from it; the inference modes evaluate, predict with or export that checkpoint
instead of WORKDIR's. A checkpoint of another model is refused in one line, naming the
difference, before anything compiles.
"""

import contextlib
import dataclasses
import os
from typing import Optional

import ml_collections
import optax
from flax import traverse_util
from jax.sharding import Mesh

from jaxsegdepth import build, card, checkpoints, errors, mesh as mesh_lib, reporting, steps
from jaxsegdepth.data import pipeline


@dataclasses.dataclass(frozen=True)
class Restored:
    """A checkpoint read for inference: the state, the model card (None when the checkpoint was
    written without one), a phrase naming the checkpoint and which of its weights the state
    holds ("ema": the run's moving average, else "trained")."""

    state: steps.TrainState
    card: Optional[dict]
    source: str
    weights: str = "trained"


def load_for_inference(
    config: ml_collections.ConfigDict, workdir: str, mesh: Optional[Mesh] = None
) -> Restored:
    """The model of `config.init_from` when set, else of `workdir` at step
    `config.checkpoint.step` if >= 0; by default the best end-of-epoch checkpoint (the latest
    when there are only mid-epoch saves). Its state is a `steps.TrainState` with the
    checkpoint's step, parameters and batch statistics and no optimizer: only the model has to
    fit `config`.

    Raises `errors.RunError` naming the directory when `workdir` holds no checkpoint (or not
    the requested step), `errors.UsageError` for a missing `init_from` or another model's
    checkpoint. The state is replicated on `mesh` (default: every device).
    """
    mesh = mesh_lib.create_mesh() if mesh is None else mesh
    with _checked_checkpoint(config, workdir, mesh) as (checkpointer, step, source, target):
        variables, weights, source = _model_variables(checkpointer, step, target, source)
        parts = checkpointer.restore_parts(step, {"step": target.step})
        card = checkpointer.restore_card(step)
    state = target.replace(
        tx=optax.identity(),
        opt_state=(),
        ema={},
        weighting={},
        plateau=None,
        rng=None,
        nonfinite_step=None,
        **parts,
        **variables,
    )
    return Restored(state, card, source, weights)


def load_variables(config: ml_collections.ConfigDict, mesh: Optional[Mesh] = None) -> tuple:
    """(parameters and batch statistics, model card or None, a phrase naming the checkpoint)
    of `config.init_from`'s checkpoint, replicated on `mesh`; nothing else of it is read, so
    its run may have trained with any optimizer, schedule or loss. `errors.UsageError` as
    `load_for_inference`."""
    mesh = mesh_lib.create_mesh() if mesh is None else mesh
    with _checked_checkpoint(config, None, mesh) as (checkpointer, step, source, target):
        variables, _, source = _model_variables(checkpointer, step, target, source)
        return variables, checkpointer.restore_card(step), source


def input_normalization(
    config: ml_collections.ConfigDict, model_card: Optional[dict], source: str
) -> dict:
    """The {input: (mean, std)} a model runs with: its card's (`input_normalization="auto"`), or
    `config.dataset`'s when asked (`"dataset"`) or when the checkpoint has no card (a
    checkpoint written before cards: said in one warning line)."""
    if model_card is not None and config.input_normalization == "auto":
        return card.normalization(model_card)
    if model_card is None:
        reporting.warn(
            f"{source} carries no model card: its inputs are normalised with "
            f"the statistics of dataset {config.dataset.name}"
        )
    return pipeline.input_normalization(config.dataset)


def parse_init_from(value: str) -> tuple[str, int]:
    """`PATH` or `PATH:STEP` as (PATH, STEP), STEP -1 when not given."""
    path, colon, step = value.rpartition(":")
    return (path, int(step)) if colon and step.isdigit() else (value, -1)


def _variables(state) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}


def _model_variables(checkpointer, step: int, target, source: str) -> tuple[dict, str, str]:
    """(the model's variables at `step`, which they are, `source` naming them): the moving
    average ("ema") when the run kept one (`config.ema_decay`), else the trained parameters
    and batch statistics ("trained")."""
    if checkpointer.has_ema(step):
        ema = checkpointer.restore_parts(step, {"ema": _variables(target)})["ema"]
        return ema, "ema", f"{source} (its EMA weights)"
    return checkpointer.restore_parts(step, _variables(target)), "trained", source


@contextlib.contextmanager
def _checked_checkpoint(config, workdir: Optional[str], mesh: Mesh):
    """(read-only checkpointer, step, phrase naming it, `abstract_state`) of the checkpoint a
    mode reads, its model checked against `config.model`: `config.init_from` when set (or
    `workdir` is None), else `workdir`'s at `config.checkpoint.step`."""
    if config.init_from or workdir is None:
        path, step = parse_init_from(config.init_from)
        if config.checkpoint.step >= 0:
            raise errors.UsageError(
                f"checkpoint.step={config.checkpoint.step} picks among "
                f"WORKDIR's checkpoints: with init_from, write "
                f"init_from={path}:{config.checkpoint.step}"
            )
        workdir, error = _run_workdir(path), errors.UsageError
        field = f"init_from={config.init_from}: "
    else:
        step, error, field = config.checkpoint.step, errors.RunError, ""
        if not os.path.isdir(checkpoints.checkpoint_dir(workdir)):
            raise errors.RunError(
                f"no checkpoint directory {checkpoints.checkpoint_dir(workdir)}: "
                "train first, or pass --workdir of a trained run"
            )
    checkpointer = checkpoints.Checkpointer(
        workdir, config.checkpoint.monitor, config.checkpoint.mode, read_only=True
    )
    try:
        directory = checkpointer.directory
        available = checkpointer.all_steps()
        if step < 0:
            step = checkpointer.best_step()
            step = checkpointer.latest_step() if step is None else step
            if step is None:
                raise error(f"{field}no checkpoint in {directory}")
        elif step not in available:
            raise error(
                f"{field}no checkpoint at step {step} in {directory}; available: "
                f"{sorted(available)}"
            )
        source, target = f"step {step} of {directory}", build.abstract_state(config, mesh)
        _check_model(config, checkpointer, step, target, f"{field or 'the checkpoint '}{source}")
        yield checkpointer, step, source, target
    finally:
        checkpointer.close()


def _run_workdir(path: str) -> str:
    """The workdir of the run at `path`: the workdir itself or its checkpoints folder."""
    if os.path.isdir(checkpoints.checkpoint_dir(path)):
        return path
    path = os.path.normpath(path)
    if os.path.basename(path) == checkpoints.CHECKPOINT_DIR and os.path.isdir(path):
        return os.path.dirname(path)
    raise errors.UsageError(
        f"init_from={path}: no checkpoints folder there (expected a run's "
        f"workdir or its {checkpoints.CHECKPOINT_DIR} folder, optionally "
        "with :STEP)"
    )


def _check_model(
    config, checkpointer: checkpoints.Checkpointer, step: int, target, where: str
) -> None:
    """Refuses, in one line, a checkpoint whose model is not `config.model`: the model its run
    recorded, else the first variable whose path or shape differs from `target`'s."""
    trained = (checkpointer.restore_loop(step).get("settings") or {}).get("model")
    if trained and trained != config.model:
        raise errors.UsageError(
            f"{where} is a {trained} checkpoint, which model={config.model} "
            f"cannot load (--config.model={trained} can)"
        )
    saved = checkpointer.variable_shapes(step)
    wanted = {
        path: tuple(leaf.shape)
        for path, leaf in traverse_util.flatten_dict(_variables(target), sep="/").items()
    }
    for path in sorted(saved.keys() | wanted.keys()):
        if saved.get(path) != wanted.get(path):
            raise errors.UsageError(
                f"{where} does not fit model={config.model}: {path} is "
                f"{_shape_in(saved.get(path), 'the checkpoint')}, "
                f"{_shape_in(wanted.get(path), config.model)}"
            )


def _shape_in(shape: Optional[tuple], owner: str) -> str:
    return f"absent from {owner}" if shape is None else f"{shape} in {owner}"
