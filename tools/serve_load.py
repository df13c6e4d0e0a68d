"""Load and fault benchmark of `jaxsegdepth serve` on 127.0.0.1 (docs/serving.md).

    python tools/serve_load.py --model BUNDLE --clients 8 --seconds 60 --size 224

Starts the server (`--size` pinned, so that every request batches; the batching flags as
given), then:
1. load: K client threads send predict requests back to back for T seconds (each its own
   scene, one plate uploaded before); throughput, p50/p95/p99 latency, status counts, the
   batches the server formed, and the server's RSS before, during and after;
2. fuzz: empty file, truncated JPEG, a PNG whose header claims 100000x100000 pixels, a text
   file as an image, a body of the wrong content type, an upload over the limit, unknown and
   malformed plate ids, N plate uploads; each must be a 4xx, and the server healthy after;
3. the model alone, the server stopped: `Predictor.forward` at the same size, at each batch
   size the server formed and over the same mix of batches, in pairs/s; the load's
   throughput over that mix's rate.
The clients share the machine's cores with the server: on a small CPU they slow it down.
Traffic goes to 127.0.0.1 only. Prints one JSON summary (and writes it with --json).
"""

import argparse
import collections
import concurrent.futures
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from PIL import Image

from jaxsegdepth.serve import client

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_server(flags: list, env: dict = None, wait_s: float = 600.0):
    """(process, url) of `jaxsegdepth serve FLAGS` on a free port of 127.0.0.1, once
    /v1/health answers; `RuntimeError` with its output if it exits first."""
    port = free_port()
    command = [sys.executable, "-m", "jaxsegdepth.cli", "serve", "--port", str(port), *flags]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        text=True,
    )
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the server exited with {process.returncode}: {process.stdout.read()}"
            )
        try:
            client.get_json(url + "/v1/health", timeout=2)
            return process, url
        except (OSError, RuntimeError):
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the server did not answer within {wait_s} s")


def stop_server(process, wait_s: float = 10.0) -> str:
    """Stops the server (SIGTERM, then SIGKILL after `wait_s`); returns what it printed."""
    process.terminate()
    try:
        output, _ = process.communicate(timeout=wait_s)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def sample_rss(pid: int, stop: threading.Event, every_s: float) -> list:
    """The server's RSS in MB every `every_s` seconds until `stop` is set."""
    samples = [round(rss_mb(pid), 1)]
    while not stop.wait(every_s):
        samples.append(round(rss_mb(pid), 1))
    return samples


def encode(array: np.ndarray, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=kind)
    return buffer.getvalue()


