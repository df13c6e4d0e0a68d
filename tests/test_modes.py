"""The modes around training, end to end on a tiny synthetic run: LR range test, evaluate,
predict on user images, export, metric curves and the synthetic samples preview.

One MaskNet run (1 epoch, 32 px, 40 samples: 28 train, 12 validation, so the last validation
batch of 8 is padded) serves evaluate, predict, export and plots; DSResNet is only initialised
(conftest's `dsresnet_state`), for the depth outputs of predict and export.
"""

import io
import itertools
import json
import os
import shutil

import jax
import matplotlib
import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import default
from jaxsegdepth import (
    artifact,
    checkpoints,
    charts,
    errors,
    evaluators,
    inference,
    losses,
    mesh as mesh_lib,
    preprocess,
    reporting,
    restore,
    steps,
)
from jaxsegdepth.modes import evaluate, export, lr_range, predict, train
from tools import plot as plot_tool
from jaxsegdepth.data import builders, modest, normalization, photos, pipeline, synthetic
from tools import modest_photos

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
    config.stages = ((RES, 1),)
    config.batch_size = 8
    config.evals.preview.samples = 2
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
def one_device():
    """The one-device mesh `predict` and `export` load a checkpoint on."""
    return mesh_lib.create_mesh(jax.local_devices()[:1])


@pytest.fixture(scope="module")
def predict_jit(one_device):
    """`predict_jit(normalization)`: `steps.jit_steps`' predict step on `one_device` with the
    inputs' {input: (mean, std)}, as `predict` runs it (uint8 in, normalised inside)."""
    made = {}

    def make(norm):
        key = json.dumps(
            {k: [np.asarray(m).tolist(), np.asarray(s).tolist()] for k, (m, s) in norm.items()},
            sort_keys=True,
        )
        if key not in made:
            made[key] = steps.jit_steps(
                one_device,
                losses.compose(default.get_config().loss),
                preprocess.from_normalization(norm),
            )[2]
        return made[key]

    return make


def _copy(config):
    return ml_collections.ConfigDict(config.to_dict())


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _reference_normalize(image, mean, std):
    """The reference formula, in float64: uint8 RGB / 255, minus the mean, over the std."""
    return (np.asarray(image, np.float64) / 255.0 - np.asarray(mean, np.float64)) / np.asarray(
        std, np.float64
    )


def _mean_iou(pred, target) -> float:
    """Per-image IoU of (N, H, W, 1) predictions against targets, averaged, in float64."""
    inter = (pred * target).sum((1, 2, 3))
    return np.mean((inter + 1e-6) / ((pred + target).sum((1, 2, 3)) - inter + 1e-6))


def _image(path, width, height, seed) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)).save(path)


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _enlarge(image, factor):
    return np.repeat(np.repeat(image, factor, 0), factor, 1)


def _expected_probabilities(state, bg_path, bg_fg_path, norm, model_hw):
    """{head: (H, W) probability} recomputed without `predict`: PIL bilinear resize to
    `model_hw`, float64 normalisation, the model's logits, float64 sigmoid, PIL resize back."""
    images = [_rgb(bg_path), _rgb(bg_fg_path)]
    height, width = images[0].shape[:2]
    inputs = [
        _reference_normalize(
            np.asarray(Image.fromarray(image).resize(model_hw[::-1], Image.BILINEAR)), *norm[key]
        )[None].astype(np.float32)
        for image, key in zip(images, ("bg", "bg_fg"))
    ]
    logits = jax.jit(state.apply_fn, static_argnames="train")(
        {"params": state.params, "batch_stats": state.batch_stats}, *inputs, train=False
    )
    return {
        head: np.asarray(
            Image.fromarray(_sigmoid(value)[0, ..., 0].astype(np.float32)).resize(
                (width, height), Image.BILINEAR
            )
        )
        for head, value in logits.items()
    }


# -- LR range test --------------------------------------------------------------------------


def test_lr_range_test_sweeps_stops_and_suggests(data_dir, tmp_path, capsys):
    config = _config(data_dir)
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
    config = _config(data_dir)
    config.lr_range[field] = value
    with pytest.raises(errors.UsageError, match=f"^{message}"):
        lr_range.validate(config)


# -- evaluate -------------------------------------------------------------------------------


