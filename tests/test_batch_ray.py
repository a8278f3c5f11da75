"""`dsu batch --ray`: a real Ray cluster on this machine (started here, 127.0.0.1, 2 CPUs) with two
actors holding the model; one actor killed mid-file."""
from __future__ import annotations

import json
import os
import signal
import threading
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf

from dsu.batch import run
from dsu.batch.manifest import NAME as MANIFEST

from helpers import tone

pytestmark = pytest.mark.slow  # the fast tier (`-m "not slow"`) leaves this file out

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines() if line.strip()]


def test_two_actors_share_a_batch_and_resume(cluster, tmp_path):
    files = [tone(tmp_path / "lib" / d / f"{n}.wav", seconds=2, freq=f)
             for d, n, f in (("a", "x", 200), ("a", "y", 300), ("b", "x", 400), ("b", "z", 500))]
    events = []
    summary = run([tmp_path / "lib"], tmp_path / "out", {"model": "dsp", "stems": ["vocals"]}, ray="auto",
                  ray_actors=2, progress=False, on_event=events.append)
    assert (summary.done, summary.failed, summary.backend, summary.workers) == (4, 0, "ray", 2)
    records = lines(tmp_path / "out")
    assert Counter(r["input"] for r in records) == Counter(str(f) for f in files)
    for r in records:
        f = Path(r["input"])
        assert r["outputs"] == [str(tmp_path / "out" / f.parent.name / f.stem / "vocals.wav")]
        assert sf.info(r["outputs"][0]).duration == pytest.approx(2)
    starts = [e for e in events if e["event"] == "start"]
    assert len({e["pid"] for e in starts}) == 2 and all(e["pid"] != os.getpid() for e in starts)
    assert sum(r["model_from_cache"] for r in records) >= 2  # each actor kept its model between files
    again = run([tmp_path / "lib"], tmp_path / "out", {"model": "dsp", "stems": ["vocals"]}, ray="auto",
                progress=False)
    assert (again.done, again.skipped) == (0, 4) and len(lines(tmp_path / "out")) == 4


def test_actor_killed_mid_file_retried_on_another(cluster, tmp_path):
    victim = tone(tmp_path / "lib" / "long.wav", seconds=30)
    others = [tone(tmp_path / "lib" / f"s{i}.wav", seconds=2, freq=300 + 50 * i) for i in range(3)]
    killed: list[int] = []
    events = []

    def on_event(event):
        events.append(event)
        if event["event"] == "start" and event["input"] == str(victim) and not killed:
            killed.append(event["pid"])
            threading.Timer(1.0, os.kill, (event["pid"], signal.SIGKILL)).start()

    summary = run([tmp_path / "lib"], tmp_path / "out", {"model": "dsp", "stems": ["vocals"]}, ray="auto",
                  ray_actors=2, progress=False, on_event=on_event)
    assert (summary.done, summary.failed) == (4, 0)
    records = {Path(r["input"]).name: r for r in lines(tmp_path / "out")}
    assert len(lines(tmp_path / "out")) == 4  # nothing written twice
    assert records["long.wav"]["attempts"] == 2
    assert all(records[f.name]["attempts"] == 1 for f in others)
    victim_starts = [e for e in events if e["event"] == "start" and e["input"] == str(victim)]
    assert len(victim_starts) == 2 and victim_starts[1]["pid"] != killed[0]
    assert [e["code"] for e in events if e["event"] == "retry"] == ["worker_exited"]
    assert sf.info(records["long.wav"]["outputs"][0]).duration == pytest.approx(30)
    # the actors' progress reaches the driver while they work (polled from their second thread)
    shown = [e["progress"] for e in events if e["event"] == "progress" and e["input"] == str(victim)]
    assert shown and all(0 <= p <= 1 for p in shown) and max(shown) > 0


def test_stuck_actor_is_killed_after_timeout_and_its_file_retried(cluster, tmp_path):
    from test_batch import _wait_gone

    stuck = tone(tmp_path / "lib" / "stuck.wav", seconds=2)
    other = tone(tmp_path / "lib" / "other.wav", seconds=2, freq=300)
    stopped: list[int] = []
    events = []

    def on_event(event):  # the first actor to start `stuck` hangs (SIGSTOP) and never answers
        events.append(event)
        if event["event"] == "start" and event["input"] == str(stuck) and not stopped:
            stopped.append(event["pid"])
            os.kill(event["pid"], signal.SIGSTOP)

    summary = run([tmp_path / "lib"], tmp_path / "out", {"model": "dsp", "stems": ["vocals"]}, ray="auto",
                  ray_actors=1, timeout=10, progress=False, on_event=on_event)
    assert (summary.done, summary.failed) == (2, 0)
    records = {Path(r["input"]).name: r for r in lines(tmp_path / "out")}
    assert records["stuck.wav"]["attempts"] == 2 and records["other.wav"]["attempts"] == 1
    assert [e["code"] for e in events if e["event"] == "retry"] == ["timeout"]
    _wait_gone(stopped[0], 30)


def test_sigint_cancels_the_actors_files_and_the_rerun_does_the_rest(cluster, tmp_path):
    import time
    from dsu.batch.runner import Interrupted

    files = [tone(tmp_path / "lib" / f"s{i}.wav", seconds=1, freq=200 + 50 * i) for i in range(2)]
    files += [tone(tmp_path / "lib" / f"t{i}.wav", seconds=30, freq=400 + 50 * i) for i in range(2)]
    sent: list[float] = []

    def on_event(event):  # a SIGINT to this process once an actor is inside a long file
        if event["event"] == "progress" and Path(event["input"]).stem.startswith("t") and event["progress"] > 0 \
                and not sent:
            sent.append(time.monotonic())
            threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()

    request = {"model": "dsp", "stems": ["vocals"]}
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as stopped:
        run([tmp_path / "lib"], tmp_path / "out", request, ray="auto", ray_actors=2, progress=False,
            on_event=on_event)
    assert sent and time.monotonic() - sent[0] < 10
    assert stopped.value.summary.stopped == "SIGINT"
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # given back
    records = lines(tmp_path / "out")
    assert all(r["status"] == "done" and sf.info(r["outputs"][0]).duration == pytest.approx(r["duration"])
               for r in records)
    assert len(records) < 4 and not list((tmp_path / "out").rglob("*.partial"))
    assert {p.parent.name for p in (tmp_path / "out").rglob("vocals.wav")} == {Path(r["input"]).stem for r in records}
    again = run([tmp_path / "lib"], tmp_path / "out", request, ray="auto", ray_actors=2, progress=False)
    assert (again.done, again.skipped) == (4 - len(records), len(records))
    assert Counter(r["input"] for r in lines(tmp_path / "out")) == Counter(str(f) for f in files)
