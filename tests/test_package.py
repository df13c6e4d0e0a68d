"""The package's shape: imports point down the layers, no mode imports another, the library
(`models`, `losses`, `metrics`) imports nothing of the training stack, and the repository's
scripts in tools/ stay out of the package."""

import ast
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "jaxsegdepth")

# Each module's floor; a module may import its own floor and those below (modes: not each other).
LAYERS = {
    "names": 0,
    "errors": 0,
    "models": 1,
    "losses": 1,
    "metrics": 1,
    "data.normalization": 1,
    "artifact": 1,
    "bundle": 2,
    "data.synthetic.textures": 2,
    "data.synthetic.procedural": 2,
    "data.synthetic.canvas": 2,
    "data.synthetic.plane": 2,
    "data.synthetic.room": 2,
    "data.synthetic.shapes": 2,
    "data.synthetic.figures": 2,
    "data.synthetic.shadows": 2,
    "data.synthetic.samples": 2,
    "data.synthetic.walk": 2,
    "data.photos": 2,
    "data.photo_clips": 2,
    "data.modest": 2,
    "data.folder": 2,
    "data.builders": 2,
    "data.datasets": 2,
    "data.pipeline": 2,
    "weighting": 2,
    "stages": 2,
    "preprocess": 2,
    "capture": 2,
    "align": 2,
    "serve.client": 2,
    "serve.images": 2,
    "serve.batcher": 2,
    "video.pixels": 2,
    "video.clips": 2,
    "video.batches": 2,
    "video.temporal": 2,
    "video.threads": 2,
    "video.outputs": 2,
    "video.prediction": 2,
    "mesh": 3,
    "optim": 3,
    "steps": 3,
    "checkpointing.store": 3,
    "reporting": 3,
    "charts": 3,
    "signals": 3,
    "checkpointing.card": 3,
    "hardware": 3,
    "video.from_config": 3,
    "checkpointing.resume": 4,
    "build": 4,
    "checkpointing.select": 4,
    "loop": 4,
    "evaluators.base": 4,
    "evaluators.validation": 4,
    "evaluators.baselines": 4,
    "evaluators.photographs": 4,
    "evaluators.catalog": 4,
    "inference": 4,
    "modes.train": 5,
    "modes.evaluate": 5,
    "modes.predict": 5,
    "modes.lr_range": 5,
    "modes.export": 5,
    "modes.plot": 5,
    "modes.benchmark": 5,
    "serve.app": 5,
    "cli": 6,
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
    return {
        name.removeprefix("jaxsegdepth.")
        for name in imported
        if name.startswith("jaxsegdepth.") and name.removeprefix("jaxsegdepth.") in LAYERS
    }


def test_every_module_has_a_floor():
    assert set(_modules()) == set(LAYERS)


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_imports_point_down_and_no_mode_imports_another(module):
    floor = LAYERS[module]
    for imported in _internal(_imports(_modules()[module])):
        assert LAYERS[imported] <= floor, (
            f"{module} (floor {floor}) imports {imported} (floor {LAYERS[imported]})"
        )
        if floor == MODES_FLOOR:
            assert LAYERS[imported] < MODES_FLOOR, f"mode {module} imports mode {imported}"


@pytest.mark.parametrize("module", ["models", "losses", "metrics", "names", "errors", "artifact"])
def test_the_library_needs_only_jax_flax_optax_dm_pix_and_numpy(module):
    third_party = {name.split(".")[0] for name in _imports(_modules()[module])} - STANDARD_LIBRARY
    assert third_party - {"jaxsegdepth"} <= LIBRARY_THIRD_PARTY


def test_importing_the_library_loads_no_data_or_checkpoint_stack():
    code = (
        "import sys, jaxsegdepth.losses, jaxsegdepth.models, jaxsegdepth.metrics, "
        "jaxsegdepth.artifact; "
        "print(sorted(m for m in ('grain', 'tensorflow_datasets', 'orbax', 'ml_collections') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_configs_import_only_ml_collections_and_each_other():
    for name in os.listdir(os.path.join(ROOT, "configs")):
        if name.endswith(".py"):
            imported = {m.split(".")[0] for m in _imports(os.path.join(ROOT, "configs", name))}
            assert imported - STANDARD_LIBRARY <= {"ml_collections", "configs"}, (name, imported)


def test_no_module_imports_the_repository_s_configs_or_tools():
    for module, path in _modules().items():
        outside = [name for name in _imports(path) if name.split(".")[0] in ("configs", "tools")]
        assert not outside, f"{module} imports {outside}, which `pip install .` does not install"


def test_every_module_imports_from_an_installed_copy_of_the_package_alone(tmp_path):
    """What `pip install .` gives: the package without the repository around it."""
    shutil.copytree(PACKAGE, tmp_path / "jaxsegdepth", ignore=shutil.ignore_patterns("__pycache__"))
    names = " ".join(f"jaxsegdepth.{module}" for module in sorted(_modules()))
    code = (
        f"import importlib, sys; [importlib.import_module(m) for m in {names.split()!r}]; "
        "print(sorted(m for m in ('configs', 'tools') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def _packages() -> set[str]:
    """Every folder of the package that holds an __init__.py, as dotted names."""
    return {
        os.path.relpath(folder, ROOT).replace(os.sep, ".")
        for folder, _, files in os.walk(PACKAGE)
        if "__init__.py" in files
    }


def test_a_wheel_of_the_clone_holds_every_module_the_weights_the_command_and_the_licence(tmp_path):
    """`pip wheel` of the files git tracks: every subpackage's __init__.py and every module,
    nothing of tools/, every file under jaxsegdepth/weights/ (the bundled model, its card,
    MODEL_CARD.md) and the page's files (serve/static/) as package data, `jaxsegdepth` a
    console script, the licence."""
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    source = tmp_path / "clone"
    for path in filter(None, tracked):
        if os.path.isfile(os.path.join(ROOT, path)):
            os.makedirs(source / os.path.dirname(path), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, path), source / path)
    weights = [p for p in tracked if p.startswith("jaxsegdepth/weights/")]
    assert "jaxsegdepth/weights/MODEL_CARD.md" in weights
    weights += [p for p in tracked if p.startswith("jaxsegdepth/serve/static/")]
    assert "jaxsegdepth/serve/static/index.html" in weights
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = [name for name in os.listdir(tmp_path) if name.endswith(".whl")]
    with zipfile.ZipFile(tmp_path / wheel) as archive:
        names = set(archive.namelist())
        info = {os.path.basename(n): n for n in names if ".dist-info/" in n}
        entry_points = archive.read(info["entry_points.txt"]).decode()
        metadata = archive.read(info["METADATA"]).decode()
    code = {n for n in names if n.endswith(".py")}
    expected = {f"{p.replace('.', '/')}/__init__.py" for p in _packages()}
    expected |= {f"jaxsegdepth/{m.replace('.', '/')}.py" for m in _modules()}
    assert len(_packages()) >= 5 and "jaxsegdepth.data.synthetic" in _packages()
    assert code == expected and not [n for n in names if n.startswith("tools/")]
    assert set(weights) <= names, set(weights) - names
    assert "jaxsegdepth = jaxsegdepth.cli:entry_point" in entry_points
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
