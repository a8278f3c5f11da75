"""The batch on a Ray cluster: one actor per CPU slot or GPU (fraction), each a DSU job runner with
its own model cache, so the model stays loaded between files. Files go to actors as they come free
(a `ray.wait` loop over the calls in flight); the driver writes the manifest when a call returns,
which is after the actor's stems were renamed into place. An actor that dies takes nothing with it:
its file is queued again for the others and a new actor takes its place.

Every node must see the input and output paths under the same names (a shared or network file
system) and have DSU installed."""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from ..client import WorkerError
from ..errors import DSUError

POLL = 1.0  # seconds between progress questions to the actors in work
STOP_POLL = 0.2  # seconds between looks at the batch's stop


class SeparatorActor:
    """Runs in a Ray worker process: `dsu.jobs.separate` with a model cache of its own."""

    def __init__(self, device: str, threads: int, models_dir: str | None):
        from .. import device as devices
        from ..cache import ModelCache
        self.device, self.device_warning = devices.choose_device(device)
        self.threads = threads
        devices.set_threads(threads)
        self.cache = ModelCache(self.device, max_models=1)
        self.models_dir = Path(models_dir) if models_dir else None
        self.fraction = 0.0  # of the file in work, read by `progress` from the actor's second thread
        self.cancelled: set = set()  # tokens of the calls `cancel` stopped (from the second thread)

    def load(self, model_fields: dict) -> dict:
        import ray

        from .. import protocol as spec
        from ..jobs import models as model_jobs
        try:
            fields, _ = spec.validate(spec.COMMANDS["load_model"], model_fields)
            loaded = model_jobs.load_model(fields, cache=self.cache, models_dir=self.models_dir, default_model=None,
                                     emit=_quiet)
        except DSUError as e:
            return {"ok": False, "code": e.code, "message": e.message}
        return {"ok": True, "pid": os.getpid(), "node": ray.util.get_node_ip_address(), **loaded}

    def separate(self, request: dict, token: int = 0) -> dict:
        from .. import device as devices
        from .. import protocol as spec
        from ..jobs import failures, separate
        devices.set_threads(self.threads)  # torch's intra-op setting may be per calling thread
        self.fraction = 0.0
        try:
            fields, extra = spec.validate(spec.COMMANDS["separate"], request)
            return {"ok": True, "done": separate.run(fields, extra, cache=self.cache, models_dir=self.models_dir,
                                                      default_model=None, emit=_quiet, progress=self._report,
                                                      cancelled=lambda: token in self.cancelled)}
        except Exception as e:
            known = failures.coded(e)  # as a worker would answer it; anything else is Ray's task error
            if known is None:
                raise
            return {"ok": False, "code": known.code, "message": known.message}
        finally:
            self.cancelled.discard(token)

    def cancel(self, token: int) -> None:
        """Stop call `token` at its next chunk (its partials removed by the job); one not started yet
        stops before it begins."""
        self.cancelled.add(token)


    def _report(self, fraction: float) -> None:
        self.fraction = fraction

    def progress(self) -> float:
        return self.fraction


def _quiet(status: str, **fields) -> None:
    pass


def _import_ray():
    try:
        import ray
    except ImportError:
        raise DSUError("bad_value", "--ray needs Ray: pip install 'dsu[ray]'") from None
    return ray


