"""`dsu batch`: real input trees, real worker processes, a real manifest on disk, a batch killed
with SIGKILL and run again, workers killed mid-file."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dsu.batch import run
from dsu.batch.inputs import check_collisions, expand, plan
from dsu.batch.manifest import NAME as MANIFEST, sha256_of
from dsu.errors import DSUError
from helpers import in_process, tone

from dsu.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
DSP = {"model": "dsp"}
STEMS = ("drums", "bass", "other", "vocals")


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines() if line.strip()]


def test_inputs_folders_globs_and_lists(tmp_path):
    lib = tmp_path / "lib"
    a, b, c = tone(lib / "x" / "a.wav"), tone(lib / "y" / "z" / "b.flac"), tone(lib / "c.wav")
    (lib / "notes.txt").write_text("not audio")
    tone(lib / ".hidden" / "h.wav")
    tone(lib / "out" / "old" / "drums.wav")  # stems of an earlier run inside the input folder
    assert expand([lib], exclude=(lib / "out").resolve()) == [c.resolve(), a.resolve(), b.resolve()]
    assert expand([str(lib / "**" / "*.wav")], exclude=(lib / "out").resolve()) == [c.resolve(), a.resolve()]
    (tmp_path / "list.txt").write_text(f"# songs\nlib/x/a.wav\n\n{b}\nlib/x/a.wav\n")
    assert expand([tmp_path / "list.txt"]) == [a.resolve(), b.resolve()]
    (tmp_path / "list.csv").write_text("path,artist\nlib/c.wav,someone\nlib/y/z/b.flac,other\n")
    assert expand([tmp_path / "list.csv", a]) == [c.resolve(), b.resolve(), a.resolve()]
    with pytest.raises(DSUError, match="input not found: .*missing.wav"):
        expand([tmp_path / "missing.wav"])
    with pytest.raises(DSUError, match="no audio file matches"):
        expand([str(tmp_path / "*.mp3")])
    items = plan(expand([lib], exclude=(lib / "out").resolve()), tmp_path / "out")
    assert [(i.label, i.output_dir) for i in items] == [
        ("c.wav", tmp_path / "out"), ("x/a.wav", tmp_path / "out" / "x"), ("y/z/b.flac", tmp_path / "out" / "y" / "z")]


def test_collisions_are_errors_before_anything_runs(tmp_path):
    for song in ("s1", "s2"):  # musdb's layout: every song is <song>/mixture.wav
        tone(tmp_path / "musdb" / song / "mixture.wav")
    tone(tmp_path / "musdb" / "s1" / "mixture.flac")
    out = tmp_path / "out"
    with pytest.raises(DSUError, match=r"mixture\.flac and .*mixture\.wav would both be written to .*s1/mixture/"):
        run([tmp_path / "musdb"], out, DSP, progress=False)
    (tmp_path / "musdb" / "s1" / "mixture.flac").unlink()
    with pytest.raises(DSUError, match=r"s1/mixture\.wav and .*s2/mixture\.wav would both be written"):
        run([str(tmp_path / "musdb" / "*" / "mixture.wav")], out, DSP, keep_folders=False, progress=False)
    assert not out.exists()  # nothing ran, not even a manifest
    items = plan(expand([tmp_path / "musdb"]), out)
    check_collisions(items, "{track}/{stem}.{ext}", "dsp", "wav", list(STEMS))  # folders kept: apart
    with pytest.raises(DSUError, match=r"\{stem\}"):  # every stem of a file would get one name
        check_collisions(items, "{track}.{ext}", "dsp", "wav", list(STEMS))
    with pytest.raises(DSUError, match="placeholder"):
        check_collisions(items, "{song}/{stem}.{ext}", "dsp", "wav", None)
    with pytest.raises(DSUError, match=r"s1/mixture\.wav and .*s2/mixture\.wav would both be written to "
                                       r".*out/vocals\.wav"):
        check_collisions(plan(expand([tmp_path / "musdb"]), out, keep_folders=False), "{stem}.{ext}", "dsp", "wav",
                         ["vocals"])
    check_collisions(items, "{stem}.{ext}", "dsp", "wav", ["vocals"])  # folders kept: apart


def test_template_keeps_folders_and_finds_collisions(tmp_path):
    tone(tmp_path / "lib" / "p" / "song.wav"), tone(tmp_path / "lib" / "q" / "song.wav", freq=330)
    summary = run([tmp_path / "lib"], tmp_path / "out", {**DSP, "stems": ["vocals"]}, layout="{track}_{stem}.{ext}",
                  jobs=1, threads=1, progress=False)
    assert summary.done == 2
    assert (tmp_path / "out" / "p" / "song_vocals.wav").is_file() and (tmp_path / "out" / "q" / "song_vocals.wav").is_file()
    with pytest.raises(DSUError, match="would both be written"):
        run([tmp_path / "lib"], tmp_path / "out2", DSP, layout="{stem}.{ext}", keep_folders=False, progress=False)


def test_batch_resume_force_and_failures(tmp_path):
    lib = tmp_path / "lib"
    files = [tone(lib / "a" / "one.wav"), tone(lib / "a" / "two.wav", freq=330), tone(lib / "b" / "one.wav", freq=440)]
    (lib / "b" / "broken.wav").write_bytes(b"RIFF not really")
    out = tmp_path / "out"
    events = []
    summary = run([lib], out, {**DSP, "two_stems": "vocals"}, jobs=2, threads=1, progress=False, on_event=events.append)
    assert (summary.done, summary.failed, summary.skipped, summary.backend, summary.workers) == (3, 1, 0, "local", 2)
    records = lines(out)
    assert len(records) == 4
    by_input = {r["input"]: r for r in records}
    for f in files:
        r = by_input[str(f)]
        rel = f.parent.relative_to(lib)
        assert r["status"] == "done" and r["sha256"] == sha256_of(f) and r["size"] == f.stat().st_size
        assert r["outputs"] == [str(out / rel / f.stem / f"{s}.wav") for s in ("vocals", "no_vocals")]
        assert all(sf.info(p).duration == pytest.approx(1.0) for p in r["outputs"])
        assert r["model_id"]["name"] == "dsp" and r["options"]["two_stems"] == "vocals"
        assert r["duration"] == pytest.approx(1.0)
    broken = by_input[str(lib / "b" / "broken.wav")]
    assert broken["status"] == "failed" and broken["error"]["code"] == "unsupported_audio" and broken["attempts"] == 1
    # which of the two takes files depends on which starts first (a loaded machine may let one take all)
    assert {e["where"] for e in events if e["event"] == "start"} <= {"worker 1", "worker 2"}

    # the same command again: what is done is skipped (a touched file with the same content too),
    # the failure is tried again; a deleted stem makes its file run again
    os.utime(files[0], None)
    Path(by_input[str(files[1])]["outputs"][0]).unlink()
    summary = run([lib], out, {**DSP, "two_stems": "vocals"}, jobs=2, threads=1, progress=False)
    assert (summary.done, summary.failed, summary.skipped) == (1, 1, 2)
    assert [r["input"] for r in lines(out)[4:]] == sorted([str(files[1]), str(lib / "b" / "broken.wav")]) or \
        {r["input"] for r in lines(out)[4:]} == {str(files[1]), str(lib / "b" / "broken.wav")}
    # other options are another batch; --force redoes everything
    summary = run([lib / "a"], out, DSP, jobs=1, threads=1, progress=False)
    assert (summary.done, summary.skipped) == (2, 0)
    assert (out / "one" / "drums.wav").is_file()  # lib/a alone: its folder is the root
    summary = run([lib], out, {**DSP, "two_stems": "vocals"}, jobs=1, threads=1, force=True, progress=False)
    assert (summary.done, summary.failed, summary.skipped) == (3, 1, 0)
    assert len(lines(out)) == 4 + 2 + 2 + 4


@pytest.mark.slow  # processes killed, stalled or interrupted mid-file: seconds of waiting each
def test_worker_killed_mid_file_is_retried_once_then_failed(tmp_path):
    lib = tmp_path / "lib"
    victim, doomed = tone(lib / "victim.wav", seconds=10), tone(lib / "doomed.wav", seconds=10, freq=330)
    others = [tone(lib / f"ok{i}.wav", freq=500 + 50 * i) for i in range(2)]
    killed: list[int] = []
    killed_in: list[str] = []

    def on_event(event):  # kill the worker once it is inside `victim`, and every time inside `doomed`
        if event["event"] == "start":
            pids[event["input"]] = event["pid"]
        if event["event"] == "progress" and event["progress"] > 0:
            name = Path(event["input"]).name
            pid = pids.pop(event["input"], None)
            if pid and (name == "doomed.wav" or (name == "victim.wav" and name not in killed_in)):
                killed_in.append(name)
                killed.append(pid)
                os.kill(pid, signal.SIGKILL)

    pids: dict[str, int] = {}
    events = []
    summary = run([lib], tmp_path / "out", {**DSP, "stems": "vocals"}, jobs=2, threads=1, progress=False,
                  on_event=lambda e: (events.append(e), on_event(e)))
    assert (summary.done, summary.failed) == (3, 1)
    records = {Path(r["input"]).name: r for r in lines(tmp_path / "out")}
    assert len(lines(tmp_path / "out")) == 4
    assert records["victim.wav"]["status"] == "done" and records["victim.wav"]["attempts"] == 2
    assert records["doomed.wav"]["status"] == "failed" and records["doomed.wav"]["attempts"] == 2
    assert records["doomed.wav"]["error"]["code"] == "worker_exited"
    assert all(records[f.name]["attempts"] == 1 for f in others)
    assert len(killed) == 3 and all(not _alive(pid) for pid in killed)
    assert [e["code"] for e in events if e["event"] == "retry"] == ["worker_exited", "worker_exited"]
    assert sf.info(records["victim.wav"]["outputs"][0]).duration == pytest.approx(10)
    assert not (tmp_path / "out" / "doomed" / "vocals.wav").exists()  # a killed worker leaves only hidden partials
    assert not list((tmp_path / "out").rglob("*.partial"))  # which the batch removes once its workers are gone


@pytest.mark.slow  # processes killed, stalled or interrupted mid-file: seconds of waiting each
def test_kill_9_then_rerun_does_every_file_exactly_once(tmp_path):
    lib = tmp_path / "lib"
    files = [tone(lib / f"d{i % 2}" / f"s{i}.wav", seconds=4, freq=200 + 40 * i) for i in range(6)]
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dsu.cli", "batch", str(lib), "-m", "dsp", "-o", str(out), "--jobs", "2",
               "--threads", "1", "--stems", "vocals,drums"]
    batch = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and batch.poll() is None:
        if (out / MANIFEST).exists() and len(lines(out)) >= 2:
            break
        time.sleep(0.05)
    assert batch.poll() is None, batch.stderr.read().decode()
    workers = _children(batch.pid)
    assert len(workers) == 2
    batch.send_signal(signal.SIGKILL)
    batch.wait()
    first = (out / MANIFEST).read_text()
    assert 2 <= len(first.splitlines()) < len(files)
    for pid in workers:  # the workers die with their batch instead of finishing a file unrecorded
        _wait_gone(pid)

    rerun = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert (out / MANIFEST).read_text().startswith(first)  # never rewritten
    records = lines(out)
    assert Counter(r["input"] for r in records) == Counter(str(f) for f in files)
    assert all(r["status"] == "done" for r in records)
    assert f"{len(first.splitlines())} file(s) already done" in rerun.stderr
    for f in files:
        for stem in ("vocals", "drums"):
            assert sf.info(out / f.parent.name / f.stem / f"{stem}.wav").duration == pytest.approx(4)
    assert not list(out.rglob("*.partial"))
    again = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "0 done, 0 failed, 6 already done, of 6" in again.stderr
    assert len(lines(out)) == 6


def test_cli_usage_and_second_batch_on_one_folder(tmp_path):
    tone(tmp_path / "a.wav")
    run_ = in_process(main, ["batch", tmp_path / "a.wav", "-o", tmp_path / "o"], cwd=tmp_path, env=ENV)
    assert run_.returncode == 2 and "-m/--model" in run_.stderr
    from dsu.batch.manifest import Manifest
    with Manifest(tmp_path / "o"):  # another batch holds the folder
        with pytest.raises(DSUError, match="another dsu batch .* is writing to"):
            run([tmp_path / "a.wav"], tmp_path / "o", DSP, progress=False)
    bad = in_process(main, ["batch", tmp_path / "a.wav", "-m", "dsp", "-o", tmp_path / "o", "-O", "segment=-3", "-q"],
                     cwd=tmp_path, env=ENV)
    assert bad.returncode == 1 and "-O segment of separate must be at least 0.01" in bad.stderr  # as separate says
    assert "`segment`" not in bad.stderr, bad.stderr


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pid: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        assert time.monotonic() < deadline, f"worker {pid} outlived its batch"
        time.sleep(0.1)


def test_manifest_survives_a_torn_last_line(tmp_path):
    from dsu.batch.manifest import Manifest, is_done
    stem = tone(tmp_path / "stem.wav")
    whole = {"input": "/a.wav", "status": "done", "size": 1, "mtime_ns": 2, "sha256": "x", "outputs": [str(stem)]}
    (tmp_path / MANIFEST).write_text(json.dumps(whole) + "\n" + '{"input": "/b.wav", "sta')  # killed mid-write
    with Manifest(tmp_path) as manifest:
        assert manifest.records == [whole] and manifest.torn == 1
        manifest.append({"input": "/b.wav", "status": "failed"})
    with Manifest(tmp_path) as manifest:
        assert [r["input"] for r in manifest.records] == ["/a.wav", "/b.wav"] and manifest.torn == 1
    assert is_done(whole, 1, 2) and not is_done(whole, 1, 3) and is_done(whole, 1, 3, lambda: "x")
    stem.unlink()
    assert not is_done(whole, 1, 2)  # its stems are gone: do it again


def test_progress_display_bar_and_plain_lines():
    import io
    from dsu.batch.progress import BatchDisplay

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream in (Terminal(), io.StringIO()):
        show = BatchDisplay(2, skipped=1, stream=stream)
        show.started("a/one.wav"), show.started("b/two.wav")
        show.progress("a/one.wav", 0.5)
        show.finished("a/one.wav", "done", 1.5, 30.0, "worker 1")
        show.finished("b/two.wav", "failed: unsupported_audio: no frames", None, None, "worker 2")
        show.close()
        text = stream.getvalue()
        assert "1 file(s) already done" in text and "audio-min/min" in text
        if isinstance(stream, Terminal):
            assert "a/one.wav 50%" in text and "2/2" in text and "b/two.wav: failed: unsupported_audio" in text
        else:
            assert "[1/2] a/one.wav done in 1.5 s (worker 1)" in text and "ETA 0:00:00" in text
            assert "[2/2] b/two.wav failed: unsupported_audio: no frames (worker 2)" in text


@pytest.mark.slow  # processes killed, stalled or interrupted mid-file: seconds of waiting each
def test_stuck_worker_is_killed_after_timeout_and_its_file_retried(tmp_path):
    stuck = tone(tmp_path / "lib" / "stuck.wav")
    stopped: list[int] = []

    def on_event(event):  # the first worker to start `stuck` hangs (SIGSTOP) and never answers
        if event["event"] == "start" and event["input"] == str(stuck) and not stopped:
            stopped.append(event["pid"])
            os.kill(event["pid"], signal.SIGSTOP)

    summary = run([tmp_path / "lib"], tmp_path / "out", DSP, jobs=1, threads=1, timeout=8, progress=False,
                  on_event=on_event)
    assert (summary.done, summary.failed) == (1, 0)
    record = lines(tmp_path / "out")[0]
    assert record["attempts"] == 2 and record["status"] == "done"
    _wait_gone(stopped[0], 10)


@pytest.mark.slow  # a batch with workers; the fast tier keeps the torn last line
def test_bad_manifest_lines_are_skipped_with_a_warning(tmp_path, capsys):
    song = tone(tmp_path / "lib" / "song.wav")
    out = tmp_path / "out"
    assert run([tmp_path / "lib"], out, DSP, jobs=1, threads=1, progress=False).done == 1
    good = (out / MANIFEST).read_text()
    hostile = ["[" * 100000 + "]" * 100000, '{"input": "/x.wav", "size": ' + "9" * 5000 + "}",
               '{"input": ["a"]}', '{"input": "/y.wav", "status": "done", "outputs": 5}',
               '{"input": "/z.wav", "options": {"a": 1}, "model_id": [1]}', "17", '"text"']
    (out / MANIFEST).write_text("\n".join(hostile) + "\n" + good)
    summary = run([tmp_path / "lib"], out, DSP, jobs=1, threads=1, progress=False)
    assert (summary.done, summary.skipped) == (0, 1)  # the good line still counts
    err = capsys.readouterr().err
    assert "skipped 6 line(s) that are not records" in err and "line 1: not JSON (RecursionError)" in err
    summary = run([song], out, DSP, jobs=1, threads=1, progress=False, force=True)
    assert summary.done == 1  # appended after the bad lines, read back next time
    assert lines_after(out, len(hostile))[-1]["input"] == str(song)


def _memory_capped() -> None:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a manifest read without bound ends here


@pytest.mark.parametrize("name", [MANIFEST, pytest.param(".dsu-batch.lock", marks=pytest.mark.slow)])
@pytest.mark.parametrize("kind", [pytest.param("dev-zero", marks=pytest.mark.slow), "fifo",
                                  pytest.param("folder", marks=pytest.mark.slow)])  # each a batch run
def test_a_manifest_or_lock_that_is_no_file_is_a_coded_error(tmp_path, kind, name):
    tone(tmp_path / "lib" / "song.wav")
    out = tmp_path / "out"
    out.mkdir()
    if kind == "fifo":
        os.mkfifo(out / name)  # a manifest opened to append blocks until a reader comes: for ever
    elif kind == "folder":
        (out / name).mkdir()
    else:
        os.symlink("/dev/zero", out / name)  # a manifest read line by line: one endless line
    command = [sys.executable, "-m", "dsu.cli", "batch", str(tmp_path / "lib"), "-m", "dsp", "-o", str(out),
               "--jobs", "1", "--threads", "1", "-q"]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=60, preexec_fn=_memory_capped)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"bad_value: the batch {'manifest' if name == MANIFEST else 'lock'} {out / name} is a" in done.stderr, \
        done.stderr


def test_an_endless_manifest_line_is_skipped_unread(tmp_path, capsys):
    tone(tmp_path / "lib" / "song.wav")
    out = tmp_path / "out"
    assert run([tmp_path / "lib"], out, DSP, jobs=1, threads=1, progress=False).done == 1
    good = (out / MANIFEST).read_bytes()
    (out / MANIFEST).write_bytes(b"[" * (3 << 20) + b"\n" + good)
    summary = run([tmp_path / "lib"], out, DSP, jobs=1, threads=1, progress=False)
    assert (summary.done, summary.skipped) == (0, 1)
    assert "line 1: longer than" in capsys.readouterr().err


def lines_after(out: Path, skip: int) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()[skip:] if line.strip()]


def test_bad_inputs_are_failed_files_and_the_others_go_on(tmp_path):
    lib = tmp_path / "lib"
    good, deep = tone(lib / "good.wav"), tone(lib / "sub" / "deep.wav", freq=330)
    latin = os.path.join(os.fsencode(lib), b"caf\xe9.wav")
    os.rename(tone(lib / "latin.wav", freq=440), latin)
    os.symlink("loop.wav", lib / "loop.wav")
    os.symlink("nowhere.wav", lib / "gone.wav")
    os.mkfifo(lib / "pipe.wav")
    os.symlink("/dev/zero", lib / "zero.wav")
    out = tmp_path / "out"
    command = ["batch", lib, "-m", "dsp", "-o", out, "--jobs", "1", "--threads", "1", "--stems", "vocals", "-q"]
    first = in_process(main, command, cwd=tmp_path, env=ENV)
    assert first.returncode == 1 and "Traceback" not in first.stderr, first.stderr
    records = {Path(r["input"]).name: r for r in lines(out)}
    assert set(records) == {"good.wav", "deep.wav", "caf\udce9.wav", "loop.wav", "gone.wav", "pipe.wav", "zero.wav"}
    assert records["good.wav"]["outputs"] == [str(out / "good" / "vocals.wav")]  # not under OUT/tmp/...
    assert records["deep.wav"]["outputs"] == [str(out / "sub" / "deep" / "vocals.wav")]
    for name, code in (("loop.wav", "input_not_found"), ("gone.wav", "input_not_found"),
                       ("pipe.wav", "bad_value"), ("zero.wav", "bad_value")):
        assert records[name]["status"] == "failed" and records[name]["error"]["code"] == code, records[name]
        assert f"{name}: {code}" in first.stderr
    latin_record = records["caf\udce9.wav"]
    assert latin_record["input"] == os.fsdecode(latin)  # read back as the same name
    assert latin_record["status"] == "done", latin_record  # a file name is bytes: not UTF-8 is no reason to fail
    assert os.path.exists(os.path.join(os.fsencode(out), b"caf\xe9", b"vocals.wav"))
    again = in_process(main, command, cwd=tmp_path, env=ENV)
    assert again.returncode == 1 and "Traceback" not in again.stderr, again.stderr
    assert "3 already done, of 7" in again.stderr


@pytest.mark.slow  # processes killed, stalled or interrupted mid-file: seconds of waiting each
def test_input_replaced_during_its_job_is_not_recorded_done(tmp_path):
    song = tone(tmp_path / "lib" / "song.wav", seconds=10)
    stat = song.stat()
    replaced = []

    def on_event(event):  # once the job reads it: same size, new content, old mtime put back
        if event["event"] == "progress" and event["progress"] > 0 and not replaced:
            replaced.append(True)
            tone(tmp_path / "new.wav", seconds=10, freq=660).replace(song)
            os.utime(song, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    events = []
    summary = run([tmp_path / "lib"], tmp_path / "out", {**DSP, "stems": "vocals"}, jobs=1, threads=1,
                  progress=False, on_event=lambda e: (events.append(e), on_event(e)))
    assert replaced and song.stat().st_size == stat.st_size
    assert [e["code"] for e in events if e["event"] == "retry"] == ["input_changed"]
    (record,) = lines(tmp_path / "out")
    assert record["status"] == "done" and record["attempts"] == 2 and record["sha256"] == sha256_of(song)
    fresh = run([song], tmp_path / "fresh", {**DSP, "stems": "vocals"}, jobs=1, threads=1, progress=False)
    assert fresh.done == 1  # the stems are the new content's
    assert np.array_equal(sf.read(record["outputs"][0])[0], sf.read(tmp_path / "fresh" / "song" / "vocals.wav")[0])


def _wait_lines(batch: subprocess.Popen, out: Path, count: int, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and batch.poll() is None:
        if (out / MANIFEST).exists() and len(lines(out)) >= count:
            return
        time.sleep(0.05)
    assert batch.poll() is None, batch.stderr.read().decode()
    raise AssertionError(f"no {count} manifest lines within {seconds} s")


def _interrupted(batch: subprocess.Popen, out: Path, bound: float = 10) -> str:
    """The batch's stderr once it exited 130 within `bound` seconds; checks what it left."""
    try:
        _, err = batch.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        batch.kill()
        raise AssertionError(f"still running {bound} s after the signal: {batch.communicate()[1].decode()}")
    err = err.decode()
    assert batch.returncode == 130, err
    assert "interrupted (SIGINT)" in err and "run the same command again" in err, err
    for record in lines(out):  # every line a finished file, with its stems whole
        assert record["status"] == "done"
        duration = 1 if Path(record["input"]).stem.startswith("s") else 20
        assert all(sf.info(p).duration == pytest.approx(duration) for p in record["outputs"])
    recorded = {Path(r["input"]).stem for r in lines(out)}
    assert {p.parent.name for p in out.rglob("vocals.wav")} == recorded  # no stem of an unrecorded file
    assert not list(out.rglob("*.partial"))
    return err


