"""jaxsegdepth: foreground mask and depth from a background/composite image pair, in JAX.

`jaxsegdepth.load(path=None)` gives a predictor (`inference.load`); it is imported on first
use, so `from jaxsegdepth import losses` loads nothing of inference, Orbax or grain."""


def __getattr__(name: str):
    if name == "load":
        from jaxsegdepth import inference

        return inference.load
    raise AttributeError(f"module 'jaxsegdepth' has no attribute {name!r}")
