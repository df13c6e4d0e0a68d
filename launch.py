"""jaxsegdepth command line: one config, one mode, one run function.

    python launch.py --config configs/rmse_bce_dice.py [--workdir DIR] [--config.FIELD=VALUE ...]
    python launch.py --config configs/rmse_bce_dice.py:published   # the reference's schedule

`--workdir` defaults to `runs/<config file stem>` (`runs/<stem>_<arg>` with a `:arg`).
Modes (`--config.mode`): train, evaluate, predict, lr_range_test, export, plot.

Exit status: 0 done; 1 a run error (e.g. a non-finite loss, no checkpoint to load);
2 a bad config or command line, reported in one line before anything compiles;
130/143 stopped by SIGINT/SIGTERM after saving a checkpoint (rerun to resume).
"""

import importlib
import os
import sys

import jax
from absl import app, flags, logging
from flax import traverse_util
from ml_collections import config_flags

import configs
from jaxsegdepth import errors, names, reporting

MODES = {
    "train": "jaxsegdepth.modes.train",
    "evaluate": "jaxsegdepth.modes.evaluate",
    "predict": "jaxsegdepth.modes.predict",
    "lr_range_test": "jaxsegdepth.modes.lr_range",
    "export": "jaxsegdepth.modes.export",
    "plot": "jaxsegdepth.modes.plot",
    "benchmark": "jaxsegdepth.modes.benchmark",
}
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "jaxsegdepth", "jax")

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Path to a config file (configs/*.py), optionally with `:arg`.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Run directory (checkpoints, metrics, images). Default: runs/<config file stem>.",
)


def default_workdir(config_argument: str) -> str:
    path, _, arg = config_argument.partition(":")
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"{stem}_{arg}" if arg else stem)


def enable_compilation_cache(config) -> None:
    """JAX's persistent compilation cache, so reruns and resumes skip compiling.

    `config.compilation_cache_dir`: "" for ~/.cache/jaxsegdepth/jax (or $JAX_COMPILATION_CACHE_DIR
    when set), "none" to turn it off, or a folder.
    """
    directory = config.get("compilation_cache_dir", "")
    if directory.lower() == "none":
        return
    if not directory:
        directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or DEFAULT_CACHE_DIR
    directory = os.path.expanduser(directory)
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def initialize_distributed(config) -> bool:
    """`jax.distributed.initialize()` when `distributed.enabled` or JAXSEGDEPTH_DISTRIBUTED=1.

    Unset fields (empty address, 0 processes, process id -1) are left to JAX: cluster
    auto-detection, or JAX_COORDINATOR_ADDRESS. CPU processes exchange collectives over gloo.
    A process that fails makes the others stop within `distributed.shutdown_timeout_s`
    (JAX's coordination service) instead of waiting on a collective for ever.
    """
    settings = config.distributed
    enabled = settings.enabled or os.environ.get("JAXSEGDEPTH_DISTRIBUTED", "").lower() in (
        "1",
        "true",
        "yes",
    )
    if enabled:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=settings.coordinator_address or None,
            num_processes=settings.num_processes or None,
            process_id=settings.process_id if settings.process_id >= 0 else None,
            heartbeat_timeout_seconds=settings.heartbeat_timeout_s,
            shutdown_timeout_seconds=settings.shutdown_timeout_s,
        )
    return enabled


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # Orbax and grain log every save and worker at INFO
    config = _CONFIG.value
    if config is None:
        _fail("--config is required, e.g. --config configs/rmse_bce_dice.py", 2)
    if config.mode not in MODES:
        _fail(f"mode={config.mode!r}: expected one of {sorted(MODES)}", 2)
    old = _renamed_field(config)
    if old:
        recipe = flags.FLAGS["config"].config_filename
        _fail(f"{old} is now {names.renamed(old)} (set in {recipe})", 2)
    workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
    initialize_distributed(config)
    enable_compilation_cache(config)
    module = importlib.import_module(MODES[config.mode])
    try:
        module.validate(config)  # every setting the mode uses, before anything compiles
        reporting.say(
            f"{config.mode}: {config.model} on {config.dataset.name}, workdir "
            f"{workdir}, {jax.device_count()} {jax.devices()[0].platform} device(s)"
        )
        module.run(config, workdir)
    except errors.Interrupted as error:
        # Out without the interpreter's teardown: the signal may have landed while native
        # threads (the dataset writer, the loader's readers) were busy, and tearing those down
        # can crash. What had to be written (the checkpoint) is complete at this point.
        print(f"error: {error.message}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(error.exit_code)
    except (errors.UsageError, errors.RunError) as error:
        _fail(str(error), error.exit_code)
    except OSError as error:  # a full disk or an unwritable output folder in any mode
        _fail(f"cannot write: {error}", errors.RunError.exit_code)


def _renamed_field(config) -> str | None:
    """The first field `config` sets under a name that moved (`names.RENAMED_FIELDS`)."""
    leaves = traverse_util.flatten_dict(config.to_dict(), sep=".")
    return next((field for field in leaves if names.renamed(field)), None)


def _config_problem(argv: list[str]) -> str | None:
    """What is wrong with `--config` and its `--config.a.b=...` overrides, found by loading the
    config file directly: its own error, or the first override naming a field it lacks."""
    config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if config_arg is None and "--config" in argv[:-1]:
        config_arg = argv[argv.index("--config") + 1]
    if config_arg is None:
        return None
    try:
        base = configs.load_file(config_arg)
    except Exception as error:  # any failure of the user's config file, without its traceback
        return f"--config {config_arg}: {error}"
    for override in (a for a in argv if a.startswith("--config.")):
        name = override[len("--config.") :].split("=", 1)[0]
        if names.renamed(name):
            return f"--config.{name} is now --config.{names.renamed(name)}"
        node = base
        for field in override[len("--config.") :].split("=", 1)[0].split("."):
            if not hasattr(node, "keys") or field not in node:
                return (
                    f"{override.split('=', 1)[0]}: the config has no field {field!r} (the "
                    "fields are in configs/default.py)"
                )
            node = node[field]
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad command line (an unknown flag or config field, a bad value
    or `:arg`, a missing config file) reported in one line and exit status 2."""
    try:
        remaining = flags.FLAGS(argv)
        if _CONFIG.value is not None:
            _CONFIG.value.get("mode")  # the config file loads lazily: fail here, not later
    except (flags.Error, OSError, AttributeError, KeyError, ValueError) as error:
        _fail(_config_problem(argv) or " ".join(str(error).split()), 2)
    return remaining


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
