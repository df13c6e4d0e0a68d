"""Suite-wide setup: JAX's persistent compilation cache, so a rerun of the suite skips compiling;
fixtures several test files share.

The cache lives in `~/.cache/jaxsegdepth/jax-tests` (or `$JAXSEGDEPTH_TEST_CACHE_DIR`; `none`
turns it off) and serves this process and the `launch.py` runs the tests start. Entries are keyed
by the program, the compile options and the jax/jaxlib versions, so a stale entry is never used.
"""

import json
import os

# Each of the suite's worker processes (pyproject.toml's addopts) shares a GPU, where there is
# one, with the other: none may take most of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp
import modes_support
import numpy as np
import optax
import pytest
from absl import flags
from PIL import Image

from configs import default
from jaxsegdepth import losses, mesh as mesh_lib, models, preprocess, steps
from jaxsegdepth.modes import train

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
def data_dir(tmp_path_factory):
    """The tiny synthetic set of the mode tests (`modes_support.mode_config`), built once."""
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def trained(tmp_path_factory, data_dir):
    """(config, workdir, last epoch record) of the one-epoch MaskNet run the mode tests share
    (evaluate, predict, export, plots, the model card)."""
    config = modes_support.mode_config(data_dir)
    workdir = str(tmp_path_factory.mktemp("run"))
    record = train.run(config, workdir)
    return config, workdir, record


@pytest.fixture(scope="session")
def one_device():
    """The one-device mesh `predict` and `export` load a checkpoint on."""
    return mesh_lib.create_mesh(jax.local_devices()[:1])


@pytest.fixture(scope="session")
def predict_jit(one_device):
    """`predict_jit(normalization)`: `steps.jit_steps`' predict step on `one_device` with the
    inputs' {input: (mean, std)}, as `predict` runs it (uint8 in, normalised inside)."""
    made = {}

    def make(norm):
        key = json.dumps(
            {k: [np.asarray(m).tolist(), np.asarray(s).tolist()] for k, (m, s) in norm.items()},
            sort_keys=True,
        )
        if key not in made:
            made[key] = steps.jit_steps(
                one_device,
                losses.compose(default.get_config().loss),
                preprocess.from_normalization(norm),
            )[2]
        return made[key]

    return make


@pytest.fixture
def pair(tmp_path):
    """Paths of one readable 40x30 bg / bg_fg pair: the plate, and the plate with a block of
    other pixels in it."""
    modes_support.write_image(tmp_path / "bg.png", 40, 30, 0)
    modes_support.write_image(tmp_path / "object.png", 40, 30, 1)
    scene = np.asarray(Image.open(tmp_path / "bg.png")).copy()
    scene[8:22, 10:26] = np.asarray(Image.open(tmp_path / "object.png"))[8:22, 10:26]
    Image.fromarray(scene).save(tmp_path / "bg_fg.png")
    return str(tmp_path / "bg.png"), str(tmp_path / "bg_fg.png")


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
