"""The running worker: a reader thread turns stdin lines into answers (quick commands) or queued jobs;
a job thread runs the jobs one at a time in order; the main thread only waits and takes signals."""
from __future__ import annotations

import inspect
import json
import os
import sys
import threading
import traceback
from collections import deque
from typing import Any

import torch

from .. import __version__, families
from .. import device as devices
from .. import protocol as spec
from ..cache import ModelCache
from ..errors import DSUError, shown
from ..jobs import clean as clean_job
from ..jobs import denoise as denoise_job
from ..jobs import models as model_jobs
from ..jobs import outputs
from ..jobs import restore as restore_job
from ..jobs import separate as separate_job
from ..jobs.failures import coded, stop_if_cancelled
from .config import WorkerConfig
from .stdio import MAX_LINE_BYTES, BadField, ProtocolOut, TooLong, check_encodable, parse_request, read_lines

MiB = 1 << 20


def catalog_rows(models_dir) -> list[dict] | None:
    """The catalog's models, each marked installed or not, as `dsu models list --json` shows them;
    None for a catalog at a URL, which this immediate command does not wait to fetch."""
    from ..catalog import store
    if os.environ.get("DSU_CATALOG", "").startswith(("http://", "https://")):
        return None
    try:
        catalog = store.current_catalog()
    except DSUError:
        return None
    where = models_dir or store.default_models_dir()
    return [store.describe(entry, where) for entry in catalog]


class Reply:
    """Messages caused by one request: each carries its `id` when the request had one, and its
    errors the request's `input`, so a client can tell which file failed even without an `id`."""

    def __init__(self, out: ProtocolOut, request: Any):
        self.out = out
        self.has_id = isinstance(request, dict) and "id" in request
        self.id = request["id"] if self.has_id else None
        given = request.get("input") if isinstance(request, dict) else None
        self.input = given if isinstance(given, str) else None

    def __call__(self, status: str, **fields) -> None:
        message: dict[str, Any] = {"status": status}
        if self.has_id:
            message["id"] = self.id
        message.update(fields)
        if status == "error" and self.input is not None:
            message["input"] = self.input
        self.out.send(message)

    def error(self, code: str, message: str) -> None:
        status, fields = _error(code, message)
        self(status, **fields)


def _error(code: str, message: str) -> tuple[str, dict]:
    return "error", {"code": code, "message": message}


def id_key(value: Any) -> str:
    """Ids are any JSON value; equal values must match whatever their key order."""
    return json.dumps(value, sort_keys=True)


class Job:
    def __init__(self, command: spec.Command, fields: dict, extra: dict, reply: Reply):
        self.command, self.fields, self.extra, self.reply = command, fields, extra, reply
        self.key = id_key(reply.id) if reply.has_id else None
        self.cancel = threading.Event()
        self.progress = 0.0


END = object()  # queue marker: no job follows


class JobQueue:
    def __init__(self):
        self._items: deque = deque()
        self._ready = threading.Condition()

    def put(self, item, front: bool = False) -> None:
        with self._ready:
            self._items.appendleft(item) if front else self._items.append(item)
            self._ready.notify()

    def get(self):
        with self._ready:
            while not self._items:
                self._ready.wait()
            return self._items.popleft()

    def take(self, key: str | None = None) -> list[Job]:
        """Remove and return the queued jobs with id `key` (every job when None)."""
        with self._ready:
            taken = [j for j in self._items if j is not END and (key is None or j.key == key)]
            self._items = deque(j for j in self._items if j not in taken)
            return taken

    def __len__(self) -> int:
        with self._ready:
            return sum(1 for j in self._items if j is not END)


