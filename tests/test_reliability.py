"""What survives what: each failure the trainer must live through, one test each.

The end-to-end soak (random SIGKILL/SIGTERM, rerun until done, bit-equal to a run never stopped)
is tests/test_soak.py; docs/reliability.md lists which test shows what.
"""

import errno
import glob
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import default, masknet_bce
from jaxsegdepth import build, errors, mesh as mesh_lib, preprocess, reporting, signals, steps
from jaxsegdepth.checkpointing import resume, store
from jaxsegdepth.modes import train
from jaxsegdepth.data import datasets, pipeline, synthetic
from jaxsegdepth.evaluators import base, validation


def _config(data_dir, **changes):
    config = masknet_bce.get_config()
    config.dataset.update(dict(num_samples=23, data_dir=str(data_dir)))
    config.stages = ((32, 1),)
    config.batch_size, config.compilation_cache_dir = 4, "none"
    config.evals.preview.every = 0
    config.schedule.name = "plateau"
    for key, value in changes.items():
        node, *path = config, *key.split(".")
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    return config


def _launch(workdir, data_dir, cache_dir, **overrides):
    values = {
        "dataset.num_samples": 23,
        "dataset.data_dir": data_dir,
        "stages": "((32, 1),)",
        "batch_size": 4,
        "evals.preview.every": 0,
        "schedule.name": "plateau",
        "compilation_cache_dir": cache_dir,
        **overrides,
    }
    return [
        sys.executable,
        os.path.join(ROOT, "launch.py"),
        "--config",
        os.path.join(ROOT, "configs", "masknet_bce.py"),
        "--workdir",
        str(workdir),
        *[f"--config.{k}={v}" for k, v in values.items()],
    ]


# -- metrics.jsonl: never twice, never lost, never swallowed ---------------------------------


def _record(epoch):
    return {"epoch": epoch, "step": 3 * epoch, "val_loss": 1.0 / epoch}


def test_resume_keeps_each_epoch_once_and_restores_a_lost_line(tmp_path):
    path = tmp_path / reporting.METRICS_FILE
    lines = [
        json.dumps(_record(1)),
        json.dumps(_record(2)),
        json.dumps(_record(2)),
        json.dumps(_record(3)),
    ]
    path.write_text("\n".join(lines) + "\n" + '{"epoch": 4, "st')  # 4: cut short by a kill
    reporter = reporting.Reporter(str(tmp_path))
    try:
        reporter.resume(3, _record(3))  # the checkpoint has 3 epochs done
        assert reporting.read_metrics(str(tmp_path)) == [_record(1), _record(2), _record(3)]
        reporter.resume(4, _record(4))  # killed after the save, before epoch 4's line
        reporter.epoch(_record(5))
    finally:
        reporter.close()
    assert reporting.read_metrics(str(tmp_path)) == [_record(e) for e in (1, 2, 3, 4, 5)]
    assert path.read_text().count("\n") == 5


def test_a_fresh_run_starts_an_empty_metrics_file(tmp_path):
    (tmp_path / reporting.METRICS_FILE).write_text(json.dumps(_record(1)) + "\n")
    reporter = reporting.Reporter(str(tmp_path))
    try:
        reporter.resume(0, None)  # no checkpoint: nothing before it counts
    finally:
        reporter.close()
    assert reporting.read_metrics(str(tmp_path)) == []


# -- checkpoints -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def masknet_state(tmp_path_factory):
    return build.create_state(
        _config(tmp_path_factory.mktemp("unused")), mesh=mesh_lib.create_mesh()
    )


def _at(state, step):
    return state.replace(step=jax.numpy.asarray(step, jax.numpy.int32))


@pytest.mark.parametrize("mode", ["min", "max"])
def test_a_non_finite_monitored_metric_ranks_last_instead_of_crashing(
    tmp_path, masknet_state, mode
):
    checkpointer = store.Checkpointer(str(tmp_path), "val_loss", mode)
    try:
        checkpointer.save(_at(masknet_state, 1), {}, {"val_loss": 0.5})
        checkpointer.save(_at(masknet_state, 2), {}, {"val_loss": math.nan})
        checkpointer.save(_at(masknet_state, 3), {}, {"train_loss": 0.1})  # monitor dropped
        checkpointer.wait()
        assert checkpointer.best_step() == 1 and checkpointer.latest_step() == 3
        assert sorted(checkpointer.all_steps()) == [1, 3]
    finally:
        checkpointer.close()


