"""Adversarial request lines for every command of the protocol table, and a driver that sends them to
a real worker and checks what a worker promises whatever it is sent: it stays alive, writes nothing
but JSON objects on stdout, answers every request exactly once and never with `internal`.

Used by tests/test_fuzz.py (a short seeded run) and benchmarks/fuzz.py (a long one)."""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from hypothesis import strategies as st

from dsu import protocol as spec

# ---- values -------------------------------------------------------------------------------------------

EDGE_INTEGERS = (0, 1, -1, 2, 16, 20, 21, 255, 256, 4096, 2 ** 31 - 1, 2 ** 31, -2 ** 31 - 1, 2 ** 63, 2 ** 64,
                 10 ** 100, -10 ** 100)
EDGE_FLOATS = (0.0, -0.0, 0.5, 0.999, 1.0, 1e-300, 1e308, -1e308, 5e-324)
# tokens written into a line as they are: what json.dumps would refuse or could not build
RAW_TOKENS = ("NaN", "Infinity", "-Infinity", "1e400", "-1e400", "9" * 4301, "-" + "7" * 5000,
              '"\\ud800"', '"\\udfff x"', '"a\\u0000b"', '"\\ud83d\\ude00"', "[" * 70 + "]" * 70,
              '{"a":' * 65 + "1" + "}" * 65, "[" * 100000 + "]" * 100000, '"' + "x" * 70000 + '"',
              "1" + "0" * 4000, "-0", "1E+2", "[]", "{}", "null", "true", '""')

# every code point, lone surrogates and NUL included
ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
TEXT = st.one_of(st.text(ANY_CHAR, max_size=40), st.text(st.sampled_from("ab/.\\\0 -_é"), max_size=300),
                 st.sampled_from(["", ".", "..", "../../../x", "dsp", "model", "wav", "flac", "mp3", "vocals",
                                  "CON", "a" * 256, "é" * 200, "\0", "auto", "float16", "true", "false", "16"]))
LONG_NAMES = ("n" * 255, "n" * 256, "é" * 128, "d/" * 2048 + "x", "d/" * 2100, "x" * 5000)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from(EDGE_INTEGERS),
                   st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(EDGE_FLOATS), TEXT)
JSON_VALUE = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(TEXT, inner, max_size=4)),
                          max_leaves=12)


LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def encode(value) -> str:
    """`value` as JSON text as a sloppy client writes it: NaN/Infinity literals, text unescaped (lone
    surrogates are escaped or written raw when the line is made)."""
    return json.dumps(value, allow_nan=True, ensure_ascii=False)


def typed_value(f: spec.Field) -> st.SearchStrategy[str]:
    """JSON text of values around what field `f` accepts: its choices, its bounds and just past them,
    its type with the wrong shape."""
    near = []
    for bound in (f.minimum, getattr(f, "maximum", None)):
        if bound is not None:
            near += [bound, bound - 1, bound + 1, bound - 0.5, bound + 0.5, -bound]
    by_type = {
        "integer": st.one_of(st.integers(-10, 10 ** 6), st.sampled_from(EDGE_INTEGERS)),
        "number": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(EDGE_FLOATS)),
        "boolean": st.one_of(st.booleans(), st.sampled_from(["true", "false", 0, 1, "0", "1"])),
        "string": st.one_of(TEXT, st.sampled_from(LONG_NAMES)), "string[]": st.lists(TEXT, max_size=4), "string|string[]": st.one_of(TEXT, st.lists(TEXT)),
        "integer|string": st.one_of(TEXT, st.integers()), "object": st.dictionaries(TEXT, SCALAR, max_size=3),
        "object[]": st.lists(st.dictionaries(TEXT, SCALAR, max_size=3), max_size=3), "any": JSON_VALUE,
    }
    options = [by_type[f.type], JSON_VALUE, st.none()]  # null: the field as if absent
    if f.choices:
        options.append(st.sampled_from(f.choices))
    if near:
        options.append(st.sampled_from(near))
    return st.one_of(options).map(encode)


def token(f: spec.Field | None = None) -> st.SearchStrategy[str]:
    """JSON text for one field's value: mostly near its type, sometimes anything, sometimes raw."""
    parts = [st.sampled_from(RAW_TOKENS), JSON_VALUE.map(encode)]
    if f is not None:
        parts.insert(0, typed_value(f))
    return st.one_of(parts)


# ---- requests -----------------------------------------------------------------------------------------

@dataclass
class Case:
    """One line to send and what to expect of it."""
    line: bytes
    cmd: str | None = None      # the command it asks for when the line is well formed
    answers: int = 1            # final answers expected: 0 for a blank line


