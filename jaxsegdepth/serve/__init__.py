"""`jaxsegdepth serve`: the model behind an HTTP API with dynamic batching, and a page that
uses it with a file or the camera (docs/serving.md).

    jaxsegdepth serve [--model M] [--host 127.0.0.1] [--port 8000] [--size R] [--max-batch N] ...

`add_parser` adds the subcommand to the `jaxsegdepth` command; `main` loads the model (as
`predict` does), compiles it for every batch size when `--size` pins the model size, and runs
the app (`app.py`) on uvicorn until Ctrl-C.
"""

import argparse

from jaxsegdepth import align, errors, inference


def add_parser(commands) -> None:
    """The `serve` subcommand and its flags, on the `jaxsegdepth` command's subparsers."""
    serve = commands.add_parser(
        "serve",
        help="serve the model over HTTP (API and page)",
        description="POST /v1/plates, POST /v1/predict, GET /v1/health, the page at /, the "
        "API's schema at /openapi.json and its docs at /docs.",
    )
    serve.add_argument("--model", default=None, help="run[:STEP], export or bundle folder")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (%(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="(%(default)s)")
    flags = (
        ("--size", 0, "pin the model size to RxR so that every request batches (0: predict's)"),
        ("--max-side", inference.MAX_SIDE, "with --size 0: the longer side scaled down to this"),
        ("--max-batch", 0, "pairs per model call at most (0: 1 on a CPU, else 8)"),
        ("--max-wait-ms", 10.0, "how long a pair waits for others of its size"),
        ("--max-queue", 64, "pairs waiting or in the model at most; more: 503 Retry-After"),
        ("--max-plates", 64, "plates kept (least recently used dropped)"),
        ("--max-upload-mb", 20.0, "a request's body at most; more: 413"),
        ("--max-pixels", 40_000_000, "an image's pixels at most; more: 413"),
        ("--timeout-s", 30.0, "a predict request's time at most; more: 503"),
        ("--threshold", inference.THRESHOLD, "mask probability -> mask"),
    )
    for flag, default, text in flags:
        serve.add_argument(flag, type=type(default), default=default, help=f"{text} (%(default)s)")
    serve.add_argument("--no-align", action="store_true", help="do not register plates")


def main(args: argparse.Namespace) -> None:
    """Checks the flags, loads the model and serves it (module doc)."""
    positive = ("max_queue", "max_plates", "max_upload_mb", "max_pixels", "timeout_s")
    for name in positive:
        if getattr(args, name) <= 0:
            raise errors.UsageError(
                f"--{name.replace('_', '-')}={getattr(args, name)}: expected > 0"
            )
    if min(args.size, args.max_side, args.max_batch, args.max_wait_ms) < 0:
        raise errors.UsageError("--size, --max-side, --max-batch, --max-wait-ms: expected >= 0")
    if not 0 <= args.threshold <= 1:
        raise errors.UsageError(f"--threshold={args.threshold}: expected in [0, 1]")
    try:
        predictor = inference.load(
            args.model,
            threshold=args.threshold,
            resolution=args.size,
            max_side=args.max_side,
            alignment=align.Settings(enabled=not args.no_align),
        )
    except ValueError as error:
        raise errors.UsageError(f"--model: {error}") from error
    if args.size % predictor.stride:
        raise errors.UsageError(
            f"--size={args.size}: not a multiple of {predictor.stride}, the stride of "
            f"{predictor.card['model']}"
        )
    _serve(predictor, args)


def _serve(predictor: inference.Predictor, args: argparse.Namespace) -> None:
    import jax
    import numpy as np
    import uvicorn

    from jaxsegdepth import reporting
    from jaxsegdepth.serve import app

    # a CPU spends on each pair of a batch what it spends on a pair alone (docs/serving.md)
    max_batch = args.max_batch or (1 if jax.default_backend() == "cpu" else 8)
    limits = app.Limits(
        max_batch=max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_plates=args.max_plates,
        max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
        max_pixels=args.max_pixels,
        timeout_s=args.timeout_s,
    )
    if args.size:
        for size in range(1, max_batch + 1):
            blank = np.zeros((size, args.size, args.size, 3), np.uint8)
            jax.block_until_ready(predictor.forward(blank, blank))
    reporting.say(
        f"Serving {predictor.card['model']} ({predictor.source}) on http://{args.host}:"
        f"{args.port}, batches of up to {max_batch}"
    )
    uvicorn.run(
        app.create_app(predictor, limits), host=args.host, port=args.port, log_level="warning"
    )
