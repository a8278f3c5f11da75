"""The batch on one machine: N DSU worker processes (the JSON-lines protocol through
dsu.client.Worker), each with its own model cache and threads, taking files from one queue."""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable

from ..client import Request, Worker, WorkerError, default_argv
from ..errors import CODES, DSUError
from ..runtime import is_frozen
from .child import PARENT_ENV

# a worker that died, hung or would not start: the file is worth one more try on a fresh worker
RETRYABLE = frozenset({"worker_exited", "start_failed", "timeout", "closed"})
POLL = 0.1  # seconds between looks at the batch's stop (a signal handler only counts signals)


def worker_argv(args: list[str]) -> list[str]:
    if is_frozen():
        return default_argv() + args
    return [sys.executable, "-m", "dsu.batch.child", *args]


class LocalPool:
    """`finished(task, done, error, retryable) -> bool` is called once per attempt, from the slot
    that ran it, and says whether to queue the task again; `started(task, where, pid)` and
    `progress(task, fraction)` are for the display. Workers run in sessions of their own: a
    terminal's ^C reaches the batch alone, which stops them (`run`'s `stop`)."""

    kind = "local"

    def __init__(self, jobs: int, worker_args: list[str], *, log_path=None, started: Callable | None = None,
                 progress: Callable | None = None, timeout: float | None = None):
        self.jobs, self.worker_args, self.timeout = jobs, worker_args, timeout
        self.size = jobs
        self.stderr = open(log_path, "ab") if log_path is not None else None  # the workers' stderr
        self.started = started or (lambda *a: None)
        self.progress = progress or (lambda *a: None)
        self.tasks: queue.Queue = queue.Queue()
        self.loaded: queue.Queue = queue.Queue()
        self.threads: list[threading.Thread] = []
        self.workers: list[Worker] = []
        self._left = 0
        self.crash: BaseException | None = None  # a bug or a full disk in `finished`: the batch stops
        self._all_done = threading.Condition()
        self.finished: Callable | None = None
        self.stopping = False
        self.requests: dict[int, Request] = {}  # slot -> its job's client Request, while one runs
        self._dispatch = threading.Lock()  # a job is sent, or the batch stops: never both at once

    def start(self, model_fields: dict, stop=None) -> dict:
        """Start every worker and load the model in each; the first `model_loaded` reply (model,
        family, stems). Raises when no worker could load it, KeyboardInterrupt on a `stop`."""
        for slot in range(self.jobs):
            worker = Worker(argv=worker_argv(self.worker_args), env={PARENT_ENV: str(os.getpid())},
                            stderr=self.stderr, restart=True, new_session=True)
            self.workers.append(worker)
            thread = threading.Thread(target=self._slot, args=(slot, worker, model_fields),
                                      name=f"dsu-batch-slot-{slot}", daemon=True)
            self.threads.append(thread)
            thread.start()
        failures = []
        while True:
            try:
                ok, value = self.loaded.get(timeout=POLL)
            except queue.Empty:
                if stop is not None and stop.signals:
                    self.stopping = True
                    self.kill()
                    raise KeyboardInterrupt from None
                continue
            if ok:
                return value
            failures.append(value)
            if len(failures) == self.jobs:
                error = failures[0]
                raise DSUError(error.code if error.code in CODES else "internal", error.message)

    def run(self, tasks: list, finished: Callable, stop=None) -> None:
        """Run every task; returns when each has a final result, or once `stop` (see runner._Stop)
        counts a signal and the files in work were cancelled (or their workers killed)."""
        self.finished = finished
        with self._all_done:
            self._left = len(tasks)
        for task in tasks:
            self.tasks.put(task)
        with self._all_done:
            while self._left and self.crash is None and not (stop is not None and stop.signals):
                self._all_done.wait(POLL)
        if self.crash is not None:
            raise self.crash
        if self._left:
            self._stop(stop)

    def _stop(self, stop) -> None:
        """No file more; the ones in work cancelled (each worker removes its partials), their
        workers killed after the stop's grace or at a second signal."""
        with self._dispatch:
            self.stopping = True
            requests = list(self.requests.values())
        while True:
            try:
                self.tasks.get_nowait()
            except queue.Empty:
                break
        stop.noticed(len(requests))
        for request in requests:
            request.cancel()
        killed = False
        while self.requests:
            if not killed and stop.must_kill():
                self.kill()  # what they leave is partials of dead pids: the batch's cleaning removes them
                killed = True
            time.sleep(POLL / 2)

    def kill(self) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.alive():
                worker.proc.kill()

    def close(self) -> None:
        for _ in self.threads:
            self.tasks.put(None)
        for thread in self.threads:
            thread.join()
        if self.stderr is not None:
            self.stderr.close()

    # each slot thread owns its worker: the worker was started from it, so it lives as long as it
    def _slot(self, slot: int, worker: Worker, model_fields: dict) -> None:
        try:
            worker.start()
            self.loaded.put((True, worker.request("load_model", **model_fields)))
        except WorkerError as e:
            self.loaded.put((False, e))
            worker.close()
            return
        where = f"worker {slot + 1}"
        try:
            while (task := self.tasks.get()) is not None and not self.stopping:
                self._attempt(task, worker, where, slot)
        except BaseException as e:
            with self._all_done:
                self.crash = e
                self._all_done.notify_all()
        finally:
            worker.close()

    def _attempt(self, task, worker: Worker, where: str, slot: int) -> None:
        assert self.finished is not None  # run sets it before it queues a task
        try:
            if not worker.alive():
                worker.start()
            self.started(task, where, worker.pid)
            with self._dispatch:
                if self.stopping:
                    return
                request = self.requests[slot] = worker.submit("separate", **task.request)
            done = request.result(self.timeout, on_progress=lambda f: self.progress(task, f))
            again = self.finished(task, done, None, False, where)
        except WorkerError as e:
            if e.code == "timeout" and worker.alive():  # stuck: a fresh worker takes the next file
                assert worker.proc is not None  # alive
                worker.proc.kill()
                worker.proc.wait()
            again = self.finished(task, None, e, e.code in RETRYABLE, where)
        finally:
            self.requests.pop(slot, None)
        if again and not self.stopping:
            self.tasks.put(task)
            return
        with self._all_done:
            self._left -= 1
            self._all_done.notify_all()

