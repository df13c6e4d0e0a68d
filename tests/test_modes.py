"""The modes around training, end to end on a tiny synthetic run: LR range test, evaluate,
predict on user images, export, metric curves.

One MaskNet run (1 epoch, 32 px, 40 samples: 28 train, 12 validation, so the last validation
batch of 8 is padded) serves evaluate, predict, export and plots; DSResNet is only initialised,
for the depth outputs of predict and export.
"""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from PIL import Image

from configs import default
from jaxsegdepth import (checkpoints, evaluate, export, lr_range, models, plots, predict,
                         reporting, steps, train)
from jaxsegdepth.data import pipeline

RES = 32


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _config(data_dir, model="masknet"):
    config = default.get_config()
    config.model = model
    if model == "masknet":
        config.loss = ml_collections.ConfigDict({"mask": {"bce": 1.0, "dice": 2.0}})
    config.dataset.num_samples = 40
    config.dataset.data_dir = data_dir
    config.dataset.augment = False
    config.resolutions, config.stage_epochs = (RES,), (1,)
    config.batch_size = 8
    config.num_preview = 2
    config.log_every_steps = 1
    config.compilation_cache_dir = "none"
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """(config, workdir, last epoch record) of a one-epoch MaskNet run."""
    config = _config(data_dir)
    workdir = str(tmp_path_factory.mktemp("run"))
    record = train.run(config, workdir)
    return config, workdir, record


@pytest.fixture(scope="module")
def dsresnet_state(data_dir):
    """A DSResNet state with random weights and statistics. Shapes come from `eval_shape`:
    compiling the real initialiser of 10M parameters costs more than this whole file."""
    config = _config(data_dir, "dsresnet")
    model = models.create("dsresnet", "float32")
    dummy = jnp.zeros((1, RES, RES, 3), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy, dummy, train=False))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "batch_stats" in name:
            value = rng.uniform(0.5, 1.5, leaf.shape) if "var" in name else rng.normal(0, 0.1, leaf.shape)
        else:
            value = rng.normal(0.0, 0.1, leaf.shape)
        return value.astype(leaf.dtype)

    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    state = steps.TrainState(step=0, apply_fn=model.apply, params=variables["params"],
                             tx=optax.identity(), opt_state=(), batch_stats=variables["batch_stats"],
                             plateau=None, rng=None, nonfinite_step=None)
    return config, state


def _apply(state, bg, bg_fg):
    """`model.apply` in inference mode (jitted: eager DSResNet is slow), as logits."""
    return jax.jit(state.apply_fn, static_argnames="train")(
        {"params": state.params, "batch_stats": state.batch_stats}, bg, bg_fg, train=False)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


# -- LR range test --------------------------------------------------------------------------

def test_smooth_is_bias_corrected_ema():
    np.testing.assert_allclose(lr_range.smooth([2.0] * 5, 0.05), [2.0] * 5)  # no pull to 0
    np.testing.assert_allclose(lr_range.smooth([1.0, 3.0], 0.5), [1.0, (0.25 + 1.5) / 0.75])


def test_lr_range_test_sweeps_stops_and_suggests(data_dir, tmp_path, capsys):
    config = _config(data_dir)
    config.mode = "lr_range_test"
    config.lr_range.update(dict(start_lr=1e-4, end_lr=100.0, num_steps=24, spacing="exp",
                                smoothing=0.1, diverge_factor=2.0, resolution=RES, batch_size=4))
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
    assert Image.open(tmp_path / "lr_range.png").size[0] > 300
    assert f"{result['suggested_lr']:.4g}" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "checkpoints")  # nothing of the model is kept


# -- evaluate -------------------------------------------------------------------------------

def test_evaluate_writes_exact_metrics(trained, tmp_path):
    config, workdir, record = trained
    config = ml_collections.ConfigDict(config.to_dict())
    config.evaluate.resolutions = (RES, 64)
    result = evaluate.run(config, workdir)
    with open(os.path.join(workdir, "eval.json")) as f:
        written = json.load(f)
    assert written == json.loads(json.dumps(result))
    assert written["step"] == record["step"] == 3  # 28 train samples // batch 8
    assert written["num_samples"] == 12 and written["resolutions"] == [RES, 64]
    at_res = written["metrics"][str(RES)]
    # the same checkpoint as the trainer's last validation gives the same numbers
    for key in ("iou", "iou_soft", "loss", "mask/bce", "mask/dice"):
        assert at_res[key] == pytest.approx(record[f"val_{key}"], rel=1e-6), key

    # NumPy recomputation over every validation sample, no padding involved
    state = checkpoints.load_for_inference(config, workdir)
    for res in (RES, 64):
        loader = pipeline.create_loader(config.dataset, "validation", resolution=res,
                                        batch_size=5, shuffle=False, seed=0, num_epochs=1,
                                        drop_remainder=False)
        ious, soft = [], []
        for batch in loader:
            logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                                    batch["bg"], batch["bg_fg"], train=False)["mask"]
            p, t = _sigmoid(logits), np.asarray(batch["mask"], np.float64)
            for pred, values in (((p > 0.5).astype(np.float64), ious), (p, soft)):
                inter = (pred * t).sum((1, 2, 3))
                union = (pred + t).sum((1, 2, 3)) - inter
                values.extend((inter + 1e-6) / (union + 1e-6))
        assert len(ious) == 12
        got = written["metrics"][str(res)]
        assert got["iou"] == pytest.approx(np.mean(ious), abs=1e-5)
        assert got["iou_soft"] == pytest.approx(np.mean(soft), abs=1e-5)