@dataclass
class Setting:
    """Where fuzzed jobs may read and write."""
    song: Path
    out: Path


def base_request(command: spec.Command, setting: Setting) -> dict[str, str]:
    """A request for `command` that the worker would run cheaply, as field -> JSON text."""
    known = {"input": str(setting.song), "output_dir": str(setting.out), "output": str(setting.out / "x.wav"),
             "model": "dsp", "model_path": str(setting.out / "no-model.ckpt"), "n": 2}
    request = {"cmd": command.name}
    for f in command.fields:
        if f.required:
            request[f.name] = known.get(f.name, f.default if f.default is not None else "x")
    if command.name == "separate":
        request.update(model="dsp", segment=0.5)
    return {k: json.dumps(v) for k, v in request.items()}


@st.composite
def requests(draw, name: str, setting: Setting) -> Case:
    """A line asking for command `name`, with some fields replaced or added by fuzzed ones."""
    command = spec.COMMANDS[name]
    fields = base_request(command, setting)
    declared = [*command.fields, *(getattr(spec, "FAMILY_OPTIONS", ()) if command.family_options else ())]
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["declared", "declared", "alias", "unknown", "drop"]))
        if kind == "declared" and declared:
            f = draw(st.sampled_from(declared))
            fields[f.name] = draw(token(f))
        elif kind == "alias":
            f = draw(st.sampled_from([f for f in declared if f.aliases] or declared))
            fields[draw(st.sampled_from([f.name, *f.aliases]))] = draw(token(f))
        elif kind == "unknown":
            fields[draw(TEXT)] = draw(token())
        elif kind == "drop" and len(fields) > 1:
            fields.pop(draw(st.sampled_from(sorted(k for k in fields if k != "cmd"))))
    if draw(st.booleans()):
        fields["id"] = draw(token())
    if draw(st.integers(0, 9)) == 0:  # now and then `cmd` itself is wrong
        fields["cmd"] = draw(token())
    keep_paths_inside(fields, setting)
    items = list(fields.items())
    if draw(st.integers(0, 4)) == 0:
        items = draw(st.permutations(items))
    text = "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{v}" for k, v in items) + "}"
    if draw(st.integers(0, 9)) == 0:  # lone surrogates as raw bytes (invalid UTF-8) rather than escaped
        return Case(text.encode("utf-8", "surrogatepass"), name)
    return Case(LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text).encode("utf-8"), name)


def keep_paths_inside(fields: dict[str, str], setting: Setting) -> None:
    """Absolute paths the fuzzer made up are moved under the test's folder: a fuzz run must not write
    or delete anywhere else."""
    for key, text in list(fields.items()):
        if key == "cmd":
            continue
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, str) and (value.startswith(("/", "~")) or "/" in value or "\\" in value) \
                and not value.startswith(str(setting.out.parent)):
            fields[key] = json.dumps(str(setting.out / "made-up") + "/" + value.lstrip("/~"))


RAW_LINES = st.one_of(
    st.binary(max_size=200).filter(lambda b: b"\n" not in b),
    st.sampled_from([b"{", b"}", b"[]", b"null", b"1", b'"ping"', b"{}", b'{"cmd":null}', b'{"cmd":1}',
                     b'{"cmd":"ping","id":NaN}', b'{"cmd":"ping","id":Infinity}', b'{"cmd":"ping","id":-Infinity}',
                     b'{"cmd":"ping","id":"\\ud800"}', b'{"cmd":"ping","\\udc00":1}', b'{"cmd":"\\ud800"}',
                     b'{"cmd":"ping","id":' + b"9" * 5000 + b"}", b'{"cmd":"ping","x":' + b"[" * 50000 + b"]" * 50000 + b"}",
                     b'{"cmd":"ping","id":' + b"[" * 100 + b"]" * 100 + b"}", b"\xed\xa0\x80", b"\xff\xfe{}", b"   ",
                     b"\t\r", b'{"cmd":"ping"}' + b" " * 10, b'{"cmd":"ping","id":1}{"cmd":"ping"}',
                     b"x" * (17 << 20)]),
    st.text(ANY_CHAR, max_size=60).map(lambda t: t.replace("\n", " ").encode("utf-8", "surrogatepass")),
)


@st.composite
def raw_lines(draw) -> Case:
    line = draw(RAW_LINES)
    return Case(line, None, 0 if not line.strip() else 1)


# ---- the driver ---------------------------------------------------------------------------------------

INTERIM = {s for c in spec.COMMANDS.values() for s in c.interim}
FINAL = {s for c in spec.COMMANDS.values() for s in c.final} | {"error"}


class Broken(AssertionError):
    """The worker broke a promise."""