def test_evaluate_writes_exact_metrics(trained, tmp_path):
    config, workdir, record = trained
    config = _copy(config)
    config.evaluate.resolutions, config.evals.photos.pairs = (RES, 64), 8
    evaluate.validate(config)
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
    state = restore.load_for_inference(config, workdir).state
    for res in (RES, 64):
        loader = pipeline.create_loader(
            config.dataset,
            "validation",
            resolution=res,
            batch_size=5,
            shuffle=False,
            seed=0,
            num_epochs=1,
            drop_remainder=False,
        )
        ious, soft = [], []
        norm = pipeline.input_normalization(config.dataset)
        for batch in loader:  # uint8, as the loader ships it: normalised here, in float64
            inputs = [
                _reference_normalize(batch[k], *norm[k]).astype(np.float32) for k in ("bg", "bg_fg")
            ]
            logits = state.apply_fn(
                {"params": state.params, "batch_stats": state.batch_stats}, *inputs, train=False
            )["mask"]
            p, t = _sigmoid(logits), np.asarray(batch["mask"], np.float64) / 255.0
            for pred, values in (((p > 0.5).astype(np.float64), ious), (p, soft)):
                inter = (pred * t).sum((1, 2, 3))
                union = (pred + t).sum((1, 2, 3)) - inter
                values.extend((inter + 1e-6) / (union + 1e-6))
        assert len(ious) == 12
        got = written["metrics"][str(res)]
        assert got["iou"] == pytest.approx(np.mean(ious), abs=1e-5)
        assert got["iou_soft"] == pytest.approx(np.mean(soft), abs=1e-5)

    # The trivial predictors beside the model, recomputed in NumPy float64: the best |bg - bg_fg|
    # threshold on the training split, its IoU on the validation split.
    def split(name):
        batches = list(
            pipeline.create_loader(
                config.dataset,
                name,
                resolution=RES,
                batch_size=64,
                shuffle=False,
                seed=0,
                num_epochs=1,
                drop_remainder=False,
            )
        )
        # uint8 as stored: RGB and the mask in [0, 1]
        images = {
            k: np.concatenate([b[k] for b in batches]).astype(np.float64) / 255.0
            for k in ("bg", "bg_fg", "mask")
        }
        return np.abs(images["bg"] - images["bg_fg"]).max(-1, keepdims=True), images["mask"]

    (train_diff, train_mask), (val_diff, val_mask) = split("train"), split("validation")
    thresholds = np.round(np.arange(0.01, 0.51, 0.01), 2)
    best = thresholds[int(np.argmax([_mean_iou(train_diff > t, train_mask) for t in thresholds]))]
    baseline = written["baselines"][str(RES)]
    assert baseline["difference_threshold"] == pytest.approx(best)
    assert baseline["difference_iou"] == pytest.approx(
        _mean_iou(val_diff > best, val_mask), abs=1e-5
    )
    assert "mean_depth_rmse" not in baseline  # MaskNet predicts no depth

    def ceiling(masks):  # the best of the masks {t >= v} over every value v of each target
        return np.mean(
            [max(_mean_iou((t >= v)[None], t[None]) for v in np.unique(t)) for t in masks]
        )

    assert baseline["ceiling_iou"] == pytest.approx(ceiling(val_mask), abs=1e-6)
    assert baseline["difference_iou"] < baseline["ceiling_iou"] < 1

    # The held-out pairs of real photographs: the model's IoU and the best threshold's on 8
    # other pairs, in NumPy.
    def photo_pairs(split):
        pairs = photos.pairs(photos.SETS["photos"], 0, 8, split=split)
        images = {
            k: np.stack(
                [pipeline.decode_image(p[k], "L" if k == "mask" else "RGB", RES) for p in pairs]
            )
            for k in ("bg", "bg_fg", "mask")
        }
        difference = np.abs(images["bg"] / 255.0 - images["bg_fg"] / 255.0).max(-1, keepdims=True)
        return images, difference, images["mask"][..., None] / 255.0

    _, tuning_difference, tuning_target = photo_pairs("tuning")
    photo_best = thresholds[
        int(np.argmax([_mean_iou(tuning_difference > t, tuning_target) for t in thresholds]))
    ]
    images, difference, target = photo_pairs("eval")
    norm = pipeline.input_normalization(config.dataset)
    inputs = {
        k: ((images[k] / 255.0 - norm[k][0]) / norm[k][1]).astype(np.float32)
        for k in ("bg", "bg_fg")
    }
    logits = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats},
        inputs["bg"],
        inputs["bg_fg"],
        train=False,
    )["mask"]
    assert written["photos"][str(RES)] == pytest.approx(
        {
            "pairs": 8,
            "model_iou": _mean_iou(_sigmoid(logits) > 0.5, target),
            "difference_threshold": photo_best,
            "difference_iou": _mean_iou(difference > photo_best, target),
            "ceiling_iou": ceiling(target),
        },
        abs=1e-5,
    )
    assert set(written["photos"]) == {str(RES), "64"}
    assert os.path.getsize(os.path.join(workdir, f"photos_{RES}px.png")) > 0


