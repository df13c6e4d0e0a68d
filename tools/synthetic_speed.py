"""Times the synthetic scene generator (`jaxsegdepth.data.synthetic.generate`).

    python tools/synthetic_speed.py --speed N [--seed 0] [--size 224]

A script of the repository, not of the installed package: run it from a clone (it puts the
clone's root on `sys.path`). It generates samples 0..N-1 of the set with `seed` (render + 4 JPEG
encodes, one process) after one warm-up sample, and prints samples per CPU-second of this
process and per wall-clock second. On a busy shared machine the CPU figure is the meaningful
one; on an idle core the two agree.
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `python tools/synthetic_speed.py` puts only tools/ on the path

from jaxsegdepth.data import synthetic


def measure_speed(count: int, seed: int = 0, size: int = synthetic.SIZE) -> tuple[float, float]:
    """Samples/s of `generate` in this process: (per CPU-second, per wall-clock second)."""
    synthetic.generate(seed, 10**6, size)  # fills the noise bank and pixel-grid caches
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    for index in range(count):
        synthetic.generate(seed, index, size)
    cpu_seconds = time.process_time() - cpu_start
    wall_seconds = time.perf_counter() - wall_start
    return count / cpu_seconds, count / wall_seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--speed", type=int, required=True, metavar="N", help="time generating this many samples"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=synthetic.SIZE, help="side in pixels")
    args = parser.parse_args(argv)
    per_cpu, per_wall = measure_speed(args.speed, args.seed, args.size)
    load = os.getloadavg()[0]
    print(
        f"generate (generator version {synthetic.GENERATOR_VERSION}): {per_cpu:.0f} samples per "
        f"CPU-second ({per_wall:.0f}/s wall clock) at {args.size}x{args.size}, render + 4 JPEG "
        f"encodes, one process, load average {load:.1f}"
    )


if __name__ == "__main__":
    main()
