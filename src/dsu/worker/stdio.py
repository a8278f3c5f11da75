"""The worker's pipes: protocol JSON on the real stdout only, everything else to stderr, and request
lines read from stdin without Python's buffered stdin (whose lock a reader thread would still hold
when the interpreter shuts down).

A request line is at most MAX_LINE_BYTES long and its JSON at most MAX_DEPTH deep; anything a line
can hold (invalid UTF-8, lone surrogates, NaN/Infinity, 10,000-digit integers, 100,000 brackets) is
turned into a coded error here, never into an exception that reaches a thread's top."""
from __future__ import annotations

import json
import math
import os
import re
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import DSUError, shown_text

MAX_LINE_BYTES = 16 << 20   # a request is a few hundred bytes; 16 MiB leaves room for long lists
MAX_DEPTH = 64              # nesting of objects and lists in a request (ids included)
# Lone surrogates: Python strings hold them, UTF-8 cannot. Those that stand for a file name's byte
# that is not UTF-8 (surrogateescape: byte 0xXY is U+DCXY) travel both ways as JSON escapes
# ("caf\\udce9.wav"), so a Latin-1 name round-trips to its file; the others are refused.
_NAME_BYTE = re.compile("[\udc80-\udcff]")
_OTHER_SURROGATE = re.compile("[\ud800-\udc7f\udd00-\udfff]")
_SURROGATES = "an unpaired surrogate (\\ud800-\\udfff; only \\udc80-\\udcff, a file name's non-UTF-8 bytes, may be)"


class ProtocolOut:
    """One JSON object per line on a file descriptor nothing else writes to.

    `guard()` moves the process's own stdout (fd 1, `sys.stdout`) to stderr first, so a library's
    print or a C library's write lands on stderr instead of in the protocol."""

    def __init__(self, fd: int):
        self.fd = fd
        self._lock = threading.RLock()  # re-entrant: a signal handler may report while the main thread writes
        self.broken: Callable[[], None] | None = None  # called once when the reader of our stdout is gone
        self._closed = False

    @classmethod
    def guard(cls) -> ProtocolOut:
        sys.stdout.flush()
        protocol_fd = os.dup(1)
        os.set_inheritable(protocol_fd, False)  # child processes (ffmpeg) must not get the protocol pipe
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        return cls(protocol_fd)

    def send(self, message: dict) -> None:
        """Write `message` as one line. Never raises and never writes anything but one JSON object:
        a message that cannot be encoded as it is goes out cleaned (NaN -> null, lone surrogates other
        than a file name's bytes -> U+FFFD), and failing even that, as an `internal` error."""
        try:
            line = encode(message)
        except Exception:  # a bug in the caller's message: report it rather than lose the answer
            traceback.print_exc(file=sys.stderr)
            line = encode({"status": "error", "code": "internal",
                           "message": "the worker could not encode an answer (see its stderr)"})
        with self._lock:
            if self._closed:
                return
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError:  # EPIPE: whoever started us is gone; nobody will read another line
                self._closed = True
                if self.broken is not None:
                    try:
                        self.broken()
                    except Exception:
                        traceback.print_exc(file=sys.stderr)


def encode(message: dict) -> bytes:
    """`message` as one JSON line (UTF-8, newline-terminated); a file name's non-UTF-8 bytes are
    `\\udcXY` escapes, which JSON parsers (Python's, JavaScript's) read back as Python wrote them."""
    try:
        text = json.dumps(message, ensure_ascii=False, allow_nan=False, default=str)
        if _OTHER_SURROGATE.search(text):
            raise ValueError("a lone surrogate that is no file name byte")
    except (ValueError, TypeError, RecursionError):
        text = json.dumps(_clean(message, 0), ensure_ascii=False, allow_nan=False, default=str)
    return (_NAME_BYTE.sub(lambda m: f"\\u{ord(m[0]):04x}", text) + "\n").encode("utf-8")


def _clean(value, depth: int):
    """What JSON can carry of `value`: NaN/Infinity -> null, lone surrogates (but a file name's bytes)
    -> U+FFFD, nesting past MAX_DEPTH -> null."""
    if depth > MAX_DEPTH:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return _OTHER_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_clean(str(k), depth): _clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, depth + 1) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _clean(str(value), depth)