def test_evaluate_scores_an_init_from_checkpoint_on_another_dataset(trained, tmp_path):
    """The synthetic-trained MaskNet on a MODEST-layout folder of photo pairs: the checkpoint
    from init_from, the data from config.dataset, the inputs normalised with the model's own
    statistics (its card's, not MODEST's), the results in the new workdir; the trained run's
    folder is left as it was."""
    base, workdir, record = trained
    folder = str(tmp_path / "photos")
    modest_photos.write(folder, pairs=20, size=64)
    config = _copy(base)
    config.init_from, config.evals.photos.evaluate = workdir, False
    config.optimizer.name = "sgd"  # not the run's: only the model has to fit
    config.dataset.update(
        dict(name="modest_museum", manual_dir=folder, data_dir=str(tmp_path / "tfds"))
    )
    before = sorted(os.listdir(workdir))
    evaluate.validate(config)
    evaluate.run(config, str(tmp_path / "eval"))
    assert sorted(os.listdir(workdir)) == before
    with open(tmp_path / "eval" / "eval.json") as f:
        written = json.load(f)
    assert (written["dataset"], written["num_samples"], written["step"]) == (
        "modest_museum",
        6,
        record["step"],
    )
    assert written["checkpoint"] == os.path.abspath(workdir)

    # NumPy: the folder's validation pairs (the reference split of its 20 lines), decoded,
    # normalised with the model's (the synthetic set's) statistics, through the trained
    # parameters
    with open(os.path.join(folder, "file_map.txt")) as f:
        lines = [line.split("\t") for line in f.read().splitlines()]

    def read(index, column, mode):
        path = os.path.join(folder, modest.FOLDERS[column], lines[index][column] + ".jpeg")
        with open(path, "rb") as f:
            return pipeline.decode_image(f.read(), mode, RES)

    val = builders.reference_split(20)[1]
    inputs = [
        _reference_normalize(
            np.stack([read(i, column, "RGB") for i in val]),
            *pipeline.input_normalization(base.dataset)[key],
        ).astype(np.float32)
        for column, key in enumerate(("bg", "bg_fg"))
    ]
    target = np.stack([read(i, 2, "L") for i in val])[..., None] / 255.0
    state = restore.load_for_inference(base, workdir).state
    probs = _sigmoid(
        state.apply_fn(
            {"params": state.params, "batch_stats": state.batch_stats}, *inputs, train=False
        )["mask"]
    )
    got = written["metrics"][str(RES)]
    assert got["iou"] == pytest.approx(_mean_iou(probs > 0.5, target), abs=1e-5)
    assert got["iou_soft"] == pytest.approx(_mean_iou(probs, target), abs=1e-5)


def _predicted(config, workdir, pair, out) -> dict:
    """{file name: bytes} that `predict.run` writes for one pair into `out`."""
    config.predict.bg, config.predict.bg_fg = pair
    config.predict.output_dir = str(out)
    predict.validate(config)
    predict.run(config, workdir)
    return {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".png"}


def test_the_checkpoint_carries_its_model_card(trained):
    config, workdir, record = trained
    checkpointer = checkpoints.Checkpointer(workdir, read_only=True)
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
    here = _predicted(_copy(base), workdir, pair, tmp_path / "here")
    alone = str(tmp_path / "alone")
    shutil.copytree(workdir, alone)
    config = _copy(base)
    config.dataset.data_dir = str(tmp_path / "empty")
    assert _predicted(config, alone, pair, tmp_path / "there") == here
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
    here = _predicted(_copy(base), workdir, pair, tmp_path / "here")
    older = tmp_path / "older"
    shutil.copytree(workdir, older)
    for card_dir in older.glob(f"checkpoints/*/{checkpoints.CARD}"):
        shutil.rmtree(card_dir)
    capsys.readouterr()
    assert _predicted(_copy(base), str(older), pair, tmp_path / "there") == here
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: step ") and warnings[0].endswith(
        "carries no model card: its inputs are normalised with the statistics of dataset "
        "synthetic_museum"
    )


