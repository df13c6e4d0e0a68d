"""What the mode tests share: one tiny MaskNet recipe (1 epoch, 32 px, 40 samples: 28 train,
12 validation, so the last validation batch of 8 is padded) and NumPy references. The run
itself and the shared fixtures are conftest's (`trained`, `data_dir`, `one_device`,
`predict_jit`, `pair`)."""

import jax
import ml_collections
import numpy as np
from PIL import Image

from configs import default
from jaxsegdepth.modes import predict

RES = 32


def mode_config(data_dir, model="masknet"):
    config = default.get_config()
    config.model = model
    if model == "masknet":
        config.loss = ml_collections.ConfigDict({"mask": {"bce": 1.0, "dice": 2.0}})
    config.dataset.num_samples = 40
    config.dataset.data_dir = data_dir
    config.augment.photometric = False
    config.stages = ((RES, 1),)
    config.batch_size = 8
    config.evals.preview.samples = 2
    for name in config.evals:  # the moved-camera and exposure-step sets: test_evaluate runs one
        config.evals[name].evaluate &= not name.startswith(("photos_moved_", "photos_exposure"))
    config.log_every_steps = 1
    config.compilation_cache_dir = "none"
    return config


def copy_config(config):
    return ml_collections.ConfigDict(config.to_dict())


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def reference_normalize(image, mean, std):
    """The reference formula, in float64: uint8 RGB / 255, minus the mean, over the std."""
    return (np.asarray(image, np.float64) / 255.0 - np.asarray(mean, np.float64)) / np.asarray(
        std, np.float64
    )


def mean_iou(pred, target) -> float:
    """Per-image IoU of (N, H, W, 1) predictions against targets, averaged, in float64."""
    inter = (pred * target).sum((1, 2, 3))
    return np.mean((inter + 1e-6) / ((pred + target).sum((1, 2, 3)) - inter + 1e-6))


def write_image(path, width, height, seed) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)).save(path)


def rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def enlarge(image, factor):
    return np.repeat(np.repeat(image, factor, 0), factor, 1)


def expected_probabilities(state, bg_path, bg_fg_path, norm, model_hw):
    """{head: (H, W) probability} recomputed without `predict`: PIL bilinear resize to
    `model_hw`, float64 normalisation, the model's logits, float64 sigmoid, PIL resize back."""
    images = [rgb(bg_path), rgb(bg_fg_path)]
    height, width = images[0].shape[:2]
    inputs = [
        reference_normalize(
            np.asarray(Image.fromarray(image).resize(model_hw[::-1], Image.BILINEAR)), *norm[key]
        )[None].astype(np.float32)
        for image, key in zip(images, ("bg", "bg_fg"))
    ]
    logits = jax.jit(state.apply_fn, static_argnames="train")(
        {"params": state.params, "batch_stats": state.batch_stats}, *inputs, train=False
    )
    return {
        head: np.asarray(
            Image.fromarray(sigmoid(value)[0, ..., 0].astype(np.float32)).resize(
                (width, height), Image.BILINEAR
            )
        )
        for head, value in logits.items()
    }


def predicted(config, workdir, pair, out) -> dict:
    """{file name: bytes} that `predict.run` writes for one pair into `out`."""
    config.predict.bg, config.predict.bg_fg = pair
    config.predict.output_dir = str(out)
    predict.validate(config)
    predict.run(config, workdir)
    return {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".png"}