# ---- reading ------------------------------------------------------------------------------------------

class TooLong:
    """Stands for a line over the size limit, which was skipped without being held."""

    def __init__(self, size: int):
        self.size = size


def read_lines(fd: int = 0, size: int = 1 << 16, limit: int = MAX_LINE_BYTES) -> Iterator[bytes | TooLong]:
    """Lines of `fd` (without their newline) until end of file; a last line without newline counts.
    Linear in the input: each byte is searched once. A line longer than `limit` bytes comes out as
    a `TooLong` when its end is reached, its bytes dropped as they arrive."""
    parts: list[bytes] = []
    held = 0
    skipped = None  # bytes of the over-long line seen so far, while skipping one
    while True:
        try:
            data = os.read(fd, size)
        except OSError:
            data = b""
        if not data:
            if skipped is not None:
                yield TooLong(skipped)
            elif parts:
                yield b"".join(parts)
            return
        start = 0
        while True:
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            if skipped is not None:
                skipped += len(piece)
            elif held + len(piece) > limit:
                skipped, parts, held = held + len(piece), [], 0
            else:
                parts.append(piece)
                held += len(piece)
            if end < 0:
                break
            if skipped is not None:
                yield TooLong(skipped)
            else:
                yield b"".join(parts)
            parts, held, skipped = [], 0, None
            start = end + 1


def parse_request(line: bytes) -> Any:
    """The JSON value of a request line. Raises DSUError `bad_json` for a line that is not JSON
    (or too deep for the parser, or with an integer past Python's 4300-digit limit)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DSUError("bad_json", f"the line is not UTF-8 (byte {e.start}); send one JSON object per line") from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise DSUError("bad_json", f"the line nests too deep; requests may nest at most {MAX_DEPTH} levels") from None
    except ValueError as e:  # JSONDecodeError, and int()'s digit limit
        if not isinstance(e, json.JSONDecodeError):
            raise DSUError("bad_json", f"an integer in the line has more digits than Python reads "
                                       f"({sys.get_int_max_str_digits()}); send numbers of usual size") from None
        raise DSUError("bad_json", f"not a JSON line ({e}); send one JSON object per line") from None
    return value


def check_encodable(request: Any) -> None:
    """Raise BadField for the first part of `request` that strict JSON cannot carry (`id` first,
    so a request with a bad `id` is never answered under a changed one)."""
    trouble = unencodable(request)
    if trouble is not None:
        raise BadField(*trouble)


class BadField(DSUError):
    """A request whose field `field` holds a value JSON cannot carry (None: the request itself)."""

    def __init__(self, field: str | None, what: str):
        where = "the request" if field is None else f"`{shown_text(json.dumps(field)[1:-1])}`"
        super().__init__("bad_value", f"{where} {what}; send plain JSON: finite numbers and valid unicode text")
        self.field = field


def unencodable(value: Any) -> tuple[str | None, str] | None:
    """(top-level field or None, what is wrong) for the first part of a parsed request that strict
    JSON cannot carry; None when all of it can. Iterative, so no depth can exhaust the stack."""
    top = value if isinstance(value, dict) else {None: value}
    for key, item in sorted(top.items(), key=lambda kv: kv[0] != "id"):
        if isinstance(key, str) and _has_surrogate(key):
            return key, f"is a field name with {_SURROGATES}"
        stack = [(item, 1)]
        while stack:
            v, depth = stack.pop()
            if depth > MAX_DEPTH:
                return key, f"nests deeper than {MAX_DEPTH} levels"
            if isinstance(v, float) and not math.isfinite(v):
                return key, "holds NaN, an infinity or a number too large for a double"
            if isinstance(v, str):
                if _has_surrogate(v):
                    return key, f"holds text with {_SURROGATES}"
            elif isinstance(v, dict):
                for k, x in v.items():
                    if _has_surrogate(k):
                        return key, f"holds a name with {_SURROGATES}"
                    stack.append((x, depth + 1))
            elif isinstance(v, list):
                stack.extend((x, depth + 1) for x in v)
    return None


def _has_surrogate(text: str) -> bool:
    """A lone surrogate that is not a file name's byte (U+DC80..U+DCFF, which paths may hold)."""
    return _OTHER_SURROGATE.search(text) is not None