def test_saving_a_step_twice_never_deletes_the_first(tmp_path, masknet_state):
    checkpointer = store.Checkpointer(str(tmp_path))
    try:
        checkpointer.save(_at(masknet_state, 4), {"mark": "first"})
        with pytest.raises(ValueError):
            checkpointer.save(_at(masknet_state, 4), {"mark": "second"})
        checkpointer.wait()
        target = build.abstract_state(_config(tmp_path), mesh_lib.create_mesh())
        assert checkpointer.restore(target, 4)[1] == {"mark": "first"}
    finally:
        checkpointer.close()


# -- resuming under other settings -------------------------------------------------------------


def test_resume_refuses_changed_settings_naming_them(tmp_path):
    saved = resume.resume_settings(_config(tmp_path))
    changed = _config(tmp_path, batch_size=8, **{"dataset.seed": 1, "optimizer.learning_rate": 0.1})
    with pytest.raises(errors.UsageError) as raised:
        resume.check_resume(changed, saved, "runs/x")
    message = str(raised.value)
    assert message.startswith("cannot resume the run in runs/x: ")
    for shown in (
        "batch_size (4 -> 8)",
        "dataset.seed (0 -> 1)",
        "optimizer.learning_rate (0.002 -> 0.1)",
    ):
        assert shown in message
    assert "\n" not in message


def test_resume_on_a_host_where_auto_gives_other_workers_says_what_to_set(tmp_path):
    """grain's iterator state is per worker process: "auto" resolving to another count (another
    host) is refused, with the checkpoint's count to give."""
    here = resume.resume_settings(_config(tmp_path))["dataset.worker_count"]
    saved = dict(resume.resume_settings(_config(tmp_path)), **{"dataset.worker_count": here + 7})
    with pytest.raises(
        errors.UsageError,
        match=rf"dataset\.worker_count \({here + 7} -> {here}\) "
        r"differ .* \(dataset\.worker_count=auto is resolved on this host; give "
        rf"--config\.dataset\.worker_count={here + 7}, the checkpoint's\)",
    ):
        resume.check_resume(_config(tmp_path), saved, "runs/x")


def test_more_epochs_resume_unless_the_schedule_spans_the_run(tmp_path):
    saved = resume.resume_settings(_config(tmp_path))
    resume.check_resume(_config(tmp_path, stages=((32, 3),)), saved, "d")  # longer last stage
    resume.check_resume(_config(tmp_path, stages=((32, 1), (64, 2))), saved, "d")
    with pytest.raises(
        errors.UsageError,
        match=re.escape(
            "stages ([[32, 1, 0]] -> [[32, 2, 0]]) differ from its checkpoint (a one-cycle"
        ),
    ):
        resume.check_resume(
            _config(tmp_path, stages=((32, 2),), **{"schedule.name": "onecycle"}),
            resume.resume_settings(_config(tmp_path, **{"schedule.name": "onecycle"})),
            "d",
        )
    with pytest.raises(errors.UsageError, match=re.escape("stages ([[32, 1, 0]] -> [[64, 1, 0]])")):
        resume.check_resume(_config(tmp_path, stages=((64, 1),)), saved, "d")
    with pytest.raises(errors.UsageError, match="stages"):  # fewer epochs: not a resume
        resume.check_resume(_config(tmp_path, stages=((32, 0),)), saved, "d")
    # crops: a new stage may have its own; the stages done keep theirs
    resume.check_resume(_config(tmp_path, stages=((32, 1), (64, 2, 32))), saved, "d")
    with pytest.raises(
        errors.UsageError, match=re.escape("stages ([[32, 1, 0]] -> [[32, 1, 32]])")
    ):
        resume.check_resume(_config(tmp_path, stages=((32, 1, 32),)), saved, "d")


