"""The package's shape: imports point down the layers, no mode imports another, the library
(`models`, `losses`, `metrics`) imports nothing of the training stack, and the repository's
scripts in tools/ stay out of the package."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "jaxsegdepth")

# Each module's floor; a module may import its own floor and those below (modes: not each other).
LAYERS = {
    "names": 0, "errors": 0,
    "models": 1, "losses": 1, "metrics": 1, "data.normalization": 1, "exported": 1,
    "data.synthetic": 2, "data.builders": 2, "data.pipeline": 2, "data.photos": 2, "data.preprocess": 2,
    "weighting": 2, "stages": 2,
    "mesh": 3, "optim": 3, "steps": 3, "checkpoints": 3, "reporting": 3, "charts": 3,
    "state": 4, "evaluation": 4,
    "train": 5, "evaluate": 5, "predict": 5, "lr_range": 5, "export": 5, "plots": 5,
    "benchmark": 5,
}
MODES_FLOOR = 5
LIBRARY_THIRD_PARTY = {"jax", "flax", "optax", "dm_pix", "numpy"}
STANDARD_LIBRARY = set(sys.stdlib_module_names)


def _modules() -> dict[str, str]:
    """Dotted name (without `jaxsegdepth.`) -> path, for every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py") and name != "__init__.py":
                relative = os.path.relpath(os.path.join(folder, name), PACKAGE)[:-3]
                found[relative.replace(os.sep, ".")] = os.path.join(folder, name)
    return found


def _imports(path: str) -> set[str]:
    """Every module `path` imports, top-level or inside a function, as dotted names."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _internal(imported: set[str]) -> set[str]:
    return {name.removeprefix("jaxsegdepth.") for name in imported
            if name.startswith("jaxsegdepth.") and name.removeprefix("jaxsegdepth.") in LAYERS}


def test_every_module_has_a_floor():
    assert set(_modules()) == set(LAYERS)


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_imports_point_down_and_no_mode_imports_another(module):
    floor = LAYERS[module]
    for imported in _internal(_imports(_modules()[module])):
        assert LAYERS[imported] <= floor, f"{module} (floor {floor}) imports {imported} " \
                                          f"(floor {LAYERS[imported]})"
        if floor == MODES_FLOOR:
            assert LAYERS[imported] < MODES_FLOOR, f"mode {module} imports mode {imported}"


@pytest.mark.parametrize("module", ["models", "losses", "metrics", "names", "errors", "exported"])
def test_the_library_needs_only_jax_flax_optax_dm_pix_and_numpy(module):
    third_party = {name.split(".")[0] for name in _imports(_modules()[module])} - STANDARD_LIBRARY
    assert third_party - {"jaxsegdepth"} <= LIBRARY_THIRD_PARTY


def test_importing_the_library_loads_no_data_or_checkpoint_stack():
    code = ("import sys, jaxsegdepth.losses, jaxsegdepth.models, jaxsegdepth.metrics, "
            "jaxsegdepth.exported; "
            "print(sorted(m for m in ('grain', 'tensorflow_datasets', 'orbax', 'ml_collections') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_configs_import_only_ml_collections_and_each_other():
    for name in os.listdir(os.path.join(ROOT, "configs")):
        if name.endswith(".py"):
            imported = {m.split(".")[0] for m in _imports(os.path.join(ROOT, "configs", name))}
            assert imported - STANDARD_LIBRARY <= {"ml_collections", "configs"}, (name, imported)


def test_the_scripts_in_tools_are_neither_installed_nor_imported_by_the_package():
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        packages = tomllib.load(f)["tool"]["setuptools"]["packages"]
    assert "jaxsegdepth" in packages and not [p for p in packages if p.split(".")[0] == "tools"]
    for module, path in _modules().items():
        assert not [name for name in _imports(path) if name.split(".")[0] == "tools"], module
