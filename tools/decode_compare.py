"""Yardstick: single-thread cost of decoding + resizing one sample's four JPEGs, three ways.

    python tools/decode_compare.py [--resolutions 96,160,224] [--samples 300] [--json out.json]

On the synthetic set of `configs/default.py` (built if needed, as the benchmark does), per
sample (bg, bg_fg as RGB; mask, depth as grey) in microseconds of one thread:
- `pil`: PIL `draft` (DCT scaling) + PIL bilinear resize;
- `pil_cv2`: PIL `draft` + one OpenCV resize;
- `loader`: `pipeline.decode_image`, libjpeg-turbo through simplejpeg at the DCT scale + one
  OpenCV resize (what the loader runs).
Also the time to read a record from the tfds source. docs/data.md quotes it.
"""

import argparse
import io
import json
import os
import sys
import time

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxsegdepth import names
from tools import benchmark as benchmark_tool
from jaxsegdepth.data import datasets, pipeline

KEYS = names.INPUTS + names.HEADS


def _pil(data: bytes, mode: str, resolution: int, resize) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.draft(im.mode, (resolution, resolution))
        im = im.convert(mode)
        if im.size == (resolution, resolution):
            return np.asarray(im)
        return resize(im, resolution)


def pil(data, mode, resolution):
    return _pil(data, mode, resolution, lambda im, r: np.asarray(im.resize((r, r), Image.BILINEAR)))


def pil_cv2(data, mode, resolution):
    return _pil(
        data,
        mode,
        resolution,
        lambda im, r: cv2.resize(np.asarray(im), (r, r), interpolation=cv2.INTER_LINEAR),
    )


WAYS = {"pil": pil, "pil_cv2": pil_cv2, "loader": pipeline.decode_image}


def per_sample_us(decode, records, resolution: int) -> float:
    start = time.perf_counter()
    for record in records:
        for key in KEYS:
            decode(record[key], "RGB" if key in names.INPUTS else "L", resolution)
    return (time.perf_counter() - start) / len(records) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", default="96,160,224")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    ds_config = benchmark_tool.loader_config()
    datasets.prepare(ds_config)
    source = datasets.load(ds_config).data_source("train")
    count = min(args.samples, len(source))
    start = time.perf_counter()
    records = [source[i] for i in range(count)]
    result = {
        "samples": count,
        "read_us": (time.perf_counter() - start) / count * 1e6,
        "decode_us": {},
    }
    for resolution in (int(r) for r in args.resolutions.split(",")):
        for way, decode in WAYS.items():
            per_sample_us(decode, records[:20], resolution)  # warm caches
        result["decode_us"][resolution] = {
            way: min(per_sample_us(decode, records, resolution) for _ in range(2))
            for way, decode in WAYS.items()
        }
    print(f"record read: {result['read_us']:.0f} us/sample ({count} samples)")
    print(f"{'res':>4} " + " ".join(f"{way:>9}" for way in WAYS) + "   (us per sample, 1 thread)")
    for resolution, row in result["decode_us"].items():
        print(f"{resolution:>4} " + " ".join(f"{row[way]:>9.0f}" for way in WAYS))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