def test_checkpoints_from_before_stages_resume_under_the_same_schedule(tmp_path):
    """Settings saved by 0.2 (resolutions, stage_epochs, crops) are read as `stages`."""
    saved = {k: v for k, v in resume.resume_settings(_config(tmp_path)).items() if k != "stages"}
    saved.update(resolutions=[32, 64], stage_epochs=[1, 1], crops=[0, 32])
    resume.check_resume(_config(tmp_path, stages=((32, 1), (64, 1, 32))), saved, "d")
    with pytest.raises(
        errors.UsageError,
        match=re.escape("stages ([[32, 1, 0], [64, 1, 32]] -> [[32, 1, 0], [64, 1, 0]])"),
    ):
        resume.check_resume(_config(tmp_path, stages=((32, 1), (64, 1))), saved, "d")


class _Killed(BaseException):
    """Stands for a SIGKILL: not an Exception, so nothing in the trainer handles it."""


TRAIN_LOSSES = ("train_loss", "train_mask/loss")


def test_a_kill_after_a_save_between_log_steps_resumes_to_the_same_train_losses(
    tmp_path, monkeypatch
):
    """A checkpoint every step, a log every 3 (4 steps an epoch): killed right after the save
    of step 6, whose steps 5 and 6 were not logged yet, the resumed run's epoch 2 still averages
    all four of its steps, bit for bit."""
    config = _config(
        tmp_path / "data", stages=((32, 2),), log_every_steps=3, **{"checkpoint.every_steps": 1}
    )
    train.run(config, str(tmp_path / "straight"))
    save = store.Checkpointer.save

    def save_then_die(self, state, loop, metrics=None, card=None):
        save(self, state, loop, metrics, card)
        if int(state.step) == 6:
            self.wait()
            raise _Killed

    monkeypatch.setattr(store.Checkpointer, "save", save_then_die)
    with pytest.raises(_Killed):
        train.run(config, str(tmp_path / "killed"))
    monkeypatch.undo()
    train.run(config, str(tmp_path / "killed"))
    expected, resumed = (reporting.read_metrics(tmp_path / name) for name in ("straight", "killed"))
    assert [r["step"] for r in resumed] == [r["step"] for r in expected] == [4, 8]
    for got, want in zip(resumed, expected):
        for key in (*TRAIN_LOSSES, "val_loss", "val_iou", "lr"):
            assert got[key] == want[key], (got["epoch"], key)


# -- unwritable or full disks -------------------------------------------------------------------


