"""`dsu.batch.run`: a whole library through one model, resumable, on N local workers or a Ray cluster.

The driver expands the inputs, finds output collisions, skips what the manifest says is done, hands
the rest to a backend and writes one manifest line per file after the backend reports the file's
stems committed. Backends run the existing separate job (worker processes or `dsu.jobs`) and are told
nothing of manifests.

A SIGINT or SIGTERM stops the batch: no file more, the files in work cancelled (a second signal
kills their workers), nothing of theirs recorded; `run` then raises `Interrupted`."""
from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__, paths
from ..client import WorkerError
from ..errors import DSUError, speak
from . import inputs as batch_inputs
from .manifest import Manifest, canonical, is_done, now, sha256_of
from .progress import BatchDisplay

LOG_NAME = "dsu-batch.log"  # the workers' stderr
CHANGED = "input_changed"  # the code of a file that changed while it was separated (retried like a dead worker)


@dataclass
class Task:
    item: batch_inputs.Item
    request: dict
    size: int | None
    mtime_ns: int | None
    duration: float | None = None
    attempts: int = 0
    first_start: float | None = None
    sha256: str | None = None
    identity: tuple | None = None  # the input's stat as its job started (see `_identity`)
    stale: list = field(default_factory=list)  # stems written from content the input no longer has

    @property
    def name(self) -> str:
        return self.item.label or self.item.input.name


@dataclass
class Summary:
    total: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    interrupted: int = 0
    elapsed: float = 0.0
    audio_seconds: float = 0.0
    manifest: str = ""
    failures: list[dict] = field(default_factory=list)
    backend: str = ""
    workers: int = 0
    stopped: str = ""  # the signal that stopped the batch

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.interrupted == 0 and not self.stopped


class Interrupted(KeyboardInterrupt):
    """The batch was stopped by a signal; `summary` says what was done before."""

    def __init__(self, summary: Summary):
        super().__init__(summary.stopped)
        self.summary = summary


