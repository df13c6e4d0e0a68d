"""The trainer and CLI, end to end through `launch.py` on a tiny synthetic set.

One session-wide data folder and the suite's compilation cache (conftest.py) keep this
affordable: 23 generated samples (16 train, 7 validation: the last validation batch of 4 is
padded), 32x32, batch 4.
"""

import glob
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import jax
import ml_collections
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import configs
import launch
from jaxsegdepth import build, errors, mesh as mesh_lib, metrics, optim, reporting, stages
from jaxsegdepth.checkpointing import select, store
from jaxsegdepth.modes import train
from jaxsegdepth.data import pipeline

NUM_SAMPLES, TRAIN, VAL = 23, 16, 7


@pytest.fixture(scope="session")
def shared(tmp_path_factory, compilation_cache_dir):
    base = tmp_path_factory.mktemp("train_shared")
    return {"data": str(base / "data"), "cache": compilation_cache_dir}


def _overrides(shared, **extra):
    values = {
        "dataset.num_samples": NUM_SAMPLES,
        "dataset.data_dir": shared["data"],
        "stages": "((32, 1),)",
        "batch_size": 4,
        "steps_per_epoch": 3,
        "log_every_steps": 2,
        "evals.preview.samples": 2,
        "compilation_cache_dir": shared["cache"],
        "augment.photometric": True,  # resumes must reproduce the augmentation too
        "evals.photos_capture.every": 0,  # the photo evaluators have tests of their own
    }
    values.update(extra)
    return [f"--config.{k}={v}" for k, v in values.items()]


def launch_cli(workdir, shared, config="configs/rmse_bce_dice.py", wait=True, **extra):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "launch.py"),
        "--config",
        os.path.join(ROOT, config),
        "--workdir",
        str(workdir),
        *_overrides(shared, **extra),
    ]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def _config(path="configs/rmse_bce_dice.py", **changes):
    config = _load_config(path)
    for key, value in changes.items():
        node = config
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return config


def _masknet_config(shared, **changes):
    """In process, the MaskNet run `launch_cli(..., config="configs/masknet_bce.py")` makes."""
    return _config(
        "configs/masknet_bce.py",
        **{
            "stages": ((32, 1),),
            "batch_size": 4,
            "steps_per_epoch": 3,
            "log_every_steps": 2,
            "evals.preview.samples": 2,
            "dataset.num_samples": NUM_SAMPLES,
            "dataset.data_dir": shared["data"],
            "augment.photometric": True,
            "compilation_cache_dir": shared["cache"],
            **changes,
        },
    )


def _load_config(path, arg=None):
    return configs.load_file(os.path.join(ROOT, path) + (f":{arg}" if arg else ""))


def _validation_metrics(workdir, shared, resolution):
    """(step, metrics) of the run's chosen checkpoint, recomputed in one unpadded pass over
    every validation sample at `resolution`."""
    config = _config(**{"dataset.num_samples": NUM_SAMPLES, "dataset.data_dir": shared["data"]})
    state = select.load_for_inference(config, str(workdir)).state
    batch = next(
        iter(
            pipeline.create_loader(
                config.dataset,
                "validation",
                resolution=resolution,
                batch_size=VAL,
                shuffle=False,
                seed=0,
                num_epochs=1,
                drop_remainder=False,
            )
        )
    )
    # uint8 as the loader ships it: the reference normalisation in float64, targets in [0, 1]
    norm = pipeline.input_normalization(config.dataset)
    inputs = [
        (
            (batch[k] / 255.0 - np.asarray(norm[k][0], np.float64))
            / np.asarray(norm[k][1], np.float64)
        ).astype(np.float32)
        for k in ("bg", "bg_fg")
    ]
    targets = {k: (batch[k] / 255.0).astype(np.float32) for k in ("mask", "depth")}
    outputs = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, *inputs, train=False
    )
    return int(state.step), metrics.summarize(metrics.batch_sums(outputs, targets))


