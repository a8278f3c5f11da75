"""One file from a URL to the models dir, so that nothing false is ever left under its name.

The bytes stream into `.<name>.<pid>.<token>.part` beside the destination, hashed as they arrive; an
interrupted transfer resumes with an HTTP Range request (in this process after a dropped connection,
or in a later one, which adopts the part a dead download left); transient failures are retried with
back-off. The size, the sha256 (or its published prefix) and a check by the file's family loader are
passed before the part is renamed over the destination. A lock file beside the destination makes two
downloads of the same file, in any processes, end with one good file: the second waits, then finds it.

Nothing a server does keeps a download going without bound: the bytes are capped by the catalog's
size (else a per-family maximum), every `timeout` seconds at least `MIN_RATE` bytes/s must arrive
(headers included, so a trickling server fails like a stalled one), a host name that does not resolve
fails at once, and a full disk removes the part and says so.

httpx does the HTTP (streaming, timeouts per read, redirects, HTTP/1.1 keep-alive)."""
from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import DSUError

CHUNK = 1 << 20
TRANSIENT_STATUS = (408, 425, 429, 500, 502, 503, 504)
REPORT_EVERY = 0.25  # seconds between progress reports
MIN_RATE = 1024     # bytes/s a transfer must keep up over every `timeout` seconds
FULL_DISK = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)

Progress = Callable[[int, int | None, float], None]  # (bytes done, bytes total or None, bytes/s)
Retry = Callable[[int, int, str, float], None]       # (retry number, retries allowed, why, seconds until it)
Check = Callable[[Path], None]                       # raises DSUError (the reason) when the file is unusable


@dataclass(frozen=True)
class Expected:
    """What the file must be: any of these may be unknown (None)."""
    size: int | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None
    most: int | None = None  # when `size` is unknown: the most bytes such a file can have
    what: str = "file"       # what `most` bounds, for the message

    @property
    def limit(self) -> int | None:
        return self.size if self.size is not None else self.most


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str
    size: int
    downloaded: bool  # False: a good file was already there


class FileLock:
    """An exclusive lock on `path` (created if needed) held across processes; waiting stays
    cancellable. POSIX flock, or msvcrt on Windows. The holder removes the file before releasing it;
    a waiter that then wins the lock of a removed file starts over, so no two hold it at once."""

    def __init__(self, path: Path, cancelled: Callable[[], bool] | None = None):
        self.path, self.cancelled = path, cancelled or (lambda: False)
        self.fd: int | None = None

    def __enter__(self) -> FileLock:
        while True:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            while not self._try():
                if self.cancelled():
                    os.close(self.fd)
                    raise DSUError("cancelled", "cancelled while waiting for another download of the same file")
                time.sleep(0.1)
            if self._current():
                return self
            os.close(self.fd)  # its holder removed it as we waited: lock the file now at the path

    def _current(self) -> bool:
        assert self.fd is not None  # called while the file is open
        try:
            return os.path.samestat(os.fstat(self.fd), os.stat(self.path))
        except OSError:
            return False

    def _try(self) -> bool:
        assert self.fd is not None  # called while the file is open
        try:
            import fcntl
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ModuleNotFoundError:  # Windows
            if sys.platform != "win32":
                raise  # neither flock nor msvcrt's locking: no lock to take
            import msvcrt
            try:
                msvcrt.locking(self.fd, msvcrt.LK_NBLCK, 1)
            except OSError:
                return False
        except BlockingIOError:
            return False
        return True

    def __exit__(self, *exc) -> None:
        try:
            os.unlink(self.path)  # while held: a waiter sees it was removed (see _current)
        except OSError:
            pass  # Windows keeps an open file; the next holder reuses it
        assert self.fd is not None  # entered
        os.close(self.fd)


