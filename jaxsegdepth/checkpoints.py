"""Checkpoints (Orbax) and the one place a config becomes a model and a `TrainState`.

`WORKDIR/checkpoints/<step>/` holds two items:
- `state`: the `steps.TrainState` pytree (parameters, BatchNorm statistics, optimizer and
  plateau state, RNG, step, non-finite sentinel);
- `loop`: JSON with the loop position (`epoch` = completed epochs, `step_in_epoch`, `stage`),
  the data iterator's state (`iterator`, for the stage in `iterator_stage`) and the partial
  epoch's running train loss, so a rerun resumes exactly where the last save left off.

The manager keeps the latest checkpoint and the best one by `config.checkpoint.monitor`
(`mode` "min" or "max"); only end-of-epoch saves carry metrics, so a mid-epoch save (every N
steps, or on SIGTERM) is kept only while it is the latest. Saving is asynchronous.

For the other modes: `create_state(config)` builds the model and state from a config and
`load_for_inference(config, workdir)` restores the best (or a chosen) checkpoint into it.
"""
import base64
import functools
import json
import os
from typing import Any, Optional

import jax
import ml_collections
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from jaxsegdepth import mesh as mesh_lib, models, optim, steps

CHECKPOINT_DIR = "checkpoints"
INIT_RESOLUTION = 32  # parameter shapes do not depend on it; DSResNet needs a multiple of 32


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


# -- model and state ------------------------------------------------------------------------

def create_state(config: ml_collections.ConfigDict, steps_per_epoch: int = 1,
                 mesh: Optional[Mesh] = None,
                 tx: Optional[optax.GradientTransformation] = None) -> steps.TrainState:
    """The model of `config.model` in `config.dtype`, initialised from `config.seed`.

    The optimizer follows `config.optimizer`/`config.schedule` (`steps_per_epoch` places the
    schedule's boundaries) unless `tx` is given. With a `mesh` the state is replicated on it.
    """
    init = _state_initializer(config, steps_per_epoch, tx)
    rng = jax.random.PRNGKey(config.seed)
    if mesh is None:
        return init(rng)
    return jax.jit(init, out_shardings=mesh_lib.replicated(mesh))(rng)


def abstract_state(config: ml_collections.ConfigDict, mesh: Mesh, steps_per_epoch: int = 1,
                   tx: Optional[optax.GradientTransformation] = None) -> steps.TrainState:
    """The shapes, dtypes and (replicated) shardings of `create_state`'s result, no compute."""
    init = _state_initializer(config, steps_per_epoch, tx)
    shapes = jax.eval_shape(init, jax.random.PRNGKey(config.seed))
    sharding = mesh_lib.replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def _state_initializer(config, steps_per_epoch, tx):
    model = models.create(config.model, config.dtype)
    if tx is None:
        tx = optim.create_optimizer(config.optimizer,
                                    optim.learning_rate_schedule(config, steps_per_epoch))
    return functools.partial(steps.create_train_state, model, tx, optim.plateau(config),
                             resolution=INIT_RESOLUTION)


# -- iterator state as JSON -----------------------------------------------------------------

def encode_iterator_state(state: Any) -> dict:
    """grain iterator state (bytes from a DataLoader, a dict from a dataset iterator) -> JSON."""
    if isinstance(state, (bytes, bytearray)):
        return {"bytes": base64.b64encode(bytes(state)).decode("ascii")}
    return {"json": json.loads(json.dumps(state, default=_json_default))}


def decode_iterator_state(encoded: dict) -> Any:
    if "bytes" in encoded:
        return base64.b64decode(encoded["bytes"])
    return encoded["json"]


def _json_default(value):
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    if isinstance(value, (bytes, bytearray)):
        return value.decode()
    raise TypeError(f"iterator state holds a {type(value).__name__}, which is not JSON")


# -- the manager ----------------------------------------------------------------------------

class Checkpointer:
    """Orbax `CheckpointManager` over `WORKDIR/checkpoints`: latest + best by `monitor`."""

    def __init__(self, workdir: str, monitor: str = "val_loss", mode: str = "min",
                 read_only: bool = False):
        if mode not in ("min", "max"):
            raise ValueError(f"checkpoint.mode={mode!r}: expected 'min' or 'max'")
        self.directory = checkpoint_dir(workdir)
        self.monitor = monitor
        best_fn = functools.partial(_metric, monitor)
        policy = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(n=1),
            ocp.checkpoint_managers.BestN(get_metric_fn=best_fn, reverse=(mode == "min"), n=1,
                                          keep_checkpoints_without_metrics=False)])
        options = ocp.CheckpointManagerOptions(
            best_fn=best_fn, best_mode=mode, preservation_policy=policy, read_only=read_only,
            create=not read_only, enable_async_checkpointing=True, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "loop"))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def best_step(self) -> Optional[int]:
        return self.manager.best_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, state: steps.TrainState, loop: dict, metrics: Optional[dict] = None) -> None:
        """Starts an asynchronous save of `state` and `loop` at `state.step`.

        `metrics` (end of epoch) makes the checkpoint a candidate for "best". A checkpoint
        already at this step (a mid-epoch save at an epoch's last step) is replaced.
        """
        step = int(jax.device_get(state.step))
        self.manager.wait_until_finished()
        if step in self.manager.all_steps():
            self.manager.delete(step)
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop)),
            metrics=metrics, force=True)

    def restore(self, target: steps.TrainState, step: Optional[int] = None
                ) -> tuple[steps.TrainState, dict]:
        """(state, loop) at `step` (default: latest) into `target`'s structure and shardings."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), loop=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["loop"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _metric(name: str, metrics: dict) -> float:
    return float(metrics[name])


def load_for_inference(config: ml_collections.ConfigDict, workdir: str,
                       mesh: Optional[Mesh] = None) -> steps.TrainState:
    """The trained state of `workdir`: step `config.checkpoint.step` if >= 0, else the best.

    Raises `FileNotFoundError` naming the directory when it holds no checkpoint (or not the
    requested step). The state is replicated on `mesh` (default: every device).
    """
    mesh = mesh_lib.create_mesh() if mesh is None else mesh
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoint directory {directory}: train first, or pass "
                                "--workdir of a trained run")
    checkpointer = Checkpointer(workdir, config.checkpoint.monitor, config.checkpoint.mode,
                                read_only=True)
    try:
        available = checkpointer.all_steps()
        step = config.checkpoint.step
        if step is None or step < 0:
            # The best end-of-epoch checkpoint; else (only mid-epoch saves) the latest.
            step = checkpointer.best_step()
            step = checkpointer.latest_step() if step is None else step
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {directory}")
        elif step not in available:
            raise FileNotFoundError(f"no checkpoint at step {step} in {directory}; "
                                    f"available: {sorted(available)}")
        state, _ = checkpointer.restore(abstract_state(config, mesh), step)
    finally:
        checkpointer.close()
    return state