def test_ceiling_iou_is_the_best_of_every_binary_mask():
    rng = np.random.default_rng(0)
    masks = np.concatenate(
        [rng.choice([0.0, 0.1, 0.45, 0.55, 0.9, 1.0], (5, 2, 3, 1)), np.zeros((1, 2, 3, 1))]
    )  # the last: nothing to find
    subsets = np.array(list(itertools.product((0.0, 1.0), repeat=6))).reshape(-1, 2, 3, 1)
    best = []
    for t in masks:
        inter = (subsets * t).sum((1, 2, 3))
        best.append(np.max((inter + 1e-6) / ((subsets + t).sum((1, 2, 3)) - inter + 1e-6)))
    assert evaluators.ceiling_iou(masks) == pytest.approx(np.sum(best), rel=1e-12)
    assert best[-1] == 1.0 and min(best) < 0.99  # soft pixels cost even the best mask


def test_held_out_photo_pairs_paste_through_the_mask_only():
    pair = photos.render(0, 3, 96)
    outside = pair["mask"] == 0
    assert 0 < (~outside).mean() < 0.6
    np.testing.assert_array_equal(pair["bg_fg"][outside], pair["bg"][outside])
    assert np.any(pair["bg_fg"][~outside] != pair["bg"][~outside])
    assert photos.generate(0, 3, 96) == photos.generate(0, 3, 96)  # deterministic
    assert photos.generate(0, 3, 96) != photos.generate(0, 4, 96)


def test_the_mean_depth_map_baseline_is_numpys(trained):
    config = _copy(trained[0])
    context = evaluators.Context(config, None, ("mask", "depth"), None, None)
    got = evaluators.Baselines(context).run(None, RES).metrics

    def depth(name):
        return (
            np.concatenate(
                [
                    b["depth"]
                    for b in pipeline.create_loader(
                        config.dataset,
                        name,
                        resolution=RES,
                        batch_size=64,
                        shuffle=False,
                        seed=0,
                        num_epochs=1,
                        drop_remainder=False,
                    )
                ]
            ).astype(np.float64)
            / 255.0
        )  # uint8 as stored

    train, val = depth("train"), depth("validation")
    valid = val > 1e-4
    error = (np.broadcast_to(train.mean(0), val.shape) - val)[valid]
    assert got["mean_depth_rmse"] == pytest.approx(np.sqrt(np.mean(error**2)), rel=1e-5)
    assert got["mean_depth_mae"] == pytest.approx(np.mean(np.abs(error)), rel=1e-5)


def test_evaluate_without_checkpoint_names_the_folder(data_dir, tmp_path):
    folder = os.path.join(os.path.abspath(tmp_path / "empty"), "checkpoints")
    with pytest.raises(errors.RunError) as raised:
        evaluate.run(_config(data_dir), str(tmp_path / "empty"))
    assert str(raised.value).startswith(f"no checkpoint directory {folder}: train first")
    assert raised.value.exit_code == 1


def test_evaluate_validate_refuses_a_size_the_model_cannot_take(data_dir):
    config = _config(data_dir, "dsresnet")
    config.evaluate.resolutions = (RES, 48)
    with pytest.raises(
        errors.UsageError,
        match="^evaluate.resolutions: resolution 48 is not a multiple of 32, which dsresnet needs$",
    ):
        evaluate.validate(config)


# -- predict --------------------------------------------------------------------------------


@pytest.fixture
def pair(tmp_path):
    """Paths of one readable 40x30 bg / bg_fg pair."""
    _image(tmp_path / "bg.png", 40, 30, 0)
    _image(tmp_path / "bg_fg.png", 40, 30, 1)
    return str(tmp_path / "bg.png"), str(tmp_path / "bg_fg.png")


@pytest.mark.parametrize(
    "model, field, value, message",
    [
        (
            "dsresnet",
            "resolution",
            48,
            r"predict.resolution \(0: each image's own size\): "
            r"resolution 48 is not a multiple of 32, which dsresnet needs",
        ),
        (
            "masknet",
            "resolution",
            -8,
            r"predict.resolution \(0: each image's own size\): "
            r"resolution -8 must be a positive integer",
        ),
        (
            "dsresnet",
            "max_side",
            16,
            r"predict.max_side=16: expected 0 \(no cap\) or >= 32, the "
            r"stride of dsresnet",
        ),
        ("masknet", "max_side", -1, r"predict.max_side=-1: expected 0 \(no cap\) or >= 1"),
        ("masknet", "threshold", 1.5, r"predict.threshold=1.5: expected a probability in \[0, 1\]"),
        ("masknet", "colormap", "nope", r"predict.colormap='nope' is not a matplotlib colour map"),
        ("masknet", "bg", "", r"predict.bg and predict.bg_fg: set both"),
        ("masknet", "bg_fg", "missing.png", r"predict.bg_fg='missing.png': no such file or folder"),
    ],
)
def test_predict_validate_names_the_bad_setting(data_dir, pair, model, field, value, message):
    config = _config(data_dir, model)
    config.predict.bg, config.predict.bg_fg = pair
    predict.validate(config)  # the pair and the defaults are fine
    config.predict[field] = value
    with pytest.raises(errors.UsageError, match=f"^{message}") as raised:
        predict.validate(config)
    assert raised.value.exit_code == 2 and "\n" not in str(raised.value)


