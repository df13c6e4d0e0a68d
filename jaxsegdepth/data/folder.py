"""Your own pairs as a plain folder (`dataset.name=folder`, `dataset.manual_dir=ROOT`).

    ROOT/bg/NAME.*      the empty scene (the plate)
    ROOT/bg_fg/NAME.*   the same scene with the foreground
    ROOT/mask/NAME.*    the foreground mask, grey (0 background, 255 foreground)
    ROOT/depth/NAME.*   optional: the depth map of bg_fg, grey 0-255

Files are paired by name without the extension (`bg/room1.jpg` with `mask/room1.png`), in
any format PIL reads; hidden files are ignored. Without `depth/` the samples have mask targets
alone (`target_heads`): a run trains and reports the mask, and its model card says so.
`list_samples` checks the pairing (cheap, before anything is built) and `read_small` decodes
every file while the set is built; each stops at the first bad file, naming it. Building the tfds
set is `builders.FolderDataset`'s.
"""

import dataclasses
import hashlib
import os

import numpy as np
from PIL import Image

from jaxsegdepth.errors import DatasetError

FOLDERS = ("bg", "bg_fg", "mask")
DEPTH = "depth"
STATS_SIDE = 64  # images are measured for the input normalisation at this size


@dataclasses.dataclass(frozen=True)
class FolderSamples:
    """The samples of a folder set, in name order: `files[i]` maps each subfolder to a path."""

    root: str
    files: tuple
    has_depth: bool
    digest: str  # of every file's name, size and modification time: a changed folder rebuilds


def target_heads(root: str) -> tuple:
    """The heads a folder set has targets for: mask, and depth when `root/depth` exists."""
    return ("mask", "depth") if os.path.isdir(os.path.join(root, DEPTH)) else ("mask",)


def _files_by_name(folder: str) -> dict:
    """name (without extension) -> path of the files in `folder`; a name shared by two files
    is a `DatasetError`."""
    by_name = {}
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if entry.startswith(".") or not os.path.isfile(path):
            continue
        name = os.path.splitext(entry)[0]
        if name in by_name:
            raise DatasetError(
                f"{path}: {by_name[name]} has the same name; keep one file per name in {folder}"
            )
        by_name[name] = path
    return by_name


def list_samples(root: str) -> FolderSamples:
    """The samples of the folder set at `root`; a missing subfolder, an empty set or the first
    file (in name order) without a partner in another subfolder is a `DatasetError`."""
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise DatasetError(f"dataset.manual_dir={root}: no such folder")
    folders = FOLDERS + ((DEPTH,) if DEPTH in target_heads(root) else ())
    for sub in folders:
        if not os.path.isdir(os.path.join(root, sub)):
            raise DatasetError(
                f"{os.path.join(root, sub)}: no such folder (a folder dataset holds "
                f"{', '.join(f + '/' for f in FOLDERS)} and optionally {DEPTH}/)"
            )
    found = {sub: _files_by_name(os.path.join(root, sub)) for sub in folders}
    names = sorted(set().union(*found.values()))
    if not names:
        raise DatasetError(f"dataset.manual_dir={root}: no images in {', '.join(folders)}")
    digest = hashlib.sha256()
    for name in names:
        present = [sub for sub in folders if name in found[sub]]
        for sub in folders:
            if sub not in present:
                raise DatasetError(
                    f"{found[present[0]][name]}: no partner in {os.path.join(root, sub)} "
                    f"(expected {name}.*)"
                )
        for sub in folders:
            status = os.stat(found[sub][name])
            digest.update(f"{found[sub][name]}|{status.st_size}|{status.st_mtime_ns}\n".encode())
    files = tuple({sub: found[sub][name] for sub in folders} for name in names)
    return FolderSamples(root, files, len(folders) > len(FOLDERS), digest.hexdigest()[:16])


def read_small(path: str, mode: str) -> np.ndarray:
    """The image at `path` in PIL `mode`, at STATS_SIDE x STATS_SIDE, decoded in full (so a
    truncated file fails); `DatasetError` naming the file when it cannot be read."""
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image.convert(mode).resize((STATS_SIDE, STATS_SIDE)))
    except (OSError, ValueError, SyntaxError) as error:
        raise DatasetError(f"{path}: cannot be read as an image ({error})") from None
