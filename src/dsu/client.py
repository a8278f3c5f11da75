"""A Python client for a DSU worker process.

    with Worker(["--models-dir", "models"]) as worker:
        done = worker.separate(input="song.wav", output_dir="out", model="dsp",
                               on_progress=lambda p: print(f"{p:.0%}"))

Requests get ids of their own (unless given one), replies are matched by id, so several requests
can be in flight; a worker that dies is started again for the next request.

A worker that stops answering is taken for stuck: each request has a limit by the kind of its command
(DEFAULT_TIMEOUTS: quick commands a few seconds, model loads a few minutes, jobs a while without any
message, progress included; queued requests count from their turn). Past it the worker is killed,
its requests fail with `timeout` and the next request starts a new one. `Worker(timeouts={...})`
changes the limits per kind, `idle_timeout=` per request (None or 0: no limit)."""
from __future__ import annotations

import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

from .protocol import COMMANDS, final_statuses, timeout_kinds
from .runtime import is_frozen

FINAL = final_statuses()
KINDS = timeout_kinds()
# seconds without an answer after which a worker is taken for stuck, by timeout kind (spec.timeout_kind)
DEFAULT_TIMEOUTS = {"quick": 15.0, "load": 300.0, "job": 600.0}
WATCH_INTERVAL = 0.1
BY_KIND = object()  # a request's idle_timeout when none is given: its kind's


