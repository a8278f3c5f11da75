"""What a batch separates: files, folders (recursive), globs and list files, expanded to audio files;
and where each one's stems go, with any two inputs that would write the same file found up front."""
from __future__ import annotations

import csv
import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import DSUError

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".aifc",
                              ".m4a", ".aac", ".wma", ".mp4", ".webm", ".caf", ".w64"})
LIST_EXTENSIONS = frozenset({".txt", ".csv", ".lst", ".m3u", ".m3u8"})
# the presets of the `layout` request field (the output-layout contract), as templates


@dataclass(frozen=True)
class Item:
    """One input file, by the absolute name it was found under (a symlink stays where it is in the
    tree, not where it points), and the folder its stems are written under (the input's folder
    relative to the inputs' common root, mirrored under the batch's output folder)."""
    input: Path
    output_dir: Path
    label: str = ""  # the input relative to the inputs' common root, for messages

    @property
    def key(self) -> str:
        return str(self.input)


def expand(sources: list[str | os.PathLike], exclude: Path | None = None) -> list[Path]:
    """Absolute audio file names, in the order given (folders and globs sorted), each file once
    (two names of one file: the first). Files under `exclude` (the batch's output folder) are left
    out of folders and globs, so stems written by an earlier run are never taken as inputs. Names
    are not opened here: a dangling link, a loop, a pipe or a device named like audio is listed, and
    the batch records it as failed."""
    found: list[Path] = []
    for source in sources:
        found.extend(_expand_one(str(source), exclude, lists=True))
    seen, unique = set(), []
    for path in found:
        if real(path) not in seen:
            seen.add(real(path))
            unique.append(path)
    return unique


def real(path: Path) -> Path:
    """Where `path` points; a loop or a dangling link gives what it can without raising."""
    return Path(os.path.realpath(path))


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _expand_one(source: str, exclude: Path | None, lists: bool, base: Path | None = None) -> list[Path]:
    path = Path(os.path.expanduser(source))
    if base is not None and not path.is_absolute():
        path = base / path
    if path.is_dir():
        return _audio_in(path, exclude)
    if path.is_file():
        if lists and path.suffix.lower() in LIST_EXTENSIONS:
            return [f for entry in read_list(path) for f in _expand_one(entry, exclude, False, path.parent)]
        return [_absolute(path)]
    if os.path.lexists(path) and path.suffix.lower() in AUDIO_EXTENSIONS:
        return [_absolute(path)]  # a broken link, a pipe, a device: failed when its turn comes
    if glob.has_magic(str(path)):
        matched = sorted(glob.glob(str(path), recursive=True))
        files = []
        for m in matched:
            p = Path(m)
            files.extend(_audio_in(p, exclude) if p.is_dir() else
                         [_absolute(p)] if p.suffix.lower() in AUDIO_EXTENSIONS and not _under(p, exclude) else [])
        if not files:
            raise DSUError("input_not_found", f"no audio file matches {source}")
        return files
    raise DSUError("input_not_found", f"input not found: {source} (give files, folders, globs or a .txt/.csv list)")


def _audio_in(folder: Path, exclude: Path | None) -> list[Path]:
    files: list[Path] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _under(Path(root, d), exclude))
        files.extend(_absolute(Path(root, n)) for n in sorted(names)
                     if not n.startswith(".") and Path(n).suffix.lower() in AUDIO_EXTENSIONS)
    return files


def _under(path: Path, folder: Path | None) -> bool:
    return folder is not None and real(path).is_relative_to(folder)


def read_list(path: Path) -> list[str]:
    """Entries of a list file: one path per line (`#` comments and blank lines skipped), or a CSV
    whose first column is the path (a header row naming no existing file is skipped)."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        rows = [r[0].strip() for r in csv.reader(text.splitlines()) if r and r[0].strip()]
        if rows and not (path.parent / os.path.expanduser(rows[0])).exists() and rows[0].lower() in (
                "path", "file", "input", "filename", "track"):
            rows = rows[1:]
        return rows
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def plan(files: list[Path], output_dir: Path, keep_folders: bool = True) -> list[Item]:
    """Each file with its output folder: `output_dir` / (its folder relative to the common root)."""
    output_dir = output_dir.resolve()
    if not files:
        return []
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    return [Item(f, output_dir / f.parent.relative_to(root) if keep_folders else output_dir,
                 str(f.relative_to(root))) for f in files]


def stem_files(layout: str, family: str, model: str, ext: str):
    """`paths(item, stems) -> list of paths` the separate job will write, by the job's own naming
    (`dsu.jobs.outputs`, safe names included); a bad template is an error before anything runs."""
    from ..jobs import outputs
    outputs.template_of(layout)

    def paths(item: Item, stems: list[str]) -> list[str]:
        found = outputs.stem_paths(layout, item.output_dir, model, item.input, stems, ext, family=family)
        return [str(found[s]) for s in stems]
    return paths


def check_collisions(items: list[Item], layout: str, model: str, ext: str, stems: list[str] | None,
                     family: str = "") -> None:
    """Raise `bad_value` naming the inputs when two inputs, or two stems of one input, would be
    written to the same file. With `stems` unknown (None) only inputs are compared, each through a
    stand-in stem."""
    paths_of = stem_files(layout, family, model, ext)
    fold = sys.platform in ("darwin", "win32")  # their usual file systems ignore case
    owners: dict[str, Path] = {}
    names = stems if stems is not None else ["{stem}"]
    for item in items:
        mine: set[str] = set()
        for path in paths_of(item, names):
            key = path.casefold() if fold else path
            if key in mine:
                raise DSUError("bad_value", f"layout {layout!r} writes two stems of {item.input} to "
                                            f"{path}: put {{stem}} in it")
            mine.add(key)
            other = owners.get(key)
            if other is not None and other != item.input:
                raise DSUError("bad_value", f"{other} and {item.input} would both be written to {path}: "
                                            "rename one, or use a layout (--filename) that tells them apart, "
                                            "e.g. with {trackext}")
            owners[key] = item.input