def test_predict_validate_needs_two_files_or_two_nonempty_folders(data_dir, pair, tmp_path):
    config = _config(data_dir)
    config.predict.bg, config.predict.bg_fg = pair[0], str(tmp_path)
    with pytest.raises(errors.UsageError, match=r"expected two files or two folders$"):
        predict.validate(config)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    config.predict.bg, config.predict.bg_fg = str(tmp_path / "a"), str(tmp_path / "b")
    with pytest.raises(errors.UsageError, match=r": no files in the folders$"):
        predict.validate(config)


@pytest.fixture(scope="module")
def predicted_folders(trained, tmp_path_factory):
    """`predict.run` of the trained MaskNet on two folders: two good pairs (45x37 and 70x50,
    paired by name, not extension), a lonely file, an unreadable one and a plate of another
    size than its scene (resized to it, with a warning).
    Returns (config, workdir, bg folder, bg_fg folder, output folder, the RunError raised)."""
    config, workdir, _ = trained
    base = tmp_path_factory.mktemp("predict")
    bg, bg_fg = base / "bg", base / "bg_fg"
    bg.mkdir(), bg_fg.mkdir()
    _image(bg / "good.png", 45, 37, 0)
    _image(bg_fg / "good.jpg", 45, 37, 1)
    _image(bg / "other.png", 70, 50, 2)
    _image(bg_fg / "other.png", 70, 50, 3)
    _image(bg / "sizes.png", 40, 30, 4)
    _image(bg_fg / "sizes.png", 41, 30, 5)
    _image(bg / "lonely.png", 40, 30, 6)
    (bg / "broken.png").write_text("not an image")
    _image(bg_fg / "broken.png", 40, 30, 7)
    config = _copy(config)
    config.predict.bg, config.predict.bg_fg = str(bg), str(bg_fg)
    config.predict.output_dir = str(base / "out")
    predict.validate(config)
    with pytest.raises(errors.RunError) as raised:
        predict.run(config, workdir)
    return config, workdir, bg, bg_fg, base / "out", raised.value


def test_predict_names_the_bad_pairs_and_writes_the_good_ones(predicted_folders):
    _, _, bg, bg_fg, out, error = predicted_folders
    message = str(error)
    assert error.exit_code == 1 and "\n" not in message
    assert message.startswith(
        f"2 pair(s) failed (3 pair(s) written to {out}; details in summary.json): "
    )
    assert f"{bg / 'broken.png'}: cannot be read as an image" in message
    assert f"{bg / 'lonely.png'}: no partner in {bg_fg} (expected lonely.*)" in message
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["written"]) == ["good", "other", "sizes"]
    assert sorted(f["name"] for f in summary["failed"]) == ["broken", "lonely"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            f"{name}_{suffix}"
            for name in ("good", "other", "sizes")
            for suffix in ("mask_prob.png", "mask.png", "cutout.png", "side_by_side.png")
        ]
        + ["summary.json"]
    )


def test_predict_writes_the_models_probability(predicted_folders):
    config, workdir, bg, bg_fg, out, _ = predicted_folders
    # MaskNet (stride 1) sees each image at its own size
    state = restore.load_for_inference(config, workdir).state
    norm = pipeline.input_normalization(config.dataset)
    expected = _expected_probabilities(state, bg / "good.png", bg_fg / "good.jpg", norm, (37, 45))[
        "mask"
    ]
    prob = np.asarray(Image.open(out / "good_mask_prob.png"))
    assert prob.shape == (37, 45) and prob.dtype == np.uint8
    np.testing.assert_allclose(prob / 255.0, expected, atol=0.5 / 255 + 1e-5)
    mask = np.asarray(Image.open(out / "good_mask.png"))
    np.testing.assert_array_equal(mask, np.where(expected >= 0.5, 255, 0))


