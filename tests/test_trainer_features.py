"""Trainer features: norms among the step metrics, gradient accumulation, frozen parameters and
per-layer rates, the profiler trace, the moving average of the weights; each against an
independent reference."""

import functools
import glob
import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import default
from jaxsegdepth import build, errors, losses, mesh as mesh_lib, models, optim, preprocess, steps
from jaxsegdepth.checkpointing import resume, select, store
from jaxsegdepth.data.normalization import MODEST_NORMALIZATION
from jaxsegdepth.modes import evaluate, train
from jaxsegdepth.evaluators import catalog

PREPROCESS = preprocess.from_normalization(MODEST_NORMALIZATION)  # normalise, no augmentation
BCE = losses.compose({"mask": {"bce": 1.0}})


class ConvNet(nn.Module):
    """A mask model without BatchNorm: its gradient over a batch is the mean of its samples'."""

    HEADS = ("mask",)

    @nn.compact
    def __call__(self, bg, bg_fg, train: bool = False):
        self.variable("batch_stats", "unused", jnp.zeros, ())  # the steps update this collection
        x = nn.relu(nn.Conv(4, (3, 3))(jnp.concatenate([bg, bg_fg], -1)))
        return {"mask": nn.Conv(1, (3, 3))(x)}


class NanGradientNet(ConvNet):
    """Finite outputs (all 0) whose gradient is NaN: sqrt'(0) = inf times 0."""

    @nn.compact
    def __call__(self, bg, bg_fg, train: bool = False):
        self.variable("batch_stats", "unused", jnp.zeros, ())
        return {"mask": jnp.sqrt(0.0 * nn.Conv(1, (3, 3))(jnp.concatenate([bg, bg_fg], -1)))}


def _batch(rng, n, size=8):
    return {
        "bg": rng.integers(0, 256, (n, size, size, 3), np.uint8),
        "bg_fg": rng.integers(0, 256, (n, size, size, 3), np.uint8),
        "mask": np.where(rng.random((n, size, size, 1)) > 0.6, 255, 0).astype(np.uint8),
        "index": np.arange(n, dtype=np.int32),
    }


def _config(**changes):
    config = default.get_config()
    config.optimizer.name, config.optimizer.learning_rate = "sgd", 0.1
    config.schedule.name = "constant"
    config.update(changes)
    return config


def _state(model, config, steps_per_epoch=10):
    return steps.create_train_state(
        model,
        optim.training_optimizer(config, steps_per_epoch),
        optim.plateau(config),
        jax.random.PRNGKey(0),
        resolution=8,
        ema=config.ema_decay > 0,
    )


def _step(**kwargs):
    return jax.jit(
        functools.partial(steps.train_step, loss_fn=BCE, preprocess=PREPROCESS, **kwargs)
    )


def _host(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(tree))]


def _norm(arrays):
    return np.sqrt(sum(np.sum(a**2) for a in arrays))


def test_norms_are_numpys_float64_norms_of_one_step():
    config = _config()
    config.optimizer.momentum = 0.9
    state = _state(models.MaskNet(), config)
    batch = _batch(np.random.default_rng(0), 4)
    before = _host(state.params)

    def objective(params):  # the train step's loss, written out again
        pre = PREPROCESS(batch, train=True)
        outputs, _ = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            pre["bg"],
            pre["bg_fg"],
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.fold_in(state.rng, state.step)},
        )
        return optax.sigmoid_binary_cross_entropy(outputs["mask"], pre["mask"]).mean()

    grads = _host(jax.grad(objective)(state.params))
    new_state, metrics = _step(norms=True)(state, batch)
    after = _host(new_state.params)
    assert set(steps.NORMS) <= set(metrics)
    for name in steps.NORMS:
        assert metrics[name].dtype == jnp.float32
    np.testing.assert_allclose(float(metrics["grad_norm"]), _norm(grads), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["param_norm"]), _norm(after), rtol=1e-6)
    # the first SGD step with momentum: the update is -lr * grad
    np.testing.assert_allclose(float(metrics["update_norm"]), 0.1 * _norm(grads), rtol=1e-5)
    np.testing.assert_allclose(
        float(metrics["update_norm"]), _norm([a - b for a, b in zip(after, before)]), rtol=1e-4
    )
    _, plain = _step()(state, batch)
    assert not set(steps.NORMS) & set(plain)


