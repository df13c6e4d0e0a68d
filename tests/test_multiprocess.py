"""Several processes on one machine (`jax.distributed` over localhost, gloo collectives): what
differs between one host and many, tested with two CPU processes of one device each.

- a SIGTERM that reaches one process only stops both at the same step with one checkpoint,
  which two processes resume into the same run as one process with two devices (every
  epoch's metrics and the final state), and one process evaluates and predicts from;
- a stop on every process together (a non-finite loss), no process left waiting.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import masknet_bce
from jaxsegdepth import build, mesh as mesh_lib, reporting
from jaxsegdepth.checkpointing import store

TIMEOUT = 300  # no run here takes a tenth of it; a hang fails instead of blocking the suite
DETERMINISTIC = ("epoch", "step", "lr", "train_loss", "val_loss", "val_iou", "val_iou_soft")


@pytest.fixture(scope="module")
def shared(tmp_path_factory, compilation_cache_dir):
    return {"data": str(tmp_path_factory.mktemp("mp_data")), "cache": compilation_cache_dir}


def _command(workdir, shared, **overrides):
    values = {
        "dataset.num_samples": 23,
        "dataset.data_dir": shared["data"],
        "stages": "((32, 2),)",
        "batch_size": 4,
        "log_every_steps": 1,
        "evals.preview.samples": 2,
        "schedule.name": "plateau",
        "augment.photometric": True,
        "compilation_cache_dir": shared["cache"],
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_two(workdir, shared, **overrides):
    port = _free_port()
    return [
        subprocess.Popen(
            _command(
                workdir,
                shared,
                **{
                    "distributed.enabled": True,
                    "distributed.coordinator_address": f"127.0.0.1:{port}",
                    "distributed.num_processes": 2,
                    "distributed.process_id": i,
                    "distributed.shutdown_timeout_s": 30,
                    **overrides,
                },
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


def _finish(processes):
    outputs = [p.communicate(timeout=TIMEOUT) for p in processes]
    return [p.returncode for p in processes], outputs


def _one_process_two_devices(workdir, shared, **overrides):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return subprocess.run(
        _command(workdir, shared, **overrides),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )


def _latest_state(workdir):
    config = masknet_bce.get_config()
    config.schedule.name = "plateau"
    checkpointer = store.Checkpointer(str(workdir))
    try:
        state, _ = checkpointer.restore(build.abstract_state(config, mesh_lib.create_mesh()))
        return jax.device_get(state), checkpointer.all_steps()
    finally:
        checkpointer.close()


def _assert_same_run(workdir, reference_dir):
    got, want = reporting.read_metrics(workdir), reporting.read_metrics(reference_dir)
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want] == [1, 2]
    for a, b in zip(got, want):
        for key in DETERMINISTIC:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["epoch"], key)
    (state, _), (reference, _) = _latest_state(workdir), _latest_state(reference_dir)
    for leaf, reference_leaf in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(reference.params)
    ):
        np.testing.assert_allclose(leaf, reference_leaf, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def reference(shared, tmp_path_factory):
    """The run in one process with two devices."""
    workdir = tmp_path_factory.mktemp("one_process")
    result = _one_process_two_devices(workdir, shared)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_sigterm_to_one_process_stops_both_at_one_step_and_they_resume(shared, reference, tmp_path):
    workdir = tmp_path / "run"
    processes = _start_two(workdir, shared, stages="((32, 2),)")
    for line in processes[0].stdout:  # both are in the loop once process 0 says so
        if line.startswith("training from epoch"):
            break
    processes[1].send_signal(signal.SIGTERM)
    codes, outputs = _finish(processes)
    if codes == [0, 0]:
        pytest.fail("the run ended before the SIGTERM was noticed; make it longer")
    assert codes == [143, 143], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    stops = [o[1].strip().splitlines()[-1] for o in outputs]
    assert stops[0] == stops[1] and stops[0].startswith("error: interrupted by SIGTERM at step ")
    step = int(stops[0].split("at step ")[1].split()[0])
    _, saved = _latest_state(workdir)
    assert max(saved) == step

    codes, outputs = _finish(_start_two(workdir, shared, stages="((32, 2),)"))
    assert codes == [0, 0], outputs[0][1][-2000:]
    assert f"resuming from {workdir / 'checkpoints'} step {step}" in outputs[0][0]
    assert "epoch 2/2" in outputs[0][0] and "epoch 2/2" not in outputs[1][0]  # process 0 talks
    assert sorted(os.listdir(workdir / "predictions")) == ["epoch_001.png", "epoch_002.png"]
    _assert_same_run(workdir, reference)  # the same run as one process with two devices

    # A checkpoint written by two processes, read by one: evaluate and predict on a laptop.
    evaluated = subprocess.run(
        _command(workdir, shared, mode="evaluate"), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert os.path.exists(workdir / "eval.json")
    image = tmp_path / "pair.png"
    Image.fromarray(np.full((40, 56, 3), 128, np.uint8)).save(image)
    predicted = subprocess.run(
        _command(workdir, shared, mode="predict", **{"predict.bg": image, "predict.bg_fg": image}),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    mask = np.asarray(Image.open(workdir / "predictions_user" / "pair_mask_prob.png"))
    assert mask.shape == (40, 56)


def test_a_one_process_checkpoint_evaluates_in_two(shared, reference):
    codes, outputs = _finish(_start_two(reference, shared, mode="evaluate"))
    assert codes == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    with open(reference / "eval.json") as f:
        evaluated = json.load(f)
    last = reporting.read_metrics(reference)[-1]
    assert evaluated["step"] == last["step"] and evaluated["num_samples"] == 7
    assert evaluated["metrics"]["32"]["iou"] == pytest.approx(last["val_iou"], rel=1e-5)
    assert evaluated["metrics"]["32"]["loss"] == pytest.approx(last["val_loss"], rel=1e-5)


_PREPARE = """
import sys
from absl import flags, logging
flags.FLAGS.mark_as_parsed()
logging.set_verbosity(logging.INFO)
sys.path.insert(0, {root!r})
from configs import default
from jaxsegdepth.data import datasets
config = default.get_config().dataset
config.update(dict(num_samples=300, data_dir={data_dir!r}))
print(datasets.prepare(config).split_sizes["train"])
"""


def test_processes_starting_together_build_a_shared_dataset_once(tmp_path):
    script = _PREPARE.format(root=ROOT, data_dir=str(tmp_path / "shared_data"))
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    codes, outputs = _finish(processes)
    assert codes == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert [out.strip().splitlines()[-1] for out, _ in outputs] == ["210", "210"]
    builds = sum(err.count("building synthetic_museum/") for _, err in outputs)
    assert builds == 1  # the other waited for the lock and opened the finished set


def test_a_non_finite_loss_stops_every_process_together(shared, tmp_path):
    started = time.time()
    codes, outputs = _finish(
        _start_two(tmp_path / "run", shared, **{"optimizer.learning_rate": "inf"})
    )
    assert codes == [1, 1], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    for _, stderr in outputs:
        assert stderr.strip().splitlines()[-1].startswith("error: non-finite loss at step 2 ")
    assert time.time() - started < TIMEOUT / 2
