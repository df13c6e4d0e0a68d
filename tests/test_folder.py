"""The `folder` dataset (data/folder.py, builders.FolderDataset): pairing by file name, the
errors that name the first bad file, a set without depth maps that loads, trains and reports
the mask alone."""

import os

import cv2
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import default
from jaxsegdepth import build, errors, losses, preprocess, steps
from jaxsegdepth.data import builders, datasets, folder, normalization, pipeline
from jaxsegdepth.errors import DatasetError

N = 10


def _make(root, n=N, depth=False, size=(40, 32)):
    """`n` samples s00.. : bg JPEG, bg_fg and mask PNG (and depth PNG); returns the masks."""
    rng = np.random.default_rng(0)
    for sub in ("bg", "bg_fg", "mask") + (("depth",) if depth else ()):
        os.makedirs(root / sub, exist_ok=True)
    masks = []
    for i in range(n):
        bg = rng.integers(0, 256, (size[1], size[0], 3), np.uint8)
        mask = np.zeros(bg.shape[:2], np.uint8)
        mask[5 : 5 + i + 3, 4:20] = 255
        scene = np.where(mask[..., None] > 0, np.uint8(200), bg)
        Image.fromarray(bg).save(root / "bg" / f"s{i:02d}.jpg")
        Image.fromarray(scene).save(root / "bg_fg" / f"s{i:02d}.png")
        Image.fromarray(mask).save(root / "mask" / f"s{i:02d}.png")
        if depth:
            Image.fromarray(np.full(bg.shape[:2], 10 * i, np.uint8)).save(
                root / "depth" / f"s{i:02d}.png"
            )
        masks.append(mask)
    return masks


def _config(tmp_path, root):
    config = default.get_config()
    config.dataset.update(name="folder", manual_dir=str(root), data_dir=str(tmp_path / "tfds"))
    return config


def test_pairs_by_name_and_says_which_heads(tmp_path):
    _make(tmp_path / "own", n=3)
    samples = folder.list_samples(str(tmp_path / "own"))
    assert not samples.has_depth and folder.target_heads(str(tmp_path / "own")) == ("mask",)
    assert [os.path.basename(f["bg"]) for f in samples.files] == ["s00.jpg", "s01.jpg", "s02.jpg"]
    assert [os.path.basename(f["mask"]) for f in samples.files][0] == "s00.png"
    os.makedirs(tmp_path / "own" / "depth")
    assert folder.target_heads(str(tmp_path / "own")) == ("mask", "depth")


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda r: os.remove(r / "mask" / "s01.png"),
            "{r}/bg/s01.jpg: no partner in {r}/mask \\(expected s01.\\*\\)",
        ),
        (
            lambda r: (r / "bg_fg" / "extra.png").write_bytes(b"x"),
            "{r}/bg_fg/extra.png: no partner in {r}/bg \\(expected extra.\\*\\)",
        ),
        (
            lambda r: (r / "mask" / "s02.jpg").write_bytes(b"x"),
            "{r}/mask/s02.png: {r}/mask/s02.jpg has the same name",
        ),
        (
            lambda r: os.rename(r / "mask", r / "masks"),
            "{r}/mask: no such folder \\(a folder dataset holds bg/, bg_fg/, mask/ and optionally depth/\\)",
        ),
    ],
)
def test_the_first_unpaired_file_is_named(tmp_path, damage, message):
    root = tmp_path / "own"
    _make(root, n=3)
    damage(root)
    with pytest.raises(DatasetError, match=message.format(r=root)):
        datasets.validate(_config(tmp_path, root).dataset)


def test_an_unreadable_file_is_named_when_the_set_is_built(tmp_path):
    root = tmp_path / "own"
    _make(root, n=3)
    (root / "mask" / "s01.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match=f"{root}/mask/s01.png: cannot be read as an image"):
        datasets.prepare(_config(tmp_path, root).dataset)
    config = _config(tmp_path, tmp_path / "nothing")
    with pytest.raises(DatasetError, match="no such folder"):
        datasets.validate(config.dataset)
    config.dataset.manual_dir = ""
    with pytest.raises(
        DatasetError, match="dataset.name='folder' needs --config.dataset.manual_dir"
    ):
        datasets.validate(config.dataset)


def test_a_set_without_depth_builds_loads_and_trains_the_mask_alone(tmp_path):
    root = tmp_path / "own"
    masks = _make(root)
    config = _config(tmp_path, root)
    prepared = datasets.prepare(config.dataset)
    train, val = builders.reference_split(N)
    assert prepared.split_sizes == {"train": len(train), "validation": len(val)}
    assert set(prepared.normalization) == {"bg", "bg_fg"}
    assert sorted(prepared.data_source("train")[0]) == ["bg", "bg_fg", "index", "mask", "source"]
    loader = pipeline.create_loader(
        config.dataset,
        "validation",
        resolution=32,
        batch_size=len(val),
        shuffle=False,
        seed=0,
        num_epochs=1,
        drop_remainder=False,
        worker_count=0,
    )
    batch = next(iter(loader))
    assert sorted(batch) == ["bg", "bg_fg", "index", "mask"]
    # the loader's one resize: OpenCV bilinear (40x32 -> 32x32 shrinks less than 2x)
    want = [cv2.resize(masks[i], (32, 32), interpolation=cv2.INTER_LINEAR) for i in val]
    np.testing.assert_array_equal(batch["mask"][..., 0], np.stack(want))
    assert np.stack(want).max() == 255
    # The loss keeps the mask terms; the heads trained, reported and carded are the mask's
    assert build.loss_spec(config) == {"mask": {"bce_dice": 1.0}}
    assert build.heads(config) == ("mask",) and build.missing_targets(config) == ["depth"]
    config.loss = {"depth": {"rmse": 1.0}}
    with pytest.raises(errors.UsageError, match="loss: dataset folder has no targets for"):
        build.validate(config, (32,))


def test_evaluation_without_depth_targets_reports_no_depth_metric(dsresnet_state):
    rng = np.random.default_rng(0)
    batch = {
        "bg": jnp.asarray(rng.integers(0, 256, (2, 32, 32, 3), np.uint8)),
        "bg_fg": jnp.asarray(rng.integers(0, 256, (2, 32, 32, 3), np.uint8)),
        "mask": jnp.asarray(rng.integers(0, 2, (2, 32, 32, 1), np.uint8) * 255),
    }
    out = steps.eval_step(
        dsresnet_state,
        batch,
        loss_fn=losses.compose({"mask": {"bce_dice": 1.0}}),
        preprocess=preprocess.from_normalization(normalization.MODEST_NORMALIZATION),
    )
    assert sorted(out["sums"]) == ["images", "iou", "iou_soft"]
    assert sorted(out) == ["loss", "mask/bce_dice", "mask/loss", "sums"]
