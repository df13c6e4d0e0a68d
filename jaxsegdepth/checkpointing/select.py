"""Which checkpoint a mode reads, and reading it: for inference or for a warm start.

A model is named the way the installed command's `--model` names one (`resolve`): `RUN` or
`RUN:STEP`, RUN a run's workdir or its checkpoints folder, STEP one of its checkpoints (default:
the best, else the latest); `:STEP` alone is WORKDIR's; an export folder (`mode=export`'s) is
recognised and named as such, and so is a bundle (`bundle.py`: the shipped weights, which
evaluate and predict read, and a warm start starts from, like a checkpoint). Training
warm-starts from `config.init_from`; evaluate, predict
and export read `config.model_path` (empty: WORKDIR's best). A checkpoint of another model is
refused in one line, naming the difference, before anything compiles.
"""

import contextlib
import dataclasses
import os
from typing import Callable, Optional

import jax
import ml_collections
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh

from jaxsegdepth import artifact, build, bundle, errors, mesh as mesh_lib, models, reporting, steps
from jaxsegdepth.checkpointing import card, store
from jaxsegdepth.data import pipeline


SHAPE_SIDE = 32  # the input side a model is traced at for its variables' shapes (any will do)


@dataclasses.dataclass(frozen=True)
class Restored:
    """A checkpoint read for inference: the state, the model card (None when the checkpoint was
    written without one), a phrase naming the checkpoint, the run's folder and which of its
    weights the state holds ("ema": the run's moving average, "trained", or "bundle": a
    bundle's shipped weights)."""

    state: steps.TrainState
    card: Optional[dict]
    source: str
    run: str
    weights: str = "trained"


def load_for_inference(
    config: ml_collections.ConfigDict, workdir: str, mesh: Optional[Mesh] = None
) -> Restored:
    """The model `config.model_path` names (`resolve`; empty: `workdir`'s best end-of-epoch
    checkpoint, the latest when there are only mid-epoch saves). Its state is a
    `steps.TrainState` with the checkpoint's step, parameters and batch statistics and no
    optimizer: only the model has to fit `config`.

    Raises `errors.RunError` naming the directory when `workdir` holds no checkpoint,
    `errors.UsageError` for a `model_path` that names none, an export, or another model's
    checkpoint. The state is replicated on `mesh` (default: every device).
    """
    mesh = mesh_lib.create_mesh() if mesh is None else mesh
    where = resolve(config.model_path, workdir, "model_path")
    if where.kind == "bundle":
        return _from_bundle(config, where, mesh)
    with _checked_checkpoint(config, where, mesh) as (checkpointer, step, source, target):
        variables, weights, source = _model_variables(
            checkpointer, step, _variables(target), source
        )
        saved_step = checkpointer.restore_parts(step, {"step": target.step})["step"]
        model_card = checkpointer.restore_card(step)
    state = steps.inference_state(target.apply_fn, variables, saved_step)
    return Restored(state, model_card, source, where.path, weights)


@dataclasses.dataclass(frozen=True)
class Inference:
    """A model read for inference and what runs it: `model`, the input `normalization` it
    runs with (`input_normalization`) and the steps compiled for them on `mesh`."""

    model: Restored
    normalization: dict
    mesh: Mesh
    eval_step: Callable
    predict_step: Callable


def for_inference(
    config: ml_collections.ConfigDict, workdir: str, mesh: Optional[Mesh] = None
) -> Inference:
    """The one setup of evaluate, predict and export: `load_for_inference`, its input
    normalisation, `build.compiled_steps` (compiled on first call)."""
    mesh = mesh_lib.create_mesh() if mesh is None else mesh
    model = load_for_inference(config, workdir, mesh)
    normalization = input_normalization(config, model.card, model.source)
    _, eval_step, predict_step = build.compiled_steps(config, mesh, normalization)
    return Inference(model, normalization, mesh, eval_step, predict_step)


