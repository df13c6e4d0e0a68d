"""The MODEST Museum layout, in a folder or a zip: finding it, reading it, checking it.

No tfds here: `scan_modest` is the whole check a build makes before writing anything, and it
can be run alone. Problems are raised as `errors.DatasetError` naming the file and quoting the
file_map.txt line:
- missing/empty/malformed file_map.txt, a line without exactly four tab-separated fields;
- a file listed in file_map.txt that does not exist;
- a corrupt or truncated image (every distinct file is decoded once); with
  `skip_corrupt=True` its samples are left out instead, and reported in `ModestScan.skipped`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import os
import zipfile

from PIL import Image

from jaxsegdepth.errors import DatasetError

FOLDERS = ("bg", "bg_fg", "bg_fg_mask", "bg_fg_depth_map")  # file_map.txt column order
SIZE = 224  # MODEST's image side; other sizes are resized when loading


def check_manual_dir(path: str) -> None:
    """Refuses a `dataset.manual_dir` that does not exist, in one line."""
    if not os.path.exists(os.path.expanduser(path)):
        raise DatasetError(
            f"dataset.manual_dir={path!r} does not exist (give the extracted "
            "MODEST folder or its .zip)"
        )


class ModestSource:
    """Read access to a MODEST layout in a folder or a zip (file_map.txt at its root or in a
    subfolder up to two levels down)."""

    def __init__(self, path: str):
        self.path = os.path.abspath(os.path.expanduser(path))
        self._zip = None
        if os.path.isdir(self.path):
            self.root = self._find_root_dir(self.path)
            self._names: set[str] | None = None
        elif os.path.isfile(self.path) and zipfile.is_zipfile(self.path):
            self._zip = zipfile.ZipFile(self.path)
            maps = [
                n
                for n in self._zip.namelist()
                if n.rsplit("/", 1)[-1] == "file_map.txt" and n.count("/") <= 2
            ]
            if not maps:
                raise DatasetError(
                    f"no file_map.txt in the zip {self.path} (looked at its root "
                    "and two folder levels down)"
                )
            fm = min(maps, key=lambda n: n.count("/"))
            self.root = fm[: -len("file_map.txt")]  # "" or "prefix/"
            self._names = {
                n[len(self.root) :]
                for n in self._zip.namelist()
                if n.startswith(self.root) and not n.endswith("/")
            }
        else:
            check_manual_dir(path)
            raise DatasetError(f"dataset.manual_dir={path!r} is neither a folder nor a zip file")

    @staticmethod
    def _find_root_dir(path: str) -> str:
        candidates = [path]
        for _ in range(2):
            if any(os.path.isfile(os.path.join(c, "file_map.txt")) for c in candidates):
                break
            candidates = [
                os.path.join(c, d)
                for c in candidates
                for d in sorted(os.listdir(c))
                if os.path.isdir(os.path.join(c, d))
            ]
        for c in candidates:
            if os.path.isfile(os.path.join(c, "file_map.txt")):
                return c
        raise DatasetError(f"no file_map.txt in {path} (looked in it and two folder levels down)")

    def describe(self, rel: str) -> str:
        if self._zip is not None:
            return f"{self.path}:{self.root}{rel}"
        return os.path.join(self.root, rel)

    def read(self, rel: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(self.root + rel)
        with open(os.path.join(self.root, rel), "rb") as f:
            return f.read()

    def names_in(self, folder: str) -> set[str]:
        """File names directly inside `folder` (empty when the folder is missing)."""
        if self._zip is not None:
            prefix = folder + "/"
            return {n[len(prefix) :] for n in self._names if n.startswith(prefix)}
        full = os.path.join(self.root, folder)
        if not os.path.isdir(full):
            return set()
        with os.scandir(full) as it:
            return {e.name for e in it}

    def close(self):
        if self._zip is not None:
            self._zip.close()


def parse_file_map(
    text: str, origin: str = "file_map.txt"
) -> list[tuple[int, str, tuple[str, ...]]]:
    """[(line_number, line, 4 stems)] for every non-blank line; DatasetError quoting a bad line."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields]
        if len(fields) != 4 or not all(fields):
            raise DatasetError(
                f"{origin} line {number} is malformed: expected 4 tab-separated file stems "
                f"({', '.join(FOLDERS)}), got {len([f for f in fields if f])}: {line!r}"
            )
        entries.append((number, line, tuple(fields)))
    if not entries:
        raise DatasetError(
            f"{origin} is empty: expected one line of 4 tab-separated file stems per sample"
        )
    return entries


def _resolve(stem: str, folder: str, names: set[str]) -> str | None:
    """Relative path of `folder/stem(.jpeg|.jpg)`, or None when there is no such file."""
    if "/" in stem:  # already "folder/name"
        folder, stem = stem.rsplit("/", 1)
    for candidate in (stem + ".jpeg", stem + ".jpg", stem):
        if candidate in names:
            return f"{folder}/{candidate}"
    return None


