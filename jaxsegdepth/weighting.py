"""How the heads' losses are weighted against each other during training.

A task is a head; its loss `L_k` is the head's part of the loss spec (the reference's: depth
`2 rmse`, mask `bce + 2 dice`). `config.loss_weighting.method` picks how the training objective
combines them:

- `fixed`: `sum_k L_k`, the reference's hand-set weights as they are.
- `uncertainty` (Kendall, Gal & Cipolla, CVPR 2018): `sum_k exp(-s_k) L_k + s_k`, with one
  learned log-variance `s_k = log sigma_k^2` per task (starting at 0, so at first equal to
  `fixed`), trained by the same optimizer as the model. At its optimum `exp(s_k) = L_k`: each
  task's gradient is divided by its own loss, so neither task dominates by its scale alone.
- `dwa`, dynamic weight average (Liu, Johns & Davison, CVPR 2019): `sum_k w_k L_k` with
  `w = K softmax(r / T)`, `r_k = Lbar_k(e-1) / Lbar_k(e-2)` the ratio of task k's mean training
  loss over the last two epochs and `T = config.loss_weighting.temperature`; `w_k = 1` for the first two
  epochs. A task whose loss stopped falling gets more weight.

Each method is one small frozen object behind the `Weighting` interface, chosen once by
`from_config`. The validation loss, the `train_loss` of the records and the checkpoint choice
always use the fixed sum, so that epochs compare whatever the weights were. The weighting's
state lives in `TrainState.weighting` and is saved in every checkpoint.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from jaxsegdepth import errors, names


@dataclasses.dataclass(frozen=True)
class Weighting:
    """The interface: pure functions of a state pytree for `tasks` (the loss spec's heads, in
    its order), safe under `jit` and `grad`. `ADAPTS`: whether the objective can differ from
    the loss spec's fixed sum (the train step then reports it)."""

    tasks: tuple[str, ...] = ()
    ADAPTS = True

    def init(self) -> dict:
        """The state at step 0."""
        return {}

    def learnable(self, state: dict) -> dict:
        """The part of `state` the optimizer trains with the model."""
        return {}

    def weights(self, state: dict) -> dict:
        """{task: the factor its loss is multiplied by in the objective}."""
        return {task: jnp.ones((), jnp.float32) for task in self.tasks}

    def objective(self, state: dict, total: jax.Array, terms: dict) -> jax.Array:
        """The training objective from a loss function's `(total, terms)`: the tasks' losses
        in `terms`, each times its weight."""
        weights = self.weights(state)
        return sum(
            (weights[task] * terms[names.task_loss(task)] for task in self.tasks),
            jnp.zeros((), jnp.float32),
        )

    def after_epoch(self, state: dict, epoch_means: dict) -> dict:
        """The state once an epoch with mean training task losses `epoch_means` has ended."""
        return state

    def report(self, state: dict) -> dict:
        """Host floats to log: `weight/<task>`, and what else the method learns."""
        values = {f"weight/{task}": w for task, w in self.weights(state).items()}
        return {k: float(v) for k, v in jax.device_get(values).items()}


@dataclasses.dataclass(frozen=True)
class Fixed(Weighting):
    """The loss spec's total as it is."""

    ADAPTS = False

    def objective(self, state: dict, total: jax.Array, terms: dict) -> jax.Array:
        return total

    def report(self, state: dict) -> dict:
        return {}


@dataclasses.dataclass(frozen=True)
class Uncertainty(Weighting):
    """`sum_k exp(-s_k) L_k + s_k`, the log-variances `s_k` trained with the model."""

    def init(self) -> dict:
        return {"log_var": {task: jnp.zeros((), jnp.float32) for task in self.tasks}}

    def learnable(self, state: dict) -> dict:
        return {"log_var": state["log_var"]}

    def weights(self, state: dict) -> dict:
        return {task: jnp.exp(-state["log_var"][task]) for task in self.tasks}

    def objective(self, state: dict, total: jax.Array, terms: dict) -> jax.Array:
        objective = super().objective(state, total, terms)
        for task in self.tasks:
            objective = objective + state["log_var"][task]
        return objective

    def report(self, state: dict) -> dict:
        log_vars = {f"log_var/{task}": s for task, s in state["log_var"].items()}
        return {**super().report(state), **{k: float(v) for k, v in log_vars.items()}}


@dataclasses.dataclass(frozen=True)
class DWA(Weighting):
    """`sum_k w_k L_k`, `w = K softmax(r / temperature)` over the last two epochs' loss ratios;
    1 until two epochs are known."""

    temperature: float = 2.0

    def init(self) -> dict:
        # row 0: the last epoch's mean loss, row 1: the one before
        return {"epoch_loss": {task: jnp.full((2,), jnp.nan, jnp.float32) for task in self.tasks}}

    def weights(self, state: dict) -> dict:
        history = jnp.stack([state["epoch_loss"][task] for task in self.tasks])
        ratios = history[:, 0] / history[:, 1]
        dynamic = len(self.tasks) * jax.nn.softmax(ratios / self.temperature)
        known = jnp.all(jnp.isfinite(ratios))
        return {task: jnp.where(known, dynamic[i], 1.0) for i, task in enumerate(self.tasks)}

    def after_epoch(self, state: dict, epoch_means: dict) -> dict:
        return {
            "epoch_loss": {
                task: jnp.stack([jnp.asarray(epoch_means[task], jnp.float32), history[0]])
                for task, history in state["epoch_loss"].items()
            }
        }


METHODS = {"fixed": Fixed, "uncertainty": Uncertainty, "dwa": DWA}  # loss_weighting.method
FIXED = Fixed()


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses an unknown `loss_weighting.method` or a non-positive `temperature` in one line."""
    settings = config.loss_weighting
    if settings.method not in METHODS:
        raise errors.UsageError(
            f"loss_weighting.method={settings.method!r}: expected one of {tuple(METHODS)}"
        )
    if not settings.temperature > 0:
        raise errors.UsageError(
            f"loss_weighting.temperature={settings.temperature!r}: expected > 0"
        )


def from_config(config: ml_collections.ConfigDict, heads: tuple) -> Weighting:
    """The weighting `config` asks for, over the loss spec's `heads` (`build.loss_spec`)."""
    settings = config.loss_weighting
    if settings.method == "dwa":
        return DWA(tuple(heads), float(settings.temperature))
    return METHODS[settings.method](tuple(heads))