# -- end to end -----------------------------------------------------------------------------


def test_train_writes_outputs_resumes_and_refuses_another_run(tmp_path, shared):
    """DSResNet on 32 px windows of 64 px images under DWA: every output of an epoch, its
    validation exact on whole images; resumed for two more epochs, the last weighted by
    2 softmax(r / 2) of the training losses of epoch 1 (read from the checkpoint) and epoch 2;
    a rerun with nothing left to train; another crop or seed refused in one line, the run's
    records untouched."""
    # more epochs later: one-cycle could not be extended
    common = {"schedule.name": "plateau", "loss_weighting.method": "dwa"}
    first = launch_cli(tmp_path, shared, stages="((64, 1, 32),)", **common)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "epoch 1/1 64px crops 32" in first.stderr

    records = reporting.read_metrics(tmp_path)
    assert [r["epoch"] for r in records] == [1]
    record = records[0]
    assert record["step"] == 3 and record["resolution"] == 64 and record["stage"] == 1
    config = _config(stages=((64, 1, 32),), **common)
    assert record["lr"] == pytest.approx(float(optim.learning_rate_schedule(config, 3)(2)))
    for key in (
        "train_loss",
        "val_loss",
        "val_iou",
        "val_iou_soft",
        "val_rmse",
        "val_mae",
        "val_abs_rel",
        "val_delta1",
        "val_depth/rmse",
        "val_mask/bce_dice",
        "samples_per_sec",
        "epoch_time_s",
    ):
        assert np.isfinite(record[key]), key
    assert 0.0 <= record["val_iou"] <= 1.0 and 0.0 < record["val_rmse"] < 1.0
    assert record["samples_per_sec"] > 0

    from PIL import Image

    grid = np.asarray(Image.open(tmp_path / "predictions" / "epoch_001.png"))
    tile = 128 + 2  # whole 64 px images enlarged 2x, 2px gaps
    assert grid.shape == (reporting.LABEL_HEIGHT + 2 * tile, 6 * tile, 3)  # 2 samples x 6 columns
    events = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    assert len(events) == 1
    with open(events[0], "rb") as f:
        blob = f.read()
    for tag in (b"train/loss", b"epoch/val_iou", b"epoch/val_rmse", b"predictions"):
        assert tag in blob

    # The evaluation is exact, on whole images: the same metrics from an unpadded pass over
    # the 7 samples at 64 px.
    step, expected = _validation_metrics(tmp_path, shared, resolution=64)
    assert step == 3
    assert record["val_iou"] == pytest.approx(expected["iou"], abs=1e-5)
    assert record["val_iou_soft"] == pytest.approx(expected["iou_soft"], abs=1e-5)
    assert record["val_rmse"] == pytest.approx(expected["rmse"], abs=1e-5)

    # Same command, two more epochs: epochs 2 and 3 only, continuing at step 4.
    resumed = launch_cli(tmp_path, shared, stages="((64, 3, 32),)", **common)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    records = reporting.read_metrics(tmp_path)
    assert [(r["epoch"], r["step"]) for r in records] == [(1, 3), (2, 6), (3, 9)]
    checkpointer = store.Checkpointer(str(tmp_path), "val_loss", "min")
    try:
        assert 9 in checkpointer.all_steps()  # the latest, and the best if another
        assert set(checkpointer.all_steps()) <= {3, 6, 9}
    finally:
        checkpointer.close()
    assert [(r["weight/depth"], r["weight/mask"]) for r in records[:2]] == [(1.0, 1.0)] * 2
    ratios = np.array(
        [records[1][f"train_{t}/loss"] / records[0][f"train_{t}/loss"] for t in ("depth", "mask")]
    )
    want = 2 * np.exp(ratios / 2) / np.exp(ratios / 2).sum()
    np.testing.assert_allclose(
        [records[2]["weight/depth"], records[2]["weight/mask"]], want, rtol=1e-6
    )
    assert abs(want[0] - 1) > 1e-4  # the weights did move

    # Nothing left to do: exits cleanly without another epoch.
    again = launch_cli(tmp_path, shared, stages="((64, 3, 32),)", **common)
    assert again.returncode == 0 and "nothing to train" in again.stdout

    refused = launch_cli(tmp_path, shared, stages="((64, 3),)", seed=1, **common)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    refusal = refused.stderr.strip().splitlines()[-1]
    assert refusal.startswith(
        f"error: cannot resume the run in {tmp_path / 'checkpoints'}: seed (0 -> 1), "
        "stages ([[64, 3, 32]] -> [[64, 3, 0]]) differ from its checkpoint"
    )
    assert [r["epoch"] for r in reporting.read_metrics(tmp_path)] == [1, 2, 3]