def test_predict_side_by_side_pixels(predicted_folders):
    _, _, bg, bg_fg, out, _ = predicted_folders
    prob = np.asarray(Image.open(out / "good_mask_prob.png"))
    mask = np.asarray(Image.open(out / "good_mask.png"))
    # 45x37 tiles enlarged 3x (nearest) to 135x111, 2 px apart, under a 14 px label row:
    # bg | bg_fg | mask probability | mask >= 0.5 over bg_fg (half red)
    grid = np.asarray(Image.open(out / "good_side_by_side.png"))
    assert grid.shape == (14 + 111 + 2, 4 * (135 + 2), 3)
    tiles = [grid[14 : 14 + 111, col * 137 : col * 137 + 135] for col in range(4)]
    np.testing.assert_array_equal(tiles[0], _enlarge(_rgb(bg / "good.png"), 3))
    np.testing.assert_array_equal(tiles[1], _enlarge(_rgb(bg_fg / "good.jpg"), 3))
    np.testing.assert_array_equal(tiles[2], _enlarge(np.repeat(prob[..., None], 3, -1), 3))
    red = (0.5 * _rgb(bg_fg / "good.jpg") + [127.5, 0, 0]).astype(np.uint8)
    overlay = np.where((mask > 0)[..., None], red, _rgb(bg_fg / "good.jpg"))
    np.testing.assert_array_equal(tiles[3], _enlarge(overlay, 3))
    assert np.asarray(Image.open(out / "other_side_by_side.png")).shape == (
        14 + 100 + 2,
        4 * (140 + 2),
        3,
    )  # 70x50 enlarged 2x


def test_predict_one_pair_with_depth_at_original_size(dsresnet_state, predict_jit, tmp_path):
    state = dsresnet_state
    _image(tmp_path / "a.png", 40, 30, 0)
    _image(tmp_path / "b.jpg", 40, 30, 1)
    pairs, failures = predict.find_pairs(str(tmp_path / "a.png"), str(tmp_path / "b.jpg"))
    assert failures == [] and [p.name for p in pairs] == ["b"]
    norm = normalization.MODEST_NORMALIZATION
    predict_step = predict_jit(norm)
    predictor = inference.Predictor(
        lambda bg, bg_fg: predict_step(state, bg, bg_fg),
        {"model": "dsresnet", "heads": ["mask", "depth"], "stride": 32},
        "the test's state",
    )
    summary = predict.predict_pairs(predictor, pairs, str(tmp_path / "out"), colormap="magma")
    assert summary["failed"] == [] and summary["written"] == {
        "b": [
            str(tmp_path / "out" / f"b_{suffix}")
            for suffix in (
                "mask_prob.png",
                "mask.png",
                "cutout.png",
                "depth.png",
                "depth.npy",
                "side_by_side.png",
            )
        ]
    }

    # 40x30 rounds to 32x32 for the model (each side to the nearest multiple of 32)
    expected = _expected_probabilities(
        state, tmp_path / "a.png", tmp_path / "b.jpg", norm, (32, 32)
    )
    depth = np.load(tmp_path / "out" / "b_depth.npy")
    assert depth.shape == (30, 40) and depth.dtype == np.float32
    np.testing.assert_allclose(depth, expected["depth"], atol=1e-5)
    assert depth.std() > 5e-4  # not constant: the comparison above is not vacuous
    magma = matplotlib.colormaps["magma"](depth.astype(np.float64))[..., :3] * 255
    colour = np.asarray(Image.open(tmp_path / "out" / "b_depth.png"))
    assert colour.shape == (30, 40, 3)
    np.testing.assert_allclose(colour, magma, atol=0.5 + 1e-9)  # rounded to uint8
    prob = np.asarray(Image.open(tmp_path / "out" / "b_mask_prob.png"))
    np.testing.assert_allclose(prob / 255.0, expected["mask"], atol=0.5 / 255 + 1e-5)
    grid = np.asarray(Image.open(tmp_path / "out" / "b_side_by_side.png"))
    assert grid.shape == (14 + 120 + 2, 5 * (160 + 2), 3)  # 40x30 enlarged 4x, five columns
    np.testing.assert_array_equal(grid[14:134, 4 * 162 : 4 * 162 + 160], _enlarge(colour, 4))