def pair(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One random plate (the same for every seed) and a scene: the plate with a red box at a
    place the seed picks."""
    plate = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8)
    rng = np.random.default_rng(seed)
    scene = plate.copy()
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    scene[top : top + height // 3, left : left + width // 3] = [230, 20, 40]
    return plate, scene


def bomb_png(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header claims `width` x `height` RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + 3 * 64))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def fuzz(url: str, plate_id: str, scene: bytes, big_bytes: int, plates: int) -> dict:
    """{case: statuses} of the fuzz pass (module doc), then `healthy` after it."""
    predict = url + "/v1/predict?output=mask"
    jpeg = encode(np.full((64, 64, 3), 128, np.uint8), "JPEG")
    cases = {
        "zero bytes": {"scene": b""},
        "truncated JPEG": {"scene": jpeg[: len(jpeg) // 2]},
        "100000x100000 PNG header": {"scene": bomb_png(100_000, 100_000)},
        "text as an image": {"scene": b"hello, not an image"},
        "upload over the limit": {"scene": os.urandom(big_bytes)},
    }
    out = {}
    for name, files in cases.items():
        out[name] = [client.post(predict, files, {"plate_id": plate_id})[0]]
    body, _ = client.multipart({"plate_id": plate_id}, {"scene": scene})
    headers = {"Content-Type": "text/plain"}
    out["wrong content type"] = [client.request(predict, "POST", body, headers)[0]]
    out["unknown plate id"] = [client.post(predict, {"scene": scene}, {"plate_id": "0" * 16})[0]]
    out["malformed plate id"] = [client.post(predict, {"scene": scene}, {"plate_id": "../x"})[0]]
    uploads = collections.Counter()
    for index in range(plates):
        image = encode(np.full((8, 8, 3), index % 256, np.uint8) + np.uint8(index // 256))
        uploads[str(client.post(url + "/v1/plates", {"plate": image})[0])] += 1
    out[f"{plates} plate uploads"] = dict(uploads)
    out["healthy"] = client.get_json(url + "/v1/health")["status"] == "ok"
    return out


def load(url: str, plate_id: str, scenes: list, clients: int, seconds: float) -> dict:
    """K threads posting predict requests back to back for `seconds`: latencies and statuses."""
    deadline = time.monotonic() + seconds

    def worker(index: int) -> list:
        done = []
        while time.monotonic() < deadline:
            start = time.perf_counter()
            status, _, _ = client.post(
                url + "/v1/predict?output=mask", {"scene": scenes[index]}, {"plate_id": plate_id}
            )
            done.append((status, time.perf_counter() - start))
        return done

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = [row for rows in pool.map(worker, range(clients)) for row in rows]
    elapsed = time.perf_counter() - started
    latencies = np.array([latency for status, latency in results if status == 200]) * 1000
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) if len(latencies) else [np.nan] * 3
    return {
        "requests": len(results),
        "statuses": dict(collections.Counter(str(status) for status, _ in results)),
        "throughput_per_s": round(len(latencies) / elapsed, 2),
        "latency_ms": {"p50": round(p50, 1), "p95": round(p95, 1), "p99": round(p99, 1)},
    }


def model_alone(model, size: int, formed: dict, seconds: float) -> dict:
    """Pairs/s of `Predictor.forward` at `size` x `size` (outputs on the host): at each batch
    size the server formed ({size: batches}), and over the same mix of batches."""
    import jax

    from jaxsegdepth import inference

    predictor = inference.load(model, resolution=size)
    plate, scene = pair(size, size, 0)
    per_call = {}
    for batch in formed:
        inputs = [np.stack([image] * int(batch)) for image in (plate, scene)]
        jax.device_get(predictor.forward(*inputs))
        calls, start = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - start < seconds / len(formed):
            jax.device_get(predictor.forward(*inputs))
            calls += 1
        per_call[batch] = (time.perf_counter() - start) / calls
    pairs = sum(int(batch) * count for batch, count in formed.items())
    busy = sum(per_call[batch] * count for batch, count in formed.items())
    return {
        "per_batch": {batch: round(int(batch) / per_call[batch], 2) for batch in per_call},
        "mix": round(pairs / busy, 2),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="as for `jaxsegdepth serve` (bundled)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--size", type=int, default=224, help="the pinned model size")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--max-queue", type=int, default=64, help="below --clients: 503s")
    parser.add_argument("--big-mb", type=int, default=50, help="the fuzz pass's large upload")
    parser.add_argument("--plates", type=int, default=1000, help="the fuzz pass's plate uploads")
    parser.add_argument("--rss-every-s", type=float, default=10.0, help="RSS sampling period")
    parser.add_argument("--json", default="", help="also write the summary here")
    args = parser.parse_args(argv)
    flags = ["--size", str(args.size), "--max-batch", str(args.max_batch)]
    flags += ["--max-wait-ms", str(args.max_wait_ms), "--max-queue", str(args.max_queue)]
    flags += ["--model", args.model] if args.model else []
    process, url = start_server(flags)
    try:
        plate, _ = pair(args.size, args.size, 0)
        scenes = [encode(pair(args.size, args.size, seed)[1]) for seed in range(args.clients)]
        _, _, body = client.post(url + "/v1/plates", {"plate": encode(plate)})
        plate_id = json.loads(body)["plate_id"]
        load(url, plate_id, scenes, args.clients, min(5.0, args.seconds))  # warm-up
        before = client.get_json(url + "/v1/health")["batches"]
        stop = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(1) as sampler:
            samples = sampler.submit(sample_rss, process.pid, stop, args.rss_every_s)
            summary = {"load": load(url, plate_id, scenes, args.clients, args.seconds)}
            stop.set()
        rss = samples.result()
        after = client.get_json(url + "/v1/health")["batches"]
        formed = {size: after[size] - before.get(size, 0) for size in after}
        summary["batches_formed"] = {size: count for size, count in formed.items() if count}
        summary["rss_mb"] = {"before": rss[0], "after": rss[-1], "every": rss}
        summary["fuzz"] = fuzz(url, plate_id, scenes[0], args.big_mb << 20, args.plates)
        summary["rss_mb"]["after_fuzz"] = round(rss_mb(process.pid), 1)
    finally:
        stop_server(process)
    alone = model_alone(args.model, args.size, summary["batches_formed"], 30.0)
    summary["model_alone_per_s"] = alone
    summary["throughput_over_model_alone"] = round(
        summary["load"]["throughput_per_s"] / alone["mix"], 3
    )
    summary["settings"] = vars(args)
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return summary


if __name__ == "__main__":
    main()
