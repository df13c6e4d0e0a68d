"""mode=evaluate on the tiny MaskNet run (conftest's `trained`): exact metrics against NumPy,
another run's checkpoint on another dataset, its checks."""

import json
import os

import numpy as np
import pytest

from jaxsegdepth import errors
from jaxsegdepth.checkpointing import select
from jaxsegdepth.data import builders, modest, photos, pipeline
from jaxsegdepth.modes import evaluate
from tools import modest_photos
from modes_support import RES, copy_config, mean_iou, mode_config, reference_normalize, sigmoid


def test_evaluate_writes_exact_metrics(trained, tmp_path):
    config, workdir, record = trained
    config = copy_config(config)
    config.evaluate.resolutions, config.evals.photos.pairs = (RES, 64), 8
    config.evals.photos_moved_4px.update(dict(evaluate=True, pairs=8))
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
    state = select.load_for_inference(config, workdir).state
    for res in (RES, 64):
        loader = pipeline.eval_batches(config.dataset, "validation", 0, res, 5)
        ious, soft = [], []
        norm = pipeline.input_normalization(config.dataset)
        for batch in loader:  # uint8, as the loader ships it: normalised here, in float64
            inputs = [
                reference_normalize(batch[k], *norm[k]).astype(np.float32) for k in ("bg", "bg_fg")
            ]
            logits = state.apply_fn(
                {"params": state.params, "batch_stats": state.batch_stats}, *inputs, train=False
            )["mask"]
            p, t = sigmoid(logits), np.asarray(batch["mask"], np.float64) / 255.0
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
        batches = list(pipeline.eval_batches(config.dataset, name, 0, RES, 64))
        # uint8 as stored: RGB and the mask in [0, 1]
        images = {
            k: np.concatenate([b[k] for b in batches]).astype(np.float64) / 255.0
            for k in ("bg", "bg_fg", "mask")
        }
        return np.abs(images["bg"] - images["bg_fg"]).max(-1, keepdims=True), images["mask"]

    (train_diff, train_mask), (val_diff, val_mask) = split("train"), split("validation")
    thresholds = np.round(np.arange(0.01, 0.51, 0.01), 2)
    best = thresholds[int(np.argmax([mean_iou(train_diff > t, train_mask) for t in thresholds]))]
    baseline = written["baselines"][str(RES)]
    assert baseline["difference_threshold"] == pytest.approx(best)
    assert baseline["difference_iou"] == pytest.approx(
        mean_iou(val_diff > best, val_mask), abs=1e-5
    )
    assert "mean_depth_rmse" not in baseline  # MaskNet predicts no depth

    def ceiling(masks):  # the best of the masks {t >= v} over every value v of each target
        return np.mean(
            [max(mean_iou((t >= v)[None], t[None]) for v in np.unique(t)) for t in masks]
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
        int(np.argmax([mean_iou(tuning_difference > t, tuning_target) for t in thresholds]))
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
            "model_iou": mean_iou(sigmoid(logits) > 0.5, target),
            "difference_threshold": photo_best,
            "difference_iou": mean_iou(difference > photo_best, target),
            "ceiling_iou": ceiling(target),
            "aligned_pairs": 0,  # exact plates: every registration finds no motion
            "refused_pairs": 0,
        },
        abs=1e-5,
    )
    statuses = {e["status"] for e in written["details"]["photos"][str(RES)]["registration"]}
    assert statuses == {"still"}
    # a moved camera (at 64 px: at 32 the 4 px move is half a pixel): scored with and without
    # registration, which the threshold needs most
    moved = written["photos_moved_4px"]["64"]
    assert moved["aligned_pairs"] == 8 and moved["pairs"] == 8
    assert moved["difference_iou"] > moved["difference_iou_unaligned"] + 0.2
    assert set(written["photos"]) == {str(RES), "64"}
    assert os.path.getsize(os.path.join(workdir, f"photos_{RES}px.png")) > 0


def test_evaluate_scores_another_runs_checkpoint_on_another_dataset(trained, tmp_path):
    """The synthetic-trained MaskNet on a MODEST-layout folder of photo pairs: the checkpoint
    from model_path, the data from config.dataset, the inputs normalised with the model's own
    statistics (its card's, not MODEST's), the results in the new workdir; the trained run's
    folder is left as it was."""
    base, workdir, record = trained
    folder = str(tmp_path / "photos")
    modest_photos.write(folder, pairs=20, size=64)
    config = copy_config(base)
    config.model_path, config.evals.photos.evaluate = workdir, False
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
        reference_normalize(
            np.stack([read(i, column, "RGB") for i in val]),
            *pipeline.input_normalization(base.dataset)[key],
        ).astype(np.float32)
        for column, key in enumerate(("bg", "bg_fg"))
    ]
    target = np.stack([read(i, 2, "L") for i in val])[..., None] / 255.0
    state = select.load_for_inference(base, workdir).state
    probs = sigmoid(
        state.apply_fn(
            {"params": state.params, "batch_stats": state.batch_stats}, *inputs, train=False
        )["mask"]
    )
    got = written["metrics"][str(RES)]
    assert got["iou"] == pytest.approx(mean_iou(probs > 0.5, target), abs=1e-5)
    assert got["iou_soft"] == pytest.approx(mean_iou(probs, target), abs=1e-5)


def test_evaluate_without_checkpoint_names_the_folder(data_dir, tmp_path):
    folder = os.path.join(os.path.abspath(tmp_path / "empty"), "checkpoints")
    with pytest.raises(errors.RunError) as raised:
        evaluate.run(mode_config(data_dir), str(tmp_path / "empty"))
    assert str(raised.value).startswith(f"no checkpoint directory {folder}: train first")
    assert raised.value.exit_code == 1


def test_evaluate_validate_refuses_a_size_the_model_cannot_take(data_dir):
    config = mode_config(data_dir, "dsresnet")
    config.evaluate.resolutions = (RES, 48)
    with pytest.raises(
        errors.UsageError,
        match="^evaluate.resolutions: resolution 48 is not a multiple of 32, which dsresnet needs$",
    ):
        evaluate.validate(config)
