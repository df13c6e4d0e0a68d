"""Suite-wide setup: JAX's persistent compilation cache, so a rerun of the suite skips compiling;
fixtures several test files share.

The cache lives in `~/.cache/jaxsegdepth/jax-tests` (or `$JAXSEGDEPTH_TEST_CACHE_DIR`; `none`
turns it off) and serves this process and the `launch.py` runs the tests start. Entries are keyed
by the program, the compile options and the jax/jaxlib versions, so a stale entry is never used.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import flags

from jaxsegdepth import models, steps

TEST_CACHE_DIR = os.path.expanduser(
    os.environ.get("JAXSEGDEPTH_TEST_CACHE_DIR", "~/.cache/jaxsegdepth/jax-tests")
)


def pytest_configure(config):
    del config
    flags.FLAGS.mark_as_parsed()  # grain's loader workers read absl flags; no absl.app here
    if TEST_CACHE_DIR.lower() != "none":
        os.makedirs(TEST_CACHE_DIR, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", TEST_CACHE_DIR)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def compilation_cache_dir() -> str:
    """The folder (or "none") to pass as `--config.compilation_cache_dir` to `launch.py`."""
    return TEST_CACHE_DIR


@pytest.fixture(scope="session")
def dsresnet_state():
    """A float32 DSResNet `steps.TrainState` whose parameters and BatchNorm statistics are drawn
    on the host (normal(0, 0.1); variances uniform(0.5, 1.5)), without an optimizer. Shapes come
    from `eval_shape`: compiling the real initialiser of 10M parameters costs more than most
    test files."""
    model = models.create("dsresnet", "float32")
    dummy = jnp.zeros((1, models.DSRESNET_STRIDE, models.DSRESNET_STRIDE, 3), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy, dummy, train=False))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "batch_stats" in name and "var" in name:
            return rng.uniform(0.5, 1.5, leaf.shape).astype(leaf.dtype)
        return rng.normal(0.0, 0.1, leaf.shape).astype(leaf.dtype)

    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    return steps.TrainState(
        step=0,
        apply_fn=model.apply,
        params=variables["params"],
        tx=optax.identity(),
        opt_state=(),
        batch_stats=variables["batch_stats"],
        ema={},
        weighting={},
        plateau=None,
        rng=None,
        nonfinite_step=None,
    )


@pytest.fixture(scope="session")
def dsresnet_bundle(dsresnet_state, tmp_path_factory) -> str:
    """`dsresnet_state`'s variables as a float32 bundle (`bundle.py`) whose card normalises
    with the MODEST statistics: what `inference.load` and the command read."""
    from jaxsegdepth import bundle
    from jaxsegdepth.data import normalization

    card = {
        "model": "dsresnet",
        "heads": ["mask", "depth"],
        "trained_heads": ["mask", "depth"],
        "stride": models.DSRESNET_STRIDE,
        "dtype": "float32",
        "normalization": {
            key: {"mean": list(mean), "std": list(std)}
            for key, (mean, std) in normalization.MODEST_NORMALIZATION.items()
        },
    }
    folder = str(tmp_path_factory.mktemp("bundle"))
    variables = {"params": dsresnet_state.params, "batch_stats": dsresnet_state.batch_stats}
    bundle.save(folder, variables, card, "float32")
    return folder