def test_a_non_finite_gradient_norm_is_a_non_finite_step():
    state = _state(NanGradientNet(), _config())
    batch = _batch(np.random.default_rng(4), 2)
    new_state, metrics = _step(norms=True)(state, batch)
    assert np.isfinite(float(metrics["loss"])) and np.isnan(float(metrics["grad_norm"]))
    assert int(new_state.nonfinite_step) == 0
    for a, b in zip(_host(state.params), _host(new_state.params)):
        np.testing.assert_array_equal(a, b)
    unguarded, _ = _step()(state, batch)  # without norms only the loss is checked
    assert int(unguarded.nonfinite_step) == -1
    assert any(np.isnan(a).any() for a in _host(unguarded.params))


def test_accumulated_micro_batches_update_like_one_large_batch():
    """Without BatchNorm, 3 micro-batches of 2 step as one batch of 6: twice, with momentum;
    the parameters stay bit-identical between a group's micro-batches."""
    groups, micro, size = 2, 3, 2
    rng = np.random.default_rng(1)
    large = [_batch(rng, micro * size) for _ in range(groups)]
    one, accumulated = _config(), _config(accumulate_steps=micro)
    state_one, state_acc = _state(ConvNet(), one), _state(ConvNet(), accumulated)
    for a, b in zip(_host(state_one.params), _host(state_acc.params)):
        np.testing.assert_array_equal(a, b)
    step = _step()
    for batch in large:
        state_one, _ = step(state_one, batch)
        start = _host(state_acc.params)
        for i in range(micro):
            part = {k: v[i * size : (i + 1) * size] for k, v in batch.items()}
            if i:
                for a, b in zip(start, _host(state_acc.params)):
                    np.testing.assert_array_equal(a, b)
            state_acc, _ = step(state_acc, part)
        moved = [np.abs(a - b).max() for a, b in zip(start, _host(state_acc.params))]
        assert max(moved) > 1e-4
        for a, b in zip(_host(state_one.params), _host(state_acc.params)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_schedule_counts_optimizer_steps():
    config = _config(accumulate_steps=4)
    config.schedule.name, config.schedule.boundaries, config.schedule.factor = "step", (3,), 0.5
    schedule = optim.learning_rate_schedule(config, steps_per_epoch=8)  # 2 updates per epoch
    assert [float(schedule(c)) for c in (0, 5, 6, 7)] == pytest.approx([0.1, 0.1, 0.05, 0.05])
    assert [optim.optimizer_step(config, s) for s in (0, 3, 4, 23, 24)] == [0, 0, 1, 5, 6]
    config.schedule.name = "onecycle"
    config.stages = ((32, 3),)
    onecycle = optim.learning_rate_schedule(config, steps_per_epoch=8)  # 6 updates in all
    lr = config.optimizer.learning_rate
    peak = int(config.schedule.pct_start * 6)
    assert float(onecycle(peak)) == pytest.approx(lr)
    assert float(onecycle(6)) == pytest.approx(
        lr / config.schedule.div_factor / config.schedule.final_div_factor
    )


def test_frozen_parameters_stay_bit_identical_and_multipliers_scale_the_update():
    config = _config(freeze=("bg_conv/.*",), lr_multipliers=(("bg_fg_conv/.*", 0.5),))
    config.optimizer.name, config.optimizer.weight_decay = "adamw", 0.1
    state = _state(models.MaskNet(), config)
    before = jax.device_get(state.params)
    step, rng = _step(), np.random.default_rng(2)
    for _ in range(3):
        state, _ = step(state, _batch(rng, 4))
    after = jax.device_get(state.params)
    for name in before["bg_conv"]:
        np.testing.assert_array_equal(before["bg_conv"][name], after["bg_conv"][name])
    assert not np.array_equal(before["bg_fg_conv"]["kernel"], after["bg_fg_conv"]["kernel"])
    assert not np.array_equal(before["out"]["kernel"], after["out"]["kernel"])

    # the update itself: 0 where frozen, exactly half where multiplied by 0.5, else SGD's
    shapes = {"bg_conv": {"kernel": (3,)}, "bg_fg_conv": {"kernel": (2,)}, "out": {"bias": (1,)}}
    params = jax.tree.map(lambda s: np.ones(s, np.float32), shapes, is_leaf=_is_shape)
    grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
    tx = optim.per_parameter_rates(optax.sgd(0.1), config.freeze, config.lr_multipliers)
    trained = (params, {})
    (updates, _), _ = tx.update((grads, {}), tx.init(trained), trained)
    plain = jax.tree.map(lambda g: -0.1 * g, grads)
    np.testing.assert_array_equal(updates["bg_conv"]["kernel"], np.zeros(3, np.float32))
    np.testing.assert_array_equal(
        updates["bg_fg_conv"]["kernel"], 0.5 * plain["bg_fg_conv"]["kernel"]
    )
    np.testing.assert_array_equal(updates["out"]["bias"], plain["out"]["bias"])


def _is_shape(x):
    return isinstance(x, tuple)


def test_a_regex_that_matches_no_parameter_is_refused_naming_it():
    config = default.get_config()  # DSResNet: enc1..enc4, b1, b2, bf1, bf2, merge, heads
    config.freeze, config.lr_multipliers = ("enc.*",), (("b1/.*", 0.1), ("bf.*", 0.2))
    build.validate_optimizer(config)
    config.lr_multipliers = (("encoder.*", 0.1),)
    with pytest.raises(errors.UsageError, match=r"lr_multipliers: 'encoder\.\*' matches no"):
        build.validate_optimizer(config)
    for field, value, message in (
        ("freeze", ("(",), "not a regular expression"),
        ("accumulate_steps", 0, "accumulate_steps=0"),
        ("lr_multipliers", (("enc.*",),), "not a \\(regex, factor"),
    ):
        bad = default.get_config()
        bad[field] = value
        with pytest.raises(errors.UsageError, match=message):
            build.validate_optimizer(bad)
    for value in ((0, 2), (3, 2), (1,)):
        with pytest.raises(errors.UsageError, match="profile_steps"):
            steps.StepTrace.validate(value)
    steps.StepTrace.validate((0, 0))
    steps.StepTrace.validate((2, 2))


def test_a_regex_that_matches_nothing_stops_launch_in_one_line_with_exit_2(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "launch.py"),
            "--config",
            os.path.join(ROOT, "configs", "rmse_bce_dice.py"),
            "--workdir",
            str(tmp_path / "run"),
            "--config.lr_multipliers=(('enc.*', 0.1),)",
            "--config.freeze=('encoder.*',)",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "error: freeze: 'encoder.*' matches no parameter of dsresnet "
        "(paths like 'b1/convs/bn1/bias', matched whole)"
    )
    assert not os.path.exists(tmp_path / "run")


