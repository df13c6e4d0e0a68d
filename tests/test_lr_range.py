"""mode=lr_range_test on the tiny synthetic set: the sweep, its stop and suggestion, its checks."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxsegdepth import errors
from jaxsegdepth.modes import lr_range
from modes_support import RES, mode_config


def test_lr_range_test_sweeps_stops_and_suggests(data_dir, tmp_path, capsys):
    config = mode_config(data_dir)
    config.mode = "lr_range_test"
    config.lr_range.update(
        dict(
            start_lr=1e-4,
            end_lr=100.0,
            num_steps=24,
            spacing="exp",
            smoothing=0.1,
            diverge_factor=2.0,
            resolution=RES,
            batch_size=4,
        )
    )
    lr_range.validate(config)
    lr_range.run(config, str(tmp_path))

    with open(tmp_path / "lr_range.json") as f:
        result = json.load(f)
    lrs, raw, smoothed = (np.asarray(result[k]) for k in ("lrs", "losses", "smoothed"))
    n = len(lrs)
    assert 2 <= n <= 24 and len(raw) == len(smoothed) == n == result["num_steps_run"]
    # exponential sweep: lr_i = start * (end/start)^(i/(N-1))
    np.testing.assert_allclose(lrs, 1e-4 * (1e6 ** (np.arange(n) / 23)), rtol=1e-6)
    # smoothing recomputed here: EMA with weight 0.1 on the newest loss, bias-corrected
    avg, expected = 0.0, []
    for i, loss in enumerate(raw):
        avg = 0.9 * avg + 0.1 * loss
        expected.append(avg / (1 - 0.9 ** (i + 1)))
    np.testing.assert_allclose(smoothed, expected, rtol=1e-9)
    # the suggestion: the lr at the lowest smoothed loss, inside the sweep
    best = int(np.argmin(expected))
    assert result["suggested_lr"] == pytest.approx(lrs[best], rel=1e-12)
    assert result["suggested_step"] == best
    assert 1e-4 <= result["suggested_lr"] <= 100.0
    # an lr of 100 blows MaskNet up: the sweep stopped at the first diverged step
    assert result["stop_reason"].startswith(("diverged", "non-finite")), result["stop_reason"]
    if result["stop_reason"].startswith("diverged"):
        assert smoothed[-1] > 2.0 * smoothed[:-1].min()
        assert all(smoothed[i] <= 2.0 * smoothed[:i].min() for i in range(1, n - 1))
    assert Image.open(tmp_path / "lr_range.png").size == (770, 495)  # 7 x 4.5 in at 110 dpi
    assert f"{result['suggested_lr']:.4g}" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "checkpoints")  # nothing of the model is kept


@pytest.mark.parametrize(
    "field, value, message",
    [
        (
            "end_lr",
            1e-8,
            r"lr_range: expected 0 < start_lr < end_lr, got start_lr=1e-07, "
            r"end_lr=1e-08",
        ),
        ("num_steps", 1, r"lr_range.num_steps=1: expected at least 2"),
        ("spacing", "log", r"lr_range.spacing='log': expected one of"),
        ("smoothing", 0.0, r"lr_range.smoothing=0.0: expected a value in \(0, 1\]"),
        ("diverge_factor", 1.0, r"lr_range.diverge_factor=1.0: expected > 1"),
    ],
)
def test_lr_range_validate_names_the_field(data_dir, field, value, message):
    config = mode_config(data_dir)
    config.lr_range[field] = value
    with pytest.raises(errors.UsageError, match=f"^{message}"):
        lr_range.validate(config)
