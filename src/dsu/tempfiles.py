"""Temporary files that name their owner, commits that never mix two jobs, and the cleaning of what
a killed process left behind.

A file is written as `.<name>.<pid>@<host>.<realm>-<random>.partial` beside where it goes (a
peak-limited stem first as `....unscaled.partial`), so two jobs writing the same final name never
share a temporary, and anything left over says which process on which machine made it. `realm`
hashes the machine's boot id and the process's PID namespace: a pid means something only where the
realm is ours, so a partial of another machine sharing the folder (NFS, a Ray cluster) or of another
container is never judged by a local pid; it is removed only once nothing has written to it for
UNCHECKABLE_AGE. Commits take an exclusive lock on the folders they rename into (flock on the folder
itself: nothing extra is created), so when two jobs finish the same files, the later commit wins
whole and each `done` names only its own files. Decoded copies of inputs go to the system temp dir
as `dsu-decode-<pid>@<host>.<realm>-<random>.wav`."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import socket
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType

from .errors import DSUError

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # Windows: no folder locks; temporaries are still unique per job
    fcntl = None

# A partial whose owner cannot be checked from here (another machine, another PID namespace, an
# older DSU that did not say) is debris only when nothing has written to it for this long. A running
# job appends to its partials every chunk (seconds to minutes apart even on a slow CPU), so a day
# is far past any live job's pause, and far past the clock skew between NFS clients and server; the
# cost is that a dead remote job's hidden partials stay a day before a clean removes them.
UNCHECKABLE_AGE = 24 * 3600

_OWNER = r"(?P<pid>\d+)@(?P<host>[A-Za-z0-9_-]*)\.(?P<realm>[0-9a-f]{8})"
PARTIAL = re.compile(rf"^\.(?P<name>.+)\.{_OWNER}-[0-9a-f]+(?:\.unscaled)?\.partial$")
OLD_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]+(?:\.unscaled)?\.partial$")  # before realms
LEGACY_PARTIAL = re.compile(r"^\..+\.partial$")  # DSU before owner pids: `.<name>.partial`
DECODE_PREFIX = "dsu-decode-"
DECODE = re.compile(rf"^dsu-decode-{_OWNER}-.+\.wav$")
OLD_DECODE = re.compile(r"^dsu-decode-(?P<pid>\d+)-.+\.wav$")
HOST_CHARS = 16  # the host name in a temporary name is for people; the realm is what is compared

_realm: tuple[int, str] | None = None  # (pid it was computed in, realm)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read(200).strip()
    except OSError:
        return ""


def realm() -> str:
    """8 hex digits naming where this process's pids mean something: the machine's boot (Linux boot
    id; the host name elsewhere) and the PID namespace (inode of /proc/self/ns/pid)."""
    global _realm
    if _realm is None or _realm[0] != os.getpid():  # a forked child may be in a new PID namespace
        try:
            ns = os.stat("/proc/self/ns/pid")
            space = f"{ns.st_dev}:{ns.st_ino}"
        except OSError:
            space = ""
        boot = _read("/proc/sys/kernel/random/boot_id") or socket.gethostname()
        _realm = (os.getpid(), hashlib.sha256(f"{boot}|{space}".encode()).hexdigest()[:8])
    return _realm[1]


def owner_tag() -> str:
    """`<pid>@<host>.<realm>`: this process, as its temporary names carry it."""
    host = re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname().split(".")[0])[:HOST_CHARS]
    return f"{os.getpid()}@{host}.{realm()}"


def temp_name(path: Path, kind: str = "") -> Path:
    """A fresh temporary name for `path`, unique to this process and call; `kind` e.g. '.unscaled'."""
    return path.with_name(f".{path.name}.{owner_tag()}-{secrets.token_hex(4)}{kind}.partial")


def decode_prefix() -> str:
    return f"{DECODE_PREFIX}{owner_tag()}-"


def _match(name: str):
    return PARTIAL.match(name) or DECODE.match(name)


def owner(name: str) -> int | None:
    """The pid a DSU temporary file name carries (None for other names)."""
    m = _match(name) or OLD_PARTIAL.match(name) or OLD_DECODE.match(name)
    return int(m["pid"]) if m else None


def alive(pid: int) -> bool:
    """Whether a process `pid` exists in this PID namespace (one we may not signal counts as alive)."""
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


def stale(name: str, mtime: float, legacy: bool = False, now: float | None = None) -> bool:
    """Whether a DSU temporary `name` last written at `mtime` is debris: its owner is a process of our
    realm that is gone, or (an owner we cannot check: another realm, a name from an older DSU, with
    `legacy` also owner-less `.<name>.partial`) nothing has written to it for UNCHECKABLE_AGE."""
    m = _match(name)
    if m is not None and m["realm"] == realm():
        pid = int(m["pid"])
        return pid != os.getpid() and not alive(pid)
    uncheckable = m is not None or OLD_PARTIAL.match(name) or OLD_DECODE.match(name) or \
        (legacy and LEGACY_PARTIAL.match(name))
    return bool(uncheckable) and (now if now is not None else time.time()) - mtime > UNCHECKABLE_AGE


def _remove_stale(path: Path, legacy: bool) -> bool:
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or not stale(path.name, st.st_mtime, legacy):
            return False
        os.unlink(path)
        return True
    except OSError:
        return False  # removed by another cleaner, or not ours to remove


def clean_folder(folder: str | os.PathLike, recursive: bool = False, legacy: bool = False) -> list[Path]:
    """Remove the partial files in `folder` that are `stale` (never a live local process's, never this
    one's, never a fresh one whose owner cannot be checked from here); `legacy` also takes owner-less
    `.<name>.partial` files of older DSU versions. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    walk = os.walk(folder) if recursive else [(str(folder), [], [e.name for e in os.scandir(folder)])]
    for root, _, names in walk:
        for name in names:
            path = Path(root) / name
            if name.endswith(".partial") and _remove_stale(path, legacy):
                removed.append(path)
    return removed


def clean_decode_files(folder: str | os.PathLike | None = None) -> list[Path]:
    """Remove DSU's decoded input copies in the temp dir that are `stale`."""
    folder = Path(folder or tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        path = Path(entry.path)
        if entry.name.startswith(DECODE_PREFIX) and _remove_stale(path, False):
            removed.append(path)
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
            assert fcntl is not None  # fds are only opened to lock them
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def write_failure(final: Path, err: int) -> DSUError:
    """The coded error for the OS error `err` met while writing `final` (or its temporary): the job's
    temporaries are gone by the time it is seen, so it says nothing was kept."""
    folder = final.parent
    blocker = next((p for p in (folder, *folder.parents) if os.path.lexists(p)), None)
    if blocker is not None and not blocker.is_dir():  # ENOTDIR, or ENOENT when a file took a folder's place
        return DSUError("output_not_writable", f"cannot write {final}: {blocker} is a file where a folder must be; "
                                               "nothing of this job was kept: move that file or choose another "
                                               "output folder")
    if err in (errno.ENOENT, errno.ESTALE) or not folder.is_dir():
        return DSUError("output_not_writable", f"cannot write {final}: its folder {folder} was removed or moved "
                                               "while the job wrote it; nothing of this job was kept: leave the "
                                               "output folder in place until the job is done")
    try:
        free = os.statvfs(folder)
        left = free.f_bavail * free.f_frsize
    except OSError:
        left = None
    if err in (errno.ENOSPC, errno.EDQUOT) or left == 0:
        said = f" ({left // 1024} KiB free)" if left else ""
        return DSUError("output_not_writable", f"cannot write {final}: the disk is full{said} "
                                               f"({os.strerror(err)}); nothing of this job was kept: free space "
                                               "or choose another output folder")
    return DSUError("output_not_writable", f"cannot write {final}: {os.strerror(err)}; nothing of this job was "
                                           "kept: choose an output folder you can write to")


def commit(renames: dict[Path, Path]) -> None:
    """Rename each temporary (key) to its final name (value) atomically, all under the locks of their
    folders; afterwards each final name is checked to be the file this process wrote. An OS error
    (the folder removed meanwhile) is `write_failure`'s coded error."""
    final = next(iter(renames.values()), None)
    try:
        with folder_locks(final.parent for final in renames.values()):
            written = {}
            for temp, final in renames.items():
                written[final] = os.stat(temp).st_ino
                os.replace(temp, final)
            for final, inode in written.items():
                if os.stat(final).st_ino != inode:  # something outside DSU's locks replaced it
                    raise DSUError("output_not_writable", f"{final} was replaced by another program while this "
                                                          "job committed it: write to a folder nothing else "
                                                          "writes to")
    except OSError as e:
        assert final is not None  # an OS error comes from a rename, so there is one
        raise write_failure(final, e.errno or errno.EIO) from None