# -- export ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, field, value, message",
    [
        ("masknet", "resolution", 0, r"export.resolution: resolution 0 must be a positive integer"),
        (
            "dsresnet",
            "resolution",
            48,
            r"export.resolution: resolution 48 is not a multiple of "
            r"32, which dsresnet needs",
        ),
        (
            "masknet",
            "batch_size",
            -1,
            r"export.batch_size=-1: expected 0 \(any batch\) or a "
            r"positive size",
        ),
        (
            "masknet",
            "platforms",
            ("cpu", "metal"),
            r"export.platforms=\('cpu', 'metal'\): "
            r"\['metal'\] unknown, expected names among",
        ),
    ],
)
def test_export_validate_names_the_bad_setting(data_dir, model, field, value, message):
    config = _config(data_dir, model)
    config.export.resolution = 64
    export.validate(config)  # the defaults are fine
    config.export[field] = value
    with pytest.raises(errors.UsageError, match=f"^{message}") as raised:
        export.validate(config)
    assert raised.value.exit_code == 2


def test_export_mode_matches_predict_step_for_any_batch(trained, one_device, predict_jit, tmp_path):
    config, workdir, _ = trained
    config = _copy(config)
    config.export.resolution, config.export.batch_size = RES, 0
    config.export.output_dir = str(tmp_path / "export")
    export.validate(config)
    path = export.run(config, workdir)
    assert path == str(tmp_path / "export" / artifact.ARTIFACT)
    loaded = artifact.load(str(tmp_path / "export"))
    meta = loaded.metadata
    assert meta["step"] == 3 and meta["input_shape"] == [None, RES, RES, 3]
    assert meta["platforms"] == ["cpu", "cuda"] and meta["outputs"] == {"mask": [None, RES, RES, 1]}
    # the artifact takes uint8 and applies the dataset's statistics, which model.json records
    assert meta["input_dtype"] == "uint8"
    assert [aval.dtype for aval in loaded.exported.in_avals] == [np.dtype(np.uint8)] * 2
    norm = pipeline.input_normalization(config.dataset)
    assert sorted(meta["normalization"]) == sorted(norm) == ["bg", "bg_fg"]
    for key, (mean, std) in norm.items():
        np.testing.assert_array_equal(np.float32(meta["normalization"][key][0]), mean)
        np.testing.assert_array_equal(np.float32(meta["normalization"][key][1]), std)
    state = restore.load_for_inference(config, workdir, one_device).state
    predict_step = predict_jit(norm)
    rng = np.random.default_rng(0)
    for n in (1, 3):  # the batch dimension is symbolic
        images = {key: rng.integers(0, 256, (n, RES, RES, 3), np.uint8) for key in norm}
        out = loaded(images["bg"], images["bg_fg"])
        ref = predict_step(state, images["bg"], images["bg_fg"])
        assert out["mask"].shape == (n, RES, RES, 1)
        np.testing.assert_allclose(out["mask"], ref["mask"], atol=1e-6)
        # and both are the model on the reference normalisation (float64, then float32)
        inputs = [
            _reference_normalize(images[key], *norm[key]).astype(np.float32)
            for key in ("bg", "bg_fg")
        ]
        logits = state.apply_fn(
            {"params": state.params, "batch_stats": state.batch_stats}, *inputs, train=False
        )["mask"]
        np.testing.assert_allclose(out["mask"], _sigmoid(logits), atol=1e-5)


def test_export_dsresnet_runs_with_only_the_artifact(dsresnet_state, predict_jit, tmp_path):
    state = dsresnet_state
    norm = normalization.MODEST_NORMALIZATION
    export.export_state(
        state, str(tmp_path / "export"), norm, resolution=RES, batch_size=1, platforms=None
    )
    with open(tmp_path / "export" / artifact.METADATA) as f:
        meta = json.load(f)
    assert meta["input_dtype"] == "uint8"
    assert meta["normalization"] == {k: [list(m), list(s)] for k, (m, s) in norm.items()}
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tmp_path / "export" / artifact.ARTIFACT, alone)
    rng = np.random.default_rng(1)
    bg, bg_fg = (rng.integers(0, 256, (1, RES, RES, 3), np.uint8) for _ in range(2))
    ref = predict_jit(norm)(state, bg, bg_fg)
    # what a user without this package does: only jax.export, uint8 RGB in
    with open(alone / artifact.ARTIFACT, "rb") as f:
        deserialized = jax.export.deserialize(bytearray(f.read()))
    assert [aval.dtype for aval in deserialized.in_avals] == [np.dtype(np.uint8)] * 2
    out = deserialized.call(bg, bg_fg)
    assert sorted(out) == ["depth", "mask"]
    for head in ("mask", "depth"):
        assert out[head].shape == (1, RES, RES, 1)
        np.testing.assert_allclose(out[head], ref[head], atol=1e-6)
    with pytest.raises(
        ValueError,
        match=r"expected \(1, 32, 32, 3\) and called with "
        r"\(2, 32, 32, 3\)",
    ):  # a fixed batch is fixed
        deserialized.call(np.concatenate([bg, bg]), np.concatenate([bg_fg, bg_fg]))
    # and with the package but without model.json: it runs, normalising inside; other dtypes
    # holding the same 0-255 values are cast to the artifact's uint8
    loaded = artifact.load(str(alone))
    assert loaded.metadata == {}
    np.testing.assert_allclose(loaded(bg, bg_fg)["depth"], ref["depth"], atol=1e-6)
    np.testing.assert_array_equal(
        loaded(bg.astype(np.int64), bg_fg.astype(np.float32))["depth"], loaded(bg, bg_fg)["depth"]
    )
    with pytest.raises(
        ValueError,
        match=r"^bg: this model takes RGB values 0-255 \(uint8\); "
        r"got float32 in \[0.0, 1.0\]",
    ):
        loaded(np.linspace(0, 1, bg.size, dtype=np.float32).reshape(bg.shape), bg_fg)


