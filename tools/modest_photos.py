"""Writes real-photograph pairs (`jaxsegdepth.data.photos`) as a MODEST Museum folder.

    python tools/modest_photos.py OUT [--pairs 300] [--size 224] [--seed 1] [--set photos]

OUT gets `bg/`, `bg_fg/`, `bg_fg_mask/` and `bg_fg_depth_map/`, one `<stem>.jpeg` each per
pair, and `file_map.txt`, one line per pair with its four stems tab-separated (the layout in
docs/reference.md), so `--config.dataset.name=modest_museum --config.dataset.manual_dir=OUT`
reads it. `--set` picks the kind of pairs (`photos.SETS`): `photos_capture` gives other shapes
and capture nuisances, for fine-tuning on pairs like the ones `photos_capture` evaluates.
The pairs have no depth: every depth map is 0, which the depth metrics read as "no depth here"
(below `metrics.MIN_DEPTH`; they come out NaN), so train and evaluate the mask only. Seed 0 is
the evaluated sets' held-out pairs: the default seed 1 keeps them apart.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxsegdepth.data import modest, photos, synthetic

STEM_PREFIXES = ("bg", "bg_fg", "mask", "depth")  # per folder, in modest.FOLDERS order


def write(
    out: str, pairs: int, size: int = synthetic.SIZE, seed: int = 1, photo_set: str = "photos"
) -> None:
    """Writes `pairs` pairs of `photo_set`'s kind (`photos.SETS`: its shapes and nuisances)
    with `seed` at `size` x `size` into `out`."""
    kind = photos.SETS[photo_set]
    for folder in modest.FOLDERS:
        os.makedirs(os.path.join(out, folder), exist_ok=True)
    depth = synthetic.encode_jpeg(np.zeros((size, size), np.uint8), synthetic.JPEG_QUALITY_TARGET)
    lines = []
    for index in range(pairs):
        pair = photos.generate(seed, index, size, kind.shapes, kind.nuisances)
        stems = [f"{prefix}_{index:05d}" for prefix in STEM_PREFIXES]
        for folder, stem, data in zip(
            modest.FOLDERS, stems, (pair["bg"], pair["bg_fg"], pair["mask"], depth)
        ):
            with open(os.path.join(out, folder, f"{stem}.jpeg"), "wb") as f:
                f.write(data)
        lines.append("\t".join(stems))
    with open(os.path.join(out, "file_map.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the folder to write (created)")
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--size", type=int, default=synthetic.SIZE, help="side in pixels")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--set",
        default="photos",
        choices=sorted(photos.SETS),
        help="the kind of pairs: the generator's shapes or others, clean or with capture "
        "nuisances (the evaluated sets use seed 0)",
    )
    args = parser.parse_args()
    write(args.out, args.pairs, args.size, args.seed, args.set)
    print(f"wrote {args.pairs} {args.set} pairs of {args.size}x{args.size} to {args.out}")


if __name__ == "__main__":
    main()