class RayPool:
    kind = "ray"

    def __init__(self, address: str, *, actors: int | None, cpus: float | None, gpus: float | None,
                 threads: int | None, device: str, models_dir: Path | None, most: int, started: Callable,
                 timeout: float | None = None, progress: Callable | None = None):
        self.ray = ray = _import_ray()
        self.owned = False
        if not ray.is_initialized():
            options = {"include_dashboard": False, "logging_level": logging.WARNING}
            try:
                if address == "local":
                    ray.init(num_cpus=max(os.cpu_count() or 1, int(actors or 0)), **options)
                else:
                    ray.init(address=address, **options)
            except ConnectionError as e:
                raise DSUError("bad_value", f"no Ray cluster at {address}: {e}; start one with `ray start "
                                            "--head`, or use --ray local") from None
            self.owned = True
        self.threads = threads or max(1, int(cpus or 1))
        self.cpus = cpus if cpus is not None else (0.0 if gpus else float(self.threads))
        self.gpus = gpus or 0.0
        resources = ray.cluster_resources()
        if actors is None:
            if self.gpus:
                actors = int(resources.get("GPU", 0) // self.gpus)
            else:
                actors = int(resources.get("CPU", 1) // max(self.cpus, 1e-9))
        self.size = max(1, min(actors, most))
        self.device = "cuda" if self.gpus and device == "auto" else device
        self.models_dir = str(models_dir) if models_dir else None
        self.started = started
        self.timeout = timeout  # seconds an actor may spend on one file before it is killed
        self.progress = progress  # progress(task, fraction), polled from the actors every POLL seconds
        self.polls: dict = {}  # ObjectRef of a progress call -> task
        self.actor_class = ray.remote(SeparatorActor)
        self.actors: dict = {}  # actor handle -> "actor N (node)"
        self.loading: dict = {}  # ObjectRef of a load call -> actor
        self.pids: dict = {}
        self.local_pids: dict = {}  # actor -> pid, for the actors on this machine
        self.free: deque = deque()
        self.spawned = 0
        self.model_fields: dict = {}

    def _spawn(self) -> None:
        # two threads: `progress` is answered while `separate` runs
        actor = self.actor_class.options(num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0,
                                         max_task_retries=0, max_concurrency=2).remote(self.device, self.threads,
                                                                                       self.models_dir)
        self.spawned += 1
        self.actors[actor] = f"actor {self.spawned}"
        self.loading[actor.load.remote(self.model_fields)] = actor

    def _loaded(self, ref) -> dict:
        """The load call's answer, the actor moved to the free ones; `ok` false when it failed (the
        actor dropped)."""
        actor = self.loading.pop(ref)
        try:
            answer = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:
            answer = {"ok": False, "code": "internal", "message": f"the Ray actor failed to start: {e}"}
        if not answer["ok"]:
            self._drop(actor)
            return answer
        self.actors[actor] = f"{self.actors[actor]} on {answer['node']} pid {answer['pid']}"
        self.pids[actor] = answer["pid"]
        if answer["node"] == self.ray.util.get_node_ip_address():
            self.local_pids[actor] = answer["pid"]
        self.free.append(actor)
        return answer

    def _drop(self, actor) -> None:
        self.actors.pop(actor, None)
        try:
            self.ray.kill(actor)
        except Exception:
            pass

    def start(self, model_fields: dict, stop=None) -> dict:
        self.model_fields = model_fields
        for _ in range(self.size):
            self._spawn()
        failures = []
        while self.loading:
            ready, _ = self.ray.wait(list(self.loading), num_returns=1, timeout=STOP_POLL)
            if stop is not None and stop.signals:
                raise KeyboardInterrupt  # `close` kills the actors
            if not ready:
                continue
            answer = self._loaded(ready[0])
            if answer["ok"]:
                return {k: v for k, v in answer.items() if k not in ("ok", "pid", "node")}
            failures.append(answer)
        raise DSUError(failures[0]["code"], failures[0]["message"])

    def run(self, tasks: list, finished: Callable, stop=None) -> None:
        """Every task to its end, or until `stop` (see runner._Stop) counts a signal: then no file
        more, the calls in work cancelled, their actors killed after the stop's grace or at a second."""
        pending = deque(tasks)
        running: dict = {}  # ObjectRef -> (actor, task)
        deadlines: dict = {}  # ObjectRef -> when its actor is taken for stuck (with --timeout)
        tokens: dict = {}  # ObjectRef -> the token its `cancel` names
        asked_at = 0.0
        while pending or running:
            if stop is not None and stop.signals:
                self._stop(stop, running, tokens, finished)
                return
            while pending and self.free:
                actor, task = self.free.popleft(), pending.popleft()
                self.started(task, self.actors[actor], self.pids.get(actor))
                token = len(tokens) + 1
                ref = actor.separate.remote(task.request, token)
                running[ref], tokens[ref] = (actor, task), token
                if self.timeout:
                    deadlines[ref] = time.monotonic() + self.timeout
            if not running and not self.loading:
                if not self.actors:
                    self._spawn()  # every actor died: a new one, or an error saying why
                    continue
            wait = max(0.0, min(deadlines.values()) - time.monotonic()) if deadlines else None
            if stop is not None:
                wait = STOP_POLL if wait is None else min(wait, STOP_POLL)
            if self.progress is not None and running:
                wait = POLL if wait is None else min(wait, POLL)
            ready, _ = self.ray.wait([*running, *self.loading], num_returns=1, timeout=wait)
            if time.monotonic() - asked_at >= POLL:
                asked_at = time.monotonic()
                self._poll(running)
            if not ready:  # a deadline passed, or it is time to ask for progress
                now = time.monotonic()
                for ref in [r for r, when in deadlines.items() if when <= now]:
                    del deadlines[ref]
                    actor, task = running.pop(ref)
                    if self._overdue(actor, task, finished):
                        pending.appendleft(task)
                continue
            ref = ready[0]
            deadlines.pop(ref, None)
            if ref in self.loading:
                answer = self._loaded(ref)
                if not answer["ok"] and not self.actors and not self.loading:
                    raise DSUError(answer["code"], answer["message"])
                continue
            actor, task = running.pop(ref)
            where = self.actors.get(actor, "an actor")
            try:
                answer = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as e:
                self._drop(actor)
                self._spawn()  # keep the pool its size; the model loads while others work
                error = WorkerError("worker_exited", f"the Ray actor ({where}) died: {type(e).__name__}")
                if finished(task, None, error, True, where):
                    pending.appendleft(task)
                continue
            except self.ray.exceptions.RayTaskError as e:
                answer = {"ok": False, "code": "internal", "message": str(e)[:2000]}
            self.free.append(actor)
            if answer["ok"]:
                again = finished(task, answer["done"], None, False, where)  # True: its input changed meanwhile
            else:
                again = finished(task, None, WorkerError(answer["code"], answer["message"]), False, where)
            if again:
                pending.appendleft(task)

    def _stop(self, stop, running: dict, tokens: dict, finished: Callable) -> None:
        stop.noticed(len(running))
        for ref, (actor, _) in running.items():
            actor.cancel.remote(tokens[ref])
        killed = False
        while running:
            if not killed and stop.must_kill():
                for actor, _ in running.values():
                    self._drop(actor)  # the batch's cleaning removes what it leaves, where it can tell
                killed = True
            ready, _ = self.ray.wait(list(running), num_returns=1, timeout=STOP_POLL)
            for ref in ready:
                actor, task = running.pop(ref)
                where = self.actors.get(actor, "an actor")
                try:
                    answer = self.ray.get(ref)
                except self.ray.exceptions.RayError as e:
                    finished(task, None, WorkerError("worker_exited", f"the Ray actor ({where}) was stopped: "
                                                                      f"{type(e).__name__}"), True, where)
                    continue
                if answer["ok"]:
                    finished(task, answer["done"], None, False, where)
                else:
                    finished(task, None, WorkerError(answer["code"], answer["message"]), False, where)

    def _poll(self, running: dict) -> None:
        """Report the progress answers that arrived, and ask again where none is outstanding."""
        if self.progress is None:
            return
        if self.polls:
            done, _ = self.ray.wait(list(self.polls), num_returns=len(self.polls), timeout=0)
            for ref in done:
                task = self.polls.pop(ref)
                try:
                    fraction = self.ray.get(ref)
                except self.ray.exceptions.RayError:
                    continue  # the actor died: its file's own call says so
                if any(t is task for _, t in running.values()):
                    self.progress(task, fraction)
        asked = {id(t) for t in self.polls.values()}
        for actor, task in running.values():
            if id(task) not in asked:
                self.polls[actor.progress.remote()] = task

    def _overdue(self, actor, task, finished: Callable) -> bool:
        """An actor past --timeout on its file is taken for stuck: killed, a new one takes its place,
        and its file is retried like a dead actor's. True: run the file again."""
        where = self.actors.get(actor, "an actor")
        self._drop(actor)
        self._spawn()
        error = WorkerError("timeout", f"no answer within {self.timeout:g} s ({where}): the actor was killed")
        return finished(task, None, error, True, where)

    def close(self) -> None:
        for actor in list(self.actors):
            self._drop(actor)
        # `ray.kill` returns before the process is gone; the batch's cleaning after this removes the
        # partials of dead pids only, so wait (a little) for the ones here
        from ..tempfiles import alive
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in self.local_pids.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.owned:
            self.ray.shutdown()
