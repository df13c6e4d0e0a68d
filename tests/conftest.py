"""Suite-wide setup: JAX's persistent compilation cache, so a rerun of the suite skips compiling.

The cache lives in `~/.cache/jaxsegdepth/jax-tests` (or `$JAXSEGDEPTH_TEST_CACHE_DIR`; `none`
turns it off) and serves this process and the `launch.py` runs the tests start. Entries are keyed
by the program, the compile options and the jax/jaxlib versions, so a stale entry is never used.
"""
import os

import jax
import pytest

TEST_CACHE_DIR = os.path.expanduser(
    os.environ.get("JAXSEGDEPTH_TEST_CACHE_DIR", "~/.cache/jaxsegdepth/jax-tests"))


def pytest_configure(config):
    del config
    if TEST_CACHE_DIR.lower() != "none":
        os.makedirs(TEST_CACHE_DIR, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", TEST_CACHE_DIR)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def compilation_cache_dir() -> str:
    """The folder (or "none") to pass as `--config.compilation_cache_dir` to `launch.py`."""
    return TEST_CACHE_DIR
