"""Data: synthetic generator, MODEST reader/builder, tfds preparation and the grain pipeline."""

import io
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from configs import default
from jaxsegdepth.data import builders, datasets, modest, normalization, pipeline, synthetic
from jaxsegdepth.errors import DatasetError

N_MODEST = 10


def _jpeg(array, quality=90):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _make_modest(root, n=N_MODEST):
    """A MODEST-layout folder: 3 shared backgrounds, n samples; sample 2's bg_fg is grayscale
    and background 1 is 200x180 (both must be handled when loading)."""
    for folder in modest.FOLDERS:
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    lines = []
    for i in range(n):
        s = synthetic.render(7, i)
        b = i % 3
        bg = s["bg"] if b != 1 else np.asarray(Image.fromarray(s["bg"]).resize((200, 180)))
        fg = s["bg_fg"] if i != 2 else s["bg_fg"].mean(-1).astype(np.uint8)
        files = {
            "bg": (f"bg_{b}", bg),
            "bg_fg": (f"fg_{i}", fg),
            "bg_fg_mask": (f"fg_mask_{i}", s["mask"]),
            "bg_fg_depth_map": (f"fg_depth_{i}", s["depth"]),
        }
        for folder, (stem, arr) in files.items():
            path = os.path.join(root, folder, stem + ".jpeg")
            if not os.path.exists(path):
                with open(path, "wb") as f:
                    f.write(_jpeg(arr))
        lines.append("\t".join(stem for stem, _ in files.values()))
    with open(os.path.join(root, "file_map.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return root


def _zip(folder, zip_path, prefix="modest_museum/"):
    with zipfile.ZipFile(zip_path, "w") as z:
        for dirpath, _, files in os.walk(folder):
            for name in files:
                full = os.path.join(dirpath, name)
                z.write(full, prefix + os.path.relpath(full, folder))
    return zip_path


def _dataset_config():
    return default.get_config().dataset


def _modest_cfg(tmp_path, manual, **kw):
    cfg = _dataset_config()
    cfg.update(
        dict(name="modest_museum", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual), **kw)
    )
    return cfg


def _numpy_reference_split(n):
    indices = list(range(n))
    np.random.seed(1)
    np.random.shuffle(indices)
    split = int(0.7 * n)
    return indices[:split], indices[split:]


@pytest.fixture(scope="module")
def synth_cfg(tmp_path_factory):
    cfg = _dataset_config()
    cfg.update(dict(data_dir=str(tmp_path_factory.mktemp("tfds")), num_samples=24, seed=3))
    datasets.prepare(cfg)
    return cfg


def _batches(loader, n):
    it = iter(loader)
    return it, [next(it) for _ in range(n)]


def _same(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


# ----------------------------------------------------------------------------------- split


@pytest.mark.parametrize("n", [1, 7, 10, 101, 4000])
def test_reference_split_is_numpy_legacy_seed_1(n):
    state = np.random.get_state()
    train, val = builders.reference_split(n, 0.3)
    after = np.random.get_state()
    assert np.array_equal(state[1], after[1]) and state[2] == after[2]  # global RNG untouched
    ref_train, ref_val = _numpy_reference_split(n)
    assert train.tolist() == ref_train and val.tolist() == ref_val


# ---------------------------------------------------------------------------------- MODEST


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_modest_build_split_and_loading(tmp_path, as_zip):
    folder = _make_modest(str(tmp_path / "modest"))
    manual = _zip(folder, str(tmp_path / "modest.zip")) if as_zip else folder
    cfg = _modest_cfg(tmp_path, manual)
    prepared = datasets.prepare(cfg)
    ref_train, ref_val = _numpy_reference_split(N_MODEST)
    assert pipeline.split_size(cfg, "train") == len(ref_train) == 7
    assert pipeline.split_size(cfg, "validation") == len(ref_val) == 3
    assert prepared.metadata["grayscale_inputs"] == 1 and prepared.metadata["odd_sized"] == 1

    # Records: the reference split, in its order, with the original JPEG bytes.
    lines = open(os.path.join(folder, "file_map.txt")).read().splitlines()
    for split, ref in (("train", ref_train), ("validation", ref_val)):
        source = prepared.data_source(split)
        assert [int(source[i]["index"]) for i in range(len(source))] == ref
    rec = prepared.data_source("validation")[0]
    stem = lines[ref_val[0]].split("\t")[1]
    assert rec["bg_fg"] == open(os.path.join(folder, "bg_fg", stem + ".jpeg"), "rb").read()

    norm = pipeline.input_normalization(cfg)
    assert np.allclose(norm["bg"][0], normalization.MODEST_NORMALIZATION["bg"][0])
    assert np.allclose(norm["bg_fg"][1], normalization.MODEST_NORMALIZATION["bg_fg"][1])

    # Full resolution: the batch is the decoded files, as uint8 (no resize), and the global
    # sample indices.
    (batch,) = list(
        pipeline.create_loader(
            cfg, "validation", resolution=224, batch_size=3, shuffle=False, seed=0, num_epochs=1
        )
    )
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "bg": ((3, 224, 224, 3), np.uint8),
        "bg_fg": ((3, 224, 224, 3), np.uint8),
        "mask": ((3, 224, 224, 1), np.uint8),
        "depth": ((3, 224, 224, 1), np.uint8),
        "index": ((3,), np.int32),
    }
    assert batch["index"].tolist() == [0, 1, 2]
    for j, idx in enumerate(ref_val):
        stems = lines[idx].split("\t")
        want = np.asarray(
            Image.open(os.path.join(folder, "bg_fg", stems[1] + ".jpeg")).convert("RGB")
        )
        np.testing.assert_array_equal(batch["bg_fg"][j], want)
        want_mask = np.asarray(
            Image.open(os.path.join(folder, "bg_fg_mask", stems[2] + ".jpeg")).convert("L")
        )
        np.testing.assert_array_equal(batch["mask"][j, ..., 0], want_mask)

    # Reduced resolution (and the 200x180 and grayscale files): within JPEG-scaling/resize tolerance.
    batches = list(
        pipeline.create_loader(
            cfg,
            "train",
            resolution=64,
            batch_size=4,
            shuffle=False,
            seed=0,
            num_epochs=1,
            drop_remainder=False,
        )
    )
    assert [b["bg"].shape for b in batches] == [(4, 64, 64, 3), (3, 64, 64, 3)]
    for j, idx in enumerate(ref_train):
        stems = lines[idx].split("\t")
        b = batches[j // 4]
        for key, folder_name, stem in (("bg", "bg", stems[0]), ("bg_fg", "bg_fg", stems[1])):
            img = Image.open(os.path.join(folder, folder_name, stem + ".jpeg")).convert("RGB")
            want = np.asarray(img.resize((64, 64), Image.BILINEAR)) / 255.0
            got = b[key][j % 4] / 255.0
            assert np.abs(got - want).mean() < 0.03, (key, idx)
            if idx == 2 and key == "bg_fg":  # grayscale file -> three equal channels
                assert np.allclose(got[..., 0], got[..., 1]) and np.allclose(
                    got[..., 1], got[..., 2]
                )


def test_modest_missing_file_is_named_with_its_line(tmp_path):
    folder = _make_modest(str(tmp_path / "modest"))
    os.remove(os.path.join(folder, "bg_fg_depth_map", "fg_depth_4.jpeg"))
    with pytest.raises(DatasetError) as e:
        datasets.prepare(_modest_cfg(tmp_path, folder))
    msg = str(e.value)
    assert "bg_fg_depth_map/fg_depth_4.jpeg" in msg and "line 5" in msg and "fg_mask_4" in msg
    assert not os.path.exists(tmp_path / "tfds" / "modest_museum" / "default" / "1.0.0")


@pytest.mark.parametrize(
    "content,expected",
    [("bg_0\tfg_0\tfg_mask_0\tfg_depth_0\nbg_1\tfg_1\tfg_mask_1\n", "line 2"), ("", "empty")],
)
def test_modest_malformed_or_empty_file_map(tmp_path, content, expected):
    folder = _make_modest(str(tmp_path / "modest"), n=2)
    with open(os.path.join(folder, "file_map.txt"), "w") as f:
        f.write(content)
    with pytest.raises(DatasetError) as e:
        datasets.prepare(_modest_cfg(tmp_path, folder))
    assert expected in str(e.value)
    if content:
        assert repr("bg_1\tfg_1\tfg_mask_1") in str(e.value)  # the offending line, quoted


def test_modest_corrupt_jpeg_error_or_skip(tmp_path):
    folder = _make_modest(str(tmp_path / "modest"))
    bad = os.path.join(folder, "bg_fg", "fg_6.jpeg")
    data = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write(data[: len(data) // 2])  # truncated
    zip_path = _zip(folder, str(tmp_path / "modest.zip"))
    with pytest.raises(DatasetError) as e:
        datasets.prepare(_modest_cfg(tmp_path, zip_path))
    assert "bg_fg/fg_6.jpeg" in str(e.value) and "skip_corrupt" in str(e.value)

    cfg = _modest_cfg(tmp_path, zip_path, skip_corrupt=True)
    prepared = datasets.prepare(cfg)
    assert len(prepared.skipped) == 1 and prepared.skipped[0]["line"] == 7
    assert prepared.skipped[0]["file"].endswith("bg_fg/fg_6.jpeg")
    ref_train, ref_val = _numpy_reference_split(N_MODEST)
    sizes = prepared.split_sizes
    assert sizes["train"] + sizes["validation"] == N_MODEST - 1
    for split, ref in (
        ("train", ref_train),
        ("validation", ref_val),
    ):  # the others keep their split
        source = prepared.data_source(split)
        assert [int(source[i]["index"]) for i in range(len(source))] == [i for i in ref if i != 6]
    # Reusing that build without skip_corrupt is an error: nothing is lost silently.
    with pytest.raises(DatasetError, match="skip_corrupt"):
        datasets.prepare(_modest_cfg(tmp_path, zip_path))


def test_modest_needs_manual_dir(tmp_path):
    with pytest.raises(DatasetError, match="manual_dir"):
        datasets.prepare(_modest_cfg(tmp_path, ""))


# ------------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic():
    a, b = synthetic.generate(5, 11), synthetic.generate(5, 11)
    assert a == b  # identical JPEG bytes
    assert synthetic.generate(6, 11)["bg_fg"] != a["bg_fg"]
    assert synthetic.generate(5, 12)["bg_fg"] != a["bg_fg"]
    for k, channels in (("bg", 3), ("bg_fg", 3), ("mask", 1), ("depth", 1)):
        im = Image.open(io.BytesIO(a[k]))
        assert im.format == "JPEG" and im.size == (224, 224) and len(im.getbands()) == channels


def test_synthetic_mask_and_depth_agree():
    for i in range(8):
        s = synthetic.render(0, i)
        mask = s["mask"] > 127
        depth = s["depth"].astype(np.float64) / 255
        assert 0.002 < mask.mean() < 0.5
        change = np.abs(s["bg"].astype(int) - s["bg_fg"])
        # Outside the figures: their soft shadows, and unless the plate is clean a light change
        # (a gain of 0.9-1.1 with a colour cast of up to 3%).
        if synthetic.kind(0, i)[1]:
            assert change[~mask].mean() < 5
            assert change[mask].mean() > 4 * change[~mask].mean()
        else:
            assert change[~mask].mean() < 0.14 * s["bg"].mean() + 3
        assert not np.array_equal(s["bg"][mask], s["bg_fg"][mask])
        grown = mask.copy()
        for _ in range(4):  # 4-pixel dilation
            p = np.pad(grown, 1)
            grown = p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
        ring = grown & ~mask
        assert depth[mask].mean() > depth[ring].mean() + 0.02, i
        # Figures are nearer than what is above them (floor/wall behind): check column-wise.
        ys, xs = np.nonzero(mask)
        top = ys.min()
        if top > 5:
            col = xs[ys == top][0]
            assert depth[top, col] > depth[top - 5, col]


# ------------------------------------------------------------------------------- pipeline


def test_default_config_fields():
    cfg = _dataset_config()
    for key, value in dict(
        name="synthetic_museum",
        data_dir="",
        manual_dir="",
        skip_corrupt=False,
        worker_count="auto",
        read_threads="auto",
        val_fraction=0.3,
    ).items():
        assert cfg[key] == value
    assert cfg.num_samples > 0


def test_synthetic_build_sizes_and_normalization(synth_cfg):
    assert pipeline.split_size(synth_cfg, "train") == 16
    assert pipeline.split_size(synth_cfg, "validation") == 8
    norm = pipeline.input_normalization(synth_cfg)
    for key in ("bg", "bg_fg"):
        mean, std = norm[key]
        assert (
            mean.shape == std.shape == (3,)
            and np.all((mean > 0.2) & (mean < 0.8))
            and np.all(std > 0.1)
        )
    # The stored statistics are those of every sample's decoded inputs (both splits; resizing
    # to 64 px keeps the mean and smooths away a little of the spread).
    bg_fg = np.concatenate(
        [
            batch["bg_fg"]
            for split in ("train", "validation")
            for batch in pipeline.create_loader(
                synth_cfg, split, resolution=64, batch_size=8, shuffle=False, seed=0, num_epochs=1
            )
        ]
    )
    assert len(bg_fg) == 24
    x = (bg_fg / 255.0).reshape(-1, 3)
    assert np.allclose(x.mean(0), norm["bg_fg"][0], atol=0.01), (x.mean(0), norm["bg_fg"][0])
    y = normalization.normalize(bg_fg, *norm["bg_fg"]).reshape(-1, 3)
    assert np.all(np.abs(y.mean(0)) < 0.05) and np.all(np.abs(y.std(0) - 1) < 0.1), (
        y.mean(0),
        y.std(0),
    )


@pytest.mark.parametrize("shard", [(0, 1), (0, 2), (1, 2)])
def test_iterator_state_restore_is_exact(synth_cfg, shard):
    kw = dict(resolution=32, batch_size=4 // shard[1], shuffle=True, seed=11, crop=24, shard=shard)
    loader = pipeline.create_loader(synth_cfg, "train", **kw)
    it, _ = _batches(loader, 3)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]  # crosses the epoch boundary (4 batches per epoch)
    restored = iter(pipeline.create_loader(synth_cfg, "train", **kw))
    restored.set_state(state)
    assert _same([next(restored) for _ in range(4)], expected)
    # Epochs are reshuffled: epoch 2 is not epoch 1 again.
    _, two_epochs = _batches(pipeline.create_loader(synth_cfg, "train", **kw), 8)
    assert not _same(two_epochs[:4], two_epochs[4:])


def test_worker_processes_match_in_process_and_restore(synth_cfg):
    kw = dict(resolution=32, batch_size=4, shuffle=True, seed=5)
    _, inline = _batches(pipeline.create_loader(synth_cfg, "train", worker_count=0, **kw), 5)
    it, first = _batches(pipeline.create_loader(synth_cfg, "train", worker_count=2, **kw), 2)
    state = it.get_state()
    rest = [next(it) for _ in range(3)]
    it.close()
    assert _same(first + rest, inline)
    restored = iter(pipeline.create_loader(synth_cfg, "train", worker_count=2, **kw))
    restored.set_state(state)
    assert _same([next(restored) for _ in range(3)], rest)
    restored.close()


def test_random_crops_are_aligned_windows_of_the_whole_images(synth_cfg):
    kw = dict(resolution=64, batch_size=4, shuffle=True, seed=7, num_epochs=1)
    whole = list(pipeline.create_loader(synth_cfg, "train", **kw))
    crops = list(pipeline.create_loader(synth_cfg, "train", crop=32, **kw))
    assert _same(crops, list(pipeline.create_loader(synth_cfg, "train", crop=32, **kw)))
    corners = set()
    for w, c in zip(whole, crops):
        assert all(c[k].shape == (4, 32, 32, w[k].shape[-1]) for k in w if k != "index")
        np.testing.assert_array_equal(c["index"], w["index"])
        for i in range(4):  # find the window in the whole bg; all four arrays share it
            found = [
                (y, x)
                for y in range(33)
                for x in range(33)
                if np.array_equal(w["bg"][i, y : y + 32, x : x + 32], c["bg"][i])
            ]
            assert len(found) == 1, found
            y, x = found[0]
            for k in ("bg_fg", "mask", "depth"):
                np.testing.assert_array_equal(c[k][i], w[k][i, y : y + 32, x : x + 32])
            corners.add(found[0])
    assert len(corners) > 8  # placed at random, not in one place
    with pytest.raises(
        DatasetError, match=r"^crop=96: expected 0 \(none\) up to the resolution 64"
    ):
        pipeline.create_loader(synth_cfg, "train", crop=96, **kw)


def _merged(per_process):
    """Global batches from each process's list of batches: batch g of every process that has
    one, concatenated in process order."""
    merged = []
    for g in range(max(len(batches) for batches in per_process)):
        parts = [batches[g] for batches in per_process if g < len(batches)]
        merged.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    return merged


def test_train_batches_do_not_depend_on_the_process_count(synth_cfg):
    cfg = synth_cfg
    kw = dict(resolution=32, shuffle=True, seed=7, crop=24, num_epochs=3)
    # 16 samples, global batch 6: 2 global batches per epoch, 4 samples left out of each epoch.
    single = list(pipeline.create_loader(cfg, "train", batch_size=6, shard=(0, 1), **kw))
    shards = [
        list(pipeline.create_loader(cfg, "train", batch_size=3, shard=(i, 2), **kw))
        for i in range(2)
    ]
    assert len(single) == 6 and [len(s) for s in shards] == [6, 6]
    assert all(len(b["bg"]) == 3 for s in shards for b in s)
    assert _same(_merged(shards), single)  # images, crops and sample indices (augmentation's)
    assert not _same(single[:2], single[2:4])  # epochs differ (reshuffled and re-cropped)
    assert [b["index"].tolist() for b in single[2:4]] == [
        [16 + int(i) for i in b["index"]] for b in single[:2]
    ]  # epoch e: e * 16 + position
    with pytest.raises(DatasetError, match="global batch of 18"):  # 16 samples < 2 x 9
        pipeline.create_loader(cfg, "train", batch_size=9, shard=(1, 2), **kw)
    with pytest.raises(DatasetError, match="shard"):
        pipeline.create_loader(cfg, "train", batch_size=3, shard=(2, 2), **kw)


@pytest.mark.parametrize("batch_size", [3, 5, 8])
def test_validation_shards_cover_every_sample_once(synth_cfg, batch_size):
    kw = dict(resolution=32, shuffle=False, seed=0, num_epochs=1, drop_remainder=False)
    full = list(pipeline.create_loader(synth_cfg, "validation", batch_size=3, **kw))
    assert [len(b["bg"]) for b in full] == [3, 3, 2]  # 8 samples, last batch smaller
    single = list(
        pipeline.create_loader(
            synth_cfg, "validation", batch_size=2 * batch_size, shard=(0, 1), **kw
        )
    )
    shards = [
        list(
            pipeline.create_loader(
                synth_cfg, "validation", batch_size=batch_size, shard=(i, 2), **kw
            )
        )
        for i in range(2)
    ]
    # 3: process 1 has no last batch; 5: its last is smaller (3); 8: it has no sample at all.
    assert [[len(b["bg"]) for b in s] for s in shards] == {
        3: [[3, 2], [3]],
        5: [[5], [3]],
        8: [[8], []],
    }[batch_size]
    assert _same(_merged(shards), single)
    # Every sample exactly once, within the number of batches evaluation iterates per process.
    rows = [r.tobytes() for s in shards for b in s for r in b["bg_fg"]]
    assert len(rows) == len(set(rows)) == 8
    assert set(rows) == {r.tobytes() for b in full for r in b["bg_fg"]}
    assert all(len(s) <= -(-8 // (2 * batch_size)) for s in shards)
    with pytest.raises(DatasetError, match="split"):
        pipeline.split_size(synth_cfg, "test")


def test_decode_error_names_the_sample():
    good = synthetic.generate(0, 0)
    record = dict(good, bg_fg=good["bg_fg"][:200], source=b"file_map.txt line 9 ('a\\tb\\tc\\td')")
    with pytest.raises(DatasetError, match="'bg_fg' image of file_map.txt line 9"):
        pipeline.decode_sample(record, 32)


def test_auto_loader_settings_follow_the_cpu_count_and_overrides_are_checked():
    cfg = _dataset_config()  # worker_count = read_threads = "auto"
    assert pipeline.loader_settings(cfg, cpus=2)[:2] == (0, 2)  # this CI machine's size
    assert pipeline.loader_settings(cfg, cpus=4)[:2] == (0, 3)
    assert pipeline.loader_settings(cfg, cpus=5)[:2] == (2, 2)
    assert pipeline.loader_settings(cfg, cpus=16)[:2] == (7, 2)  # one CPU left to the loop
    assert "on 16 CPU(s)" in pipeline.loader_settings(cfg, cpus=16).reason
    cfg.worker_count, cfg.read_threads = "3", 1  # a command-line override arrives as a string
    assert pipeline.loader_settings(cfg, cpus=64) == (3, 1, "")
    cfg.read_threads = "auto"
    assert pipeline.loader_settings(cfg, cpus=64)[:2] == (3, 2)
    cfg.worker_count = 0  # one process on a big host: a few threads, not one per CPU
    assert pipeline.loader_settings(cfg, cpus=64)[:2] == (0, 3)
    for field, value, minimum in (
        ("worker_count", "many", 0),
        ("worker_count", -1, 0),
        ("read_threads", 0, 1),
        ("read_threads", 1.5, 1),
    ):
        bad = _dataset_config()
        bad[field] = value
        with pytest.raises(
            DatasetError,
            match=rf"^dataset\.{field}={value!r}: expected 'auto' "
            rf"or an integer >= {minimum}$",
        ):
            pipeline.validate(bad)
    # The block is not type-safe (for "auto"), so validate checks the other fields' types.
    for field, value, expected in (
        ("num_samples", "64", "int"),
        ("val_fraction", "0.5", "number"),
        ("seed", 1.5, "int"),
        ("skip_corrupt", 1, "bool"),
    ):
        bad = _dataset_config()
        bad[field] = value
        with pytest.raises(
            DatasetError,
            match=rf"^dataset\.{field}={value!r}: expected a "
            rf"{expected}$",
        ):
            pipeline.validate(bad)
