"""Paths from requests, made safe before anything opens them.

Every name that becomes part of an output path (stems, models, input tracks, layout parts) goes
through `safe_component`; the final paths are checked by `inside` to lie in the output folder. Input
files and output folders are checked up front so that a bad path is a coded error naming the field
(`bad_value`, `input_not_found`, `output_not_writable`), never an `internal` from deep inside a library,
and never a FIFO that blocks the worker forever."""
from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from pathlib import Path

from .errors import DSUError

MAX_COMPONENT_BYTES = 120  # room for a layout joining several names plus the `.partial` decoration
NAME_MAX = 255             # bytes in one file name on the common file systems
PARTIAL_ROOM = 64          # what a temporary name adds: `.` + `.<pid>@<host>.<realm>-<random>.unscaled.partial`
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                    *(f"LPT{i}" for i in range(1, 10))}
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')  # separators, controls and what Windows refuses
SPECIAL_ROOTS = ("/proc", "/sys", "/dev")


def _encodable(text: str) -> str:
    """`text` with every character the file system encoding cannot take (lone surrogates) as `_`."""
    try:
        os.fsencode(text)
        return text
    except UnicodeEncodeError:
        out = []
        for ch in text:
            try:
                os.fsencode(ch)
                out.append(ch)
            except UnicodeEncodeError:
                out.append("_")
        return "".join(out)


def safe_component(text) -> str:
    """One path component made from `text`: never a separator, `..`, NUL, control character, leading
    dot (hidden files and DSU's own temporaries start with one), Windows reserved name or trailing
    dot/space, never empty, at most MAX_COMPONENT_BYTES bytes. Plain names pass unchanged."""
    name = _UNSAFE.sub("_", _encodable(str(text)))
    name = name.rstrip(" .")
    if name.startswith("."):
        name = "_" + name[1:]
    name = name or "_"
    if name.split(".")[0].upper().rstrip(" ") in WINDOWS_RESERVED:
        name = "_" + name
    encoded = os.fsencode(name)
    if len(encoded) > MAX_COMPONENT_BYTES:
        name = encoded[:MAX_COMPONENT_BYTES].decode(errors="ignore").rstrip(" .") or "_"
    return name


def inside(root, path) -> Path:
    """`path` (relative paths taken under `root`), checked to lie inside `root` once `..` and links of
    existing folders are resolved, and to have a file name short enough to be written with its
    temporary decoration; `bad_value` otherwise."""
    root = Path(os.path.abspath(root))
    path = Path(path) if Path(path).is_absolute() else root / path
    resolved_root = Path(os.path.realpath(root))
    resolved = Path(os.path.realpath(path))
    if resolved != resolved_root and resolved_root not in resolved.parents:
        raise DSUError("bad_value", f"the output {path} would lie outside output_dir {root}: "
                                    "names must not lead out of the output folder")
    if len(os.fsencode(path.name)) + PARTIAL_ROOM > NAME_MAX:
        raise DSUError("bad_value", f"the output file name {path.name[:60]}... is too long "
                                    f"({len(os.fsencode(path.name))} bytes): rename the input or choose a shorter "
                                    "layout")
    return path


def inside_all(root, paths: dict) -> dict:
    """`inside` for every value of `paths`, refusing two keys that land on the same file."""
    out = {k: inside(root, p) for k, p in paths.items()}
    seen: dict[Path, object] = {}
    for k, p in out.items():
        if p in seen:
            raise DSUError("bad_value", f"{seen[p]!r} and {k!r} would both be written to {p.name}: "
                                        "give stems distinct names")
        seen[p] = k
    return out


# ---- checks before a job starts ---------------------------------------------------------------------

def plain_path(text, field: str) -> str:
    if not isinstance(text, (str, os.PathLike)):
        raise DSUError("bad_value", f"`{field}` must be a path string, not {type(text).__name__}")
    text = os.fspath(text)
    if "\x00" in text:
        raise DSUError("bad_value", f"`{field}` contains a NUL byte: give the path without it")
    if not text:
        raise DSUError("bad_value", f"`{field}` is empty: give a path")
    try:
        encoded = os.fsencode(text)
    except UnicodeEncodeError:
        raise DSUError("bad_value", f"`{field}` has characters no file name can hold (lone surrogates)") from None
    if any(len(part) > NAME_MAX for part in encoded.split(b"/")):
        raise DSUError("bad_value", f"`{field}` has a name longer than {NAME_MAX} bytes (ENAMETOOLONG): shorten it")
    return text


def _os_error(e: OSError, field: str, path: str) -> DSUError:
    if e.errno == errno.ENAMETOOLONG:
        return DSUError("bad_value", f"`{field}` is too long for the file system: shorten {path[:80]}...")
    return DSUError("input_not_found", f"`{field}` cannot be read: {path}: {e.strerror}")