def _from_bundle(config: ml_collections.ConfigDict, where: "ModelPath", mesh: Mesh) -> Restored:
    """A bundle's model (`bundle.py`: the shipped weights, float16 or float32) as a state of
    `config.model` for inference, its variables cast to the model's dtypes."""
    variables, model_card = bundle.load(where.path)
    if model_card.get("model") != config.model:
        raise errors.UsageError(
            f"{where.field}{where.path} holds a {model_card.get('model')} model, which "
            f"model={config.model} cannot load (--config.model={model_card.get('model')} can)"
        )
    target = build.abstract_state(config, mesh)
    wanted = _variables(target)
    try:
        variables = jax.tree.map(
            lambda value, leaf: jax.device_put(np.asarray(value, leaf.dtype), leaf.sharding),
            {key: variables.get(key, {}) for key in wanted},
            wanted,
        )
    except ValueError as error:
        raise errors.UsageError(
            f"{where.field}{where.path} does not fit model={config.model}: {error}"
        ) from error
    step = jax.device_put(np.int32(model_card.get("step", 0)), target.step.sharding)
    state = steps.inference_state(target.apply_fn, variables, step)
    source = f"the bundle {where.path} ({model_card.get('weights_dtype', 'float32')} weights)"
    return Restored(state, model_card, source, where.path, "bundle")


def load_variables(config: ml_collections.ConfigDict, mesh: Optional[Mesh] = None) -> tuple:
    """(parameters and batch statistics, model card or None, a phrase naming the checkpoint)
    of `config.init_from`'s checkpoint, replicated on `mesh`; nothing else of it is read, so
    its run may have trained with any optimizer, schedule or loss. `errors.UsageError` as
    `load_for_inference`."""
    mesh = mesh_lib.create_mesh() if mesh is None else mesh
    where = resolve(config.init_from, None, "init_from")
    if where.kind == "bundle":
        restored = _from_bundle(config, where, mesh)
        return _variables(restored.state), restored.card, restored.source
    with _checked_checkpoint(config, where, mesh) as (checkpointer, step, source, target):
        variables, _, source = _model_variables(checkpointer, step, _variables(target), source)
        return variables, checkpointer.restore_card(step), source


@dataclasses.dataclass(frozen=True)
class ModelPath:
    """Where a model is: `kind` "run" (`path` its workdir, `step` -1 for its best, else that
    step), "export" (`path` the export folder) or "bundle" (`path` a folder of `bundle.py`'s
    shipped weights and card); `field` prefixes errors ("init_from=X: "),
    empty for WORKDIR's own checkpoints."""

    kind: str
    path: str
    step: int
    field: str


def resolve(value: str, workdir: Optional[str], name: str) -> ModelPath:
    """Where `value` of setting `name` points: `RUN`, `RUN:STEP`, `RUN/checkpoints[:STEP]`,
    an export folder (or its model file), a bundle folder, `:STEP` (`workdir`'s) or ""
    (`workdir`'s best). A path that is none of them is an `errors.UsageError` naming it."""
    path, colon, step = value.rpartition(":")
    path, step = (path, int(step)) if colon and step.isdigit() else (value, -1)
    if not path:
        if workdir is None:
            raise errors.UsageError(f"{name}={value}: expected RUN or RUN:STEP")
        return ModelPath("run", workdir, step, f"{name}={value}: " if value else "")
    field = f"{name}={value}: "
    if os.path.isdir(store.checkpoint_dir(path)):
        return ModelPath("run", path, step, field)
    normalized = os.path.normpath(path)
    if os.path.basename(normalized) == store.CHECKPOINT_DIR and os.path.isdir(normalized):
        return ModelPath("run", os.path.dirname(normalized), step, field)
    folder = os.path.dirname(normalized) if normalized.endswith(artifact.ARTIFACT) else path
    if step < 0 and os.path.isfile(os.path.join(folder, artifact.ARTIFACT)):
        return ModelPath("export", folder, step, field)
    if step < 0 and bundle.is_bundle(path):
        return ModelPath("bundle", path, step, field)
    raise errors.UsageError(
        f"{field}no checkpoints folder there (expected a run's workdir or its "
        f"{store.CHECKPOINT_DIR} folder, optionally with :STEP, an export folder or a bundle "
        f"folder with {bundle.WEIGHTS})"
    )