def test_an_unwritable_workdir_is_one_line_before_anything_runs(tmp_path, compilation_cache_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = subprocess.run(
        _launch(blocker / "run", str(tmp_path / "data"), compilation_cache_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: workdir {blocker / 'run'} is not writable: ")
    )
    assert "Traceback" not in result.stderr and not (tmp_path / "data").exists()


def test_a_full_disk_during_a_save_is_a_run_error(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store.Checkpointer, "save", no_space)
    with pytest.raises(errors.RunError, match=r"cannot write in .*No space left on device"):
        train.run(_config(tmp_path / "data"), str(tmp_path / "run"))


# -- signals -------------------------------------------------------------------------------------


def test_the_signal_handler_records_without_printing_and_raises_before_training(capsys):
    stop = signals.StopSignals()
    with pytest.raises(errors.Interrupted) as raised:
        stop._handle(signal.SIGTERM, None)  # immediate: before training
    assert raised.value.exit_code == 143 and "before training started" in str(raised.value)
    stop.immediate = False
    stop._handle(signal.SIGTERM, None)
    assert stop.signum == signal.SIGTERM
    assert capsys.readouterr() == ("", "")
    signal.signal(signal.SIGINT, signal.default_int_handler)


def test_an_interrupt_rewritten_by_the_dataset_writer_keeps_its_message():
    # tensorflow-datasets re-raises what interrupts an example's encoding with the example
    # prepended to its args (a SIGTERM during the dataset build did this to the handler's)
    from tensorflow_datasets.core.utils import py_utils

    with pytest.raises(errors.Interrupted) as raised:
        try:
            raise errors.Interrupted("interrupted by SIGTERM before training started", 15)
        except errors.Interrupted as error:
            py_utils.reraise(error, prefix="Failed to encode example:\n{'bg': ...}\n")
    assert str(raised.value).startswith("Failed to encode example")
    assert raised.value.message == "interrupted by SIGTERM before training started"
    assert raised.value.exit_code == 143


def test_evaluation_stops_after_the_batch_during_which_asked(tmp_path, masknet_state):
    config = _config(tmp_path / "data", batch_size=2)
    datasets.prepare(config.dataset)
    _, jitted, _ = steps.jit_steps(
        mesh_lib.create_mesh(),
        lambda outputs, targets, weights: (0.0 * outputs["mask"].sum(), {}),
        preprocess.from_normalization(pipeline.input_normalization(config.dataset)),
    )
    evaluated = []

    def eval_step(state, batch):
        evaluated.append(int(batch["weights"].sum()))
        return jitted(state, batch)

    answers = iter([False, True])  # asked after each batch: stop after the second
    context = base.Context(config, mesh_lib.create_mesh(), ("mask",), eval_step, None)
    result = validation.Validation(context, should_stop=lambda: next(answers)).run(
        masknet_state, 32
    )
    assert result is None and evaluated == [2, 2]  # 7 validation samples would be 4 batches


def test_sigterm_during_the_dataset_build_exits_143_leaving_nothing_half_built(tmp_path):
    data_dir = tmp_path / "data"
    # A set whose whole build is short even on a loaded machine: the stop may come only after it
    # (below), and the bound on the latency has to tell that from a hang.
    command = _launch(tmp_path / "run", str(data_dir), "none", **{"dataset.num_samples": 1000})
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not glob.glob(str(data_dir / "**" / "incomplete.*"), recursive=True):
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.05)
    signalled = time.time()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    latency = time.time() - signalled
    assert process.returncode == 143, stderr[-3000:]
    # (tqdm's bars may redraw after it, so the message is looked for, not taken as last line)
    assert "error: interrupted by SIGTERM before training started" in stderr
    assert latency < 60, latency  # measured 1-3 s; the bound only tells a stop from a hang
    # Nothing half-built. (Python drops an exception raised in a `__del__` the signal
    # interrupted; the build then ends whole and the stop comes just after it.)
    assert glob.glob(str(data_dir / "**" / "incomplete.*"), recursive=True) == []


# -- the dataset: stale builds and generator versions ---------------------------------------------


def test_a_build_killed_earlier_is_cleaned_up_and_rebuilt(tmp_path):
    config = default.get_config().dataset
    config.update(dict(num_samples=6, data_dir=str(tmp_path)))
    builder_dir = tmp_path / "synthetic_museum" / f"n6_seed0_g{synthetic.GENERATOR_VERSION}"
    stale = builder_dir / "incomplete.AbC123_1.0.0"
    stale.mkdir(parents=True)
    (stale / "part.array_record").write_bytes(b"half")
    prepared = datasets.prepare(config)
    assert not stale.exists()
    assert sum(prepared.split_sizes.values()) == 6
    assert sorted(os.listdir(builder_dir)) == [".build.lock", "1.0.0"]


def test_the_generator_output_is_pinned_to_its_version():
    """Change `synthetic.render` and this fails: then bump GENERATOR_VERSION (a set built by an
    older generator is then rebuilt instead of reused) and pin the new output here."""
    digest = hashlib.sha256()
    first_plane = next(index for index in range(20) if synthetic.kind(0, index)[0] == "plane")
    for index in (0, 1, 2, first_plane):  # both families
        for _, array in sorted(synthetic.render(0, index).items()):
            digest.update(np.ascontiguousarray(array).tobytes())
    pinned = {5: "925ac98a3ae866ce4d2e2e49b8c1d9c21f21686197d491b2c05259b3e2f5869a"}
    assert synthetic.GENERATOR_VERSION in pinned
    assert digest.hexdigest() == pinned[synthetic.GENERATOR_VERSION]
