"""Training state and the pure step functions, jitted over a device mesh.

The steps know nothing of files, loggers or configs: they take a state and the loader's uint8
arrays and return a state and metrics. Each first runs its `preprocess.Preprocess` on the
device (normalisation; photometric augmentation in the train step), then the model. `jit_steps`
compiles them with the batch sharded on the mesh's `data` axis and the state replicated; under
`jit` BatchNorm statistics are global. `StepTrace` records a profiler trace around some of them.
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import Mesh

from jaxsegdepth import errors, losses, mesh as mesh_lib, metrics, names, weighting as weighting_lib
from jaxsegdepth.preprocess import Preprocess


class TrainState(train_state.TrainState):
    """Parameters, BatchNorm statistics, optimizer and plateau state, the loss weighting's
    state, RNG and a NaN sentinel. The optimizer trains `(params, weighting.learnable(...))`.
    `ema` is {} or an exponential moving average {"params", "batch_stats"} of the model's
    variables, which evaluation and inference then use (`model_variables`)."""

    batch_stats: Any
    ema: Any
    weighting: Any
    plateau: optax.contrib.ReduceLROnPlateauState
    rng: jax.Array
    nonfinite_step: jax.Array  # -1 while every loss has been finite, else the first bad step


def inference_state(apply_fn, variables: dict, step=0) -> TrainState:
    """A state holding a model's `variables` ({"params", "batch_stats"}) and no optimizer,
    moving average or RNG: what `predict_step`, `eval_step` and an export take."""
    return TrainState(
        step=step,
        apply_fn=apply_fn,
        params=variables["params"],
        tx=optax.identity(),
        opt_state=(),
        batch_stats=variables.get("batch_stats", {}),
        ema={},
        weighting={},
        plateau=None,
        rng=None,
        nonfinite_step=None,
    )


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    plateau: optax.GradientTransformation,
    rng: jax.Array,
    resolution: int = 64,
    weighting: weighting_lib.Weighting = weighting_lib.FIXED,
    ema: bool = False,
) -> TrainState:
    """Initialises the model on a dummy (1, resolution, resolution, 3) pair; with `ema`, its
    moving average starts at the initial variables."""
    params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
    dummy = jnp.zeros((1, resolution, resolution, 3), jnp.float32)
    variables = model.init(
        {"params": params_rng, "dropout": dropout_rng}, dummy, dummy, train=False
    )
    params, weights = variables["params"], weighting.init()
    batch_stats = variables.get("batch_stats", {})
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        apply_fn=model.apply,
        params=params,
        tx=tx,
        opt_state=tx.init((params, weighting.learnable(weights))),
        batch_stats=batch_stats,
        ema=initial_ema({"params": params, "batch_stats": batch_stats}) if ema else {},
        weighting=weights,
        plateau=plateau.init(params),
        rng=state_rng,
        nonfinite_step=jnp.full((), -1, jnp.int32),
    )


NORMS = ("grad_norm", "param_norm", "update_norm")  # train step metrics with `norms`


def initial_ema(variables: dict) -> dict:
    """A moving average that starts at `variables`, in buffers of its own: the train step
    donates the state, and one buffer cannot be donated twice."""
    return jax.tree.map(jnp.copy, variables)


def model_variables(state: TrainState) -> dict:
    """The variables evaluation and inference run: the moving average when the state keeps
    one, else the trained parameters and BatchNorm statistics."""
    return state.ema or {"params": state.params, "batch_stats": state.batch_stats}


def ema_decay_at(decay: float, step: jax.Array) -> jax.Array:
    """The moving average's decay at 0-based train step `step`: `decay`, capped at
    (1 + step) / (10 + step) so that the first steps do not keep the random initialisation."""
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def _targets(batch: dict) -> dict:
    return {head: batch[head] for head in names.HEADS if head in batch}


def train_step(
    state: TrainState,
    batch: dict,
    *,
    loss_fn: losses.LossFn,
    preprocess: Preprocess,
    weighting: weighting_lib.Weighting = weighting_lib.FIXED,
    norms: bool = False,
    ema_decay: float = 0.0,
) -> tuple[TrainState, dict]:
    """One optimizer step on `weighting`'s objective, on the augmented, normalised `batch`.
    Metrics: `loss` (the loss spec's fixed sum), its terms, and `objective` when it differs;
    with `norms`, the global L2 norms (float32) of the gradient, the parameters after the step
    and the applied update, all over the trained pair (`NORMS`). With `ema_decay` > 0, the
    state's moving average takes the new variables with weight 1 - `ema_decay_at`. A
    non-finite objective (or, with `norms`, gradient norm) leaves the state unchanged and
    records the step."""
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    batch = preprocess(batch, train=True)

    def compute_objective(trained):
        params, learned = trained
        outputs, mutated = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            batch["bg"],
            batch["bg_fg"],
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": dropout_rng},
        )
        total, terms = loss_fn(outputs, _targets(batch))
        objective = weighting.objective({**state.weighting, **learned}, total, terms)
        return objective, (total, terms, mutated["batch_stats"])

    trained = (state.params, weighting.learnable(state.weighting))
    (objective, (loss, terms, batch_stats)), grads = jax.value_and_grad(
        compute_objective, has_aux=True
    )(trained)
    updates, opt_state = state.tx.update(grads, state.opt_state, trained)
    updates = jax.tree.map(lambda u: u * state.plateau.scale.astype(u.dtype), updates)
    params, learned = optax.apply_updates(trained, updates)
    norm_metrics = (
        dict(zip(NORMS, map(optax.tree.norm, (grads, (params, learned), updates)))) if norms else {}
    )
    variables = {"params": params, "batch_stats": batch_stats}
    stepped = state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        batch_stats=batch_stats,
        ema=_averaged(state.ema, variables, ema_decay, state.step),
        weighting={**state.weighting, **learned},
    )
    finite = jnp.isfinite(objective) & jnp.isfinite(norm_metrics.get("grad_norm", 0.0))
    extra = {"objective": objective} if weighting.ADAPTS else {}
    return _if_finite(finite, stepped, state), {"loss": loss, **terms, **extra, **norm_metrics}


def _if_finite(finite, stepped: TrainState, state: TrainState) -> TrainState:
    """`stepped` when `finite`, else `state` with only its step advanced and the first
    non-finite step recorded."""
    kept = state.replace(
        step=state.step + 1,
        nonfinite_step=jnp.where(state.nonfinite_step < 0, state.step, state.nonfinite_step),
    )
    return jax.tree.map(lambda new, old: jnp.where(finite, new, old), stepped, kept)


def _averaged(ema: dict, variables: dict, ema_decay: float, step) -> dict:
    """The moving average `ema` after taking `variables` with weight 1 - `ema_decay_at`
    (unchanged when `ema_decay` is 0)."""
    if not ema_decay:
        return ema
    decay = ema_decay_at(ema_decay, step)
    return jax.tree.map(lambda average, new: decay * average + (1.0 - decay) * new, ema, variables)


def eval_step(
    state: TrainState, batch: dict, *, loss_fn: losses.LossFn, preprocess: Preprocess
) -> dict:
    """Loss terms and additive metric sums for one batch (`batch["weights"]` masks padding), of
    the `model_variables`; metrics for the heads the batch has targets for."""
    batch = preprocess(batch, train=False)
    outputs = state.apply_fn(model_variables(state), batch["bg"], batch["bg_fg"], train=False)
    targets = _targets(batch)
    outputs = {head: value for head, value in outputs.items() if head in targets}
    loss, terms = loss_fn(outputs, targets, batch.get("weights"))
    return {
        "loss": loss,
        **terms,
        "sums": metrics.batch_sums(outputs, targets, batch.get("weights")),
    }


def predict_step(
    state: TrainState, bg: jax.Array, bg_fg: jax.Array, *, preprocess: Preprocess
) -> dict:
    """Probabilities (sigmoid of the logits) for every head the model has, from a uint8 (or
    [0, 1] float) RGB pair: the one inference function, jitted by `jit_steps` and wrapped by
    `export`. Of the `model_variables`."""
    outputs = state.apply_fn(model_variables(state), *preprocess.inputs(bg, bg_fg), train=False)
    return {head: jax.nn.sigmoid(logits.astype(jnp.float32)) for head, logits in outputs.items()}


def update_plateau(
    state: TrainState, plateau: optax.GradientTransformationExtraArgs, val_loss: float
) -> TrainState:
    """Feeds one validation loss to reduce-on-plateau; its new scale applies from the next step."""
    _, new = plateau.update(updates=jnp.zeros(()), state=state.plateau, value=jnp.asarray(val_loss))
    return state.replace(plateau=new)


class StepTrace:
    """A `jax.profiler` trace of the 1-based train steps `first..last` into `directory` (in
    TensorBoard's layout, plus a Perfetto JSON), on process 0 when `enabled`; (0, 0): none.
    It only watches: the steps and their results are the same with and without it."""

    def __init__(self, step_range: tuple, directory: str, enabled: bool = True):
        self.first, self.last = (int(s) for s in step_range)
        self.directory, self.enabled, self.active = directory, enabled and self.last > 0, False

    @staticmethod
    def validate(step_range) -> None:
        """Refuses, in one line, a `profile_steps` that is not (0, 0) or (first, last),
        1 <= first <= last."""
        ok = isinstance(step_range, (tuple, list)) and len(step_range) == 2
        ok = ok and all(isinstance(s, int) and not isinstance(s, bool) for s in step_range)
        if not ok or (tuple(step_range) != (0, 0) and not 1 <= step_range[0] <= step_range[1]):
            raise errors.UsageError(
                f"profile_steps={step_range!r}: expected (first, last), 1 <= first <= last "
                "(1-based train steps), or (0, 0) for none"
            )

    def before(self, step: int) -> None:
        """Starts the trace before 0-based train step `step` when it is in the range."""
        if self.enabled and not self.active and self.first <= step + 1 <= self.last:
            jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
            self.active = True

    def after(self, done: int, state) -> None:
        """Stops it once step `done` (1-based), the range's last, has run to the end."""
        if self.active and done >= self.last:
            jax.block_until_ready(state)
            self.close()

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


# On the CPU, XLA hands convolutions, elementwise ops, dots and reductions to YNNPACK by
# default; for DSResNet its convolutions are slower than XLA's own, while its reductions
# (BatchNorm statistics) are faster. YNNPACK for reductions only, on an idle 2-core machine:
# train +16% / +22-36%, eval +28% / +28-41% at 96x96 / 160x160 (docs/performance.md).
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


def compiler_options(platform: str) -> dict:
    """XLA options the steps are compiled with on `platform` ("cpu", "gpu", "tpu")."""
    return dict(CPU_COMPILER_OPTIONS) if platform == "cpu" else {}


def jit_steps(
    mesh: Mesh,
    loss_fn: losses.LossFn,
    preprocess: Preprocess,
    weighting: weighting_lib.Weighting = weighting_lib.FIXED,
    norms: bool = False,
    ema_decay: float = 0.0,
) -> tuple[Callable, Callable, Callable]:
    """`train_step` (with `norms` and `ema_decay`), `eval_step` and `predict_step` compiled
    for `mesh`.

    The batch is sharded on `data`, the state replicated and donated to the train step.
    """
    replicated, sharded = mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)
    options = compiler_options(mesh.devices.flat[0].platform)
    train = jax.jit(
        functools.partial(
            train_step,
            loss_fn=loss_fn,
            preprocess=preprocess,
            weighting=weighting,
            norms=norms,
            ema_decay=ema_decay,
        ),
        in_shardings=(replicated, sharded),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
        compiler_options=options,
    )
    evaluate = jax.jit(
        functools.partial(eval_step, loss_fn=loss_fn, preprocess=preprocess),
        in_shardings=(replicated, sharded),
        out_shardings=replicated,
        compiler_options=options,
    )
    predict = jax.jit(
        functools.partial(predict_step, preprocess=preprocess),
        in_shardings=(replicated, sharded, sharded),
        out_shardings=sharded,
        compiler_options=options,
    )
    return train, evaluate, predict