def read_model(where: ModelPath) -> tuple[dict, dict, str]:
    """(variables as host arrays, model card, a phrase naming the checkpoint) of the run
    checkpoint `where` names, built from its model card alone (no config: what the installed
    command and `jaxsegdepth.load` need); the moving average when the run kept one.
    `errors.UsageError` naming the run for a missing step or card."""
    checkpointer = store.Checkpointer(where.path, read_only=True)
    try:
        step = _chosen_step(checkpointer, where, errors.UsageError)
        model_card = checkpointer.restore_card(step)
        if model_card is None:
            raise errors.UsageError(
                f"{where.field}step {step} carries no model card: predict and export it "
                "with launch.py and its recipe (mode=predict, mode=export)"
            )
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            _variable_shapes(model_card),
        )
        source = f"step {step} of {checkpointer.directory}"
        variables, _, source = _model_variables(checkpointer, step, target, source)
    finally:
        checkpointer.close()
    return jax.device_get(variables), {**model_card, "step": step}, source


def _variable_shapes(model_card: dict) -> dict:
    """{"params", "batch_stats"} shapes of the card's model, traced (nothing computed)."""
    model = models.create(model_card["model"], model_card.get("dtype", "float32"))
    dummy = jax.ShapeDtypeStruct((1, SHAPE_SIDE, SHAPE_SIDE, 3), np.float32)
    shapes = jax.eval_shape(
        lambda a, b: model.init(jax.random.key(0), a, b, train=False), dummy, dummy
    )
    return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}


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


def _variables(state) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}


def _model_variables(checkpointer, step: int, target: dict, source: str) -> tuple[dict, str, str]:
    """(the model's variables at `step`, read into `target`'s {"params", "batch_stats"}
    shapes, which they are, `source` naming them): the moving average ("ema") when the run
    kept one (`config.ema_decay`), else the trained parameters and batch statistics
    ("trained")."""
    if checkpointer.has_ema(step):
        ema = checkpointer.restore_parts(step, {"ema": target})["ema"]
        return ema, "ema", f"{source} (its EMA weights)"
    return checkpointer.restore_parts(step, target), "trained", source


@contextlib.contextmanager
def _checked_checkpoint(config, where: ModelPath, mesh: Mesh):
    """(read-only checkpointer, step, phrase naming it, `abstract_state`) of the run checkpoint
    `where` names, its model checked against `config.model`."""
    field = where.field
    error = errors.UsageError if field else errors.RunError
    if where.kind == "export":
        raise errors.UsageError(
            f"{field}{where.path} is an export ({artifact.ARTIFACT}): this mode reads a run's "
            "checkpoints, RUN or RUN:STEP (jaxsegdepth.artifact.load reads an export)"
        )
    if not os.path.isdir(store.checkpoint_dir(where.path)):
        raise error(
            f"{field}no checkpoint directory {store.checkpoint_dir(where.path)}: "
            "train first, or pass --workdir of a trained run"
        )
    checkpointer = store.Checkpointer(
        where.path, config.checkpoint.monitor, config.checkpoint.mode, read_only=True
    )
    try:
        step = _chosen_step(checkpointer, where, error)
        source = f"step {step} of {checkpointer.directory}"
        target = build.abstract_state(config, mesh)
        _check_model(config, checkpointer, step, target, f"{field or 'the checkpoint '}{source}")
        yield checkpointer, step, source, target
    finally:
        checkpointer.close()


def _chosen_step(checkpointer: store.Checkpointer, where: ModelPath, error: type) -> int:
    """`where.step`, or when it is -1 the best checkpoint's step, else the latest's; `error`
    naming the folder when there is none, or not that one."""
    step, available = where.step, checkpointer.all_steps()
    if step < 0:
        step = checkpointer.best_step()
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise error(f"{where.field}no checkpoint in {checkpointer.directory}")
    elif step not in available:
        raise error(
            f"{where.field}no checkpoint at step {step} in {checkpointer.directory}; "
            f"available: {sorted(available)}"
        )
    return step


def _check_model(config, checkpointer: store.Checkpointer, step: int, target, where: str) -> None:
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
