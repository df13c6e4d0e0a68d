"""Fault injection: a tiny training run killed (SIGKILL) and stopped (SIGTERM) at random moments,
rerun with the same command until it finishes, ends exactly where a run never stopped ends.

Kills land during the first dataset build, within a second after an epoch's line (the save and
metrics.jsonl window), during evaluation and checkpoint writes (at random), and anywhere else.
Then: every leaf of the final state bit-equal, every epoch once in metrics.jsonl with equal
values, the same best step, no temporary folders left.

The suite runs a short soak; `JAXSEGDEPTH_SOAK_KILLS=50 JAXSEGDEPTH_SOAK_TERMS=5` a long one
(docs/reliability.md has its result).
"""

import glob
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import masknet_bce
from jaxsegdepth import build, mesh as mesh_lib, reporting
from jaxsegdepth.checkpointing import store

KILLS = int(os.environ.get("JAXSEGDEPTH_SOAK_KILLS", "3"))
TERMS = int(os.environ.get("JAXSEGDEPTH_SOAK_TERMS", "1"))
SEED = int(os.environ.get("JAXSEGDEPTH_SOAK_SEED", "0"))
EPOCHS = int(os.environ.get("JAXSEGDEPTH_SOAK_EPOCHS", "3"))
EPOCH_LINE = re.compile(r"epoch \d+/\d+ step \d+")  # printed just before an epoch's save
# Fields of an epoch's record that do not depend on timing.
DETERMINISTIC = (
    "epoch",
    "step",
    "stage",
    "resolution",
    "lr",
    "train_loss",
    "train_mask/loss",
    "val_loss",
    "val_iou",
    "val_iou_soft",
    "val_mask/bce",
)


def _overrides(data_dir, cache_dir):
    # A checkpoint every 2 steps, a log every 5: most saves hold steps not logged yet.
    values = {
        "dataset.num_samples": 40,
        "dataset.data_dir": data_dir,
        "stages": f"((64, {EPOCHS}),)",
        "batch_size": 4,
        "log_every_steps": 5,
        "checkpoint.every_steps": 2,
        "evals.preview.samples": 1,
        "schedule.name": "plateau",
        "augment.photometric": True,
        "compilation_cache_dir": cache_dir,
    }
    return [f"--config.{k}={v}" for k, v in values.items()]


def _command(workdir, data_dir, cache_dir):
    return [
        sys.executable,
        os.path.join(ROOT, "launch.py"),
        "--config",
        os.path.join(ROOT, "configs", "masknet_bce.py"),
        "--workdir",
        str(workdir),
        *_overrides(data_dir, cache_dir),
    ]


def _interrupt(command, signum, delay, after_epoch_line=False):
    """Runs `command`; sends `signum` `delay` s after its start (or after its next epoch line).
    Returns the exit status."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    start = time.time()
    if after_epoch_line:
        for line in process.stdout:
            if EPOCH_LINE.match(line):
                start = time.time()
                break
    while process.poll() is None and time.time() - start < delay:
        time.sleep(0.02)
    if process.poll() is None:
        os.killpg(process.pid, signum)
    output, _ = process.communicate(timeout=600)
    assert process.returncode in (0, -signal.SIGKILL, 128 + signal.SIGTERM, -signal.SIGTERM), (
        output[-3000:]
    )
    return process.returncode


def _final_state(workdir):
    config = masknet_bce.get_config()
    config.schedule.name = "plateau"
    checkpointer = store.Checkpointer(str(workdir))
    try:
        target = build.abstract_state(config, mesh_lib.create_mesh())
        state, _ = checkpointer.restore(target)
        return jax.device_get(state), checkpointer.best_step()
    finally:
        checkpointer.close()


def test_killed_and_stopped_runs_end_like_an_uninterrupted_one(tmp_path, compilation_cache_dir):
    rng = random.Random(SEED)
    data_dir, workdir = str(tmp_path / "data"), tmp_path / "soaked"
    command = _command(workdir, data_dir, compilation_cache_dir)

    # The first kill lands during the first dataset build; then a mix of the others: within a
    # second after an epoch's line, or at a random moment (restore, compile, steps, saves,
    # evaluation), SIGKILL or SIGTERM.
    _interrupt(command, signal.SIGKILL, rng.uniform(0.5, 3.0))
    after_line = max(KILLS // 3, 1)
    plan = (
        [(signal.SIGKILL, True)] * after_line
        + [(signal.SIGKILL, False)] * max(KILLS - 1 - after_line, 0)
        + [(signal.SIGTERM, False)] * TERMS
    )
    rng.shuffle(plan)
    finished, delivered = False, {signal.SIGKILL: 1, signal.SIGTERM: 0}
    for signum, after_epoch_line in plan:
        if finished:
            break
        delay = rng.uniform(0.0, 1.0) if after_epoch_line else rng.uniform(1.0, 12.0)
        finished = _interrupt(command, signum, delay, after_epoch_line) == 0
        delivered[signum] += not finished
    print(
        f"soak: {delivered[signal.SIGKILL]} SIGKILL and {delivered[signal.SIGTERM]} SIGTERM "
        f"delivered ({KILLS} and {TERMS} planned) over {EPOCHS} epochs"
    )
    for _ in range(3):  # the same command until it says it is done
        if finished:
            break
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        finished = True

    reference_dir = tmp_path / "reference"
    result = subprocess.run(
        _command(reference_dir, data_dir, compilation_cache_dir),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    soaked, expected = reporting.read_metrics(workdir), reporting.read_metrics(reference_dir)
    assert [r["epoch"] for r in soaked] == list(range(1, EPOCHS + 1))
    for got, want in zip(soaked, expected):
        assert {k: got[k] for k in DETERMINISTIC} == {k: want[k] for k in DETERMINISTIC}
    (state, best), (reference, reference_best) = _final_state(workdir), _final_state(reference_dir)
    assert best == reference_best
    leaves, reference_leaves = jax.tree.leaves(state), jax.tree.leaves(reference)
    assert len(leaves) == len(reference_leaves)
    for leaf, reference_leaf in zip(leaves, reference_leaves):
        assert np.array_equal(np.asarray(leaf), np.asarray(reference_leaf))
    leftovers = glob.glob(str(workdir / "checkpoints" / "*tmp*")) + glob.glob(
        os.path.join(data_dir, "**", "incomplete.*"), recursive=True
    )
    assert leftovers == []
