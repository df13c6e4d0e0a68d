"""How the heads' losses are weighted against each other during training.

A task is a head; its loss `L_k` is the head's part of the loss spec (the reference's: depth
`2 rmse`, mask `bce + 2 dice`). `config.loss_weighting` picks how the training objective
combines them:

- `fixed`: `sum_k L_k`, the reference's hand-set weights as they are.
- `uncertainty` (Kendall, Gal & Cipolla, CVPR 2018): `sum_k exp(-s_k) L_k + s_k`, with one
  learned log-variance `s_k = log sigma_k^2` per task (starting at 0, so at first equal to
  `fixed`), trained by the same optimizer as the model. At its optimum `exp(s_k) = L_k`: each
  task's gradient is divided by its own loss, so neither task dominates by its scale alone.
- `dwa`, dynamic weight average (Liu, Johns & Davison, CVPR 2019): `sum_k w_k L_k` with
  `w = K softmax(r / T)`, `r_k = Lbar_k(e-1) / Lbar_k(e-2)` the ratio of task k's mean training
  loss over the last two epochs and `T = config.dwa_temperature`; `w_k = 1` for the first two
  epochs. A task whose loss stopped falling gets more weight.

The validation loss, the `train_loss` of the records and the checkpoint choice always use the
fixed sum, so that epochs compare whatever the weights were. The weighting's state lives in
`TrainState.weighting` and is saved in every checkpoint.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from jaxsegdepth import errors, names

METHODS = ("fixed", "uncertainty", "dwa")


@dataclasses.dataclass(frozen=True)
class Weighting:
    """One weighting method for `tasks` (the loss spec's heads, in its order); pure functions
    of a state pytree, safe under `jit` and `grad`."""

    method: str = "fixed"
    tasks: tuple[str, ...] = ()
    temperature: float = 2.0

    def init(self) -> dict:
        """The state at step 0: log-variances 0 (uncertainty), no epoch losses yet (dwa)."""
        if self.method == "uncertainty":
            return {"log_var": {task: jnp.zeros((), jnp.float32) for task in self.tasks}}
        if self.method == "dwa":  # row 0: the last epoch's mean loss, row 1: the one before
            return {
                "epoch_loss": {task: jnp.full((2,), jnp.nan, jnp.float32) for task in self.tasks}
            }
        return {}

    def learnable(self, state: dict) -> dict:
        """The part of `state` the optimizer trains with the model (empty unless uncertainty)."""
        return {"log_var": state["log_var"]} if self.method == "uncertainty" else {}

    def weights(self, state: dict) -> dict:
        """{task: the factor its loss is multiplied by in the objective}."""
        if self.method == "uncertainty":
            return {task: jnp.exp(-state["log_var"][task]) for task in self.tasks}
        if self.method == "dwa":
            history = jnp.stack([state["epoch_loss"][task] for task in self.tasks])
            ratios = history[:, 0] / history[:, 1]
            dynamic = len(self.tasks) * jax.nn.softmax(ratios / self.temperature)
            known = jnp.all(jnp.isfinite(ratios))
            return {task: jnp.where(known, dynamic[i], 1.0) for i, task in enumerate(self.tasks)}
        return {task: jnp.ones((), jnp.float32) for task in self.tasks}

    def objective(self, state: dict, total: jax.Array, terms: dict) -> jax.Array:
        """The training objective from a loss function's `(total, terms)`: `total` itself
        when fixed, else from the tasks' losses in `terms`."""
        if self.method == "fixed":
            return total
        weights = self.weights(state)
        total = jnp.zeros((), jnp.float32)
        for task in self.tasks:
            total = total + weights[task] * terms[names.task_loss(task)]
        if self.method == "uncertainty":
            for task in self.tasks:
                total = total + state["log_var"][task]
        return total

    def after_epoch(self, state: dict, epoch_means: dict) -> dict:
        """The state once an epoch with mean training task losses `epoch_means` has ended."""
        if self.method != "dwa":
            return state
        return {
            "epoch_loss": {
                task: jnp.stack([jnp.asarray(epoch_means[task], jnp.float32), history[0]])
                for task, history in state["epoch_loss"].items()
            }
        }

    def report(self, state: dict) -> dict:
        """Host floats to log: `weight/<task>` and, for uncertainty, `log_var/<task>`."""
        if self.method == "fixed":
            return {}
        values = {f"weight/{task}": w for task, w in self.weights(state).items()}
        if self.method == "uncertainty":
            values.update({f"log_var/{task}": s for task, s in state["log_var"].items()})
        return {k: float(v) for k, v in jax.device_get(values).items()}


FIXED = Weighting()


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses an unknown `loss_weighting` or a non-positive `dwa_temperature` in one line."""
    if config.loss_weighting not in METHODS:
        raise errors.UsageError(
            f"loss_weighting={config.loss_weighting!r}: expected one of {METHODS}"
        )
    if not config.dwa_temperature > 0:
        raise errors.UsageError(f"dwa_temperature={config.dwa_temperature!r}: expected > 0")


def from_config(config: ml_collections.ConfigDict, heads: tuple) -> Weighting:
    """The weighting `config` asks for, over the loss spec's `heads` (`setup.loss_spec`)."""
    return Weighting(config.loss_weighting, tuple(heads), float(config.dwa_temperature))