class Server:
    def __init__(self, config: WorkerConfig, out: ProtocolOut):
        self.config = config
        self.out = out
        self.queue = JobQueue()
        self.side = JobQueue()               # quick commands that read files, run off the reader thread
        self.side_done = threading.Event()
        self.current: Job | None = None
        self.last_model: str | None = None
        self.stopping: str | None = None     # why the worker is stopping: signal, stdout closed
        self.exit_reply: Reply | None = None
        self.exit_reason = "eof"
        self.finished = threading.Event()    # set when the job thread has run its last job
        self.stop_requested = threading.Event()
        out.broken = lambda: self.terminate("stdout closed")
        self.device, self.device_warning = devices.choose_device(config.device)
        self.threads = devices.set_threads(config.threads)
        budget = config.max_cache_memory or devices.memory_budget(self.device)
        self.cache = ModelCache(self.device, config.max_cached_models, budget)

    # ---- lifecycle -------------------------------------------------------------------------------

    def ready_message(self) -> dict:
        assert self.cache.max_bytes is not None  # the worker's cache always has a budget
        message = {"status": "ready", "device": self.device.type, "threads": self.threads,
                   "cache_enabled": self.cache.enabled, "max_cached_models": self.cache.max_models,
                   "max_cache_memory_mb": round(self.cache.max_bytes / MiB), "default_model": self.config.default_model,
                   "worker": self.config.name, "version": __version__, "protocol": spec.PROTOCOL}
        if self.device_warning:
            message["device_warning"] = self.device_warning
        return message

    def start(self) -> None:
        threading.Thread(target=self._read, name="dsu-reader", daemon=True).start()
        threading.Thread(target=self._run_jobs, name="dsu-jobs", daemon=True).start()
        threading.Thread(target=self._run_side, name="dsu-side", daemon=True).start()

    def terminate(self, reason: str) -> None:
        """Stop soon: drop the queue, cancel the running job at its next chunk. Safe in a signal handler
        of the main thread, which holds none of the locks taken here."""
        if self.stopping:
            return
        self.stopping = reason
        self.stop_requested.set()
        for job in self.queue.take():
            job.reply.error("cancelled", f"the worker is stopping ({reason}) before this job started")
        current = self.current
        if current is not None:
            current.cancel.set()
        self.queue.put(END, front=True)

    def exiting_message(self) -> None:
        (self.exit_reply or Reply(self.out, None))("exiting", reason=self.stopping or self.exit_reason)

    # ---- stdin -----------------------------------------------------------------------------------

    def _read(self) -> None:
        try:
            for raw in read_lines(0):
                if self.stopping or self.exit_reply is not None:
                    break  # an `exit` is queued or the worker is stopping: nothing more is taken
                self.guarded_line(raw)
        except BaseException:  # the reader itself failed: say so, and still end as at end of input
            traceback.print_exc(file=sys.stderr)
        finally:
            if self.exit_reply is None:
                self.queue.put(END)  # end of input: finish what was asked, then exit

    def guarded_line(self, raw: bytes | TooLong) -> None:
        """Handle one line; the last resort for a bug: an `internal` error for that line only."""
        try:
            if isinstance(raw, TooLong):
                Reply(self.out, None).error("bad_json", f"the line has {raw.size} bytes, more than the "
                                                        f"{MAX_LINE_BYTES} a request may have; it was skipped")
                return
            line = raw.strip()
            if line:
                self.handle_line(line)
        except BaseException as e:  # SystemExit from a library included: one request fails, not the reader
            traceback.print_exc(file=sys.stderr)
            Reply(self.out, None).error("internal", f"{type(e).__name__} while reading a request "
                                                    "(see the worker's stderr)")

    def handle_line(self, line: bytes) -> None:
        try:
            request = parse_request(line)
        except DSUError as e:
            Reply(self.out, None).error(e.code, e.message)
            return
        try:
            check_encodable(request)
        except BadField as e:  # answered under the request's id, unless the id is what cannot be sent back
            sendable = {k: v for k, v in request.items() if k != e.field} if isinstance(request, dict) else request
            Reply(self.out, None if e.field == "id" else sendable).error(e.code, e.message)
            return
        reply = Reply(self.out, request)
        try:
            command = spec.command_of(request)
            fields, extra = spec.validate(command, request)
            if command.immediate:
                getattr(self, f"do_{command.name}")(fields, reply)
            elif command.name == "exit":
                self.exit_reply, self.exit_reason = reply, "exit"
                self.queue.put(END)
            else:
                self.queue.put(Job(command, fields, extra, reply))
        except DSUError as e:
            reply.error(e.code, e.message)
        except BaseException as e:  # a bug (or a library's SystemExit): say so, keep serving
            traceback.print_exc(file=sys.stderr)
            reply.error("internal", f"{type(e).__name__}: {e} (see the worker's stderr)")

    # ---- quick commands, answered by the reader thread -----------------------------------------------

    def do_ping(self, fields: dict, reply: Reply) -> None:
        reply("pong", model_loaded=self.last_model)

    def do_get_status(self, fields: dict, reply: Reply) -> None:
        job = self.current
        running = None if job is None else {"id": job.reply.id, "cmd": job.command.name,
                                            "progress": round(job.progress, 4)}
        reply("status", model_loaded=self.last_model, device=self.device.type, ready=True, busy=job is not None,
              job=running, queued=len(self.queue), cached_models=[e.model.name for e in self.cache.entries()],
              cache_size=len(self.cache.entries()), max_cache_size=self.cache.max_models, threads=self.threads)

    def do_list_models(self, fields: dict, reply: Reply) -> None:
        self.side.put((reply, lambda: self._list_models(reply)))  # scans the models dir and reads the catalog

    def _list_models(self, reply: Reply) -> None:
        details = families.list_models(self.config.models_dir)
        reply("models", models=[m["name"] for m in details], details=details,
              catalog=catalog_rows(self.config.models_dir))

    def _run_side(self) -> None:
        """Quick commands that read files others wrote (the models dir, the catalog), one at a time on
        their own thread: however slow those files are, `ping`, `cancel` and `exit` are answered."""
        while (task := self.side.get()) is not END:
            reply, work = task
            try:
                work()
            except DSUError as e:
                reply.error(e.code, e.message)
            except BaseException as e:  # a bug: this answer fails, not the thread
                traceback.print_exc(file=sys.stderr)
                reply.error("internal", f"{type(e).__name__}: {e} (see the worker's stderr)")
        self.side_done.set()

    def do_list_cached(self, fields: dict, reply: Reply) -> None:
        entries = self.cache.entries()
        reply("cached_models", models=[{"model": e.model.name, "family": e.ref.family, "stems": e.model.output_stems(),
                                        "bytes": e.nbytes, "active": e.model.name == self.last_model}
                                       for e in entries],
              count=len(entries), max=self.cache.max_models, bytes=sum(e.nbytes for e in entries),
              max_bytes=self.cache.max_bytes)

    def do_set_storage_type(self, fields: dict, reply: Reply) -> None:
        self.cache.mmap = fields["type"] == "ssd"
        reply("storage_configured", type=fields["type"], mmap_enabled=self.cache.mmap,
              mmap_supported="mmap" in inspect.signature(torch.load).parameters)

    def do_cancel(self, fields: dict, reply: Reply) -> None:
        current = self.current
        if "id" not in fields:
            if current is None:
                raise DSUError("bad_value", "no job is running; give the `id` of a queued job to drop it")
            targets: list[Job] = []
            running: Job | None = current
        else:
            key = id_key(fields["id"])
            targets = self.queue.take(key)
            running = current if current is not None and current.key == key else None
            if not targets and running is None:
                raise DSUError("bad_value", f"no queued or running job has id {shown(fields['id'])} "
                                            "(it may have finished already)")
        if running is not None and not running.command.cancellable:
            raise DSUError("bad_value", f"the running {running.command.name} cannot be stopped; it ends on its own")
        reply("cancelling")
        for job in targets:
            job.reply.error("cancelled", "cancelled before it started")
        if running is not None:
            running.cancel.set()

    # ---- jobs, run one at a time by the job thread ---------------------------------------------------

    def _run_jobs(self) -> None:
        devices.set_threads(self.threads)  # intra-op thread settings are per calling thread
        while True:
            job = self.queue.get()
            if job is END:
                break
            self.current = job
            try:
                status, fields = self.run(job)
            except BaseException as e:  # the last resort (SystemExit from a library, ...): the job fails, not
                # the thread
                traceback.print_exc(file=sys.stderr)
                status, fields = _error("internal", f"{type(e).__name__} in the job runner (see the worker's stderr)")
            finally:
                self.current = None  # before the answer: a `cancel` that follows it must not find the job
            job.reply(status, **fields)
        self.side.put(END)
        while not self.stopping and not self.side_done.wait(0.5):
            pass  # what was asked before the end is answered before `exiting`, unless a signal stops the worker
        self.finished.set()

    def run(self, job: Job) -> tuple[str, dict]:
        """The job's final message, an `error` one when it failed."""
        try:
            stop_if_cancelled(job.cancel.is_set, "before it started")
            return getattr(self, f"job_{job.command.name}")(job)
        except Exception as e:
            error = coded(e)
            if error is None:  # a bug
                traceback.print_exc(file=sys.stderr)
                return _error("internal", f"{type(e).__name__}: {e} (see the worker's stderr)")
            return _error(error.code, error.message)

    def _progress(self, job: Job):
        def report(fraction: float, **fields) -> None:
            job.progress = fraction
            job.reply("progress", progress=round(fraction, 4), percent=int(fraction * 100), **fields)
        return report

    def _context(self, job: Job) -> dict:
        return {"cache": self.cache, "models_dir": self.config.models_dir, "emit": job.reply}

    def job_separate(self, job: Job) -> tuple[str, dict]:
        done = separate_job.run(job.fields, job.extra, default_model=self.config.default_model,
                                progress=self._progress(job), cancelled=job.cancel.is_set, **self._context(job),
                                worker=self.config.name)
        self.last_model = done["model"]
        return "done", done

    def job_apollo(self, job: Job) -> tuple[str, dict]:
        done = restore_job.run(job.fields, progress=self._progress(job), cancelled=job.cancel.is_set,
                               **self._context(job))
        self.last_model = done["model"]
        return "done", done

    def job_ensemble(self, job: Job) -> tuple[str, dict]:
        from ..jobs import ensemble as ensemble_job
        done = ensemble_job.ensemble(job.fields, job.extra, progress=self._progress(job), cancelled=job.cancel.is_set,
                                     layout=outputs.layout_for(None, self.config.name, "flat"),
                                     reference=ensemble_job.default_reference(self.config.name),
                                     **self._context(job))
        self.last_model = done["model"]
        return "done", done

    def job_denoise(self, job: Job) -> tuple[str, dict]:
        return "done", denoise_job.run(job.fields, emit=job.reply, progress=self._progress(job),
                                       cancelled=job.cancel.is_set)

    def job_load_model(self, job: Job, status: str = "model_loaded") -> tuple[str, dict]:
        if not self.config.needs_model and not (job.fields.get("model") or job.fields.get("model_path")):
            return status, denoise_job.describe()
        loaded = model_jobs.load_model(job.fields, default_model=self.config.default_model, **self._context(job))
        self.last_model = loaded["model"]
        return status, loaded

    def job_preload_model(self, job: Job) -> tuple[str, dict]:
        return self.job_load_model(job, "model_preloaded")

    def job_clean(self, job: Job) -> tuple[str, dict]:
        return "cleaned", clean_job.run(job.fields)

    def job_download_model(self, job: Job) -> tuple[str, dict]:
        from ..jobs.download import download_model
        return "model_downloaded", download_model(job.fields, self.config.models_dir, job.reply, job.cancel.is_set)

    def job_clear_cache(self, job: Job) -> tuple[str, dict]:
        return "cache_cleared", {"models_cleared": self.cache.clear()}

    def job_set_cache_size(self, job: Job) -> tuple[str, dict]:
        max_mb = job.fields.get("max_memory_mb")
        self.cache.set_limits(job.fields["n"], None if max_mb is None else int(max_mb * MiB),
                              on_evict=lambda name: job.reply("cache_evicted", model=name))
        assert self.cache.max_bytes is not None  # set_limits keeps the budget when given none
        return "cache_size_updated", {"max_cached_models": self.cache.max_models,
                                         "cache_enabled": self.cache.enabled,
                                         "max_cache_memory_mb": round(self.cache.max_bytes / MiB)}