def test_evaluate_without_checkpoint_names_the_folder(data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        evaluate.run(_config(data_dir), str(tmp_path / "empty"))


# -- predict --------------------------------------------------------------------------------

def _image(path, width, height, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)).save(path)


def test_predict_folders_skips_bad_pairs_and_keeps_good_ones(trained, tmp_path):
    config, workdir, _ = trained
    bg, bg_fg = tmp_path / "bg", tmp_path / "bg_fg"
    bg.mkdir(), bg_fg.mkdir()
    _image(bg / "good.png", 45, 37, 0)
    _image(bg_fg / "good.jpg", 45, 37, 1)  # paired by name, not extension
    _image(bg / "other.png", 70, 50, 2)
    _image(bg_fg / "other.png", 70, 50, 3)
    _image(bg / "sizes.png", 40, 30, 4)
    _image(bg_fg / "sizes.png", 41, 30, 5)
    _image(bg / "lonely.png", 40, 30, 6)
    (bg / "broken.png").write_text("not an image")
    _image(bg_fg / "broken.png", 40, 30, 7)
    config = ml_collections.ConfigDict(config.to_dict())
    config.predict.bg, config.predict.bg_fg = str(bg), str(bg_fg)
    out = tmp_path / "out"
    config.predict.output_dir = str(out)

    with pytest.raises(predict.PredictionError) as raised:
        predict.run(config, workdir)
    message = str(raised.value)
    assert raised.value.code == message  # SystemExit: status 1, message printed, no traceback
    for name in ("lonely.png", "broken.png", "sizes.png"):
        assert os.path.join(str(bg), name) in message
    assert "3 failed" in message and "Predicted 2 pair(s)" in message
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["written"]) == ["good", "other"]
    assert sorted(f["name"] for f in summary["failed"]) == ["broken", "lonely", "sizes"]
    assert not list(out.glob("sizes_*")) and not list(out.glob("broken_*"))

    # the good pairs: original sizes, binary mask = thresholded probability, no depth (MaskNet)
    for name, size in (("good", (45, 37)), ("other", (70, 50))):
        prob = Image.open(out / f"{name}_mask_prob.png")
        mask = np.asarray(Image.open(out / f"{name}_mask.png"))
        assert prob.size == size and mask.shape == size[::-1]
        assert set(np.unique(mask)) <= {0, 255}
        assert Image.open(out / f"{name}_side_by_side.png").size[1] == size[1] + 16
        assert not (out / f"{name}_depth.npy").exists()

    # the probability is the model's, recomputed here: resize to 32x32, normalise, apply,
    # sigmoid, resize back to 45x37
    state = checkpoints.load_for_inference(config, workdir)
    norm = pipeline.normalization(config.dataset)
    inputs = []
    for path, key in ((bg / "good.png", "bg"), (bg_fg / "good.jpg", "bg_fg")):
        image = np.asarray(Image.open(path).convert("RGB").resize((32, 32), Image.BILINEAR))
        mean, std = norm[key]
        inputs.append(((image / 255.0 - mean) / std)[None].astype(np.float32))
    logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                            *inputs, train=False)["mask"]
    expected = np.asarray(Image.fromarray(_sigmoid(logits)[0, ..., 0].astype(np.float32))
                          .resize((45, 37), Image.BILINEAR))
    got = np.asarray(Image.open(out / "good_mask_prob.png"), np.float64) / 255
    np.testing.assert_allclose(got, expected, atol=1 / 255 + 1e-6)
    mask = np.asarray(Image.open(out / "good_mask.png"))
    np.testing.assert_array_equal(mask > 0, expected >= 0.5)


def test_predict_without_inputs_says_what_to_set(data_dir, tmp_path):
    config = _config(data_dir)
    with pytest.raises(predict.PredictionError, match="set both --config.predict.bg"):
        predict.run(config, str(tmp_path))
    config.predict.bg, config.predict.bg_fg = str(tmp_path / "a.png"), str(tmp_path)
    with pytest.raises(predict.PredictionError, match="a.png: no such file"):
        predict.run(config, str(tmp_path))