def test_sigterm_saves_a_restorable_checkpoint_and_resume_matches_an_uninterrupted_run(
    tmp_path, shared
):
    """MaskNet (dropout, plateau) under uncertainty weighting: stopped by SIGTERM, resumed,
    equal to a run never stopped; the log-variance trained, logged every epoch and restored
    with the checkpoint."""
    # A schedule that does not depend on the total number of epochs (one-cycle would); saves
    # between log steps.
    common = dict(
        config="configs/masknet_bce.py",
        steps_per_epoch=0,
        log_every_steps=3,
        **{
            "schedule.name": "plateau",
            "checkpoint.every_steps": 1,
            "loss_weighting.method": "uncertainty",
        },
    )
    straight = launch_cli(tmp_path / "straight", shared, stages="((32, 3),)", **common)
    assert straight.returncode == 0, straight.stderr[-3000:]
    expected = reporting.read_metrics(tmp_path / "straight")
    assert [r["step"] for r in expected] == [4, 8, 12]
    for record in expected:
        assert record["log_var/mask"] != 0.0
        assert record["weight/mask"] == pytest.approx(np.exp(-record["log_var/mask"]), rel=1e-6)
    assert len({r["log_var/mask"] for r in expected}) == 3
    config = _load_config("configs/masknet_bce.py")
    config.loss_weighting.method = "uncertainty"
    checkpointer = store.Checkpointer(str(tmp_path / "straight"))
    try:  # the checkpoint holds the log-variance the last record logged
        final, _ = checkpointer.restore(build.abstract_state(config, mesh_lib.create_mesh()), 12)
    finally:
        checkpointer.close()
    assert float(final.weighting["log_var"]["mask"]) == expected[-1]["log_var/mask"]

    workdir = tmp_path / "stopped"
    process = launch_cli(workdir, shared, stages="((32, 3),)", wait=False, **common)
    for line in process.stdout:  # signal handlers are in place once this line is out
        if line.startswith("training from epoch"):
            break
    process.send_signal(signal.SIGTERM)  # usually lands before the first step is done
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "interrupted by SIGTERM" in stderr and "rerun the same command" in stderr

    state = select.load_for_inference(config, str(workdir)).state  # best or latest: restorable
    checkpointer = store.Checkpointer(str(workdir), "val_loss", "min")
    try:
        latest = checkpointer.latest_step()
        restored, progress = checkpointer.restore(
            build.abstract_state(config, mesh_lib.create_mesh()), latest
        )
    finally:
        checkpointer.close()
    assert f"at step {latest}" in stderr
    assert int(restored.step) == latest > 0 and int(state.step) > 0
    assert float(restored.weighting["log_var"]["mask"]) != 0.0  # trained from 0 and saved
    assert progress["loss_count"] == latest % 4  # the steps of the unfinished epoch
    assert progress["iterator_stage"] == 0 and progress["iterator"] is not None

    resumed = launch_cli(workdir, shared, stages="((32, 3),)", **common)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = reporting.read_metrics(workdir)
    assert [r["epoch"] for r in records][:3] == [1, 2, 3]
    compared = (
        "step",
        "train_loss",
        "train_mask/loss",
        "val_loss",
        "val_iou",
        "lr",
        "log_var/mask",
    )
    for got, want in zip(records[:3], expected):
        for key in compared:
            assert got[key] == want[key], (got["epoch"], key)  # bit-equal: nothing regrouped


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_good_checkpoint(
    tmp_path, shared, monkeypatch
):
    workdir = tmp_path / "run"
    common = dict(config="configs/masknet_bce.py", **{"schedule.name": "constant"})
    good = launch_cli(workdir, shared, **common)
    assert good.returncode == 0, good.stderr[-3000:]
    # Epoch 2 with an infinite rate (the config is unchanged, or the resume would be refused:
    # the optimizer's schedule is): step 4 turns the parameters into inf/NaN, so the loss of
    # step 5 is the first that is not finite.
    monkeypatch.setattr(
        optim, "learning_rate_schedule", lambda config, steps: lambda step: float("inf")
    )
    config = _masknet_config(shared, stages=((32, 2),), **{"schedule.name": "constant"})
    with pytest.raises(errors.NonFiniteLoss) as raised:
        train.run(config, str(workdir))
    assert raised.value.exit_code == 1
    assert str(raised.value).startswith("non-finite loss at step 5 (epoch 2)")
    assert "last good checkpoint is step 3" in str(raised.value)
    assert [r["epoch"] for r in reporting.read_metrics(workdir)] == [1]
    checkpointer = store.Checkpointer(str(workdir), "val_loss", "min")
    try:
        assert checkpointer.all_steps() == [3]
    finally:
        checkpointer.close()


