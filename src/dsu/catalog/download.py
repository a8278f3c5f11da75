"""One file from a URL to the models dir, so that nothing false is ever left under its name.

The bytes stream into `.<name>.<pid>.<token>.part` beside the destination, hashed as they arrive; an
interrupted transfer resumes with an HTTP Range request (in this process after a dropped connection,
or in a later one, which adopts the part a dead download left); transient failures are retried with
back-off. The size, the sha256 (or its published prefix) and a check by the file's family loader are
passed before the part is renamed over the destination. A lock file beside the destination makes two
downloads of the same file, in any processes, end with one good file: the second waits, then finds it.

httpx does the HTTP (streaming, timeouts per read, redirects, HTTP/1.1 keep-alive)."""
from __future__ import annotations

import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import DSUError

CHUNK = 1 << 20
TRANSIENT_STATUS = (408, 425, 429, 500, 502, 503, 504)
REPORT_EVERY = 0.25  # seconds between progress reports

Progress = Callable[[int, int | None, float], None]  # (bytes done, bytes total or None, bytes/s)
Check = Callable[[Path], None]                       # raises DSUError when the file is not what it claims


@dataclass(frozen=True)
class Expected:
    """What the file must be: any of these may be unknown (None)."""
    size: int | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str
    size: int
    downloaded: bool  # False: a good file was already there


class FileLock:
    """An exclusive lock on `path` (created if needed) held across processes; waiting stays
    cancellable. POSIX flock, or msvcrt on Windows."""

    def __init__(self, path: Path, cancelled: Callable[[], bool] | None = None):
        self.path, self.cancelled = path, cancelled or (lambda: False)
        self.fd: int | None = None

    def __enter__(self) -> "FileLock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        while not self._try():
            if self.cancelled():
                os.close(self.fd)
                raise DSUError("cancelled", "cancelled while waiting for another download of the same file")
            time.sleep(0.1)
        return self

    def _try(self) -> bool:
        try:
            import fcntl
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ModuleNotFoundError:  # Windows
            import msvcrt
            try:
                msvcrt.locking(self.fd, msvcrt.LK_NBLCK, 1)
            except OSError:
                return False
        except BlockingIOError:
            return False
        return True

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # closing releases the lock; the lock file stays (removing it would race)


def sha256_of(path: Path, into=None):
    digest = into or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest


def mismatch(path: Path, size: int, sha: str, expected: Expected, name: str) -> str | None:
    """Why a file of `size` bytes and sha256 `sha` is not the expected one (None when it is)."""
    if expected.size is not None and size != expected.size:
        return f"{name} has {size} bytes, not the {expected.size} the catalog says"
    if expected.sha256 and sha != expected.sha256:
        return f"{name}'s sha256 is {sha}, not {expected.sha256}"
    if expected.sha256_prefix and not sha.startswith(expected.sha256_prefix):
        return f"{name}'s sha256 starts {sha[:len(expected.sha256_prefix)]}, not {expected.sha256_prefix}"
    return None


def _part_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(3)}.part")


def _adopt_leftovers(dest: Path, part: Path) -> None:
    """Under the lock, any other part of this file belongs to a download that has ended: keep the
    longest as ours to resume, drop the rest."""
    leftovers = sorted(dest.parent.glob(f".{dest.name}.*.part"), key=lambda p: p.stat().st_size, reverse=True)
    for i, p in enumerate(leftovers):
        if p == part:
            continue
        if i == 0:
            os.replace(p, part)
        else:
            p.unlink(missing_ok=True)


def fetch(url: str, dest: Path, expected: Expected = Expected(), *, check: Check | None = None,
          on_progress: Progress | None = None, cancelled: Callable[[], bool] | None = None,
          timeout: float = 30.0, retries: int = 5, backoff: float = 0.5) -> Fetched:
    """`url` saved as `dest`, verified. Raises DSUError: `checksum_mismatch` (nothing kept),
    `download_failed` (HTTP error, or network failures past `retries`; a part is kept to resume),
    `cancelled` (nothing kept), or whatever `check` raises (nothing kept)."""
    cancelled = cancelled or (lambda: False)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(dest.with_name(f".{dest.name}.lock"), cancelled):
        if dest.is_file():
            size = dest.stat().st_size
            if expected.size is None or size == expected.size:
                sha = sha256_of(dest).hexdigest()
                if mismatch(dest, size, sha, expected, dest.name) is None:
                    if check is not None and not (expected.sha256 or expected.sha256_prefix):
                        check(dest)  # nothing vouches for a file found in place: its loader must
                    return Fetched(dest, sha, size, downloaded=False)
        part = _part_name(dest)
        _adopt_leftovers(dest, part)
        try:
            digest = _transfer(url, part, expected, on_progress, cancelled, timeout, retries, backoff)
        except DSUError as e:
            if e.code != "download_failed":
                part.unlink(missing_ok=True)
            raise
        size, sha = part.stat().st_size, digest.hexdigest()
        wrong = mismatch(part, size, sha, expected, dest.name)
        if wrong:
            part.unlink(missing_ok=True)
            raise DSUError("checksum_mismatch", f"{wrong}; nothing was kept. The server sent other bytes than "
                                                f"published ({url}); try again later or another mirror")
        try:
            if check is not None:
                check(part)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, dest)
        return Fetched(dest, sha, size, downloaded=True)