def test_predict_one_pair_with_depth_at_original_size(dsresnet_state, tmp_path):
    config, state = dsresnet_state
    _image(tmp_path / "a.png", 50, 70, 0)
    _image(tmp_path / "b.jpg", 50, 70, 1)
    pairs, failures = predict.find_pairs(str(tmp_path / "a.png"), str(tmp_path / "b.jpg"))
    assert failures == [] and [p.name for p in pairs] == ["b"]
    summary = predict.predict_pairs(predict.predict_function(state), pairs, str(tmp_path / "out"),
                                    pipeline.normalization(config.dataset))
    assert summary["failed"] == []
    depth = np.load(tmp_path / "out" / "b_depth.npy")
    assert depth.shape == (70, 50) and depth.dtype == np.float32
    assert 0.0 <= depth.min() and depth.max() <= 1.0 and depth.std() > 0
    colour = Image.open(tmp_path / "out" / "b_depth.png")
    assert colour.size == (50, 70) and colour.mode == "RGB"
    assert Image.open(tmp_path / "out" / "b_mask.png").size == (50, 70)


# -- export ---------------------------------------------------------------------------------

def test_export_mode_matches_apply_for_any_batch(trained, tmp_path):
    config, workdir, _ = trained
    config = ml_collections.ConfigDict(config.to_dict())
    config.export.resolution, config.export.batch_size = RES, 0
    config.export.output_dir = str(tmp_path / "export")
    path = export.run(config, workdir)
    assert path == str(tmp_path / "export" / export.ARTIFACT)
    loaded = export.load(str(tmp_path / "export"))
    meta = loaded.metadata
    assert meta["step"] == 3 and meta["input_shape"] == [None, RES, RES, 3]
    assert set(meta["platforms"]) == {"cpu", "cuda"} and list(meta["outputs"]) == ["mask"]
    state = checkpoints.load_for_inference(config, workdir)
    rng = np.random.default_rng(0)
    for n in (1, 3):  # the batch dimension is symbolic
        bg, bg_fg = (rng.normal(size=(n, RES, RES, 3)).astype(np.float32) for _ in range(2))
        out = loaded(bg, bg_fg)
        ref = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                             bg, bg_fg, train=False)
        assert out["mask"].shape == (n, RES, RES, 1)
        np.testing.assert_allclose(out["mask"], jax.nn.sigmoid(ref["mask"]), atol=1e-6)


def test_export_dsresnet_runs_without_model_code(dsresnet_state, tmp_path):
    _, state = dsresnet_state
    export.export_state(state, str(tmp_path), resolution=RES, batch_size=2, platforms=None)
    # what a user without this package does: only jax.export
    with open(tmp_path / export.ARTIFACT, "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    rng = np.random.default_rng(1)
    bg, bg_fg = (rng.normal(size=(2, RES, RES, 3)).astype(np.float32) for _ in range(2))
    out = exported.call(bg, bg_fg)
    ref = _apply(state, bg, bg_fg)
    assert sorted(out) == ["depth", "mask"]
    for head in ("mask", "depth"):
        np.testing.assert_allclose(out[head], jax.nn.sigmoid(ref[head]), atol=1e-5)
    with pytest.raises(Exception):  # a fixed batch of 2 is fixed
        exported.call(bg[:1], bg_fg[:1])


# -- plots ----------------------------------------------------------------------------------

def test_curves_from_a_training_run(trained):
    _, workdir, _ = trained
    assert plots.main([workdir]) == 0
    assert Image.open(os.path.join(workdir, "curves.png")).size[0] > 500


def test_curves_use_the_last_record_of_each_epoch(tmp_path):
    lines = [
        {"epoch": 1, "step": 10, "resolution": 32, "lr": 0.1, "train_loss": 3.0, "val_loss": 2.5,
         "val_iou": 0.3, "val_rmse": 0.1},
        {"epoch": 2, "step": 20, "resolution": 32, "lr": 0.1, "train_loss": 2.0, "val_loss": 2.2,
         "val_iou": 0.5, "val_rmse": 0.08},
        {"epoch": 2, "step": 20, "resolution": 32, "lr": 0.1, "train_loss": 1.9, "val_loss": 2.1,
         "val_iou": 0.55, "val_rmse": 0.07},  # a resumed run logged epoch 2 again
        {"epoch": 3, "step": 30, "resolution": 64, "lr": 0.01, "train_loss": 1.5,
         "val_loss": 1.8, "val_iou": 0.7, "val_rmse": 0.05},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"epoch": 4, "st'  # cut short
    (tmp_path / "metrics.jsonl").write_text(text)
    series = plots.epoch_series(reporting.read_metrics(str(tmp_path)))
    np.testing.assert_array_equal(series["val_iou"][0], [1, 2, 3])
    np.testing.assert_allclose(series["val_iou"][1], [0.3, 0.55, 0.7])
    np.testing.assert_allclose(series["lr"][1], [0.1, 0.1, 0.01])
    assert plots.main([str(tmp_path)]) == 0 and (tmp_path / "curves.png").exists()
    assert plots.main([str(tmp_path / "nowhere")]) == 1
