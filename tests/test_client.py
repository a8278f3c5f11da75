"""dsu.client.Worker against real worker processes."""
from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dsu.client import Worker, WorkerError

ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("client")
    out = {}
    for name, seconds in (("short", 2.0), ("long", 20.0)):
        t = np.arange(int(seconds * 44100)) / 44100
        audio = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], 1) * 0.3
        sf.write(tmp / f"{name}.wav", audio.astype(np.float32), 44100, subtype="PCM_16")
        out[name] = tmp / f"{name}.wav"
    return out


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    log = open(tmp_path_factory.mktemp("client-log") / "stderr", "w")
    with Worker(["--threads", "1"], env=ENV, stderr=log, timeout=60) as w:
        yield w
    log.close()


def test_ready_and_requests_matched_by_id(worker, songs, tmp_path):
    assert worker.info["protocol"] == 1 and worker.info["status"] == "ready"
    job = worker.submit("separate", input=str(songs["long"]), output_dir=str(tmp_path), model="dsp", segment=2.0)
    pong = worker.ping()  # answered while the job runs, matched to its own id
    assert pong["status"] == "pong" and pong["id"] != job.id
    seen = list(job)
    assert seen[-1]["status"] == "done" and seen[-1]["id"] == job.id and job.final is seen[-1]
    assert sum(m["status"] == "progress" for m in seen) >= 20 / 1.5


def test_separate_with_progress_callback(worker, songs, tmp_path):
    progress = []
    done = worker.separate(input=str(songs["short"]), output_dir=str(tmp_path), model="dsp", stems=["bass"],
                           on_progress=progress.append, id={"job": 1})
    assert done["id"] == {"job": 1} and done["files"] == ["bass.wav"] and (tmp_path / "short" / "bass.wav").is_file()
    assert progress and progress == sorted(progress) and progress[-1] == 1.0
    with pytest.raises(WorkerError) as e:
        worker.separate(input=str(tmp_path / "nothing.wav"), output_dir=str(tmp_path), model="dsp")
    assert e.value.code == "input_not_found" and e.value.reply["status"] == "error"


def test_cancel_and_timeout(worker, songs, tmp_path):
    job = worker.submit("separate", input=str(songs["long"]), output_dir=str(tmp_path / "c"), model="dsp", segment=0.5)
    for message in job:
        if message["status"] == "progress":
            job.cancel()
            break
    with pytest.raises(WorkerError) as e:
        job.result()
    assert e.value.code == "cancelled"
    slow = worker.submit("separate", input=str(songs["long"]), output_dir=str(tmp_path / "t"), model="dsp",
                         segment=0.5)
    with pytest.raises(WorkerError) as e:  # a timeout also cancels the job in the worker
        slow.result(timeout=0.5)
    assert e.value.code == "timeout"
    while True:  # the worker's answers to a request the client gave up on arrive as events
        event = worker.events.get(timeout=30)
        if event.get("id") == slow.id and event["status"] == "error":
            assert event["code"] == "cancelled"
            break
    assert worker.request("get_status")["busy"] is False
    assert not list((tmp_path / "c").rglob("*.wav")) and not list((tmp_path / "t").rglob("*.wav"))


@pytest.mark.slow  # a worker killed and started again
def test_restarts_a_dead_worker(songs, tmp_path):
    with Worker(["--threads", "1"], env=ENV, stderr=open(tmp_path / "stderr", "w")) as w:
        first = w.pid
        job = w.submit("separate", input=str(songs["long"]), output_dir=str(tmp_path), model="dsp", segment=0.5)
        os.kill(first, signal.SIGKILL)
        with pytest.raises(WorkerError) as e:
            job.result(timeout=30)
        assert e.value.code == "worker_exited"
        assert w.ping()["status"] == "pong" and w.pid != first and w.starts == 2
    assert w.proc.returncode == 0  # closed by `exit`


@pytest.mark.skipif(shutil.which("dsu-demucs", path=os.path.dirname(sys.executable)) is None,
                    reason="console scripts not installed")
def test_console_script_argv(tmp_path):
    script = shutil.which("dsu-demucs", path=os.path.dirname(sys.executable))
    with Worker(argv=[script, "--worker", "--threads", "1"], env=ENV, stderr=open(tmp_path / "stderr", "w")) as w:
        assert w.info["worker"] == "dsu-demucs" and w.info["default_model"] == "htdemucs"
        with pytest.raises(WorkerError) as e:  # no htdemucs without a models dir
            w.request("load_model")
        assert e.value.code == "model_not_found"


STUCK = Path(__file__).parent / "fixtures" / "stuck_worker.py"  # answers `ready`, then nothing


@pytest.mark.slow  # waits out a stalled worker
def test_a_worker_that_stops_answering_is_replaced(tmp_path):
    with Worker(argv=[sys.executable, str(STUCK)], timeouts={"quick": 1.0, "job": 1.5}) as w:
        first = w.pid
        started = time.monotonic()
        job = w.submit("separate", input="x.wav", output_dir=str(tmp_path))
        ping = w.submit("ping")
        for request in (ping, job):  # the ping's silence stops the worker: both fail
            with pytest.raises(WorkerError) as e:
                request.result()
            assert e.value.code == "timeout" and "did not answer ping" in e.value.message
        assert 1.0 <= time.monotonic() - started < 10 and w.proc.poll() is not None
        job = w.submit("separate", input="x.wav", output_dir=str(tmp_path))  # a new worker, silent after `separating`
        assert w.pid != first and w.starts == 2
        assert next(iter(job))["status"] == "separating"
        with pytest.raises(WorkerError) as e:
            job.result()
        assert e.value.code == "timeout" and "did not answer separate" in e.value.message
        with pytest.raises(WorkerError) as e:  # a limit per request
            w.request("ping", idle_timeout=0.3)
        assert e.value.code == "timeout" and w.starts == 3


@pytest.mark.slow  # waits out the client's time limits
def test_limits_count_from_a_requests_turn_and_progress_keeps_a_job_alive(songs, tmp_path):
    """Real worker: a separate of several seconds with progress all along, and a load queued behind
    it, each under limits of a second: neither is taken for stuck."""
    with Worker(["--threads", "1"], env=ENV, stderr=open(tmp_path / "stderr", "w"),
                timeouts={"quick": 5.0, "load": 1.0, "job": 1.0}) as w:
        started = time.monotonic()
        job = w.submit("separate", input=str(songs["long"]), output_dir=str(tmp_path), model="dsp", segment=0.5)
        load = w.submit("load_model", model="dsp")
        assert w.ping()["status"] == "pong"
        assert job.result()["status"] == "done" and load.result()["status"] == "model_loaded"
        assert time.monotonic() - started > 1.0 and w.starts == 1
