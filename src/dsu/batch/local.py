"""The batch on one machine: N DSU worker processes (the JSON-lines protocol through
dsu.client.Worker), each with its own model cache and threads, taking files from one queue."""
from __future__ import annotations

import os
import queue
import sys
import threading
from typing import Callable

from ..client import Worker, WorkerError, default_argv
from ..errors import CODES, DSUError
from ..runtime import is_frozen
from .child import PARENT_ENV

# a worker that died, hung or would not start: the file is worth one more try on a fresh worker
RETRYABLE = frozenset({"worker_exited", "start_failed", "timeout", "closed"})


def worker_argv(args: list[str]) -> list[str]:
    if is_frozen():
        return default_argv() + args
    return [sys.executable, "-m", "dsu.batch.child", *args]


class LocalPool:
    """`finished(task, done, error, retryable) -> bool` is called once per attempt, from the slot
    that ran it, and says whether to queue the task again; `started(task, where, pid)` and
    `progress(task, fraction)` are for the display."""

    kind = "local"

    def __init__(self, jobs: int, worker_args: list[str], *, log_path=None, started: Callable = None,
                 progress: Callable = None, timeout: float | None = None):
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
        self.finished: Callable = None

    def start(self, model_fields: dict) -> dict:
        """Start every worker and load the model in each; the first `model_loaded` reply (model,
        family, stems). Raises when no worker could load it."""
        for slot in range(self.jobs):
            worker = Worker(argv=worker_argv(self.worker_args), env={PARENT_ENV: str(os.getpid())},
                            stderr=self.stderr, restart=True)
            self.workers.append(worker)
            thread = threading.Thread(target=self._slot, args=(slot, worker, model_fields),
                                      name=f"dsu-batch-slot-{slot}", daemon=True)
            self.threads.append(thread)
            thread.start()
        failures = []
        while True:
            ok, value = self.loaded.get()
            if ok:
                return value
            failures.append(value)
            if len(failures) == self.jobs:
                error = failures[0]
                raise DSUError(error.code if error.code in CODES else "internal", error.message)

    def run(self, tasks: list, finished: Callable) -> None:
        """Run every task; returns when each has a final result."""
        self.finished = finished
        with self._all_done:
            self._left = len(tasks)
        for task in tasks:
            self.tasks.put(task)
        with self._all_done:
            while self._left and self.crash is None:
                self._all_done.wait()
        if self.crash is not None:
            raise self.crash

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
            while (task := self.tasks.get()) is not None:
                self._attempt(task, worker, where)
        except BaseException as e:
            with self._all_done:
                self.crash = e
                self._all_done.notify_all()
        finally:
            worker.close()

    def _attempt(self, task, worker: Worker, where: str) -> None:
        try:
            if not worker.alive():
                worker.start()
            self.started(task, where, worker.pid)
            done = worker.separate(**task.request, timeout=self.timeout,
                                   on_progress=lambda f: self.progress(task, f))
            again = self.finished(task, done, None, False, where)
        except WorkerError as e:
            if e.code == "timeout" and worker.alive():  # stuck: a fresh worker takes the next file
                worker.proc.kill()
                worker.proc.wait()
            again = self.finished(task, None, e, e.code in RETRYABLE, where)
        if again:
            self.tasks.put(task)
            return
        with self._all_done:
            self._left -= 1
            self._all_done.notify_all()

