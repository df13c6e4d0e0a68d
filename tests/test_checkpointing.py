"""checkpointing: how a model is named (`select.resolve`: a run, a step of it, its checkpoints
folder, an export, WORKDIR's own), old names refused and old saved runs resumed, and the
model card a checkpoint carries (on conftest's tiny MaskNet run)."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import default
from jaxsegdepth import artifact, errors, inference, names
from jaxsegdepth.checkpointing import resume, select, store
from jaxsegdepth.data import pipeline
from jaxsegdepth.modes import export
from modes_support import RES, copy_config, predicted


@pytest.fixture
def places(tmp_path):
    """A run folder (with an empty checkpoints folder) and an export folder."""
    run, export = tmp_path / "run", tmp_path / "export"
    (run / "checkpoints").mkdir(parents=True)
    export.mkdir()
    (export / "model.jax_exported").write_bytes(b"")
    return str(run), str(export)


def test_a_run_its_step_and_its_checkpoints_folder_name_the_same_run(places):
    run, _ = places
    for value, step in [
        (run, -1),
        (f"{run}:12", 12),
        (os.path.join(run, "checkpoints"), -1),
        (os.path.join(run, "checkpoints") + ":3", 3),
    ]:
        where = select.resolve(value, "/elsewhere", "model_path")
        assert (where.kind, where.path, where.step) == ("run", run, step)
        assert where.field == f"model_path={value}: "


def test_empty_or_a_step_alone_is_workdirs_own(places):
    run, _ = places
    assert select.resolve("", run, "model_path") == select.ModelPath("run", run, -1, "")
    assert select.resolve(":7", run, "model_path") == select.ModelPath(
        "run", run, 7, "model_path=:7: "
    )
    with pytest.raises(errors.UsageError, match=r"^init_from=:7: expected RUN or RUN:STEP$"):
        select.resolve(":7", None, "init_from")


def test_an_export_folder_or_its_model_file_is_an_export(places):
    _, export = places
    for value in (export, os.path.join(export, "model.jax_exported")):
        where = select.resolve(value, None, "model_path")
        assert (where.kind, where.path, where.step) == ("export", export, -1)


def test_a_path_that_is_neither_is_one_line_naming_it(tmp_path):
    with pytest.raises(errors.UsageError) as raised:
        select.resolve(str(tmp_path / "nowhere") + ":2", None, "model_path")
    assert str(raised.value) == (
        f"model_path={tmp_path / 'nowhere'}:2: no checkpoints folder there (expected a run's "
        "workdir or its checkpoints folder, optionally with :STEP, an export folder or a bundle "
        "folder with model.safetensors)"
    )


def test_the_command_reads_a_run_from_its_card_alone_as_the_modes_read_it(trained):
    """`inference.read_variables` (the command's and `jaxsegdepth.load`'s way in: no config)
    gives the very variables `select.load_for_inference` (the modes', with the recipe) does."""
    config, workdir, _ = trained
    variables, card, source = inference.read_variables(f"{workdir}:3")
    state = select.load_for_inference(config, workdir).state
    expected = {"params": state.params, "batch_stats": state.batch_stats}
    assert jax.tree.structure(variables) == jax.tree.structure(expected)
    for mine, theirs in zip(jax.tree.leaves(variables), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    assert card["model"] == "masknet" and source == f"step 3 of {workdir}/checkpoints"
    with pytest.raises(ValueError, match=f"{workdir}:9: no checkpoint at step 9 in "):
        inference.read_variables(f"{workdir}:9")


def test_a_bundle_is_read_like_a_checkpoint_by_evaluate_predict_and_a_warm_start(
    dsresnet_bundle, dsresnet_state
):
    """The shipped weights' format (`bundle.py`) through `model_path` and `init_from`: the
    bundle's variables as the state's (float32 written, so exactly), its card; another model
    is refused in one line."""
    config = default.get_config()
    config.model_path = dsresnet_bundle
    assert select.resolve(dsresnet_bundle, None, "model_path").kind == "bundle"
    restored = select.load_for_inference(config, "")
    assert restored.weights == "bundle" and restored.card["model"] == "dsresnet"
    expected = {"params": dsresnet_state.params, "batch_stats": dsresnet_state.batch_stats}
    got = {"params": restored.state.params, "batch_stats": restored.state.batch_stats}
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for mine, theirs in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    config.init_from = dsresnet_bundle
    variables, card, source = select.load_variables(config)
    np.testing.assert_array_equal(
        np.asarray(jax.tree.leaves(variables)[0]), np.asarray(jax.tree.leaves(expected)[0])
    )
    assert card["model"] == "dsresnet" and dsresnet_bundle in source
    config.model = "masknet"
    with pytest.raises(errors.UsageError, match="holds a dsresnet model, which model=masknet"):
        select.load_for_inference(config, "")


def test_an_old_name_is_refused_naming_the_new_one(tmp_path):
    """On the command line and in a recipe file; nothing is written."""
    recipe = tmp_path / "old_recipe.py"
    recipe.write_text(
        "from configs import default\n\n\ndef get_config():\n"
        "    config = default.get_config()\n    config.dataset.augment = True\n"
        "    return config\n"
    )
    for arguments, message in [
        (
            ["--config", "configs/rmse_bce_dice.py", "--config.checkpoint.step=3"],
            "error: --config.checkpoint.step is now --config.model_path",
        ),
        (
            ["--config", "configs/rmse_bce_dice.py", "--config.dataset.capture.noise=0"],
            "error: --config.dataset.capture.noise is now --config.augment.capture.noise",
        ),
        (
            ["--config", "configs/rmse_bce_dice.py", "--config.loss_weighting=dwa"],
            "error: --config.loss_weighting is now --config.loss_weighting.method",
        ),
        (
            ["--config", str(recipe)],
            f"error: dataset.augment is now augment.photometric (set in {recipe})",
        ),
    ]:
        result = subprocess.run(
            [sys.executable, "launch.py", *arguments, "--workdir", str(tmp_path / "w")],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
        )
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1] == message
        assert not os.path.exists(tmp_path / "w")


def test_every_moved_field_and_the_fields_of_a_moved_block_have_their_new_name():
    assert names.renamed("predict.fps") == "video.fps"
    assert names.renamed("predict.plate_frames") == "video.plate_frames"
    assert names.renamed("dataset.capture.shift_px") == "augment.capture.shift_px"
    assert names.renamed("loss_weighting") == "loss_weighting.method"
    for current in ("loss_weighting.method", "augment.capture.noise", "predict.threshold"):
        assert names.renamed(current) is None
    config = default.get_config()
    for old, new in names.RENAMED_FIELDS.items():  # every new name is a field of the config
        node = config
        for part in new.split("."):
            node = node[part]


def test_the_settings_of_a_run_saved_under_the_old_names_still_resume():
    """A run saved before the blocks (`loss_weighting`, `dwa_temperature`, `dataset.augment`,
    `dataset.capture.*`) compares under the new names: the same settings resume, a changed one
    is named by its new name."""
    config = default.get_config()
    saved = resume.resume_settings(config)
    old = {}
    for field, value in saved.items():
        moved = {
            "loss_weighting.method": "loss_weighting",
            "loss_weighting.temperature": "dwa_temperature",
            "augment.photometric": "dataset.augment",
            "augment.hsv_prob": "dataset.hsv_prob",
            "augment.contrast_prob": "dataset.contrast_prob",
        }.get(field, field.replace("augment.capture.", "dataset.capture."))
        old[moved] = value
    assert "dwa_temperature" in old and "dataset.capture.noise" in old and len(old) == len(saved)
    resume.check_resume(config, old, "runs/x")
    config.loss_weighting.temperature = 1.0
    with pytest.raises(errors.UsageError, match=r"loss_weighting.temperature \(2.0 -> 1.0\)"):
        resume.check_resume(config, old, "runs/x")


def test_the_checkpoint_carries_its_model_card(trained):
    config, workdir, record = trained
    checkpointer = store.Checkpointer(workdir, read_only=True)
    try:
        saved = checkpointer.restore_card(checkpointer.latest_step())
    finally:
        checkpointer.close()
    norm = pipeline.input_normalization(config.dataset)  # the synthetic set's, measured
    assert saved == {
        "model": "masknet",
        "heads": ["mask"],
        "trained_heads": ["mask"],
        "stride": 1,
        "dtype": "float32",
        "normalization": {
            key: {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
            for key, (mean, std) in norm.items()
        },
        "resolution": record["resolution"],
        "dataset": "synthetic_museum",
        "version": saved["version"],
    }


def test_a_run_folder_alone_predicts_and_exports(trained, pair, tmp_path, capsys):
    """The run's folder copied elsewhere, with an empty data folder: predict writes what it
    writes beside its dataset, and export bakes in the card's statistics."""
    base, workdir, _ = trained
    here = predicted(copy_config(base), workdir, pair, tmp_path / "here")
    alone = str(tmp_path / "alone")
    shutil.copytree(workdir, alone)
    config = copy_config(base)
    config.dataset.data_dir = str(tmp_path / "empty")
    assert predicted(config, alone, pair, tmp_path / "there") == here
    config.export.update(dict(resolution=RES, batch_size=1, platforms=()))
    export.validate(config)
    export.run(config, alone)
    meta = json.loads((tmp_path / "alone" / "export" / artifact.METADATA).read_text())
    norm = pipeline.input_normalization(base.dataset)
    assert meta["normalization"] == {
        k: [np.asarray(m).tolist(), np.asarray(s).tolist()] for k, (m, s) in norm.items()
    }
    assert meta["card"]["model"] == "masknet"
    assert not os.path.exists(tmp_path / "empty")  # nothing was built or read there
    assert "warning" not in capsys.readouterr().err


def test_a_checkpoint_without_a_card_uses_the_dataset_s_statistics_and_says_so(
    trained, pair, tmp_path, capsys
):
    base, workdir, _ = trained
    here = predicted(copy_config(base), workdir, pair, tmp_path / "here")
    older = tmp_path / "older"
    shutil.copytree(workdir, older)
    for card_dir in older.glob(f"checkpoints/*/{store.CARD}"):
        shutil.rmtree(card_dir)
    capsys.readouterr()
    assert predicted(copy_config(base), str(older), pair, tmp_path / "there") == here
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: step ") and warnings[0].endswith(
        "carries no model card: its inputs are normalised with the statistics of dataset "
        "synthetic_museum"
    )