class _Stop:
    """SIGINT and SIGTERM while a batch runs (in the main thread; elsewhere nothing is installed).
    Before any file is in work a signal raises KeyboardInterrupt at once; after, the handler only
    counts (it may interrupt a thread holding any lock), and the backend, looking every few tenths
    of a second, stops the files in work at the first and kills their workers at the second."""

    grace = 5.0  # seconds the files in work get to cancel before their workers are killed

    def __init__(self, say: Callable[[str], None]):
        self.signals, self.name, self.say = 0, "", say
        self.raising = True
        self.since = 0.0
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        self.signals += 1
        self.name = self.name or signal.Signals(signum).name
        if self.raising:
            raise KeyboardInterrupt

    def noticed(self, in_work: int) -> None:
        """Called by the backend once it stops dispatching."""
        self.since = time.monotonic()
        self.say(f"dsu batch: stopping ({self.name}): {in_work} file(s) in work cancelled, not recorded; "
                 "^C again to kill the workers at once")

    def must_kill(self) -> bool:
        """Whether the backend, stopping since `noticed`, kills its workers now: at a second signal,
        or when they did not cancel within `grace` seconds. Says which."""
        if self.signals > 1:
            self.say("dsu batch: second signal: killing the workers")
        elif time.monotonic() - self.since > self.grace:
            self.say(f"dsu batch: the workers did not cancel within {self.grace:g} s: killing them")
        else:
            return False
        return True

    def install(self) -> None:
        """Take the signals (again: `ray.init` sets a SIGTERM handler of its own)."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old = signal.signal(sig, self._handle)
                self._old.setdefault(sig, old)

    def __enter__(self) -> _Stop:
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run(inputs: list, output_dir, request: dict | None = None, *, jobs: int | None = None,
        threads: int | None = None, device: str = "auto", models_dir=None, layout: str | None = None,
        keep_folders: bool = True, force: bool = False, retries: int = 1, ray: str | None = None,
        ray_actors: int | None = None, ray_cpus: float | None = None, ray_gpus: float | None = None,
        timeout: float | None = None, progress: bool | None = None,
        on_event: Callable[[dict], None] | None = None, flags: dict[str, str] | None = None) -> Summary:
    """Separate every audio file of `inputs` (files, folders, globs, .txt/.csv lists) into
    `output_dir`, with `request` holding what a `separate` request holds besides input and
    output_dir (model, model_path, format, stems, family options, ...). `ray`: None runs `jobs`
    local workers; an address, "auto" or "local" runs Ray actors. `on_event` gets a dict per
    start, retry and finished file (tests and other front ends). `timeout`: seconds a worker or
    Ray actor may spend on one file before it is killed and the file retried. `flags`: the command
    line's words for request fields in the live display (dsu.cli.vocabulary); records and
    `Summary.failures` keep the field names."""
    started = time.monotonic()
    plan = _plan(inputs, output_dir, request, models_dir, layout, keep_folders)
    summary = Summary(total=len(plan.items))
    outcomes = _Outcomes(summary, plan, retries, on_event, flags)
    with Manifest(plan.out) as manifest, _Stop(outcomes.say) as stop:
        outcomes.manifest, outcomes.stop = manifest, stop
        summary.manifest = str(manifest.path)
        _warn_skipped(manifest)
        tasks, refused = _tasks(plan, manifest, force, summary)
        if not tasks and not refused:
            summary.elapsed = time.monotonic() - started
            return summary
        show = outcomes.show = BatchDisplay(len(tasks) + len(refused), summary.skipped,
                                            progress if progress is not None else True)
        backend = functools.partial(_backend, ray, jobs, threads, device, plan.models_dir, len(tasks), plan.ref,
                                    plan.out, ray_actors, ray_cpus, ray_gpus, outcomes.started, outcomes.progressed,
                                    timeout)
        try:
            _run_tasks(plan, tasks, refused, outcomes, stop, backend)
        except KeyboardInterrupt:
            stop.signals = stop.signals or 1
        finally:
            show.close()
    summary.elapsed = time.monotonic() - started
    if stop.signals:
        summary.stopped = stop.name or "SIGINT"
        raise Interrupted(summary)
    return summary


@dataclass
class _Plan:
    """What the batch separates, decided before any file is looked at in the manifest."""
    out: Path
    models_dir: Path | None
    base: dict          # the request's fields common to every file
    fields: dict        # `base` validated
    ref: Any            # the model, resolved
    model_id: dict      # the model as records name it
    options: dict       # the options as records name them
    items: list         # the files and where their stems go
    layout: str
    model_fields: dict  # the fields that load the model


def _plan(inputs: list, output_dir, request: dict | None, models_dir, layout: str | None,
          keep_folders: bool) -> _Plan:
    """The inputs expanded and the request validated, the model resolved, output collisions refused."""
    from .. import protocol as spec
    from ..families import FAMILIES
    from ..jobs import models as model_jobs

    out = Path(output_dir).expanduser().resolve()
    models_dir = Path(models_dir).expanduser().resolve() if models_dir else None
    base = _base_request(request, layout)
    fields, extra = spec.validate(spec.COMMANDS["separate"], {**base, "input": "-", "output_dir": str(out)})
    files = batch_inputs.expand(inputs, exclude=out)
    if not files:
        raise DSUError("input_not_found", "no audio files found in the inputs")
    ref = model_jobs.resolve(fields, models_dir)
    model_id = {"name": ref.name, "family": ref.family, "load_options": [list(o) for o in ref.options],
                "files": [{"name": Path(f).name, "sha256": sha256_of(f)} for f in ref.files]}
    options = {k: v for k, v in {**fields, **extra}.items()
               if k not in model_jobs.MODEL_KEYS and k not in ("input", "output_dir", "id")}
    options["keep_folders"] = keep_folders
    items = batch_inputs.plan(files, out, keep_folders)
    layout = fields.get("layout") or FAMILIES[ref.family].layout
    batch_inputs.check_collisions(items, layout, ref.name, fields["format"], None, ref.family)
    model_fields = {k: v for k, v in fields.items() if k in model_jobs.MODEL_KEYS}
    if models_dir is not None and "models_dir" not in model_fields and "repo" not in model_fields:
        model_fields["models_dir"] = str(models_dir)
    return _Plan(out, models_dir, base, fields, ref, model_id, options, items, layout, model_fields)


def _base_request(request: dict | None, layout: str | None) -> dict:
    base = {k: v for k, v in (request or {}).items() if v is not None}
    if layout:
        base["layout"] = layout
    for key in ("input", "output_dir", "output", "id"):
        base.pop(key, None)
    for key in ("model_path", "config_path", "repo", "models_dir"):  # workers and actors may start elsewhere
        if isinstance(base.get(key), str):
            base[key] = str(Path(base[key]).expanduser().resolve())
    return base


def _tasks(plan: _Plan, manifest: Manifest, force: bool, summary: Summary) -> tuple[list, list]:
    """(the files to separate, (task, error) of the files refused before anything opens them); the
    files the manifest says are done are counted skipped."""
    latest = manifest.latest()
    tasks, refused = [], []
    for item in plan.items:
        request_fields = {**plan.base, **plan.model_fields, "input": str(item.input),
                          "output_dir": str(item.output_dir)}
        try:  # a dangling link, a loop, a pipe, a device: failed, before anything opens it
            paths.check_input(item.input)
            st = os.stat(item.input)
        except (DSUError, OSError) as e:
            error = e if isinstance(e, DSUError) else DSUError("input_not_found", f"{item.input}: {e.strerror}")
            refused.append((Task(item, request_fields, None, None), WorkerError(error.code, error.message)))
            continue
        if not force and _done_before(plan, latest, item, st):
            summary.skipped += 1
            continue
        tasks.append(Task(item, request_fields, st.st_size, st.st_mtime_ns, _duration(item.input)))
    return tasks, refused


def _done_before(plan: _Plan, latest: dict, item: batch_inputs.Item, st: os.stat_result) -> bool:
    """Whether the manifest records this file, as it is now, done into the same folder."""
    record_key = (str(item.input), canonical(plan.model_id), canonical(plan.options))
    # a manifest of a DSU that named inputs by where their links point
    record = latest.get(record_key) or latest.get((str(batch_inputs.real(item.input)), *record_key[1:]))
    return record is not None and record.get("output_dir") == str(item.output_dir) and \
        is_done(record, st.st_size, st.st_mtime_ns, lambda p=item.input: sha256_of(p))


def _run_tasks(plan: _Plan, tasks: list, refused: list, outcomes: _Outcomes, stop: _Stop,
               make_backend: Callable[[], Any]) -> None:
    """The refused files recorded failed, then the rest through a backend; KeyboardInterrupt when stopped."""
    for task, refusal in refused:
        outcomes.finished(task, None, refusal, False, "driver")
    if not tasks:
        return
    backend = make_backend()
    outcomes.summary.backend, outcomes.summary.workers = backend.kind, backend.size
    stop.install()
    stop.raising = False  # the backend looks at `stop` from here on, and stops what it started
    try:
        info = backend.start(plan.model_fields, stop)
        written = _written_stems(info["stems"], plan.fields)
        batch_inputs.check_collisions(plan.items, plan.layout, info["model"], plan.fields["format"], written,
                                      plan.ref.family)
        if stop.signals:
            raise KeyboardInterrupt
        backend.run(tasks, outcomes.finished, stop)
    finally:
        backend.close()
        _clean_debris(plan.out)


class _Outcomes:
    """What the backend reports (starts, progress, each attempt's end), into the summary, the
    manifest, the display and `on_event`. Backends call it from their threads."""

    def __init__(self, summary: Summary, plan: _Plan, retries: int, on_event: Callable[[dict], None] | None,
                 flags: dict[str, str] | None):
        self.summary, self.plan, self.retries, self.on_event, self.flags = summary, plan, retries, on_event, flags
        self.manifest: Manifest | None = None
        self.stop: _Stop | None = None
        self.show: BatchDisplay | None = None
        self.lock = threading.Lock()

    def say(self, text: str) -> None:
        if self.show:
            self.show.note(text)
        else:
            _say(text)

    def emit(self, event: dict) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def started(self, task: Task, where: str, pid: int | None) -> None:
        assert self.show is not None  # the backend runs once the display is up
        if task.first_start is None:
            task.first_start = time.monotonic()
        _fingerprint(task)
        self.show.started(task.name)
        self.emit({"event": "start", "input": str(task.item.input), "where": where, "pid": pid,
                   "attempt": task.attempts + 1})

    def progressed(self, task: Task, fraction: float) -> None:
        assert self.show is not None
        self.show.progress(task.name, fraction)
        self.emit({"event": "progress", "input": str(task.item.input), "progress": fraction})

    def finished(self, task: Task, done: dict | None, error, retryable: bool, where: str = "") -> bool:
        """Called once per attempt; True: run the task again."""
        assert self.stop is not None
        if done is not None and task.identity is not None and _identity(task.item.input) != task.identity:
            task.stale, done, retryable = done["paths"], None, True  # stems of content the input no longer has
            error = WorkerError(CHANGED, f"{task.item.input} changed while it was separated; "
                                         "its stems were of the old content")
        if error is not None and (error.code == "cancelled" or (self.stop.signals and retryable)):
            # cancelled by this batch's stop (or killed by it), or by a signal to the worker alone:
            # the file is simply not done
            with self.lock:
                self.summary.interrupted += 1
            return False
        with self.lock:
            task.attempts += 1
            if error is not None and retryable and task.attempts <= self.retries:
                self.emit({"event": "retry", "input": str(task.item.input), "code": error.code,
                           "message": error.message, "where": where})
                return True
            self._record(task, done, error, where)
            return False

    def _record(self, task: Task, done: dict | None, error, where: str) -> None:
        """The attempt that ends the task: its manifest line, the summary, the display (under the lock)."""
        assert self.manifest is not None and self.show is not None
        if error is not None and error.code == CHANGED:
            _remove_stale(task)
        record = _record(task, done, error, self.plan.model_id, self.plan.options, where,
                         started_wall=task.first_start)
        self.manifest.append(record)
        summary = self.summary
        if done is not None:
            summary.done += 1
            summary.audio_seconds += task.duration or 0.0
        else:
            summary.failed += 1
            summary.failures.append({"input": record["input"], **record["error"]})
        self.show.finished(task.name, record["status"] if done is not None else
                           f"failed: {record['error']['code']}: {speak(record['error']['message'], self.flags)}",
                           done["elapsed"] if done else None, task.duration, where)
        self.emit({"event": "finished", "record": record})


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _warn_skipped(manifest: Manifest) -> None:
    """A manifest's unreadable lines are skipped: say so (their files are done again)."""
    if manifest.problems:
        shown = "; ".join(manifest.problems[:3]) + (f"; and {len(manifest.problems) - 3} more"
                                                   if len(manifest.problems) > 3 else "")
        _say(f"dsu batch: warning: {manifest.path}: skipped {len(manifest.problems)} line(s) that are not "
             f"records ({shown}); their files are done again")


def _identity(path: Path) -> tuple | None:
    """What changes whenever a file's content does (a rewrite, a rename over it; utime sets ctime too)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _fingerprint(task: Task) -> None:
    """The input's size, mtime, sha256 and identity as its job starts: the record says what was
    separated, and `finished` compares the identity after the job."""
    before = _identity(task.item.input)
    try:
        task.sha256 = sha256_of(task.item.input)
    except OSError:
        task.sha256 = None
    after = _identity(task.item.input)
    # changed while hashed: no identity matches it, and the job is not taken for done
    task.identity = before if before == after and before is not None else ("changing",)
    if after is not None:
        task.size, task.mtime_ns = after[2], after[3]


def _remove_stale(task: Task) -> None:
    """The stems a job wrote from an input that then changed: they would pass for the new content's."""
    for path in task.stale:
        try:
            os.unlink(path)
        except OSError:
            pass


def _backend(ray, jobs, threads, device, models_dir, count, ref, out, ray_actors, ray_cpus, ray_gpus,
             started, progress, timeout):
    if ray is not None:
        from .ray_backend import RayPool
        return RayPool(ray, actors=ray_actors, cpus=ray_cpus, gpus=ray_gpus, threads=threads, device=device,
                       models_dir=models_dir, most=count, started=started, timeout=timeout, progress=progress)
    from .local import LocalPool
    jobs, threads = default_jobs(jobs, threads, device, ref, count)
    args = ["--device", device, "--threads", str(threads), "--max-cached-models", "1"]
    if models_dir is not None:
        args += ["--models-dir", str(models_dir)]
    return LocalPool(jobs, args, log_path=out / LOG_NAME, started=started, progress=progress, timeout=timeout)


def default_jobs(jobs: int | None, threads: int | None, device: str, ref, count: int) -> tuple[int, int]:
    """Workers and threads each: every physical core busy, as many workers as memory holds
    (a worker's runtime plus three times its model files), one worker on a GPU."""
    from ..device import physical_cores
    cores = physical_cores()
    if jobs is None:
        if device in ("cuda", "mps") or (device == "auto" and _has_gpu()):
            jobs = 1
        else:
            model_bytes = sum(os.path.getsize(f) for f in ref.files)
            per_worker = (600 << 20) + 3 * model_bytes
            by_memory = max(1, int(0.8 * _available_memory() // per_worker))
            jobs = max(1, min(cores // (threads or 1), by_memory))
    jobs = max(1, min(jobs, count))
    return jobs, threads or max(1, cores // jobs)


def _has_gpu() -> bool:
    import torch
    return torch.cuda.is_available() or (getattr(torch.backends, "mps", None) is not None
                                         and torch.backends.mps.is_available())


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    from ..device import total_memory
    return total_memory() // 2


def _clean_debris(out: Path) -> None:
    """Remove the partial files that killed workers or actors left (all of them are gone by now),
    by DSU's own rules (`dsu.jobs.clean`, as `dsu clean OUT`)."""
    from ..jobs import clean
    try:
        clean.run({"dir": str(out)})
    except (DSUError, OSError):
        pass


def _written_stems(stems: list[str], fields: dict) -> list[str]:
    if fields.get("two_stems"):
        return [fields["two_stems"], f"no_{fields['two_stems']}"]
    wanted = fields.get("stems")
    if wanted:
        return [wanted] if isinstance(wanted, str) else list(wanted)
    return list(stems)


def _duration(path: Path) -> float | None:
    try:
        import soundfile
        return soundfile.info(paths.native(path)).duration
    except Exception:  # a format libsndfile does not read: the worker decodes it through ffmpeg
        return None


def _record(task: Task, done: dict | None, error, model_id: dict, options: dict, where: str,
            started_wall: float | None) -> dict:
    record = {"input": str(task.item.input), "size": task.size, "mtime_ns": task.mtime_ns, "sha256": task.sha256,
              "duration": task.duration, "model": model_id["name"], "model_id": model_id, "options": options,
              "output_dir": str(task.item.output_dir), "attempts": task.attempts, "where": where,
              "finished_at": now(), "dsu_version": __version__,
              "wall": round(time.monotonic() - started_wall, 3) if started_wall else None}
    if done is not None:
        record.update(status="done", outputs=done["paths"], stems=done.get("stems"),
                      elapsed=done.get("elapsed"), model_from_cache=done.get("model_from_cache"))
    else:
        record.update(status="failed", outputs=[], error={"code": error.code, "message": error.message})
    return record