FOUR_DEVICES = textwrap.dedent("""
    import json, jax, numpy as np
    from configs import default
    from jaxsegdepth import losses, mesh as mesh_lib, models, optim, preprocess, steps
    from jaxsegdepth.data.normalization import MODEST_NORMALIZATION
    assert jax.device_count() == 4, jax.devices()
    config = default.get_config()
    config.optimizer.name, config.schedule.name = "sgd", "constant"
    config.accumulate_steps, config.freeze = 2, ("bg_conv/.*",)
    config.lr_multipliers = (("bg_fg_conv/.*", 0.5),)
    rng = np.random.default_rng(0)
    n, size = 8, 16
    batches = [{"bg": rng.integers(0, 256, (n, size, size, 3), np.uint8),
                "bg_fg": rng.integers(0, 256, (n, size, size, 3), np.uint8),
                "mask": np.where(rng.random((n, size, size, 1)) > 0.7, 255, 0).astype(np.uint8),
                "index": np.arange(b * n, (b + 1) * n, dtype=np.int32)} for b in range(4)]
    host_state = jax.device_get(steps.create_train_state(
        models.MaskNet(), optim.training_optimizer(config, 4), optim.plateau(config),
        jax.random.PRNGKey(0), resolution=size, ema=True))
    pre = preprocess.from_normalization(MODEST_NORMALIZATION)
    results = {}
    for devices in (1, 4):
        mesh = mesh_lib.create_mesh(jax.devices()[:devices])
        train, _, _ = steps.jit_steps(
            mesh, losses.compose({"mask": {"bce": 1.0}}), pre, norms=True, ema_decay=0.5)
        state = jax.device_put(host_state, mesh_lib.replicated(mesh))
        metrics = []
        for batch in batches:
            state, m = train(state, mesh_lib.shard_batch(mesh, batch))
            metrics.append({k: float(v) for k, v in m.items()})
        results[devices] = dict(metrics=metrics, **{
            name: {k: [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(v)]
                   for k, v in jax.device_get(tree).items()}
            for name, tree in (("params", state.params), ("ema", state.ema["params"]))})
    print("RESULT" + json.dumps(results))
""")