class WorkerError(Exception):
    """A request that failed: `code` is a worker error code (see dsu.errors.CODES) or one of the
    client's own: `timeout`, `worker_exited`, `start_failed`, `closed`."""

    def __init__(self, code: str, message: str, reply: dict | None = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.reply = code, message, reply


def default_argv() -> list[str]:
    """How to start a worker of this installation: the frozen `dsu` next to the running executable
    (which may be another of the folder's programs), or this Python."""
    if is_frozen():
        exe = Path(sys.executable)
        return [str(exe.with_name("dsu" + exe.suffix)), "worker"]
    return [sys.executable, "-m", "dsu.worker"]


class Request:
    """One request in flight: iterate it for its messages (the last one is final), or `result()`."""

    def __init__(self, worker: Worker, request_id: Any, message: dict, idle_timeout: float | None = None):
        self.worker, self.id, self.message = worker, request_id, message
        self.proc = worker.proc  # the process it was sent to: only that one's death fails it
        self.messages: queue.Queue = queue.Queue()
        self.final: dict | None = None
        self.error: WorkerError | None = None
        self.kind = KINDS.get(message["cmd"], "load")
        self.idle_timeout = idle_timeout   # seconds of silence tolerated (None: none)
        self.heard = time.monotonic()      # its last message, or the start of its turn
        self.answered = False              # its final message (or error) has arrived
        self.failed = False                # failed by the client (stuck worker): the exit is no news

    def _final_for(self, status: str | None) -> bool:
        return status == "error" or status in FINAL.get(self.message["cmd"], ())

    def __iter__(self) -> Iterator[dict]:
        while self.final is None and self.error is None:
            yield self._next(None)

    def _next(self, timeout: float | None) -> dict:
        try:
            item = self.messages.get(timeout=timeout)
        except queue.Empty:  # given up: what the worker still says about it goes to `events`
            item = WorkerError("timeout", f"no answer to {self.message['cmd']} (id {self.id!r}) within {timeout:g} s")
        if isinstance(item, WorkerError) or item["status"] == "error":
            self.error = item if isinstance(item, WorkerError) else \
                WorkerError(item.get("code", "internal"), item.get("message", ""), item)
            self.worker._forget(self)
            raise self.error
        if self._final_for(item["status"]):
            self.final = item
            self.worker._forget(self)
        return item

    def result(self, timeout: float | None = None, on_progress: Callable[[float], None] | None = None,
               on_message: Callable[[dict], None] | None = None) -> dict:
        """The final reply; raises WorkerError for an error reply, a dead worker or a timeout (which
        also cancels a job)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while self.final is None:
                if self.error is not None:
                    raise self.error
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                message = self._next(left)
                if message["status"] == "progress" and on_progress is not None:
                    on_progress(message["progress"])
                elif message is not self.final and on_message is not None:
                    on_message(message)
        except WorkerError as e:
            command = COMMANDS.get(Worker.command_name(self.message["cmd"]))
            if e.code == "timeout" and command is not None and command.cancellable:
                self.cancel()
            raise
        return self.final

    def cancel(self) -> None:
        self.worker.cancel(self.id)


class Worker:
    """A worker subprocess. `argv` replaces the command line (e.g. a frozen `dsu-demucs`);
    `args` are added to the default one. Its stderr goes to ours unless `stderr` says otherwise.
    `timeout`: the default deadline of `request` (None: none); `timeouts`: silence limits by command
    kind, merged into DEFAULT_TIMEOUTS (a kind set to None: no limit). `new_session`: start it in a
    session of its own, so a terminal's ^C reaches only the caller, which decides (POSIX)."""

    def __init__(self, args: list[str] | None = None, *, argv: list[str] | None = None,
                 env: dict | None = None, cwd: str | None = None, stderr: Any = None,
                 ready_timeout: float = 120.0, timeout: float | None = None, restart: bool = True,
                 timeouts: dict[str, float | None] | None = None, new_session: bool = False):
        self.argv = list(argv) if argv is not None else default_argv() + list(args or [])
        self.env, self.cwd, self.stderr = env, cwd, stderr
        self.ready_timeout, self.timeout, self.restart = ready_timeout, timeout, restart
        self.timeouts = {**DEFAULT_TIMEOUTS, **(timeouts or {})}
        self.new_session = new_session
        self._inflight: dict[str, Request] = {}  # sent to the running process and not answered, in order
        self._watching = False
        self.proc: subprocess.Popen | None = None
        self.info: dict | None = None          # the ready message
        self.events: queue.Queue = queue.Queue()  # messages with no request of ours (no id)
        self.on_event: Callable[[dict], None] | None = None
        self._pending: dict[str, Request] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._ready: queue.Queue | None = None
        self._closed = False
        self.starts = 0

    # ---- process ---------------------------------------------------------------------------------

    def start(self) -> dict | None:
        """Start the worker (if it is not running) and return its ready message (None while another
        thread's start still waits for it)."""
        with self._lock:
            if self._closed:
                raise WorkerError("closed", "this Worker was closed; create a new one")
            if self.proc is not None and self.proc.poll() is None:
                return self.info
            self._ready = queue.Queue()
            env = {**os.environ, **(self.env or {})}
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                         env=env, cwd=self.cwd, bufsize=0,
                                         start_new_session=self.new_session and os.name == "posix")
            self.starts += 1
            threading.Thread(target=self._read, args=(self.proc, self._ready), daemon=True,
                             name="dsu-client-reader").start()
            if not self._watching:
                self._watching = True
                threading.Thread(target=self._watch, daemon=True, name="dsu-client-watchdog").start()
        try:
            ready = self._ready.get(timeout=self.ready_timeout)
        except queue.Empty:
            self.proc.kill()
            raise WorkerError("start_failed", f"the worker was not ready within {self.ready_timeout:g} s") from None
        if isinstance(ready, WorkerError):
            raise ready
        self.info = ready
        return ready

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _read(self, proc: subprocess.Popen, ready: queue.Queue) -> None:
        started = False
        assert proc.stdout is not None  # started with stdout=PIPE
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                self._event({"status": "stdout_garbage", "line": line[:500]})
                continue
            if not started and message.get("status") == "ready":
                started = True
                ready.put(message)
                continue
            self._dispatch(message)
        code = proc.wait()
        error = WorkerError("worker_exited", f"the worker exited with code {code}"
                            + ("; it is started again for the next request" if self.restart else ""))
        if not started:
            ready.put(WorkerError("start_failed", f"the worker exited with code {code} before it was ready"))
        with self._lock:
            pending = [r for r in self._pending.values() if r.proc is proc and not r.failed]
            for key in [k for k, r in self._inflight.items() if r.proc is proc]:
                del self._inflight[key]
        for request in pending:
            request.messages.put(error)

    def _dispatch(self, message: dict) -> None:
        request = None
        if "id" in message:
            with self._lock:
                key = _key(message["id"])
                request = self._pending.get(key)
                inflight = self._inflight.get(key)
                if inflight is not None:  # heard from, even when its caller gave up on it
                    inflight.heard = time.monotonic()
                    if inflight._final_for(message.get("status")):
                        inflight.answered = True
                        del self._inflight[key]
        if request is None:
            self._event(message)
        else:
            request.messages.put(message)

    def _event(self, message: dict) -> None:
        self.events.put(message)
        if self.on_event is not None:
            self.on_event(message)

    def _forget(self, request: Request) -> None:
        with self._lock:
            if self._pending.get(_key(request.id)) is request:
                del self._pending[_key(request.id)]

    # ---- requests --------------------------------------------------------------------------------

    @staticmethod
    def command_name(cmd: str) -> str:
        return next((c.name for c in COMMANDS.values() if cmd == c.name or cmd in c.aliases), cmd)

    def submit(self, cmd: str, *, idle_timeout: float | None | object = BY_KIND, **fields) -> Request:
        """Send a request and return at once; `fields` may hold an `id` of your own. `idle_timeout`
        replaces the limit of the command's kind (see DEFAULT_TIMEOUTS; None: no limit)."""
        if not self.alive():
            if self.proc is not None and not self.restart:
                raise WorkerError("worker_exited", "the worker is not running (restart=False)")
            self.start()
        request_id = fields.pop("id", None)
        if request_id is None:
            request_id = f"py-{next(self._ids)}"
        message = {"cmd": cmd, "id": request_id, **fields}
        limit = self.timeouts.get(KINDS.get(cmd, "load")) if idle_timeout is BY_KIND \
            else cast("float | None", idle_timeout)
        request = Request(self, request_id, message, limit or None)
        with self._lock:
            if _key(request_id) in self._pending:
                raise WorkerError("bad_value", f"a request with id {request_id!r} is already pending")
            self._pending[_key(request_id)] = request
            self._inflight[_key(request_id)] = request
            request.heard = time.monotonic()
        self._send(message)
        return request

    def request(self, cmd: str, *, timeout: float | None = None, on_progress: Callable[[float], None] | None = None,
                on_message: Callable[[dict], None] | None = None, idle_timeout: float | None | object = BY_KIND,
                **fields) -> dict:
        """Send a request and wait for its final reply. `timeout`: give up after this long (a job is
        cancelled, the worker goes on); `idle_timeout`: see `submit`."""
        return self.submit(cmd, idle_timeout=idle_timeout, **fields).result(
            timeout if timeout is not None else self.timeout, on_progress, on_message)

    # ---- stuck workers ---------------------------------------------------------------------------

    def _watch(self) -> None:
        """Fail the requests of a worker that stays silent past a request's limit, and stop it."""
        head: Request | None = None
        while not self._closed:
            time.sleep(WATCH_INTERVAL)
            now = time.monotonic()
            with self._lock:
                proc = self.proc
                inflight = [r for r in self._inflight.values() if r.proc is proc]
                queued = [r for r in inflight if r.kind != "quick"]
                if queued and queued[0] is not head:  # the worker runs queued requests in order: a turn starts
                    head = queued[0]
                    head.heard = max(head.heard, now)
                waiting = [r for r in inflight if r.kind == "quick"] + queued[:1]
                stuck = next((r for r in waiting if r.idle_timeout and now - r.heard > r.idle_timeout), None)
            if stuck is not None and proc is not None:
                self._stuck(proc, stuck)

    def _stuck(self, proc: subprocess.Popen, culprit: Request) -> None:
        error = WorkerError("timeout", f"the worker did not answer {culprit.message['cmd']} (id {culprit.id!r}) "
                                       f"for {culprit.idle_timeout:g} s; it was stopped"
                                       + (" and the next request starts a new one" if self.restart else ""))
        with self._lock:
            failed = [r for r in self._inflight.values() if r.proc is proc]
            for key in [k for k, r in self._inflight.items() if r.proc is proc]:
                del self._inflight[key]
            for request in failed:
                request.failed = True
        proc.kill()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for request in failed:
            request.messages.put(error)

    def _send(self, message: dict) -> None:
        try:
            with self._send_lock:  # one whole line at a time, whichever thread sends
                stdin = self.proc.stdin if self.proc is not None else None
                if stdin is None:
                    return  # never started: nothing to tell
                stdin.write((json.dumps(message) + "\n").encode("utf-8"))
                stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the reader reports the exit to every pending request

    def ping(self, timeout: float | None = None) -> dict:
        return self.request("ping", timeout=timeout)

    def separate(self, *, on_progress: Callable[[float], None] | None = None, timeout: float | None = None,
                 **fields) -> dict:
        return self.request("separate", timeout=timeout, on_progress=on_progress, **fields)

    def restore(self, *, on_progress: Callable[[float], None] | None = None, timeout: float | None = None,
                **fields) -> dict:
        return self.request("apollo", timeout=timeout, on_progress=on_progress, **fields)

    def download_model(self, model: str, *, on_progress: Callable[[float], None] | None = None,
                       timeout: float | None = None, **fields) -> dict:
        """Install catalog model `model` (fields: models_dir, catalog, read_timeout, retries); the final
        `model_downloaded`. Its `progress` messages also carry file, bytes_done, bytes_total and speed
        (iterate `submit("download_model", ...)` to see them)."""
        return self.request("download_model", timeout=timeout, on_progress=on_progress, model=model, **fields)

    def ensemble(self, *, on_progress: Callable[[float], None] | None = None, timeout: float | None = None,
                 **fields) -> dict:
        """Several models over `input` (`models=[{"model": ...}, ...]`, `algorithm`, `weights`), or stem
        `files` blended into `output`; the `done` message lists `files`, `members`, `elapsed`."""
        return self.request("ensemble", timeout=timeout, on_progress=on_progress, **fields)

    def cancel(self, request_id: Any) -> None:
        """Ask the worker to stop job `request_id`; that job's request then fails with `cancelled`.
        The worker's own answer (`cancelling`, or an error when nothing matched) goes to that request
        or, once it is over, to `events`."""
        if self.alive():
            self._send({"cmd": "cancel", "id": request_id})

    # ---- ending ----------------------------------------------------------------------------------

    def close(self, grace: float = 10.0) -> int | None:
        """`exit`, then SIGTERM after `grace` seconds, then SIGKILL. Returns the exit code."""
        self._closed = True
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._send({"cmd": "exit"})
            try:
                if proc.stdin is not None:  # always: started with stdin=PIPE
                    proc.stdin.close()
            except OSError:
                pass
            for stop in (None, proc.terminate, proc.kill):
                if stop is not None:
                    stop()
                try:
                    proc.wait(grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        return proc.wait()

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _key(request_id: Any) -> str:
    return json.dumps(request_id, sort_keys=True)