def clean_locks(folder: Path, recursive: bool = True) -> list[Path]:
    """Remove the empty `.<name>.lock` files of downloads that were killed (no process holds them)."""
    removed = []
    walk = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for root, _, names in walk:
        for name in names:
            path = Path(root) / name
            if not (name.startswith(".") and name.endswith(".lock")) or path.is_symlink():
                continue
            try:
                if not path.is_file() or path.stat().st_size:
                    continue  # DSU's locks are empty: anything else is another program's
                lock = FileLock(path)
                lock.fd = os.open(path, os.O_RDWR)
                if lock._try() and lock._current():
                    lock.__exit__()
                    removed.append(path)
                else:
                    os.close(lock.fd)
            except OSError:
                pass
    return removed


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


def parts_of(dest: Path) -> list[Path]:
    """The parts of `dest` in its folder, by exact name (a `[` or `*` in a name is no pattern)."""
    pattern = re.compile(re.escape(f".{dest.name}.") + r"\d+\.[0-9a-f]+\.part")
    try:
        names = os.listdir(dest.parent)
    except OSError:
        return []
    return [dest.parent / n for n in names if pattern.fullmatch(n)]


def _adopt_leftovers(dest: Path, part: Path) -> None:
    """Under the lock, any other part of this file belongs to a download that has ended: keep the
    longest as ours to resume, drop the rest."""
    leftovers = sorted(parts_of(dest), key=lambda p: p.stat().st_size, reverse=True)
    for i, p in enumerate(leftovers):
        if p == part:
            continue
        if i == 0:
            os.replace(p, part)
        else:
            p.unlink(missing_ok=True)


def fetch(url: str, dest: Path, expected: Expected = Expected(), *, check: Check | None = None,
          on_progress: Progress | None = None, on_retry: Retry | None = None,
          cancelled: Callable[[], bool] | None = None, timeout: float = 30.0, retries: int = 5,
          backoff: float = 0.5, min_rate: float = MIN_RATE) -> Fetched:
    """`url` saved as `dest`, verified. Raises DSUError: `checksum_mismatch` (nothing kept),
    `download_failed` (HTTP error, an unresolvable host, or network failures past `retries`, each
    announced to `on_retry`; a part is kept to resume), `output_not_writable` (a full disk: nothing
    kept), `cancelled` (nothing kept), or `check`'s error (nothing kept). A file already at `dest`
    that is not the expected one is replaced by a verified download."""
    cancelled = cancelled or (lambda: False)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(dest.with_name(f".{dest.name}.lock"), cancelled):
        found = _in_place(dest, expected, check)
        if found is not None:
            return found
        part = _part_name(dest)
        _adopt_leftovers(dest, part)
        try:
            digest = _transfer(url, part, expected, on_progress, on_retry, cancelled, timeout, retries, backoff,
                               min_rate)
        except DSUError as e:
            if e.code != "download_failed" or not getattr(e, "resumable", True) or \
                    part.exists() and not part.stat().st_size:
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
        except DSUError as e:
            part.unlink(missing_ok=True)
            raise DSUError(e.code, f"{dest.name} was downloaded but cannot be used: {e.message}; nothing was "
                                   "kept") from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, dest)
        return Fetched(dest, sha, size, downloaded=True)


def _in_place(dest: Path, expected: Expected, check: Check | None) -> Fetched | None:
    """The file already at `dest` when it is the expected one; None when it is missing or damaged
    (then the download replaces it)."""
    if not dest.is_file():
        return None
    size = dest.stat().st_size
    if expected.limit is not None and size > expected.limit:
        return None
    if expected.size is not None and size != expected.size:
        return None
    sha = sha256_of(dest).hexdigest()
    if mismatch(dest, size, sha, expected, dest.name) is not None:
        return None
    if check is not None and not (expected.sha256 or expected.sha256_prefix):
        try:
            check(dest)  # nothing vouches for a file found in place: its loader must
        except DSUError:
            return None
    return Fetched(dest, sha, size, downloaded=False)


