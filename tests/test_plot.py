"""mode=plot and tools/plot.py: metric curves of a run, the synthetic samples preview."""

import io
import json
import os

import matplotlib
import numpy as np
from PIL import Image

from jaxsegdepth import charts, reporting
from jaxsegdepth.data import synthetic
from tools import plot as plot_tool
from modes_support import enlarge


def test_curves_from_a_training_run(trained):
    _, workdir, _ = trained
    assert plot_tool.main([workdir]) == 0
    # IoU, loss and learning-rate panels (no depth for MaskNet): 2 x 2 of 6 x 4 in at 110 dpi
    assert Image.open(os.path.join(workdir, "curves.png")).size == (1320, 880)


def test_curves_use_the_last_record_of_each_epoch(tmp_path, capsys):
    lines = [
        {
            "epoch": 1,
            "step": 10,
            "resolution": 32,
            "lr": 0.1,
            "train_loss": 3.0,
            "val_loss": 2.5,
            "val_iou": 0.3,
            "val_rmse": 0.1,
        },
        {
            "epoch": 2,
            "step": 20,
            "resolution": 32,
            "lr": 0.1,
            "train_loss": 2.0,
            "val_loss": 2.2,
            "val_iou": 0.5,
            "val_rmse": 0.08,
        },
        {
            "epoch": 2,
            "step": 20,
            "resolution": 32,
            "lr": 0.1,
            "train_loss": 1.9,
            "val_loss": 2.1,
            "val_iou": 0.55,
            "val_rmse": 0.07,
        },  # a resumed run logged epoch 2 again
        {
            "epoch": 3,
            "step": 30,
            "resolution": 64,
            "lr": 0.01,
            "train_loss": 1.5,
            "val_loss": 1.8,
            "val_iou": 0.7,
            "val_rmse": 0.05,
        },
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"epoch": 4, "st'  # cut short
    (tmp_path / "metrics.jsonl").write_text(text)
    series = charts.epoch_series(reporting.read_metrics(str(tmp_path)))
    np.testing.assert_array_equal(series["val_iou"][0], [1, 2, 3])
    np.testing.assert_allclose(series["val_iou"][1], [0.3, 0.55, 0.7])
    np.testing.assert_allclose(series["lr"][1], [0.1, 0.1, 0.01])
    assert plot_tool.main([str(tmp_path)]) == 0
    assert Image.open(tmp_path / "curves.png").size == (1320, 880)  # four panels, 2 x 2
    assert plot_tool.main([str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err == (
        f"error: no {tmp_path / 'nowhere' / 'metrics.jsonl'}: is "
        f"{tmp_path / 'nowhere'} the workdir of a training run?\n"
    )


def test_samples_preview_draws_decoded_synthetic_samples(tmp_path, capsys):
    out = tmp_path / "preview.png"
    argv = ["samples", "--out", str(out), "--n", "2", "--seed", "3", "--start", "5", "--size", "64"]
    assert plot_tool.main(argv) == 0
    grid = np.asarray(Image.open(out))
    # 64 px tiles enlarged 2x to 128, 2 px apart, under a 14 px label row: 4 columns, 2 rows
    assert grid.shape == (14 + 2 * (128 + 2), 4 * (128 + 2), 3)
    for row, index in enumerate((5, 6)):
        sample = {
            key: Image.open(io.BytesIO(data))
            for key, data in synthetic.generate(3, index, 64).items()
        }
        top = 14 + row * 130
        tiles = [grid[top : top + 128, col * 130 : col * 130 + 128] for col in range(4)]
        np.testing.assert_array_equal(tiles[0], enlarge(np.asarray(sample["bg"]), 2))
        np.testing.assert_array_equal(tiles[1], enlarge(np.asarray(sample["bg_fg"]), 2))
        mask = np.asarray(sample["mask"].convert("L"))
        np.testing.assert_array_equal(tiles[2], enlarge(np.repeat(mask[..., None], 3, -1), 2))
        depth = np.asarray(sample["depth"].convert("L")) / 255.0
        viridis = matplotlib.colormaps["viridis"](depth)[..., :3] * 255
        np.testing.assert_allclose(tiles[3], enlarge(viridis, 2), atol=0.5 + 1e-9)
    assert capsys.readouterr().out == (
        f"Wrote {out}: samples 5-6 of seed 3, columns bg | bg_fg | mask | depth\n"
    )
    assert plot_tool.main(["samples", "--out", str(out), "--n", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: samples: expected n >= 1")