def test_a_float32_artifact_takes_normalised_floats_and_refuses_uint8(tmp_path):
    """Artifacts of 0.2 took normalised float32: `LoadedModel` still runs them on floats and
    refuses uint8 images, which such a model would take unnormalised."""
    spec = jax.ShapeDtypeStruct((1, 4, 4, 3), np.float32)
    old = jax.export.export(jax.jit(lambda bg, bg_fg: {"mask": (bg - bg_fg)[..., :1]}))(spec, spec)
    (tmp_path / artifact.ARTIFACT).write_bytes(old.serialize())
    loaded = artifact.load(str(tmp_path))
    x = np.full((1, 4, 4, 3), 0.5, np.float32)
    np.testing.assert_array_equal(loaded(x, 0.25 * x)["mask"], np.full((1, 4, 4, 1), 0.375))
    with pytest.raises(
        ValueError,
        match=r"^bg: this model \(input_dtype float32\) takes float32 "
        r"inputs already normalised, not uint8",
    ):
        loaded(np.zeros((1, 4, 4, 3), np.uint8), x)


# -- plots ----------------------------------------------------------------------------------


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
        np.testing.assert_array_equal(tiles[0], _enlarge(np.asarray(sample["bg"]), 2))
        np.testing.assert_array_equal(tiles[1], _enlarge(np.asarray(sample["bg_fg"]), 2))
        mask = np.asarray(sample["mask"].convert("L"))
        np.testing.assert_array_equal(tiles[2], _enlarge(np.repeat(mask[..., None], 3, -1), 2))
        depth = np.asarray(sample["depth"].convert("L")) / 255.0
        viridis = matplotlib.colormaps["viridis"](depth)[..., :3] * 255
        np.testing.assert_allclose(tiles[3], _enlarge(viridis, 2), atol=0.5 + 1e-9)
    assert capsys.readouterr().out == (
        f"Wrote {out}: samples 5-6 of seed 3, columns bg | bg_fg | mask | depth\n"
    )
    assert plot_tool.main(["samples", "--out", str(out), "--n", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: samples: expected n >= 1")


@pytest.mark.parametrize(
    "changes, training, message",
    [
        ({"evals.photos.type": "nope"}, False, r"evals.photos.type='nope': expected one of"),
        ({"evals.preview.every": -1}, False, r"evals.preview.every=-1: expected >= 0"),
        ({"evals.preview.samples": 0}, False, r"evals.preview.samples=0: expected >= 1"),
        ({"evals.photos_clean.set": "mine"}, False, r"evals.photos_clean.set='mine': expected"),
        ({"evals.val.type": "preview"}, False, r"evals.val: expected a validation evaluator"),
        ({"evals.val.every": 2}, True, r"evals.val.every=2: expected 1"),
    ],
)
def test_evals_entries_are_checked_in_one_line(data_dir, changes, training, message):
    config = _config(data_dir)
    evaluators.validate(config, training=True)  # the defaults are fine
    for field, value in changes.items():
        node, *path = config, *field.split(".")
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    with pytest.raises(errors.UsageError, match=f"^{message}"):
        evaluators.validate(config, training=training)
    if training:  # mode=evaluate does not care how often training validates
        evaluators.validate(config)