def _check_image(data: bytes) -> tuple[str, tuple[int, int]]:
    """Decodes the image fully (fast DCT-scaled for JPEG, which still reads every byte); raises
    on a corrupt or truncated file. Returns (mode, size)."""
    with Image.open(io.BytesIO(data)) as im:
        mode, size = im.mode, im.size
        im.draft(im.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
        im.load()
    return mode, size


@dataclasses.dataclass
class ModestScan:
    entries: list  # [(position, line_number, line, (4 relative paths))], the samples to write;
    #                position = index among the non-blank file_map lines (the sample index)
    skipped: list  # [{"line": n, "file": path, "error": str}], samples left out
    num_lines: int
    file_map_sha256: str
    grayscale_inputs: int  # distinct bg/bg_fg files that are not RGB (converted when loading)
    odd_sized: int  # distinct files that are not SIZE x SIZE (resized when loading)


def file_map_digest(source: ModestSource) -> str:
    return hashlib.sha256(source.read("file_map.txt")).hexdigest()


def scan_modest(manual_dir: str, skip_corrupt: bool = False, num_threads: int = 0) -> ModestScan:
    """Validates a MODEST folder/zip: file_map syntax, every listed file exists, every distinct
    file decodes. Raises DatasetError (see module doc); never writes anything."""
    source = ModestSource(manual_dir)
    try:
        raw = source.read("file_map.txt")
        entries = parse_file_map(
            raw.decode("utf-8", errors="replace"), source.describe("file_map.txt")
        )
        resolved = _resolve_entries(source, entries)
        info, bad = _decode_all(
            source, sorted({p for *_, paths in resolved for p in paths}), num_threads
        )
        grayscale = sum(
            1 for r, (mode, _) in info.items() if r.split("/")[0] in FOLDERS[:2] and mode != "RGB"
        )
        odd = sum(1 for _, (_, size) in info.items() if size != (SIZE, SIZE))
        skipped, kept = [], []
        for position, number, line, paths in resolved:
            broken = [p for p in paths if p in bad]
            skipped.extend(
                {"line": number, "file": source.describe(p), "error": bad[p]} for p in broken
            )
            if not broken:
                kept.append((position, number, line, paths))
        if bad and not skip_corrupt:
            users = sorted({s["line"] for s in skipped})
            raise DatasetError(
                f"{len(bad)} corrupt or unreadable image file(s) in {source.describe('')} "
                f"(used by {len(users)} sample(s), file_map.txt line(s) "
                f"{', '.join(map(str, users[:10]))}{' ...' if len(users) > 10 else ''}):\n"
                f"{_first_ten([f'  {source.describe(p)}: {e}' for p, e in sorted(bad.items())])}"
                "\nSet dataset.skip_corrupt=True to leave those samples out."
            )
        if not kept:
            raise DatasetError(f"no usable samples in {source.describe('')}")
        return ModestScan(
            kept, skipped, len(entries), hashlib.sha256(raw).hexdigest(), grayscale, odd
        )
    finally:
        source.close()


def _first_ten(lines: list[str]) -> str:
    more = f"\n  ... and {len(lines) - 10} more" if len(lines) > 10 else ""
    return "\n".join(lines[:10]) + more


def _resolve_entries(source: "ModestSource", entries) -> list[tuple]:
    """(position, line number, line, paths) per file_map entry; DatasetError listing the
    missing files, if any."""
    names = {folder: source.names_in(folder) for folder in FOLDERS}
    resolved, missing = [], []
    for position, (number, line, stems) in enumerate(entries):
        paths = []
        for folder, stem in zip(FOLDERS, stems):
            rel = _resolve(stem, folder, names[folder])
            if rel is None:
                missing.append(f"  line {number}: {folder}/{stem}.jpeg  (line: {line!r})")
            paths.append(rel)
        resolved.append((position, number, line, tuple(paths)))
    if missing:
        raise DatasetError(
            f"{len(missing)} file(s) listed in {source.describe('file_map.txt')} "
            f"are missing under {source.describe('')}:\n{_first_ten(missing)}"
        )
    return resolved


def _decode_all(source: "ModestSource", files: list[str], num_threads: int):
    """Decodes every file once (threads: PIL releases the GIL while decoding); returns
    ({file: (mode, size)}, {file: error})."""

    def check(rel):
        try:
            return rel, _check_image(source.read(rel)), None
        except Exception as e:  # noqa: BLE001 - reported by the caller with the file name
            return rel, None, f"{type(e).__name__}: {e}"

    threads = num_threads or min(8, 2 * (os.cpu_count() or 1))
    info, bad = {}, {}
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for rel, meta, err in pool.map(check, files, chunksize=64):
            if err is None:
                info[rel] = meta
            else:
                bad[rel] = err
    return info, bad