@dataclass
class Tally:
    lines: int = 0
    requests: int = 0
    codes: dict = field(default_factory=dict)
    internal: list = field(default_factory=list)
    crashes: int = 0


class FuzzWorker:
    """A real worker fed fuzz lines one case at a time, each followed by a ping that marks its end."""

    def __init__(self, tmp: Path, *args: str, wait: float = 60.0):
        self.tmp, self.args, self.wait = tmp, args, wait
        self.tally = Tally()
        self.proc: subprocess.Popen | None = None
        self._n = 0
        self.last = b""

    def start(self) -> None:
        (self.tmp / "models").mkdir(exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.stderr = open(self.tmp / f"worker-{time.monotonic_ns()}.stderr", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "dsu.worker", "--threads", "1", "--models-dir",
                                      str(self.tmp / "models"), *self.args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, env=env, cwd=self.tmp)
        self.lines: queue.Queue = queue.Queue()
        proc = self.proc
        threading.Thread(target=lambda: [self.lines.put(x) for x in proc.stdout] + [self.lines.put(b"")],
                         daemon=True).start()
        wait, self.wait = self.wait, max(self.wait, 120.0)  # importing torch may take a while on a busy machine
        while self.read()["status"] != "ready":
            pass
        self.wait = wait

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-3000:]

    def read(self) -> dict:
        try:
            raw = self.lines.get(timeout=self.wait)
        except queue.Empty:
            self.proc.send_signal(signal.SIGUSR1)  # the worker's threads' stacks, to stderr
            time.sleep(1)
            raise Broken(f"no message within {self.wait} s: the worker went deaf after {self.last[:300]!r}; "
                         f"stderr:\n{self.stderr_tail()}") from None
        if not raw:
            self.tally.crashes += 1
            raise Broken(f"the worker exited (rc {self.proc.wait()}); stderr:\n{self.stderr_tail()}")
        try:
            message = json.loads(raw)
        except ValueError:
            raise Broken(f"not JSON on stdout: {raw[:300]!r}") from None
        if not isinstance(message, dict) or message.get("status") not in spec.MESSAGES:
            raise Broken(f"not a protocol message: {raw[:300]!r}")
        return message

    def send(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data + b"\n")
            self.proc.stdin.flush()
        except OSError:
            pass  # the read that follows reports the exit
        self.tally.lines += 1

    def run(self, case: Case) -> None:
        """Send one case and its marker ping; check that exactly the expected final answers come."""
        self._n += 1
        self.last = case.line
        marker = f"sync-{self._n}"
        self.send(case.line)
        self.send(json.dumps({"cmd": "ping", "id": marker}).encode())
        self.tally.requests += case.answers
        finals, marked = [], False
        while not marked or len(finals) < case.answers:
            message = self.read()
            if message.get("id") == marker:
                if message["status"] != "pong":
                    raise Broken(f"the marker ping got {message}")
                marked = True
                continue
            status = message["status"]
            if status in INTERIM:
                continue
            if status not in FINAL:
                raise Broken(f"unexpected {status} after {case.line[:300]!r}: {message}")
            finals.append(message)
            if status == "error":
                self.tally.codes[message["code"]] = self.tally.codes.get(message["code"], 0) + 1
                if message["code"] == "internal":
                    self.tally.internal.append((case.line[:300], message["message"]))
                    raise Broken(f"`internal` for {case.line[:300]!r}: {message}\n{self.stderr_tail()}")
            else:
                self.tally.codes[status] = self.tally.codes.get(status, 0) + 1
            if len(finals) > case.answers:
                raise Broken(f"{len(finals)} final answers to {case.line[:300]!r}: {finals}")

    def resync(self) -> None:
        """After a broken promise: skip whatever is left of the case up to a fresh marker's pong."""
        self._n += 1
        marker = f"resync-{self._n}"
        self.send(json.dumps({"cmd": "ping", "id": marker}).encode())
        while self.read().get("id") != marker:
            pass

    def close(self) -> int:
        """`exit`: the worker must say `exiting` and end with 0."""
        self.send(b'{"cmd":"exit","id":"last"}')
        while (message := self.read())["status"] != "exiting":
            if message["status"] not in INTERIM:
                raise Broken(f"an answer no request was waiting for: {message}")
        return self.proc.wait(30)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def write_song(path: Path, seconds: float = 0.3) -> Path:
    t = np.arange(int(seconds * 44100)) / 44100
    audio = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], 1) * 0.3
    sf.write(path, audio.astype(np.float32), 44100, subtype="PCM_16")
    return path


FUZZED_COMMANDS = [name for name in spec.COMMANDS if name != "exit"]  # `exit` ends the run: sent last