def _transfer(url: str, part: Path, expected: Expected, on_progress: Progress | None,
              cancelled: Callable[[], bool], timeout: float, retries: int, backoff: float):
    """Stream `url` into `part` (resuming what it holds); the sha256 of the whole file."""
    import httpx

    digest = sha256_of(part) if part.exists() else hashlib.sha256()
    have = part.stat().st_size if part.exists() else 0
    failures, started, start_bytes = 0, time.monotonic(), have
    last_report = 0.0
    with httpx.Client(follow_redirects=True, timeout=httpx.Timeout(timeout),
                      headers={"User-Agent": "dsu-model-download"}) as client:
        while True:
            if cancelled():
                raise DSUError("cancelled", "the download was cancelled; nothing was kept")
            headers = {"Range": f"bytes={have}-"} if have else {}
            received = 0
            try:
                with client.stream("GET", url, headers=headers) as response:
                    status = response.status_code
                    if status == 416 and have and (expected.size in (None, have)):
                        return digest  # the part already holds the whole file
                    if status == 416:
                        part.unlink(missing_ok=True)
                        digest, have = hashlib.sha256(), 0
                        raise httpx.RemoteProtocolError("range not satisfiable; starting over")
                    if status in TRANSIENT_STATUS:
                        raise httpx.RemoteProtocolError(f"HTTP {status}")
                    if status >= 400:
                        raise DSUError("download_failed", f"{url} answered HTTP {status}"
                                       + (" (not found: the catalog may be out of date)" if status == 404 else ""))
                    resumed = status == 206 and _range_start(response) == have
                    if not resumed:  # the server sent the whole file again
                        digest, have = hashlib.sha256(), 0
                    total = _total(response, have)
                    if expected.size is not None and total is not None and total != expected.size:
                        raise DSUError("checksum_mismatch", f"{url} offers {total} bytes, not the "
                                                            f"{expected.size} the catalog says; nothing was kept")
                    with open(part, "ab" if resumed else "wb") as out:
                        for block in response.iter_bytes():  # as it arrives: a drop loses nothing received
                            if cancelled():
                                raise DSUError("cancelled", "the download was cancelled; nothing was kept")
                            out.write(block)
                            digest.update(block)
                            have += len(block)
                            received += len(block)
                            if expected.size is not None and have > expected.size:
                                raise DSUError("checksum_mismatch", f"{url} sent more than the {expected.size} "
                                                                    "bytes the catalog says; nothing was kept")
                            now = time.monotonic()
                            if on_progress is not None and now - last_report >= REPORT_EVERY:
                                last_report = now
                                on_progress(have, total, (have - start_bytes) / max(now - started, 1e-6))
                if on_progress is not None:
                    on_progress(have, total, (have - start_bytes) / max(time.monotonic() - started, 1e-6))
                return digest
            except httpx.HTTPError as e:  # dropped connection, timeout, refused, transient status
                failures = 0 if received >= CHUNK else failures + 1  # a trickle is no progress
                if failures > retries:
                    what = "timed out" if isinstance(e, httpx.TimeoutException) else "failed"
                    raise DSUError("download_failed", f"downloading {url} {what} {retries + 1} times in a row "
                                   f"({type(e).__name__}: {e or 'no detail'}); {have} bytes are kept to resume: "
                                   "run the same command again") from None
                time.sleep(min(backoff * 2 ** max(failures - 1, 0), 10.0))


def _range_start(response) -> int | None:
    text = response.headers.get("content-range", "")  # bytes START-END/TOTAL
    try:
        return int(text.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _total(response, have: int) -> int | None:
    text = response.headers.get("content-range")
    if text and "/" in text and not text.endswith("/*"):
        try:
            return int(text.rsplit("/", 1)[1])
        except ValueError:
            return None
    length = response.headers.get("content-length")
    return int(length) + (have if response.status_code == 206 else 0) if length and length.isdigit() else None