@pytest.mark.slow  # processes killed, stalled or interrupted mid-file: seconds of waiting each
def test_ctrl_c_stops_at_once_and_the_rerun_does_the_rest(tmp_path):
    lib = tmp_path / "lib"
    files = [tone(lib / f"s{i}.wav", freq=200 + 40 * i) for i in range(2)]
    files += [tone(lib / f"t{i}.wav", seconds=20, freq=400 + 40 * i) for i in range(3)]
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dsu.cli", "batch", str(lib), "-m", "dsp", "-o", str(out), "--jobs", "2",
               "--threads", "1", "--stems", "vocals"]

    def start():
        return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)

    # `kill -INT <batch>`: the driver alone gets it, while both workers are inside a long file
    batch = start()
    _wait_lines(batch, out, 2)
    time.sleep(1)
    workers = _children(batch.pid)
    batch.send_signal(signal.SIGINT)
    err = _interrupted(batch, out)
    assert "stopping (SIGINT): 2 file(s) in work cancelled" in err and "2 done" in err
    assert len(lines(out)) == 2
    for pid in workers:
        _wait_gone(pid, 10)

    # ^C on a terminal: the whole process group gets it, twice, with one worker that cannot answer
    batch = start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and batch.poll() is None:  # both workers write a file's stems
        if len({p.parent for p in out.rglob("*.partial")}) == 2:
            break
        time.sleep(0.05)
    workers = _children(batch.pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGSTOP)
    os.killpg(batch.pid, signal.SIGINT)
    time.sleep(0.5)
    os.killpg(batch.pid, signal.SIGINT)
    assert "second signal: killing the workers" in _interrupted(batch, out)
    for pid in workers:
        _wait_gone(pid, 10)
    first = (out / MANIFEST).read_text()
    assert 2 <= len(lines(out)) < 5

    rerun = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert (out / MANIFEST).read_text().startswith(first)
    assert Counter(r["input"] for r in lines(out)) == Counter(str(f) for f in files)  # each exactly once
    assert f"{len(first.splitlines())} file(s) already done" in rerun.stderr


@pytest.mark.slow  # a CLI batch and an API batch, with workers each
def test_cli_live_failure_line_speaks_its_flags(tmp_path):
    """The per-file `failed:` line as it happens says `dsu batch`'s flags, as the summary does; the
    Python API keeps the request's field names."""
    tone(tmp_path / "crate" / "a.wav")
    tone(tmp_path / "crate" / "sub" / "b.wav")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_text("in the way")  # b.wav's track folder cannot be made: a worker-side error
    cli = in_process(main, ["batch", tmp_path / "crate", "-m", "dsp", "-o", out], cwd=tmp_path, env=ENV)
    live = [line for line in cli.stderr.splitlines() if "] sub/b.wav failed:" in line]
    assert cli.returncode == 1 and len(live) == 1, cli.stderr
    assert "-o/--output-dir" in live[0] and "`output_dir`" not in live[0], live[0]
    summary = run([tmp_path / "crate"], out, DSP, progress=False, force=True)
    assert [f["input"] for f in summary.failures] == [str(tmp_path / "crate" / "sub" / "b.wav")]
    assert "`output_dir`" in summary.failures[0]["message"]
