"""The batch manifest `OUT/dsu-batch.jsonl`: one JSON line per finished file, appended and fsynced
after the file's stems were renamed into place, never rewritten. A rerun reads it to skip what is
done; a line torn by a crash, or any line that is not a record (hand-edited, damaged, hostile), is
skipped with a warning and the next append starts on a line of its own.

A lock file beside it (`.dsu-batch.lock`, held with flock) keeps two batches from writing one folder."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
from pathlib import Path

from .. import untrusted
from ..errors import DSUError

NAME = "dsu-batch.jsonl"
LOCK_NAME = ".dsu-batch.lock"
MAX_LINE = 1 << 20  # a record is a few KiB: a longer line is damage, skipped unread


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class Manifest:
    def __init__(self, folder: Path):
        self.path = folder / NAME
        folder.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _take_lock(folder / LOCK_NAME)
        self.problems: list[str] = []  # "line N: why", for lines skipped on reading
        self.records, self.torn = self._read()
        new = not self.path.exists()
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if new:
            _fsync_dir(folder)
        elif self.path.stat().st_size and not self._ends_with_newline():
            os.write(self._fd, b"\n")  # a line torn by a crash stays a line of its own, skipped on reading

    def _read(self) -> tuple[list[dict], int]:
        if not os.path.lexists(self.path):
            return [], 0
        records: list[dict] = []
        torn = 0
        why: str | None  # why a line is not a record
        # the output folder may be shared: a FIFO or /dev/zero in the manifest's place is refused unread
        with untrusted.open_binary(self.path, "the batch manifest") as f:
            for number, line in enumerate(iter(lambda: f.readline(MAX_LINE + 1), b""), 1):
                if len(line) > MAX_LINE and not line.endswith(b"\n"):
                    while (rest := f.readline(MAX_LINE)) and not rest.endswith(b"\n"):
                        pass
                    why = f"longer than {MAX_LINE} bytes"
                elif not line.strip():
                    continue
                else:
                    try:
                        record = json.loads(line)
                        why = _not_a_record(record)
                    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: JSON, huge ints
                        why = f"not JSON ({type(e).__name__})"
                if why is None:
                    records.append(record)
                else:
                    torn += 1
                    self.problems.append(f"line {number}: {why}")
        return records, torn

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def append(self, record: dict) -> None:
        """One line in one write, on disk before this returns."""
        # a file name that is not UTF-8 (Latin-1 `caf\xe9.wav`) holds lone surrogates: they go out as
        # JSON escapes (`\udce9`), which read back as the same name
        text = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
        data = text.encode("utf-8", "backslashreplace")
        assert self._fd is not None  # not closed
        os.write(self._fd, data)
        os.fsync(self._fd)
        self.records.append(record)

    def latest(self) -> dict[tuple, dict]:
        """The last record per (input, model identity, options)."""
        return {record_key(r): r for r in self.records}

    def close(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._lock_fd = None

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# the fields a rerun reads, and the types it can use (a record is what `_record` in runner.py writes)
_FIELDS = {"input": (str,), "status": (str,), "size": (int, type(None)), "mtime_ns": (int, type(None)),
           "sha256": (str, type(None)), "outputs": (list,), "output_dir": (str, type(None))}


def _not_a_record(record) -> str | None:
    """Why a parsed line cannot be a record (None: it can)."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    if "input" not in record:
        return "no `input`"
    for name, types in _FIELDS.items():
        if name in record and not isinstance(record[name], types):
            return f"`{name}` is a {type(record[name]).__name__}"
    if not all(isinstance(p, str) for p in record.get("outputs", [])):
        return "`outputs` holds something other than paths"
    try:
        record_key(record)
    except (ValueError, RecursionError, TypeError) as e:
        return f"`model_id` or `options` cannot be compared ({type(e).__name__})"
    return None


def record_key(record: dict) -> tuple:
    return (record["input"], canonical(record.get("model_id")), canonical(record.get("options")))


def is_done(record: dict | None, size: int, mtime_ns: int, sha256=None) -> bool:
    """Whether `record` finished this same input (by size and mtime, or by content when those
    changed: `sha256` is then called) and its outputs are still there."""
    if record is None or record.get("status") != "done":
        return False
    if not all(os.path.isfile(p) for p in record.get("outputs", [])):
        return False
    if record.get("size") == size and record.get("mtime_ns") == mtime_ns:
        return True
    return record.get("size") == size and sha256 is not None and record.get("sha256") == sha256()


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _take_lock(path: Path):
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock, the user keeps batches apart
        return None
    what = f"the batch lock {path}"
    try:  # O_NONBLOCK: a FIFO in its place must not block
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o644)
    except OSError as e:
        raise DSUError("bad_value", f"{what} is a {'folder' if e.errno == errno.EISDIR else 'file'} that cannot be "
                                    f"opened ({e.strerror}); remove it") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DSUError("bad_value", f"{what} is a special file (a pipe, socket or device), not a lock; remove it")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise DSUError("bad_value", f"another dsu batch (pid {holder}) is writing to {path.parent}; "
                                    "wait for it to end or choose another output folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
