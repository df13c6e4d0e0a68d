"""Recipes: `default.py` holds every field, each other file overrides a few (see the README)."""

import importlib.util


def load_file(argument: str):
    """The config of a `--config` argument, `path/to/recipe.py` or `path/to/recipe.py:arg`.

    Raises what the file raises (OSError when it is missing, ValueError for a bad `:arg`)."""
    path, _, arg = argument.partition(":")
    spec = importlib.util.spec_from_file_location("_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