class _Pace:
    """At least `need` bytes every `window` seconds, on every read of a connection (response headers
    as much as the body), so a server that trickles fails like one that stalls; cancel is checked on
    each read too."""

    def __init__(self, window: float, min_rate: float, cancelled: Callable[[], bool]):
        self.window, self.need, self.cancelled = window, max(1, int(min_rate * window)), cancelled
        self.restart()

    def restart(self) -> None:
        self.start, self.got = time.monotonic(), 0

    def read_timeout(self, given: float | None) -> tuple[float | None, bool]:
        """(the timeout for the next read, whether this window's quota is what limits it)."""
        import httpcore
        if self.cancelled():
            raise _cancelled()
        now = time.monotonic()
        if now - self.start >= self.window:
            if self.got < self.need:
                raise httpcore.ReadTimeout(self.slow())
            self.start, self.got = now, 0
        if self.got >= self.need:
            return given, False
        left = max(self.start + self.window - now, 0.001)
        return (left, True) if given is None or left < given else (given, False)

    def slow(self) -> str:
        return (f"fewer than {self.need} bytes arrived in {self.window:g} s (the least is "
                f"{self.need / self.window:.0f} B/s)")


def _paced_backend(pace: _Pace):
    import httpcore

    class Stream(httpcore.NetworkStream):
        def __init__(self, stream):
            self.stream = stream

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            limit, by_pace = pace.read_timeout(timeout)
            try:
                data = self.stream.read(max_bytes, limit)
            except httpcore.ReadTimeout:
                why = pace.slow() if by_pace else f"nothing arrived in {timeout:g} s" if timeout else "timed out"
                raise httpcore.ReadTimeout(why) from None
            pace.got += len(data)
            return data

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            self.stream.write(buffer, timeout)

        def close(self) -> None:
            self.stream.close()

        def start_tls(self, ssl_context, server_hostname=None, timeout=None):
            return Stream(self.stream.start_tls(ssl_context, server_hostname, timeout))

        def get_extra_info(self, info: str):
            return self.stream.get_extra_info(info)

    class Backend(httpcore.SyncBackend):
        def connect_tcp(self, *args, **kwargs):
            return Stream(super().connect_tcp(*args, **kwargs))

    return Backend()


def client(timeout: float, min_rate: float = MIN_RATE, cancelled: Callable[[], bool] | None = None):
    """(an httpx client whose every read keeps up `min_rate` over `timeout` seconds, its pace: call
    `pace.restart()` before each request). Identity transfer encoding: the bytes counted are the file's."""
    import httpcore
    import httpx
    pace = _Pace(timeout, min_rate, cancelled or (lambda: False))
    transport = httpx.HTTPTransport()
    if isinstance(getattr(transport, "_pool", None), httpcore.ConnectionPool):  # httpx has no public hook
        transport._pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(),
                                                  network_backend=_paced_backend(pace))
    return httpx.Client(transport=transport, follow_redirects=True, timeout=httpx.Timeout(timeout),
                        headers={"User-Agent": "dsu-model-download", "Accept-Encoding": "identity"}), pace