def test_four_devices_match_one_with_norms_accumulation_frozen_layers_and_ema():
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=ROOT,
    )
    out = subprocess.run(
        [sys.executable, "-c", FOUR_DEVICES],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(text for text in out.stdout.splitlines() if text.startswith("RESULT"))
    one, four = (json.loads(line[len("RESULT") :])[k] for k in ("1", "4"))
    for m1, m4 in zip(one["metrics"], four["metrics"]):
        assert m1.keys() == m4.keys() and set(steps.NORMS) <= m1.keys()
        for key in m1:
            np.testing.assert_allclose(m4[key], m1[key], rtol=1e-5, atol=1e-7)
    assert [m["update_norm"] == 0 for m in one["metrics"]] == [True, False, True, False]
    for tree in ("params", "ema"):
        for name in one[tree]:
            for a, b in zip(four[tree][name], one[tree][name]):
                np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    initial = jax.device_get(
        steps.create_train_state(
            models.MaskNet(), optax.sgd(0.1), optax.identity(), jax.random.PRNGKey(0), resolution=16
        ).params["bg_conv"]
    )
    for result in (one, four):
        for a, b in zip(result["params"]["bg_conv"], jax.tree.leaves(initial)):
            np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b).ravel())


def test_the_moving_average_follows_numpys_float64_recurrence():
    """ema_t = d_t ema_(t-1) + (1 - d_t) w_t, d_t = min(decay, (1 + t) / (10 + t)), from the
    initial variables; BatchNorm statistics too. Training itself is unchanged by it."""
    decay = 0.8
    with_ema, without = _config(ema_decay=decay), _config()
    state, plain = _state(models.MaskNet(), with_ema), _state(models.MaskNet(), without)
    reference = _host({"params": state.params, "batch_stats": state.batch_stats})
    step_ema, step_plain = _step(ema_decay=decay), _step()
    rng = np.random.default_rng(2)
    for t in range(4):
        batch = _batch(rng, 4)
        state, _ = step_ema(state, batch)
        plain, _ = step_plain(plain, batch)
        d = min(decay, (1 + t) / (10 + t))
        new = _host({"params": state.params, "batch_stats": state.batch_stats})
        reference = [d * r + (1 - d) * w for r, w in zip(reference, new)]
        for a, b in zip(_host(state.ema), reference):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        for a, b in zip(_host(state.params), _host(plain.params)):
            np.testing.assert_array_equal(a, b)
    assert max(np.abs(a - b).max() for a, b in zip(_host(state.ema), new)) > 1e-4
    # evaluation runs the average: the same outputs as a state whose weights are the average
    evaluate = jax.jit(functools.partial(steps.eval_step, loss_fn=BCE, preprocess=PREPROCESS))
    averaged = state.replace(ema={}, **state.ema)
    batch = _batch(rng, 4)
    np.testing.assert_array_equal(
        float(evaluate(state, batch)["loss"]), float(evaluate(averaged, batch)["loss"])
    )
    assert float(evaluate(state, batch)["loss"]) != float(
        evaluate(state.replace(ema={}), batch)["loss"]
    )


def test_a_new_moving_average_has_buffers_of_its_own():
    """The train step donates the state: a state made outside jit must not share a buffer
    between the weights and their average."""
    state = _state(models.MaskNet(), _config(ema_decay=0.9))
    donating = jax.jit(
        functools.partial(steps.train_step, loss_fn=BCE, preprocess=PREPROCESS, ema_decay=0.9),
        donate_argnums=0,
    )
    new_state, metrics = donating(state, _batch(np.random.default_rng(3), 2))
    assert np.isfinite(float(metrics["loss"])) and int(new_state.step) == 1


def test_an_ema_decay_outside_0_1_is_refused_in_one_line():
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(errors.UsageError, match="^ema_decay=.*expected 0 .* in \\(0, 1\\)"):
            optim.validate(_config(ema_decay=bad))
    optim.validate(_config(ema_decay=0.999))


def test_new_fields_that_change_results_are_resume_settings():
    assert {"accumulate_steps", "freeze", "lr_multipliers", "ema_decay"} <= set(
        resume.RESUME_FIELDS
    )
    assert "profile_steps" not in resume.RESUME_FIELDS


# A tiny MaskNet run: 28 training samples, 3 steps of 8 per epoch, updates every 2 steps, so
# the first epoch ends (and checkpoints) in the middle of the second group; a moving average
# of the weights, validated beside the trained weights.
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _run_config(data_dir, epochs, **changes):
    config = _config(accumulate_steps=2, log_norms=True, ema_decay=0.9, **changes)
    config.model = "masknet"
    config.loss = ml_collections.ConfigDict({"mask": {"bce": 1.0, "dice": 2.0}})
    config.dataset.num_samples, config.dataset.data_dir = 40, data_dir
    config.stages = ((32, epochs),)
    config.batch_size, config.log_every_steps = 8, 1
    config.evals.preview.every = 0
    config.evals.val_trained.every = 1
    config.compilation_cache_dir = "none"
    return config


