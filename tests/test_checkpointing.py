"""checkpointing.select.resolve: how a model is named (a run, a step of it, its checkpoints
folder, an export, WORKDIR's own), and the old `checkpoint.step` refused with its new name."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxsegdepth import errors
from jaxsegdepth.checkpointing import select


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
        "workdir or its checkpoints folder, optionally with :STEP, or an export folder)"
    )


def test_the_old_checkpoint_step_is_refused_naming_model_path(tmp_path):
    recipe = tmp_path / "old_recipe.py"
    recipe.write_text(
        "from configs import default\n\n\ndef get_config():\n"
        "    config = default.get_config()\n    config.checkpoint.step = 3\n    return config\n"
    )
    new = "model_path (:STEP for WORKDIR's, RUN:STEP for another run's)"
    for arguments, message in [
        (
            ["--config", "configs/rmse_bce_dice.py", "--config.checkpoint.step=3"],
            f"error: --config.checkpoint.step is now --config.{new}",
        ),
        (["--config", str(recipe)], f"error: checkpoint.step is now {new}"),
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