def unresolved(error: BaseException | None) -> socket.gaierror | None:
    """The name-resolution failure behind a connection error, if that is what it was."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, socket.gaierror):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def no_host(url: str, gai: socket.gaierror) -> DSUError:
    import httpx
    host = httpx.URL(url).host
    return DSUError("download_failed", f"the host {host} does not resolve ({gai.strerror or gai}): no network, or "
                                       f"a wrong URL ({url}); nothing was downloaded")


def _unwritable(part: Path, have: int, total: int | None, error: OSError) -> DSUError:
    """The coded error for `error` met opening, writing or syncing `part`; on a full disk the part is
    removed, since it would only hold the space another download needs."""
    if error.errno is None or error.errno not in FULL_DISK:
        return DSUError("output_not_writable", f"cannot write {part}: {error.strerror or error}")
    part.unlink(missing_ok=True)
    need = f" of the {total} it needs" if total else ""
    return DSUError("output_not_writable", f"cannot write {part.parent}: {os.strerror(error.errno)} after {have} "
                                           f"bytes{need}; the partial file was removed: free some space (or give "
                                           "another --models-dir) and download again")


def _transfer(url: str, part: Path, expected: Expected, on_progress: Progress | None, on_retry: Retry | None,
              cancelled: Callable[[], bool], timeout: float, retries: int, backoff: float, min_rate: float):
    """Stream `url` into `part` (resuming what it holds); the sha256 of the whole file."""
    import httpx

    transfer = _Transfer(url, part, expected, on_progress, cancelled)
    failures = 0
    http, pace = client(timeout, min_rate, cancelled)
    with http:
        while True:
            if cancelled():
                raise _cancelled()
            pace.restart()
            try:
                return transfer.attempt(http)
            except httpx.HTTPError as e:  # dropped connection, timeout, refused, transient status
                failures = transfer.failed(e, failures, retries)
                _pause(failures, retries, _why(e), backoff, on_retry)


def _cancelled() -> DSUError:
    return DSUError("cancelled", "the download was cancelled; nothing was kept")


def _why(error: BaseException) -> str:
    return f"{type(error).__name__}: {error or 'no detail'}"


def _pause(failures: int, retries: int, why: str, backoff: float, on_retry: Retry | None) -> None:
    """Back off before the next attempt, exponentially, at most 10 s."""
    wait = min(backoff * 2 ** max(failures - 1, 0), 10.0)
    if on_retry is not None:
        on_retry(failures, retries, why, wait)
    time.sleep(wait)


class _Transfer:
    """What one download holds across its attempts: the part's bytes and their sha256, whether the
    server's ranges can resume it, and what the current attempt has received."""

    def __init__(self, url: str, part: Path, expected: Expected, on_progress: Progress | None,
                 cancelled: Callable[[], bool]):
        self.url, self.part, self.expected = url, part, expected
        self.on_progress, self.cancelled = on_progress, cancelled
        self.digest = sha256_of(part) if part.exists() else hashlib.sha256()
        self.have = part.stat().st_size if part.exists() else 0
        self.started, self.start_bytes, self.last_report = time.monotonic(), self.have, 0.0
        self.ranges = True  # False once the server encodes the transfer: its ranges are of the encoding, not the file
        self.received = 0  # by the current attempt
        self.total: int | None = None  # the file's size, as the current attempt's answer gives it

    def attempt(self, http):
        """One GET of the rest of the file; the digest of the whole file once the part holds it."""
        headers = {"Range": f"bytes={self.have}-"} if self.have and self.ranges else {}
        self.received, self.total = 0, None
        with http.stream("GET", self.url, headers=headers) as response:
            if self._complete(response):
                return self.digest  # the part already holds the whole file
            self._write(response, self._accept(response))
        self._report(final=True)
        return self.digest

    def failed(self, error: BaseException, failures: int, retries: int) -> int:
        """The failures in a row after `error`; raises the coded error when they are too many (or
        the host does not resolve: retrying will not make a name resolve)."""
        import httpx
        gai = unresolved(error)
        if gai is not None:
            raise no_host(self.url, gai) from None
        failures = 0 if self.received >= CHUNK else failures + 1  # a trickle is no progress
        if failures <= retries:
            return failures
        what = "timed out" if isinstance(error, httpx.TimeoutException) else "failed"
        kept = (f"the {self.have} bytes received are kept, and the next download of this model resumes "
                "from them") if self.have else "nothing was received"
        raise DSUError("download_failed", f"downloading {self.url} {what} {retries + 1} times in a row "
                       f"({_why(error)}); {kept}") from None

    def _complete(self, response) -> bool:
        """Whether the answer says the part is the whole file; raises on the statuses that end this attempt."""
        import httpx
        status = response.status_code
        if status == 416 and self.have and (self.expected.size in (None, self.have)):
            return True
        if status == 416:
            self.part.unlink(missing_ok=True)
            self.digest, self.have = hashlib.sha256(), 0
            raise httpx.RemoteProtocolError("range not satisfiable; starting over")
        if status in TRANSIENT_STATUS:
            raise httpx.RemoteProtocolError(f"HTTP {status}")
        if status >= 400:
            raise DSUError("download_failed", f"{self.url} answered HTTP {status}"
                           + (" (not found: the catalog may be out of date)" if status == 404 else ""))
        return False

    def _accept(self, response) -> bool:
        """Whether the body resumes the part (else it starts over); checks the size it announces."""
        import httpx
        status, expected = response.status_code, self.expected
        encoded = response.headers.get("content-encoding", "identity").lower() not in ("", "identity")
        if encoded:
            self.ranges = False
            if status == 206:
                raise httpx.RemoteProtocolError("a range of an encoded transfer; starting over")
        resumed = status == 206 and _range_start(response) == self.have
        if not resumed:  # the server sent the whole file again (or ranges of an encoding)
            self.digest, self.have = hashlib.sha256(), 0
        total = self.total = None if encoded else _total(response, self.have)  # an encoded length is not the file's
        if expected.size is not None and total is not None and total != expected.size:
            raise DSUError("checksum_mismatch", f"{self.url} offers {total} bytes, not the "
                                                f"{expected.size} the catalog says; nothing was kept")
        if expected.limit is not None and total is not None and total > expected.limit:
            raise _too_big(self.url, expected)
        _room(self.part, total, self.have)
        return resumed

    def _write(self, response, resumed: bool) -> None:
        try:
            out = open(self.part, "ab" if resumed else "wb", buffering=0)  # a full disk shows at write
        except OSError as e:
            raise _unwritable(self.part, self.have, self.total, e) from None
        with out:
            for block in response.iter_bytes():  # decoded, as it arrives: a drop loses nothing received
                self._take(out, block)
            try:
                os.fsync(out.fileno())
            except OSError as e:  # a full disk can show only when the data is written back
                raise _unwritable(self.part, self.have, self.total, e) from None

    def _take(self, out, block: bytes) -> None:
        if self.cancelled():
            raise _cancelled()
        limit = self.expected.limit
        if limit is not None and self.have + len(block) > limit:
            raise _too_big(self.url, self.expected)
        try:
            view = memoryview(block)
            while view:
                view = view[out.write(view):]
        except OSError as e:
            raise _unwritable(self.part, self.have, self.total, e) from None
        self.digest.update(block)
        self.have += len(block)
        self.received += len(block)
        self._report()

    def _report(self, final: bool = False) -> None:
        now = time.monotonic()
        if self.on_progress is not None and (final or now - self.last_report >= REPORT_EVERY):
            self.last_report = now
            self.on_progress(self.have, self.total, (self.have - self.start_bytes) / max(now - self.started, 1e-6))


def _too_big(url: str, expected: Expected) -> DSUError:
    if expected.size is not None:
        return DSUError("checksum_mismatch", f"{url} sent more than the {expected.size} bytes the catalog says; "
                                             "nothing was kept")
    error = DSUError("download_failed", f"{url} sent more than {expected.most} bytes, more than any "
                                        f"{expected.what} can be (the catalog gives no size for it); nothing was "
                                        "kept. If the publisher's file really is that large, give its `size` in a "
                                        "catalog (--catalog / $DSU_CATALOG)")
    error.resumable = False  # the part is what must not grow further
    return error


def _room(part: Path, total: int | None, have: int) -> None:
    """Refuse before writing when the disk cannot hold what the server says it will send."""
    if not total:
        return
    try:
        free = shutil.disk_usage(part.parent).free
    except OSError:
        return
    need = total - have
    if need > free:
        part.unlink(missing_ok=True)
        raise DSUError("output_not_writable", f"{part.parent} has {free} bytes free, and the file needs {need} "
                                              "more; nothing was kept: free some space (or give another "
                                              "--models-dir) and download again")


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