def _records(workdir):
    timing = ("samples_per_sec", "epoch_time_s", "train_time_s", "eval_time_s")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in f]


def _final_params(config, workdir):
    checkpointer = store.Checkpointer(workdir, "val_loss", "min", read_only=True)
    try:
        target = build.abstract_state(config, mesh_lib.create_mesh(), 3)
        state, _ = checkpointer.restore(target, checkpointer.latest_step())
    finally:
        checkpointer.close()
    return jax.device_get((state.params, state.opt_state, state.ema))


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
    config = _run_config(data_dir, 2)
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    train.run(config, workdir)
    return config, workdir


def test_a_run_resumed_mid_group_ends_as_an_uninterrupted_one(uninterrupted, data_dir, tmp_path):
    config, workdir = uninterrupted
    (events,) = glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
    with open(events, "rb") as f:
        blob = f.read()
    for name in steps.NORMS:
        assert f"train/{name}".encode() in blob
    train.run(_run_config(data_dir, 1), str(tmp_path))  # stops after step 3: 1 of 2 in a group
    train.run(_run_config(data_dir, 2), str(tmp_path))
    assert _records(str(tmp_path)) == _records(workdir)
    for a, b in zip(
        jax.tree.leaves(_final_params(config, workdir)),
        jax.tree.leaves(_final_params(config, str(tmp_path))),
    ):
        np.testing.assert_array_equal(a, b)


def test_a_profiled_run_writes_a_trace_and_the_same_metrics(uninterrupted, data_dir, tmp_path):
    config, workdir = uninterrupted
    train.run(_run_config(data_dir, 2, profile_steps=(2, 3)), str(tmp_path))
    assert _records(str(tmp_path)) == _records(workdir)
    assert glob.glob(os.path.join(tmp_path, "profile", "plugins", "profile", "*", "*.xplane.pb"))
    for a, b in zip(
        jax.tree.leaves(_final_params(config, workdir)),
        jax.tree.leaves(_final_params(config, str(tmp_path))),
    ):
        np.testing.assert_array_equal(a, b)


def test_the_moving_average_is_what_validation_and_inference_run(uninterrupted):
    config, workdir = uninterrupted
    records = _records(workdir)
    config = config.copy_and_resolve_references()
    config.model_path = f":{records[-1]['step']}"  # the latest, as _final_params reads
    for record in records:
        assert record["eval_weights"] == "ema"
        assert record["val_loss"] != record["val_trained_loss"]
    params, _, ema = _final_params(config, workdir)
    model = select.load_for_inference(config, workdir)
    assert model.weights == "ema" and model.source.endswith("(its EMA weights)")
    assert model.state.ema == {}
    loaded = jax.device_get({"params": model.state.params, "batch_stats": model.state.batch_stats})
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(ema)):
        np.testing.assert_array_equal(a, b)
    assert any(
        np.abs(a - b).max() > 0
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ema["params"]))
    )
    for name in config.evals:  # the validation pass alone: what this test reads
        config.evals[name].evaluate = name == "val"
    result = evaluate.run(config, workdir)
    assert result["weights"] == "ema"
    assert result["step"] == records[-1]["step"]
    assert result["metrics"]["32"]["loss"] == pytest.approx(records[-1]["val_loss"], rel=1e-5)


def test_a_trained_weights_validation_is_refused_in_evaluate_mode():
    config = _config()
    config.evals.val_trained.evaluate = True
    with pytest.raises(errors.UsageError, match="^evals.val_trained: weights='trained' runs in"):
        catalog.validate(config)
    config.evals.val_trained.evaluate, config.evals.val_trained.weights = False, "average"
    with pytest.raises(errors.UsageError, match="^evals.val_trained.weights='average': expected"):
        catalog.validate(config)


def test_a_warm_start_keeps_a_moving_average_from_the_source_weights(
    uninterrupted, data_dir, tmp_path
):
    """init_from with ema_decay: the average starts at the source's (EMA) weights, in buffers
    of its own (the train step donates both)."""
    _, source = uninterrupted
    config = _run_config(data_dir, 1, init_from=source)
    record = train.run(config, str(tmp_path))
    assert record["eval_weights"] == "ema" and np.isfinite(record["val_loss"])