# -- warm start (init_from) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def masknet_source(tmp_path_factory, shared):
    """(config, workdir) of a one-epoch MaskNet run under SGD and a plateau schedule: its one
    checkpoint, step 3, is what the runs below start from."""
    config = _masknet_config(shared, **{"optimizer.name": "sgd", "schedule.name": "plateau"})
    workdir = str(tmp_path_factory.mktemp("source"))
    train.run(config, workdir)
    return config, workdir


def _same(tree, other) -> bool:
    leaves, others = jax.tree.leaves(tree), jax.tree.leaves(other)
    return len(leaves) == len(others) and all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(leaves, others)
    )


def test_init_from_takes_the_checkpoints_model_and_starts_the_rest_fresh(
    masknet_source, shared, tmp_path, monkeypatch
):
    source_config, source = masknet_source
    started = {}
    monkeypatch.setattr(
        train,
        "train_loop",
        lambda trainer, state, progress, stop: started.update(
            state=jax.device_get(state), progress=progress
        ),
    )
    # Adam and one-cycle here: the source's SGD state does not fit, and is not read
    config = _masknet_config(shared, init_from=os.path.join(source, "checkpoints") + ":3")
    train.run(config, str(tmp_path))
    state = started["state"]
    checkpointer = store.Checkpointer(source)
    try:
        saved, _ = checkpointer.restore(
            build.abstract_state(source_config, mesh_lib.create_mesh()), 3
        )
    finally:
        checkpointer.close()
    fresh = jax.device_get(build.create_state(config, 3))
    for part in ("params", "batch_stats"):
        assert _same(getattr(state, part), jax.device_get(getattr(saved, part))), part
        assert not _same(getattr(state, part), getattr(fresh, part)), part
    for part in ("step", "opt_state", "plateau", "rng", "weighting", "nonfinite_step"):
        assert _same(getattr(state, part), getattr(fresh, part)), part
    assert int(state.step) == 0 and int(saved.step) == 3
    assert started["progress"].settings["init_from"] == config.init_from


