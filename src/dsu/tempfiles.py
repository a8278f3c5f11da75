"""Temporary files that name their owner, commits that never mix two jobs, and the cleaning of what
a killed process left behind.

A file is written as `.<name>.<pid>-<random>.partial` beside where it goes (a peak-limited stem first
as `.<name>.<pid>-<random>.unscaled.partial`), so two jobs writing the same final name never share a
temporary, and anything left over says which process made it. Commits take an exclusive lock on the
folders they rename into (flock on the folder itself: nothing extra is created), so when two jobs
finish the same files, the later commit wins whole and each `done` names only its own files.
Decoded copies of inputs go to the system temp dir as `dsu-decode-<pid>-<random>.wav`."""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import DSUError

try:
    import fcntl
except ImportError:  # Windows: no folder locks; temporaries are still unique per job
    fcntl = None

PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]+(?:\.unscaled)?\.partial$")
LEGACY_PARTIAL = re.compile(r"^\..+\.partial$")  # DSU before owner pids: `.<name>.partial`
DECODE_PREFIX = "dsu-decode-"
DECODE = re.compile(r"^dsu-decode-(?P<pid>\d+)-.+\.wav$")


def temp_name(path: Path, kind: str = "") -> Path:
    """A fresh temporary name for `path`, unique to this process and call; `kind` e.g. '.unscaled'."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{kind}.partial")


def decode_prefix() -> str:
    return f"{DECODE_PREFIX}{os.getpid()}-"


def owner(name: str) -> int | None:
    """The pid a DSU temporary file name carries (None for other names)."""
    m = PARTIAL.match(name) or DECODE.match(name)
    return int(m["pid"]) if m else None


def alive(pid: int) -> bool:
    """Whether a process `pid` exists on this machine (one we may not signal counts as alive)."""
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _stale(name: str, legacy: bool) -> bool:
    pid = owner(name)
    if pid is not None:
        return pid != os.getpid() and not alive(pid)
    return legacy and LEGACY_PARTIAL.match(name) is not None


def clean_folder(folder: str | os.PathLike, recursive: bool = False, legacy: bool = False) -> list[Path]:
    """Remove the partial files in `folder` whose owner process is gone (never a live process's, never
    this one's); `legacy` also removes owner-less `.<name>.partial` files of older DSU versions.
    Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    walk = os.walk(folder) if recursive else [(str(folder), [], [e.name for e in os.scandir(folder)])]
    for root, _, names in walk:
        for name in names:
            if name.endswith(".partial") and _stale(name, legacy):
                path = Path(root) / name
                try:
                    if path.is_file() and not path.is_symlink():
                        path.unlink()
                        removed.append(path)
                except OSError:
                    pass  # removed by another cleaner, or not ours to remove
    return removed


def clean_decode_files(folder: str | os.PathLike | None = None) -> list[Path]:
    """Remove DSU's decoded input copies in the temp dir whose owner process is gone."""
    folder = Path(folder or tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        pid = owner(entry.name) if entry.name.startswith(DECODE_PREFIX) else None
        if pid is not None and pid != os.getpid() and not alive(pid):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


@contextlib.contextmanager
def folder_locks(folders: Iterable[Path]) -> Iterator[None]:
    """Exclusive locks on `folders` (in one order, so two committers cannot deadlock)."""
    fds = []
    try:
        if fcntl is not None:
            for folder in sorted({str(Path(f)) for f in folders}):
                fd = os.open(folder, os.O_RDONLY)
                fds.append(fd)
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        for fd in reversed(fds):
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def commit(renames: dict[Path, Path]) -> None:
    """Rename each temporary (key) to its final name (value) atomically, all under the locks of their
    folders; afterwards each final name is checked to be the file this process wrote."""
    with folder_locks(final.parent for final in renames.values()):
        written = {}
        for temp, final in renames.items():
            written[final] = os.stat(temp).st_ino
            os.replace(temp, final)
        for final, inode in written.items():
            if os.stat(final).st_ino != inode:  # something outside DSU's locks replaced it
                raise DSUError("output_not_writable", f"{final} was replaced by another program while this job "
                                                      "committed it: write to a folder nothing else writes to")
