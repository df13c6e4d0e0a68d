"""Recipes: `default.py` holds every field, each other file overrides a few (see the README)."""

import importlib.util

# Fields that moved: old dotted name -> what to write instead. launch.py refuses an old name on
# the command line or in a recipe with one line naming the new one.
RENAMED = {"checkpoint.step": "model_path (:STEP for WORKDIR's, RUN:STEP for another run's)"}


def renamed_field(config) -> str | None:
    """The first old name (`RENAMED`) that `config` still sets, or None."""
    for old in RENAMED:
        node = config
        for part in old.split("."):
            if not hasattr(node, "keys") or part not in node:
                break
            node = node[part]
        else:
            return old
    return None


def load_file(argument: str):
    """The config of a `--config` argument, `path/to/recipe.py` or `path/to/recipe.py:arg`.

    Raises what the file raises (OSError when it is missing, ValueError for a bad `:arg`)."""
    path, _, arg = argument.partition(":")
    spec = importlib.util.spec_from_file_location("_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