def test_a_warm_started_run_resumes_its_own_checkpoint(masknet_source, shared, tmp_path, capsys):
    copy, workdir = tmp_path / "source", str(tmp_path / "run")
    shutil.copytree(masknet_source[1], copy)
    config = _masknet_config(shared, init_from=str(copy), **{"schedule.name": "plateau"})
    train.run(config, workdir)
    assert "starting from the parameters and batch statistics of step 3" in capsys.readouterr().out
    shutil.rmtree(copy)  # a resume reads nothing of it
    config.stages = ((32, 2),)
    train.run(config, workdir)
    assert "resuming from" in capsys.readouterr().out
    assert [r["epoch"] for r in reporting.read_metrics(workdir)] == [1, 2]
    config.init_from = masknet_source[1]
    with pytest.raises(
        errors.UsageError,
        match=re.escape(f"init_from ({copy} -> {masknet_source[1]}) differ from its checkpoint"),
    ):
        train.run(config, workdir)


def test_init_from_another_models_checkpoint_stops_in_one_line(masknet_source, shared, tmp_path):
    source, started = masknet_source[1], time.time()
    result = launch_cli(tmp_path / "run", shared, init_from=source)  # a DSResNet run
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: init_from={source}: step 3 of {source}/checkpoints is a masknet checkpoint, "
        "which model=dsresnet cannot load (--config.model=masknet can)"
    )
    assert "Traceback" not in result.stderr and time.time() - started < 60


def test_init_from_names_a_missing_run_or_step_and_a_variable_that_does_not_fit(
    masknet_source, shared, tmp_path
):
    config, source = masknet_source
    state = select.load_for_inference(config, source).state
    kernel = state.params["out"]["kernel"]
    odd = state.replace(
        params={
            **state.params,
            "out": {**state.params["out"], "kernel": jax.numpy.zeros(kernel.shape[:-1] + (2,))},
        }
    )
    checkpointer = store.Checkpointer(str(tmp_path / "odd"))
    try:
        checkpointer.save(odd, {"settings": {"model": "masknet"}})
    finally:
        checkpointer.close()
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.jax_exported").write_bytes(b"")
    for init_from, message in [
        (
            str(tmp_path / "nowhere"),
            f"init_from={tmp_path / 'nowhere'}: no checkpoints "
            "folder there (expected a run's workdir or its checkpoints folder, optionally "
            "with :STEP, an export folder or a bundle folder with model.safetensors)",
        ),
        (
            f"{source}:7",
            f"init_from={source}:7: no checkpoint at step 7 in "
            f"{source}/checkpoints; available: [3]",
        ),
        (
            str(export),
            f"init_from={export}: {export} is an export (model.jax_exported): this mode reads "
            "a run's checkpoints, RUN or RUN:STEP (jaxsegdepth.artifact.load reads an export)",
        ),
        (
            str(tmp_path / "odd"),
            f"init_from={tmp_path / 'odd'}: step 3 of "
            f"{tmp_path / 'odd' / 'checkpoints'} does not fit model=masknet: params/out/kernel "
            "is (1, 1, 64, 2) in the checkpoint, (1, 1, 64, 1) in masknet",
        ),
    ]:
        wrong = _masknet_config(shared, init_from=init_from)
        with pytest.raises(errors.UsageError) as raised:
            select.load_variables(wrong)
        assert str(raised.value) == message


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        (
            {"stages": "(64,1)"},
            "stages=(64, 1) is one stage, not a tuple of stages: write "
            "--config.stages='((64, 1),)'",
        ),
        ({"stages": "((48,1),)"}, "stages: resolution 48 is not a multiple of 32"),
    ],
)
def test_bad_config_fails_before_compiling(tmp_path, shared, override, message):
    started = time.time()
    result = launch_cli(tmp_path / "run", shared, **override)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # nothing was written, let alone compiled
    assert time.time() - started < 60


