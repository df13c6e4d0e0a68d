"""Loss weighting: fixed, uncertainty (Kendall et al. 2018) and DWA (Liu et al. 2019) against
their formulas on hand-computed numbers, one training step, and the config checks."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from jaxsegdepth import errors, losses, models, optim, preprocess, steps, weighting
from jaxsegdepth.data.normalization import MODEST_NORMALIZATION

TASKS = ("depth", "mask")
TERMS = {"depth/loss": jnp.float32(0.3), "mask/loss": jnp.float32(0.8)}
TOTAL = jnp.float32(1.1)  # what the loss spec's fixed sum would be


def test_fixed_objective_is_the_loss_specs_total_bit_for_bit():
    rng = np.random.default_rng(0)
    outputs = {h: jnp.asarray(rng.normal(size=(2, 8, 8, 1)), jnp.float32) for h in TASKS}
    targets = {h: jnp.asarray(rng.uniform(size=(2, 8, 8, 1)), jnp.float32) for h in TASKS}
    spec = {"depth": {"rmse": 2.0}, "mask": {"bce": 1.0, "dice": 2.0}}
    total, terms = losses.compose(spec)(outputs, targets)
    assert float(terms["depth/loss"]) == pytest.approx(2 * float(terms["depth/rmse"]), rel=1e-6)
    assert float(terms["mask/loss"]) == pytest.approx(
        float(terms["mask/bce"]) + 2 * float(terms["mask/dice"]), rel=1e-6
    )
    fixed = weighting.Fixed(TASKS)
    assert fixed.init() == {} and fixed.learnable({}) == {}
    assert fixed.objective({}, total, terms) is total
    assert fixed.report({}) == {}


def test_uncertainty_objective_and_gradient_follow_kendall():
    """sum_k exp(-s_k) L_k + s_k, and d/ds_k = 1 - exp(-s_k) L_k, computed here by hand."""
    method = weighting.Uncertainty(TASKS)
    state = method.init()
    assert {k: float(v) for k, v in state["log_var"].items()} == {"depth": 0.0, "mask": 0.0}
    state = {"log_var": {"depth": jnp.float32(0.5), "mask": jnp.float32(-1.0)}}
    want = math.exp(-0.5) * 0.3 + 0.5 + math.exp(1.0) * 0.8 - 1.0  # = 1.35566...
    assert float(method.objective(state, TOTAL, TERMS)) == pytest.approx(want, rel=1e-6)
    grads = jax.grad(lambda s: method.objective(s, TOTAL, TERMS))(state)["log_var"]
    assert float(grads["depth"]) == pytest.approx(1 - math.exp(-0.5) * 0.3, rel=1e-6)
    assert float(grads["mask"]) == pytest.approx(1 - math.exp(1.0) * 0.8, rel=1e-6)
    assert method.report(state) == pytest.approx(
        {
            "weight/depth": math.exp(-0.5),
            "weight/mask": math.exp(1.0),
            "log_var/depth": 0.5,
            "log_var/mask": -1.0,
        }
    )


def test_dwa_weights_follow_liu_and_start_at_one():
    """w = K softmax(r / T), r_k = L_k(e-1) / L_k(e-2); 1 until two epochs are known."""
    method = weighting.DWA(TASKS, temperature=2.0)
    state = method.init()
    assert method.report(state) == {"weight/depth": 1.0, "weight/mask": 1.0}
    state = method.after_epoch(state, {"depth": 0.6, "mask": 0.5})  # one epoch: still ones
    assert method.report(state) == {"weight/depth": 1.0, "weight/mask": 1.0}
    state = method.after_epoch(state, {"depth": 0.3, "mask": 0.5})
    np.testing.assert_array_equal(np.asarray(state["epoch_loss"]["depth"]), np.float32([0.3, 0.6]))
    # r = (0.5, 1.0), r / T = (0.25, 0.5): w = 2 e^0.25 / (e^0.25 + e^0.5), ...
    e1, e2 = math.exp(0.25), math.exp(0.5)
    want = {"weight/depth": 2 * e1 / (e1 + e2), "weight/mask": 2 * e2 / (e1 + e2)}
    assert want["weight/depth"] == pytest.approx(0.8756, abs=1e-4)  # by hand: 2 x 0.4378
    assert method.report(state) == pytest.approx(want, rel=1e-6)
    objective = 0.3 * want["weight/depth"] + 0.8 * want["weight/mask"]
    assert float(method.objective(state, TOTAL, TERMS)) == pytest.approx(objective, rel=1e-6)
    assert method.learnable(state) == {}
    colder = weighting.DWA(TASKS, temperature=0.5).report(state)
    assert colder["weight/mask"] > want["weight/mask"]  # a lower T sharpens the softmax


def _batch(size=8):
    """A mask-only batch as the loader ships it: uint8 images, a 0/255 mask, sample indices."""
    rng = np.random.default_rng(0)
    return {
        "bg": rng.integers(0, 256, (4, size, size, 3), np.uint8),
        "bg_fg": rng.integers(0, 256, (4, size, size, 3), np.uint8),
        "mask": np.where(rng.uniform(size=(4, size, size, 1)) > 0.7, 255, 0).astype(np.uint8),
        "index": np.arange(4, dtype=np.int32),
    }


def test_an_uncertainty_step_trains_the_log_variance_with_the_model():
    """Plain SGD, lr 0.1, from s = 0: s moves by -lr (1 - L) and the model exactly as with
    fixed weights (exp(-0) = 1); the optimizer state covers the log-variance."""
    loss_fn = losses.compose({"mask": {"bce": 1.0}})
    plateau = optim.plateau(default.get_config())
    new = {}
    for name in ("fixed", "uncertainty"):
        method = weighting.METHODS[name](("mask",))
        state = steps.create_train_state(
            models.MaskNet(),
            optax.sgd(0.1),
            plateau,
            jax.random.PRNGKey(0),
            resolution=8,
            weighting=method,
        )
        step = jax.jit(
            functools.partial(
                steps.train_step,
                loss_fn=loss_fn,
                preprocess=preprocess.from_normalization(MODEST_NORMALIZATION),
                weighting=method,
            )
        )
        new[name] = step(state, _batch())
    (fixed_state, fixed_metrics), (state, metrics) = new["fixed"], new["uncertainty"]
    assert "objective" not in fixed_metrics
    loss = float(metrics["mask/loss"])
    assert float(metrics["objective"]) == pytest.approx(loss, rel=1e-6)  # + s = 0
    assert float(state.weighting["log_var"]["mask"]) == pytest.approx(-0.1 * (1 - loss), rel=1e-5)
    for a, b in zip(jax.tree.leaves(fixed_state.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)


def test_the_config_chooses_one_object_once():
    config = default.get_config()
    chosen = {}
    for name in ("fixed", "uncertainty", "dwa"):
        config.loss_weighting.method, config.loss_weighting.temperature = name, 0.5
        chosen[name] = weighting.from_config(config, TASKS)
    assert chosen["fixed"] == weighting.Fixed(TASKS) and not chosen["fixed"].ADAPTS
    assert chosen["uncertainty"] == weighting.Uncertainty(TASKS) and chosen["uncertainty"].ADAPTS
    assert chosen["dwa"] == weighting.DWA(TASKS, temperature=0.5)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"method": "gradnorm"}, "loss_weighting.method='gradnorm': expected one of"),
        ({"temperature": 0.0}, "loss_weighting.temperature=0.0: expected > 0"),
    ],
)
def test_a_bad_weighting_setting_is_refused_in_one_line(changes, message):
    config = default.get_config()
    config.loss_weighting.update(changes)
    with pytest.raises(errors.UsageError, match=message):
        weighting.validate(config)
