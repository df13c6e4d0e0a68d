"""Checkpoints (Orbax): save and restore, nothing else; the saved layout is in
`checkpointing/__init__.py`.

A warm start and the inference modes read only the parts of a checkpoint they use
(`variable_shapes` from the metadata, then `restore_parts`), whatever optimizer its run
trained with.

The manager keeps the latest checkpoint and the best one by `config.checkpoint.monitor`
(`mode` "min" or "max"); only end-of-epoch saves carry metrics, so a mid-epoch save (every N
steps, or on SIGTERM) is kept only while it is the latest. Saving is asynchronous.
What to restore into comes from `build.abstract_state`.
"""

import base64
import functools
import json
import math
import os
from typing import Any, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import traverse_util

from jaxsegdepth import errors, steps

CHECKPOINT_DIR = "checkpoints"
MODES = ("min", "max")
VARIABLES = ("params", "batch_stats")  # the parts of the state that are the model
CARD = "card"  # the item holding the model card (`checkpointing.card`)


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses bad `config.checkpoint` settings (the monitored name is the trainer's to check)."""
    settings = config.checkpoint
    if settings.mode not in MODES:
        raise errors.UsageError(f"checkpoint.mode={settings.mode!r}: expected one of {MODES}")
    if settings.every_steps < 0:
        raise errors.UsageError(
            f"checkpoint.every_steps={settings.every_steps}: expected >= 0 "
            "(0: only at the end of every epoch)"
        )


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def has_checkpoint(workdir: str) -> bool:
    """Whether `workdir` holds a complete checkpoint (nothing is created)."""
    if not os.path.isdir(checkpoint_dir(workdir)):
        return False
    checkpointer = Checkpointer(workdir, read_only=True)
    try:
        return checkpointer.latest_step() is not None
    finally:
        checkpointer.close()


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

    def __init__(
        self, workdir: str, monitor: str = "val_loss", mode: str = "min", read_only: bool = False
    ):
        self.directory = checkpoint_dir(workdir)
        self.monitor = monitor
        best_fn = functools.partial(_metric, monitor, mode)
        policy = ocp.checkpoint_managers.AnyPreservationPolicy(
            [
                ocp.checkpoint_managers.LatestN(n=1),
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=best_fn,
                    reverse=(mode == "min"),
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            best_fn=best_fn,
            best_mode=mode,
            preservation_policy=policy,
            read_only=read_only,
            create=not read_only,
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "loop", CARD)
        )

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def best_step(self) -> Optional[int]:
        return self.manager.best_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(
        self,
        state: steps.TrainState,
        loop: dict,
        metrics: Optional[dict] = None,
        card: Optional[dict] = None,
    ) -> None:
        """Starts an asynchronous save of `state`, `loop` and the model `card` (the trainer
        always gives one) at `state.step`.

        `metrics` (end of epoch) makes the checkpoint a candidate for "best". The trainer saves
        each step at most once, so an existing checkpoint is never deleted to make room.
        """
        step = int(jax.device_get(state.step))
        self.wait()
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                loop=ocp.args.JsonSave(loop),
                **({} if card is None else {CARD: ocp.args.JsonSave(card)}),
            ),
            metrics=metrics,
            force=True,
        )

    def restore(
        self, target: steps.TrainState, step: Optional[int] = None
    ) -> tuple[steps.TrainState, dict]:
        """(state, loop) at `step` (default: latest) into `target`'s structure and shardings."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise errors.RunError(f"no checkpoint in {self.directory}")
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), loop=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["loop"])

    def restore_loop(self, step: int) -> dict:
        """The `loop` JSON saved at `step` alone."""
        restored = self.manager.restore(step, args=ocp.args.Composite(loop=ocp.args.JsonRestore()))
        return dict(restored["loop"])

    def restore_card(self, step: int) -> Optional[dict]:
        """The model card saved at `step`, or None for a checkpoint written without one."""
        if not os.path.isdir(os.path.join(self.directory, str(step), CARD)):
            return None
        restored = self.manager.restore(
            step, args=ocp.args.Composite(**{CARD: ocp.args.JsonRestore()})
        )
        return dict(restored[CARD])

    def variable_shapes(self, step: int) -> dict[str, tuple]:
        """{"params/.../kernel": shape, "batch_stats/...": shape} saved at `step`, from the
        metadata (no array is read)."""
        tree = self._state_metadata(step)
        flat = traverse_util.flatten_dict({k: tree[k] for k in VARIABLES if k in tree}, sep="/")
        return {path: tuple(leaf.shape) for path, leaf in flat.items()}

    def has_ema(self, step: int) -> bool:
        """Whether the state at `step` keeps a moving average of the model's variables."""
        return bool(self._state_metadata(step).get("ema"))

    def _state_metadata(self, step: int) -> dict:
        with ocp.PyTreeCheckpointer() as reader:
            return reader.metadata(self._state_path(step)).item_metadata.tree

    def restore_parts(self, step: int, target: dict) -> dict:
        """Only `target`'s parts of the state at `step` (e.g. {"params": ..., "batch_stats":
        ...}), into its shapes and shardings; the rest of the checkpoint is not read."""
        with ocp.PyTreeCheckpointer() as reader:
            return reader.restore(
                self._state_path(step),
                args=ocp.args.PyTreeRestore(
                    target,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True,
                ),
            )

    def _state_path(self, step: int) -> str:
        return os.path.join(self.directory, str(step), "state")

    def wait(self) -> None:
        """Waits for the save in flight; one that failed (a full disk) is a `RunError`."""
        self._unless_failed(self.manager.wait_until_finished)

    def close(self) -> None:
        self._unless_failed(self.manager.close)

    def _unless_failed(self, call) -> None:
        # Orbax re-raises a background write's failure here, as OSError or ValueError.
        try:
            call()
        except (OSError, ValueError) as error:
            raise errors.RunError(
                f"writing a checkpoint in {self.directory} failed ("
                f"{' '.join(str(error).split())}); rerun the same command to "
                "resume from the last complete one"
            ) from None


def _metric(name: str, mode: str, metrics: dict) -> float:
    """The monitored value; a missing or non-finite one ranks last, never first or a crash."""
    value = float(metrics.get(name, math.nan))
    if math.isfinite(value):
        return value
    return math.inf if mode == "min" else -math.inf