@pytest.mark.parametrize(
    "config, extra, message",
    [
        ("configs/rmse_bce_dice.py:bogus", {}, "unknown config argument 'bogus'"),
        ("configs/missing.py", {}, "No such file or directory"),
        ("configs/rmse_bce_dice.py", {"optimizer.lr": 1}, "the config has no field 'lr'"),
    ],
)
def test_bad_command_line_fails_in_one_line(tmp_path, shared, config, extra, message):
    result = launch_cli(tmp_path / "run", shared, config=config, **extra)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"loss": ml_collections.ConfigDict({"mask": {"focal": 1.0}})},
            "unknown loss term 'focal'",
        ),
        ({"loss": ml_collections.ConfigDict({"edges": {"bce": 1.0}})}, "unknown head 'edges'"),
        ({"model": "masknet"}, "loss has a 'depth' term but model 'masknet' only predicts"),
        ({"model": "unet"}, "model='unet'"),
        ({"dtype": "float16"}, "dtype='float16'"),
        ({"stages": ()}, "stages=(): expected a non-empty tuple of (resolution, epochs) or "),
        (
            {"stages": ((64, 1), (96, 1, 32, 0))},
            "stages: stage 2 is (96, 1, 32, 0): expected "
            "(resolution, epochs) or (resolution, epochs, crop)",
        ),
        ({"stages": ((64, -1),)}, "stages: stage 1 (64, -1, 0) has -1 epochs: expected >= 0"),
        ({"optimizer.name": "rmsprop"}, "optimizer.name='rmsprop'"),
        ({"schedule.name": "cosine"}, "schedule.name='cosine'"),
        ({"checkpoint.mode": "best"}, "checkpoint.mode='best'"),
        ({"checkpoint.monitor": "val_accuracy"}, "checkpoint.monitor='val_accuracy'"),
        ({"mode": "evaluate", "evaluate.resolutions": (64, 80)}, "resolution 80 is not a multiple"),
        (
            {"stages": ((64, 1), (96, 1, 80))},
            "stages (crop): resolution 80 is not a multiple of 32",
        ),
        (
            {"stages": ((64, 1), (96, 1, 128))},
            "stages: stage 2 (96, 1, 128) crops 128 px windows: expected 0 (whole images) up to its "
            "resolution 96",
        ),
        ({"dataset.name": "modest_museum"}, "needs --config.dataset.manual_dir=DIR"),
        (
            {"dataset.name": "modest_museum", "dataset.manual_dir": "/nonexistent/modest"},
            "dataset.manual_dir='/nonexistent/modest' does not exist",
        ),
    ],
)
def test_validate_config_names_the_problem(changes, message):
    with pytest.raises(errors.UsageError) as error:
        _validate(_config(**changes))
    assert message in str(error.value) and "\n" not in str(error.value)


def _validate(config):
    """What launch.py does before anything compiles: the mode's own `validate`."""
    importlib.import_module(launch.MODES[config.mode]).validate(config)


def test_batch_size_must_split_over_devices_and_processes():
    three_devices = types.SimpleNamespace(devices=np.zeros(3))
    with pytest.raises(
        errors.UsageError,
        match=r"batch_size=16 must be a positive multiple of "
        r"the number of devices \(3\)",
    ):
        mesh_lib.check_batch_size(three_devices, 16)
    assert mesh_lib.check_batch_size(types.SimpleNamespace(devices=np.zeros(4)), 16) == 16


RECIPES = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
    if not p.endswith(("__init__.py", "default.py"))
)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_is_valid_and_has_a_published_schedule(recipe, tmp_path):
    _validate(_load_config(recipe))
    published = _load_config(recipe, "published")
    assert published.dataset.name == "modest_museum"
    assert all(stage.crop == 0 for stage in stages.of(published))  # whole images
    with pytest.raises(errors.UsageError, match="manual_dir"):
        _validate(published)
    published.dataset.manual_dir = str(tmp_path)
    _validate(published)
    with pytest.raises(ValueError, match="unknown config argument"):
        _load_config(recipe, "fast")


