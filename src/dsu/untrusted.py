"""Files DSU reads but did not write: catalog documents, models.json, UVR model data, YAML configs and
bags, checkpoints. Whoever wrote them, none may wedge a worker, so each is opened non-blocking (a FIFO
under a model's name cannot block the open), checked to be a regular file (not a FIFO, socket or
device such as /dev/zero) no bigger than any file of its kind, before a byte is read; JSON that nests
deeper than MAX_DEPTH is a coded error, never a RecursionError."""
from __future__ import annotations

import json
import os
import stat
import sys
from typing import Any

from .errors import DSUError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
JSON_BYTES = 16 * MiB        # catalogs, models.json, UVR model data and download lists: the published ones are < 1 MiB
YAML_BYTES = 256 * KiB       # MSST/Apollo configs and Demucs bags: a few KiB (PyYAML reads ~100 KiB/s)
CHECKPOINT_BYTES = 16 * GiB  # weights files: the largest published separation models are about 2 GiB
MAX_DEPTH = 64               # nesting of a JSON document: catalogs nest 5 levels

_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def _size(n: int) -> str:
    return f"{n / GiB:.0f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB" if n >= MiB else f"{n / KiB:.0f} KiB"


def _open(path, what: str, limit: int) -> tuple[int, os.stat_result]:
    """(an fd open on `path`, its stat) once it is known to be a regular file of at most `limit` bytes."""
    try:
        fd = os.open(path, _FLAGS)
    except OSError as e:
        raise DSUError("bad_value", f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise DSUError("bad_value", f"{what} {path} is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise DSUError("bad_value", f"{what} {path} is a special file (a pipe, socket or device), not a file "
                                        "DSU can read; replace it with the real file")
        if st.st_size > limit:
            raise DSUError("bad_value", f"{what} {path} has {st.st_size} bytes, more than any such file has "
                                        f"({_size(limit)}); it was not read")
        return fd, st
    except BaseException:
        os.close(fd)
        raise


def check(path, what: str, limit: int = CHECKPOINT_BYTES) -> os.stat_result:
    """The stat of `path` once it is known to be a regular file of at most `limit` bytes, for a file a
    library opens itself (torch, onnxruntime); `bad_value` naming `what` it is otherwise."""
    fd, st = _open(path, what, limit)
    os.close(fd)
    return st


def open_binary(path, what: str, limit: int = CHECKPOINT_BYTES):
    """`path` open to read in binary, checked as `check` does, for a file read in parts (line by line)."""
    fd, _ = _open(path, what, limit)
    return os.fdopen(fd, "rb")


def read_bytes(path, what: str, limit: int) -> bytes:
    """The content of `path`, checked as `check` does; never more than `limit` bytes are read, even
    from a file that grows while it is read."""
    fd, _ = _open(path, what, limit)
    try:
        parts: list[bytes] = []
        held = 0
        while held <= limit:
            block = os.read(fd, min(1 << 20, limit + 1 - held))
            if not block:
                return b"".join(parts)
            parts.append(block)
            held += len(block)
    except OSError as e:
        raise DSUError("bad_value", f"cannot read {what} {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    raise DSUError("bad_value", f"{what} {path} grew past {_size(limit)} while it was read; it was not used")


def read_text(path, what: str, limit: int) -> str:
    try:
        return read_bytes(path, what, limit).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DSUError("bad_value", f"{what} {path} is not UTF-8 text (byte {e.start})") from None


def read_json(path, what: str, limit: int = JSON_BYTES) -> Any:
    """The JSON value of `path`, read as `read_text` does and parsed as `parse_json` does."""
    return parse_json(read_text(path, what, limit), what, path)


def parse_json(text: str, what: str, source) -> Any:
    """The JSON value of `text` (from `source`: a path or URL); `bad_value` naming `what` it is for a
    document that is not JSON or nests deeper than MAX_DEPTH."""
    try:
        value = json.loads(text)
    except RecursionError:
        value = None  # the parser's own stack: deeper than any limit
    except json.JSONDecodeError as e:
        raise DSUError("bad_value", f"{what} {source} is not valid JSON (line {e.lineno}: {e.msg})") from None
    except ValueError:  # int()'s digit limit
        raise DSUError("bad_value", f"{what} {source} holds an integer with more digits than Python reads "
                                    f"({sys.get_int_max_str_digits()})") from None
    else:
        if depth_within(value, MAX_DEPTH):
            return value
    raise DSUError("bad_value", f"{what} {source} nests deeper than {MAX_DEPTH} levels; no such file does")


def depth_within(value: Any, most: int) -> bool:
    """Whether lists and objects in `value` nest at most `most` levels. Iterative: no depth exhausts the stack."""
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth = stack.pop()
        if depth > most:
            return False
        stack += [(x, depth + 1) for x in (item.values() if isinstance(item, dict) else item)
                  if isinstance(x, (dict, list))]
    return True