def check_input(path, field: str = "input") -> Path:
    """An existing regular file to read, or the coded error that says what it is instead."""
    text = plain_path(path, field)
    what = "input file" if field == "input" else f"`{field}` file"
    try:
        st = os.stat(text)
    except FileNotFoundError:
        raise DSUError("input_not_found", f"{what} not found: {text}") from None
    except NotADirectoryError:
        raise DSUError("input_not_found", f"{what} not found: {text} (a part of it is a file, not a folder)") from None
    except OSError as e:
        raise _os_error(e, field, text) from None
    if stat.S_ISDIR(st.st_mode):
        raise DSUError("input_not_found", f"{text} is a folder, not a file: give an audio file in it")
    if not stat.S_ISREG(st.st_mode):
        raise DSUError("bad_value", f"{text} is a special file (device, pipe or socket), not an audio file")
    if not os.access(text, os.R_OK):
        raise DSUError("input_not_found", f"{text} cannot be read (permission denied)")
    return Path(text)


def check_model_path(path, field: str, folder: bool = False) -> None:
    """A model file (or with `folder`, a folder of models) named by a request: a NUL byte, an
    over-long name, a folder where a file belongs (or the reverse) or a special file that would block
    the reader is `bad_value`; a missing one is left to the family's `model_not_found`."""
    text = plain_path(path, field)
    try:
        st = os.stat(text)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise DSUError("bad_value", f"`{field}` is too long for the file system: shorten it") from None
        raise DSUError("model_not_found", f"`{field}` {text} cannot be read: {e.strerror}") from None
    if folder and not stat.S_ISDIR(st.st_mode):
        raise DSUError("bad_value", f"`{field}` {text} is a file, not a folder")
    if not folder and stat.S_ISDIR(st.st_mode):
        raise DSUError("bad_value", f"`{field}` {text} is a folder, not a file: give the model file in it")
    if not folder and not stat.S_ISREG(st.st_mode):
        raise DSUError("bad_value", f"`{field}` {text} is a special file (device, pipe or socket), not a model file")


def _special(path: Path) -> bool:
    text = str(path)
    return any(text == root or text.startswith(root + "/") for root in SPECIAL_ROOTS)


def check_output_dir(path, field: str = "output_dir", create: bool = True) -> Path:
    """A folder that exists (made when `create`) and takes new files, or `output_not_writable`
    saying why; nothing is left behind by the check."""
    text = plain_path(path, field)
    folder = Path(os.path.abspath(text))
    if _special(Path(os.path.realpath(folder))):
        raise DSUError("output_not_writable", f"`{field}` {text} is in a system folder ({folder.parts[1]}): "
                                              "choose a folder of your own")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise DSUError("output_not_writable", f"`{field}` {text}: {existing} is a file, not a folder")
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        probe_dir = folder if folder.is_dir() else existing
        fd, probe = tempfile.mkstemp(prefix=".dsu-probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise DSUError("bad_value", f"`{field}` is too long for the file system: shorten it") from None
        raise DSUError("output_not_writable", f"`{field}` {text} cannot take new files: "
                                              f"{e.strerror or e}; choose another folder") from None
    return folder


def check_output_file(path, field: str = "output") -> Path:
    """A file path whose folder takes new files and that is not itself a folder or special file."""
    text = plain_path(path, field)
    out = Path(os.path.abspath(text))
    if out.is_dir():
        raise DSUError("output_not_writable", f"`{field}` {text} is a folder: give a file name in it")
    if out.exists() and not out.is_file():
        raise DSUError("output_not_writable", f"`{field}` {text} is a special file: give a regular file name")
    if len(os.fsencode(out.name)) + PARTIAL_ROOM > NAME_MAX:
        raise DSUError("bad_value", f"`{field}` has a file name too long to write: shorten it")
    check_output_dir(out.parent, field)
    return out


def check_not_input(output: Path, inputs: dict[Path, str]) -> None:
    """`bad_value` when the output file is one of the job's inputs (path -> what it is, as "the `input`"):
    its commit would replace the file the job reads."""
    for path, what in inputs.items():
        if os.path.realpath(output) == os.path.realpath(path):
            raise DSUError("bad_value", f"the output {output} is {what}: choose another output file")


def native(path) -> str | bytes:
    """`path` as a C library (libsndfile) must be given it: bytes on POSIX, where a file name is bytes
    and one that is not UTF-8 is a surrogate-escaped str in Python that the library's own UTF-8
    encoding refuses; str on Windows, whose wide-char API takes it as it is."""
    return os.fspath(path) if os.name == "nt" else os.fsencode(path)