def test_published_recipes_follow_the_reference():
    one = _load_config("configs/rmse_bce_dice.py", "published")
    assert one.stages == ((96, 3), (160, 5), (224, 3))
    assert one.optimizer.learning_rate == 0.01 and one.schedule.name == "plateau"
    assert one.schedule.patience == 2 and one.schedule.factor == 0.1
    assert one.optimizer.name == "sgd" and one.optimizer.momentum == 0.9
    best = _load_config("configs/rmse_bce_dice_best.py", "published")
    assert best.stages == ((96, 3), (160, 3))
    assert best.optimizer.name == "sgd" and best.optimizer.learning_rate == 0.1
    assert not best.augment.photometric
    assert best.schedule.name == "step" and tuple(best.schedule.boundaries) == (3,)
    two = _load_config("configs/ssim_dice.py", "published")
    assert two.stages == ((96, 3), (160, 5))
    sweep = _load_config("configs/lr_range_test.py", "published")
    assert sweep.mode == "lr_range_test" and sweep.lr_range.batch_size == 256
    assert (sweep.lr_range.start_lr, sweep.lr_range.end_lr, sweep.lr_range.num_steps) == (
        1e-7,
        5.0,
        400,
    )


def test_default_workdir_is_named_after_the_config():
    assert launch.default_workdir("configs/rmse_bce_dice.py") == os.path.join(
        "runs", "rmse_bce_dice"
    )
    assert launch.default_workdir("configs/rmse_bce_dice.py:published") == os.path.join(
        "runs", "rmse_bce_dice_published"
    )


# -- checkpoints ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode, best", [("min", 2), ("max", 4)])
def test_checkpointer_keeps_the_latest_and_the_best(tmp_path, mode, best):
    config = _config(model="masknet", **{"loss": ml_collections.ConfigDict({"mask": {"bce": 1.0}})})
    state = build.create_state(config, mesh=mesh_lib.create_mesh())
    checkpointer = store.Checkpointer(str(tmp_path), "val_iou", mode)
    try:
        for step, value in zip((1, 2, 3, 4, 5), (0.5, 0.2, 0.6, 0.9, 0.4)):
            state = state.replace(step=jax.numpy.asarray(step, jax.numpy.int32))
            checkpointer.save(state, {"epoch": step}, {"val_iou": value})
        checkpointer.save(
            state.replace(step=jax.numpy.asarray(6, jax.numpy.int32)),
            {"epoch": 5, "step_in_epoch": 1},
        )  # mid-epoch: no metrics
        checkpointer.wait()
        assert sorted(checkpointer.all_steps()) == sorted({best, 6})
        assert checkpointer.best_step() == best and checkpointer.latest_step() == 6
        restored, loop = checkpointer.restore(
            build.abstract_state(config, mesh_lib.create_mesh()), best
        )
        assert int(restored.step) == best and loop == {"epoch": best}
    finally:
        checkpointer.close()
    config.checkpoint.monitor, config.checkpoint.mode = "val_iou", mode
    assert int(select.load_for_inference(config, str(tmp_path)).state.step) == best
    config.model_path = ":6"
    assert int(select.load_for_inference(config, str(tmp_path)).state.step) == 6
    config.model_path = ":7"
    with pytest.raises(errors.UsageError, match="model_path=:7: no checkpoint at step 7"):
        select.load_for_inference(config, str(tmp_path))


def test_load_for_inference_names_the_missing_directory(tmp_path):
    with pytest.raises(errors.RunError, match=str(tmp_path / "checkpoints")):
        select.load_for_inference(_config(), str(tmp_path))


def test_iterator_state_round_trips_through_json():
    for state in (b'{"a": 1}', {"next_index": np.int64(5), "nested": {"x": [1, 2]}}):
        encoded = store.encode_iterator_state(state)
        json.dumps(encoded)
        decoded = store.decode_iterator_state(encoded)
        assert decoded == (
            state if isinstance(state, bytes) else {"next_index": 5, "nested": {"x": [1, 2]}}
        )
