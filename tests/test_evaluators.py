"""Evaluators: the registry (a new kind is one class and one config entry), the entries'
checks, and the numbers of the baselines and the held-out photographs."""

import itertools
import json
import os
import sys

import ml_collections
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import default
from jaxsegdepth import build, errors, mesh as mesh_lib
from jaxsegdepth.checkpointing import store
from jaxsegdepth.data import datasets, photos, pipeline
from jaxsegdepth.evaluators import base, baselines, catalog
from jaxsegdepth.modes import evaluate
from modes_support import RES, mode_config


@pytest.fixture(scope="module")
def prepared(data_dir):
    """The mode tests' MaskNet config over its prepared 40-sample synthetic set (28 train, 12
    validation; conftest's `data_dir`, built once)."""
    config = mode_config(data_dir)
    datasets.prepare(config.dataset)
    return config


class Scaled(base.Evaluator):
    """A new kind for the test: reports `scale` times the resolution it ran at."""

    TYPE = "scaled"
    TITLE = "the resolution, scaled"

    @classmethod
    def check(cls, settings, field: str) -> None:
        if settings.scale <= 0:
            raise errors.UsageError(f"{field}.scale={settings.scale}: expected > 0")

    @classmethod
    def create(cls, name, settings, context, should_stop):
        return cls(settings.scale)

    def __init__(self, scale: float):
        self.scale = scale

    def run(self, state, resolution: int) -> base.Result:
        return base.Result(metrics={"side": self.scale * resolution})


def test_a_new_kind_is_one_class_and_one_config_entry(prepared, monkeypatch, tmp_path, capsys):
    """Registered, the class is checked, due and made like the built-in kinds, and
    mode=evaluate reports it under its entry's name with its own title."""
    monkeypatch.setitem(base.REGISTRY, Scaled.TYPE, Scaled)
    config = ml_collections.ConfigDict(prepared.to_dict())
    config.evals = ml_collections.ConfigDict(
        {
            "val": {"type": "validation", "every": 1, "evaluate": True},
            "probe": {"type": "scaled", "every": 2, "evaluate": True, "scale": 1.5},
        }
    )
    evaluate.validate(config)
    assert catalog.for_training(config, 1) == ["val"]
    assert sorted(catalog.for_training(config, 2)) == ["probe", "val"]
    assert catalog.title(config, "probe") == "the resolution, scaled"
    config.evals.probe.scale = 0.0
    with pytest.raises(errors.UsageError, match=r"^evals.probe.scale=0.0: expected > 0$"):
        catalog.validate(config)
    config.evals.probe.scale = 1.5

    workdir = str(tmp_path / "run")
    checkpointer = store.Checkpointer(workdir)
    try:
        checkpointer.save(build.create_state(config), {"settings": {"model": "masknet"}})
    finally:
        checkpointer.close()
    config.evaluate.resolutions = (RES, 64)
    result = evaluate.run(config, workdir)
    assert result["probe"] == {str(RES): {"side": 48.0}, "64": {"side": 96.0}}
    with open(os.path.join(workdir, "eval.json")) as f:
        assert json.load(f)["probe"] == result["probe"]
    assert "probe - the resolution, scaled:" in capsys.readouterr().out
    context = base.Context(config, mesh_lib.create_mesh(), ("mask",), None, None)
    assert isinstance(catalog.create("probe", context), Scaled)


def test_an_unregistered_kind_is_refused_naming_the_registered_ones():
    config = default.get_config()
    config.evals.photos.type = "scaled"
    with pytest.raises(errors.UsageError) as raised:
        catalog.validate(config)
    assert str(raised.value) == (
        "evals.photos.type='scaled': expected one of "
        "['baselines', 'photos', 'preview', 'validation']"
    )


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
def test_evals_entries_are_checked_in_one_line(changes, training, message):
    config = default.get_config()
    catalog.validate(config, training=True)  # the defaults are fine
    for field, value in changes.items():
        node, *path = config, *field.split(".")
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    with pytest.raises(errors.UsageError, match=f"^{message}"):
        catalog.validate(config, training=training)
    if training:  # mode=evaluate does not care how often training validates
        catalog.validate(config)


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
    assert baselines.ceiling_iou(masks) == pytest.approx(np.sum(best), rel=1e-12)
    assert best[-1] == 1.0 and min(best) < 0.99  # soft pixels cost even the best mask


def test_held_out_photo_pairs_paste_through_the_mask_only():
    pair = photos.render(0, 3, 96)
    outside = pair["mask"] == 0
    assert 0 < (~outside).mean() < 0.6
    np.testing.assert_array_equal(pair["bg_fg"][outside], pair["bg"][outside])
    assert np.any(pair["bg_fg"][~outside] != pair["bg"][~outside])
    assert photos.generate(0, 3, 96) == photos.generate(0, 3, 96)  # deterministic
    assert photos.generate(0, 3, 96) != photos.generate(0, 4, 96)


def test_the_mean_depth_map_baseline_is_numpys(prepared):
    config = prepared
    context = base.Context(config, None, ("mask", "depth"), None, None)
    got = baselines.Baselines(context).run(None, RES).metrics

    def depth(name):
        return (
            np.concatenate(
                [b["depth"] for b in pipeline.eval_batches(config.dataset, name, 0, RES, 64)]
            ).astype(np.float64)
            / 255.0
        )  # uint8 as stored

    train, val = depth("train"), depth("validation")
    valid = val > 1e-4
    error = (np.broadcast_to(train.mean(0), val.shape) - val)[valid]
    assert got["mean_depth_rmse"] == pytest.approx(np.sqrt(np.mean(error**2)), rel=1e-5)
    assert got["mean_depth_mae"] == pytest.approx(np.mean(np.abs(error)), rel=1e-5)
