"""Jobs that never leave something that looks like a result but is not one: bad samples, truncated
files, concurrent writers of one folder, workers killed mid-job, jobs too big for memory, cancel.
Everything through real worker processes on real files, or real jobs in this process where a failure
must be made to happen (a device out of memory)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import ENV, RawWorker, in_process, write_song

from dsu import protocol
from dsu.cli import main
from dsu.cache import ModelCache
from dsu.errors import DSUError
from dsu.families.dsp import DSPModel
from dsu.jobs import ensemble as ensemble_job
from dsu.jobs import failures, separate
from dsu.jobs.separate import separate_file

MDX = Path(__file__).parent / "fixtures" / "mdx"
MDX_SETTINGS = {"mdx_n_fft_scale_set": 2048, "compensate": 1.03, "mdx_segment_size": 8}


def partials(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".partial")]


# ---- bad samples, truncated files ---------------------------------------------------------------------

def test_nan_samples_are_refused_or_sanitised(worker, tmp):
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (44100, 2)).astype(np.float32)
    audio[1000:1100, 0] = np.nan
    audio[22050, 1] = np.inf
    path = tmp / "nan.wav"
    sf.write(path, audio, 44100, subtype="FLOAT")
    error = worker.error(cmd="separate", id="n", input=str(path), output_dir=str(tmp / "nan"), model="dsp")
    assert error["code"] == "unsupported_audio", error
    assert "101 NaN or infinite samples" in error["message"] and "frames 1000 to 22050" in error["message"]
    assert "sanitize" in error["message"] and not (tmp / "nan").exists() or not list((tmp / "nan").rglob("*.wav"))
    done = worker.ask(cmd="separate", id="s", input=str(path), output_dir=str(tmp / "nan"), model="dsp",
                      sanitize=True)
    assert len(done["warnings"]) == 1 and "101 NaN or infinite samples" in done["warnings"][0]
    stems = [sf.read(p, dtype="float32")[0] for p in done["paths"]]
    assert all(np.isfinite(s).all() for s in stems) and any(np.abs(s).max() > 0.01 for s in stems)
    clean = write_song(tmp / "clean.wav", 1.0)
    assert "warnings" not in worker.ask(cmd="separate", id="c", input=str(clean), output_dir=str(tmp / "nan"),
                                        model="dsp", sanitize=True)


def test_truncated_files_are_read_as_far_as_they_go_with_a_warning(worker, tmp):
    full = write_song(tmp / "full.wav", 2.0)
    cut = tmp / "cut.wav"
    data = full.read_bytes()
    cut.write_bytes(data[:44 + 4 * 22050])  # the header still says 2 s; 0.5 s of frames are there
    done = worker.ask(cmd="separate", id="t", input=str(cut), output_dir=str(tmp / "cut"), model="dsp")
    (warning,) = done["warnings"]
    assert "truncated" in warning and "1.50 s (66150 frames)" in warning and "0.50 s" in warning, warning
    assert sf.info(done["paths"][0]).frames == 22050
    flac = tmp / "cut.flac"
    sf.write(flac, sf.read(full, dtype="float32")[0], 44100, subtype="PCM_16")
    flac.write_bytes(flac.read_bytes()[:len(flac.read_bytes()) // 2])
    done = worker.ask(cmd="separate", id="f", input=str(flac), output_dir=str(tmp / "cutflac"), model="dsp")
    (warning,) = done["warnings"]
    assert "damaged or truncated" in warning and "could not be read" in warning, warning
    cli = in_process(main, ["separate", cut, "-m", "dsp", "-o", tmp / "cli", "-q", "--threads", "1"], cwd=tmp, env=ENV)
    assert cli.returncode == 0 and "warning:" in cli.stderr and "truncated" in cli.stderr, cli.stderr


# ---- concurrent writers, killed workers ---------------------------------------------------------------

def _separate_in(worker: RawWorker, request: dict, answers: list) -> None:
    worker.send(**request)
    answers.append(worker.until("done", request["id"])[-1])


@pytest.mark.slow  # two workers racing over long songs: seconds of waiting
def test_two_workers_writing_the_same_files_never_mix(tmp):
    """Same track name, different content, one output folder: both jobs finish, the files on disk
    all come from one of them (dsp's stems sum to their mix), no temporaries are left."""
    mixes = {}
    for name, freq in (("a", 220), ("b", 330)):
        (tmp / name).mkdir()
        t = np.arange(44100 * 8) / 44100
        mix = 0.3 * np.stack([np.sin(2 * np.pi * freq * t), np.sin(2 * np.pi * freq * 1.5 * t)], 1)
        sf.write(tmp / name / "track.wav", mix.astype(np.float32), 44100, subtype="FLOAT")
        mixes[name] = mix
    out = tmp / "shared"
    for trial in range(2):
        workers = [RawWorker(tmp), RawWorker(tmp)]
        try:
            for w in workers:
                w.until("ready")
            answers: list = []
            threads = [threading.Thread(target=_separate_in, args=(w, {
                "cmd": "separate", "id": name, "input": str(tmp / name / "track.wav"), "output_dir": str(out),
                "model": "dsp", "segment": 1.0}, answers)) for w, name in zip(workers, "ab")]
            for th in threads:
                th.start()
            for th in threads:
                th.join(timeout=300)
        finally:
            for w in workers:
                w.close()
        assert len(answers) == 2 and answers[0]["paths"] == answers[1]["paths"]
        total = sum(sf.read(p, dtype="float64")[0] for p in answers[0]["paths"])
        errors = {name: np.abs(total - mix).max() for name, mix in mixes.items()}
        assert min(errors.values()) < 1e-4 < max(errors.values()), (trial, errors)  # whole: one job's stems
        assert partials(out) == []


@pytest.mark.slow  # a worker killed mid-job, then a fresh one: seconds of waiting
def test_a_job_after_kill_9_leaves_no_partial(tmp):
    song = write_song(tmp / "long.wav", 40.0)
    out = tmp / "killed"
    with RawWorker(tmp) as w:
        w.until("ready")
        w.send(cmd="separate", id="j", input=str(song), output_dir=str(out), model="dsp", segment=2.0)
        progress = 0
        while progress < 2:
            progress += w.read()["status"] == "progress"
        w.proc.kill()
        w.proc.wait()
    left = partials(out)
    assert left and all(f".{w.proc.pid}@" in p.name for p in left)  # each names the killed worker
    with RawWorker(tmp) as w:
        w.until("ready")
        done = w.ask(cmd="separate", id="again", input=str(song), output_dir=str(out), model="dsp")
    assert partials(out) == [] and all(Path(p).exists() for p in done["paths"])


# ---- memory and cancel --------------------------------------------------------------------------------

def test_a_job_that_cannot_fit_is_refused_before_it_allocates(worker, tmp):
    song = write_song(tmp / "small.wav", 1.0)
    # in range for every option, but 64 spectrograms of 4096 frames of 8192-sample hops at once
    error = worker.error(cmd="separate", id="big", input=str(song), output_dir=str(tmp / "big"),
                         model_path=str(MDX / "model.onnx"), primary_stem="Vocals",
                         **{**MDX_SETTINGS, "mdx_segment_size": 4096}, mdx_batch_size=64, mdx_hop_length=8192)
    assert error["code"] == "out_of_memory" and "GiB" in error["message"] and "segment_size=4096" in error["message"]
    assert not partials(tmp / "big") and not list((tmp / "big").rglob("*.wav"))
    status = worker.ask(cmd="get_status", id="st")
    assert status["busy"] is False


@pytest.fixture(scope="module")
def demucs_model(tmp) -> Path:
    from demucs.htdemucs import HTDemucs
    torch.manual_seed(0)
    model = HTDemucs(sources=["drums", "bass", "other", "vocals"], samplerate=8000, segment=Fraction(3, 2),
                     channels=8, depth=2, t_layers=1, t_heads=2, bottom_channels=0, nfft=512)
    args, kwargs = model._init_args_kwargs
    path = tmp / "tinyht.th"
    torch.save({"klass": HTDemucs, "args": args, "kwargs": kwargs, "state": model.state_dict()}, path)
    return path


def test_cancel_stops_a_demucs_job_with_many_shifts_within_a_chunk(worker, tmp, demucs_model):
    song = write_song(tmp / "minute.wav", 60.0)
    worker.send(cmd="separate", id="long", input=str(song), output_dir=str(tmp / "cancel"),
                model_path=str(demucs_model), shifts=20, overlap=0.5)
    while worker.read()["status"] != "progress":
        pass
    worker.send(cmd="cancel", id="long")
    after = worker.until("error", "long")
    assert after[-1]["code"] == "cancelled"
    # 20 shifts x ~80 segments each: the job stops at the next model call, far from its end
    reached = max(m["progress"] for m in after if m["status"] == "progress") if len(after) > 1 else 0
    assert reached < 0.25, reached
    assert not partials(tmp / "cancel") and not list((tmp / "cancel").rglob("*.wav"))


# ---- jobs of other machines and PID namespaces in one folder ------------------------------------------

def _can_unshare_pid() -> bool:
    """Whether a new PID namespace can be made here and choose its next pid (root)."""
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c",
                               "echo 500 > /proc/sys/kernel/ns_last_pid"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _can_unshare_pid(), reason="needs `unshare --pid` and ns_last_pid (root)")
@pytest.mark.slow  # a worker in its own pid namespace (root)
def test_a_live_job_in_another_pid_namespace_keeps_its_partials(tmp):
    """The shared-folder case (Ray nodes on NFS, containers on one volume): a worker in its own PID
    namespace, whose pid is one that is dead out here, writes partials; a clean from here keeps them,
    and the job finishes."""
    from dsu import tempfiles
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid is free out here: the worker in the new namespace is given it
    start = (f"import subprocess, sys; open('/proc/sys/kernel/ns_last_pid', 'w').write('{gone.pid - 1}'); "
             "sys.exit(subprocess.call([sys.executable, '-m', 'dsu.worker', *sys.argv[1:]]))")
    song = write_song(tmp / "ns.wav", 20.0)
    out = tmp / "shared"
    with RawWorker(tmp, argv=["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                              sys.executable, "-c", start]) as w:
        w.until("ready")
        w.send(cmd="separate", id="ns", input=str(song), output_dir=str(out), model="dsp", segment=1.0)
        progress = 0
        while progress < 2:
            progress += w.read()["status"] == "progress"
        left = partials(out)
        assert left and {tempfiles.owner(p.name) for p in left} == {gone.pid}, left
        assert not tempfiles.alive(gone.pid)  # so a pid-only rule would take them for a dead job's
        run = in_process(main, ["clean", out], cwd=tmp, env=ENV)
        assert run.returncode == 0 and "removed 0" in run.stderr, run.stderr
        assert all(p.exists() for p in left)
        done = w.until("done", "ns")[-1]
    assert all(Path(p).exists() for p in done["paths"]) and partials(out) == []


# ---- faults while writing: a full disk, a folder removed mid-job ---------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 200 KiB file system of its own (a tmpfs; needs root)."""
    mount = tmp_path / "small"
    mount.mkdir()
    try:
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        made = False
    if not made:
        pytest.skip("mounting a small tmpfs is not permitted here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def _fill(folder: Path) -> None:
    """Write a file until the disk holding `folder` is full."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dsu.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, **kwargs)


@pytest.mark.slow  # a long song into a 200 kB tmpfs (root); the fast tier keeps the failed-job one
def test_a_full_disk_is_output_not_writable_and_leaves_nothing(worker, tmp, small_disk):
    song = write_song(tmp / "full.wav", 3.0)  # 4 stems of 0.5 MB each: more than the disk holds
    error = worker.error(cmd="separate", id="full", input=str(song), output_dir=str(small_disk / "sep"), model="dsp")
    assert error["code"] == "output_not_writable" and "the disk is full" in error["message"], error
    assert "nothing of this job was kept" in error["message"] and str(small_disk / "sep") in error["message"]
    for algorithm in ("avg_wave", "ensemble_wav"):  # the second spools its members to the disk first
        error = worker.error(cmd="ensemble", id="ens", input=str(song), output_dir=str(small_disk / "ens"),
                             models=[{"model": "dsp", "segment": 2}, {"model": "dsp", "segment": 3}],
                             algorithm=algorithm)
        assert error["code"] == "output_not_writable" and "the disk is full" in error["message"], error
    run = _cli("separate", str(song), "-m", "dsp", "-o", str(small_disk / "cli"))
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 1 and "output_not_writable" in stderr and "the disk is full" in stderr, stderr
    assert "Traceback" not in stderr and "internal" not in stderr
    assert partials(small_disk) == [] and not list(small_disk.rglob("*.wav"))
    _fill(small_disk)  # not a byte left: the stems' headers cannot be written either
    error = worker.error(cmd="separate", id="none", input=str(song), output_dir=str(small_disk), model="dsp")
    assert error["code"] == "output_not_writable" and "the disk is full" in error["message"], error
    assert partials(small_disk) == [] and not list(small_disk.rglob("*.wav"))
    assert worker.ask(cmd="ping", id="after")["status"] == "pong"


def test_a_failed_job_leaves_no_track_folder_it_made(worker, tmp, small_disk):
    song = write_song(tmp / "full.wav", 3.0)  # more than the disk holds
    for request in ({"cmd": "separate", "model": "dsp"},
                    {"cmd": "ensemble", "models": [{"model": "dsp", "segment": 2}, {"model": "dsp", "segment": 3}]}):
        error = worker.error(**request, id="full", input=str(song), output_dir=str(small_disk / "sep"))
        assert error["code"] == "output_not_writable", error
        assert sorted(os.listdir(small_disk / "sep")) == []  # no empty `full/` that looks like a track
    (small_disk / "sep" / "full").mkdir()  # a folder that was there before stays
    worker.error(cmd="separate", model="dsp", id="kept", input=str(song), output_dir=str(small_disk / "sep"))
    assert (small_disk / "sep" / "full").is_dir()


@pytest.mark.slow  # a long song, removed while it runs: seconds of waiting
def test_an_output_folder_removed_mid_job_is_output_not_writable(worker, tmp):
    import shutil
    song = write_song(tmp / "removed.wav", 20.0)
    out = tmp / "removed-w"
    worker.send(cmd="separate", id="rm", input=str(song), output_dir=str(out), model="dsp", segment=1.0)
    progress = 0
    while progress < 2:
        progress += worker.read()["status"] == "progress"
    shutil.rmtree(out)
    error = worker.until("error", "rm")[-1]
    assert error["code"] == "output_not_writable" and "was removed or moved" in error["message"], error
    assert not out.exists()  # nothing made again, nothing left
    out = tmp / "removed-c"
    run = _cli("separate", str(song), "-m", "dsp", "-o", str(out), "-O", "segment=1")
    while not partials(out) and run.poll() is None:
        threading.Event().wait(0.05)
    shutil.rmtree(out)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 1 and "output_not_writable" in stderr and "was removed or moved" in stderr, stderr
    assert "Traceback" not in stderr and not out.exists()


def test_a_read_only_track_folder_is_output_not_writable(worker, tmp):
    song = write_song(tmp / "ro.wav", 1.0)
    track = tmp / "ro-out" / "ro"  # the folder dsp's layout writes this input's stems into
    track.mkdir(parents=True)
    try:
        made = all(subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0 for cmd in (
            ["mount", "--bind", str(track), str(track)], ["mount", "-o", "remount,bind,ro", str(track)]))
    except (OSError, subprocess.TimeoutExpired):
        made = False
    if not made:
        subprocess.run(["umount", str(track)], capture_output=True, timeout=30)
        pytest.skip("a read-only bind mount is not permitted here")
    try:
        error = worker.error(cmd="separate", id="ro", input=str(song), output_dir=str(tmp / "ro-out"), model="dsp")
        assert error["code"] == "output_not_writable" and "Read-only file system" in error["message"], error
        assert str(track / "drums.wav") in error["message"] and "nothing of this job was kept" in error["message"]
        assert not any(track.iterdir())
    finally:
        subprocess.run(["umount", str(track)], capture_output=True, timeout=30)


def test_a_file_where_a_track_folder_must_be_is_said_so(tmp_path):
    """A write that fails because a file stands where a folder of the output path must be names that
    file, not a folder "removed or moved" during the job."""
    import errno

    from dsu import tempfiles
    (tmp_path / "song").write_text("in the way")
    error = tempfiles.write_failure(tmp_path / "song" / "deep" / "vocals.wav", errno.ENOTDIR)
    assert error.code == "output_not_writable"
    assert f"{tmp_path / 'song'} is a file where a folder must be" in error.message, error.message
    gone = tempfiles.write_failure(tmp_path / "gone" / "vocals.wav", errno.ENOENT)
    assert "was removed or moved" in gone.message, gone.message


# ---- one mapping of a job's failures to coded errors --------------------------------------------------

class _OutOfMemoryInSecondChunk(DSPModel):
    """The built-in model, whose device runs out of memory in its second chunk."""

    def __init__(self):
        super().__init__()
        self.chunks = 0

    def separate_chunk(self, x):
        self.chunks += 1
        if self.chunks == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().separate_chunk(x)


def _separate_job(song: Path, output_dir: Path, **kw) -> dict:
    fields, extra = protocol.validate(protocol.COMMANDS["separate"], {"cmd": "separate", "input": str(song),
                                                                    "output_dir": str(output_dir),
                                                                    "model": "dsp", "segment": 1.0})
    return separate.run(fields, extra, cache=ModelCache(torch.device("cpu")), models_dir=None, default_model=None,
                        emit=lambda *a, **k: None, **kw)


def test_a_job_out_of_device_memory_is_coded_with_its_hint_and_keeps_nothing(tmp):
    song = write_song(tmp / "oom.wav", 4.0)
    model = _OutOfMemoryInSecondChunk()
    with pytest.raises(DSUError) as e:
        separate_file(model, song, tmp / "oom", options={"segment": 1.0})
    assert (e.value.code, e.value.message) == (
        "out_of_memory", "the device ran out of memory: lower `batch_size` or `segment`, or use --device cpu")
    assert model.chunks == 2 and not partials(tmp / "oom") and not list((tmp / "oom").rglob("*.wav"))


def test_a_job_cancelled_before_or_while_it_runs_is_coded_and_keeps_nothing(tmp):
    song = write_song(tmp / "cancel.wav", 4.0)
    with pytest.raises(DSUError) as e:
        _separate_job(song, tmp / "before", cancelled=lambda: True)
    assert (e.value.code, e.value.message) == ("cancelled", "the job was cancelled before it started")
    reports: list[float] = []
    with pytest.raises(DSUError) as e:
        _separate_job(song, tmp / "while", progress=reports.append, cancelled=lambda: bool(reports))
    assert (e.value.code, e.value.message) == ("cancelled", "the job was cancelled; none of its output was kept")
    assert reports and not partials(tmp / "while") and not list((tmp / "while").rglob("*.wav"))
    first, second = write_song(tmp / "a.wav", 1.0), write_song(tmp / "b.wav", 1.0)
    with pytest.raises(DSUError) as e:
        ensemble_job.ensemble_files({"files": [str(first), str(second)], "output": str(tmp / "blend.wav")},
                                    cancelled=lambda: True)
    assert (e.value.code, e.value.message) == ("cancelled", "the ensemble was cancelled; none of its output was kept")
    assert not (tmp / "blend.wav").exists() and not partials(tmp)


def test_an_output_folder_that_cannot_be_made_is_refused_at_the_jobs_door(tmp):
    song = write_song(tmp / "door.wav", 1.0)
    (tmp / "a-file").write_text("not a folder")
    with pytest.raises(DSUError) as e:
        _separate_job(song, tmp / "a-file" / "out")
    assert e.value.code == "output_not_writable" and "is a file, not a folder" in e.value.message, e.value.message


@pytest.mark.parametrize("error, lower, code, message", [
    (torch.OutOfMemoryError("CUDA"), "`chunk_seconds`", "out_of_memory",
     "the device ran out of memory: lower `chunk_seconds`, or use --device cpu"),
    (torch.OutOfMemoryError("CUDA"), None, "out_of_memory", failures.GENERAL_HINT),
    (MemoryError(), "`chunk_seconds`", "out_of_memory", failures.GENERAL_HINT),
    (PermissionError(13, "Permission denied", "/music/out/vocals.wav"), None, "bad_value",
     "cannot write /music/out/vocals.wav: Permission denied; choose another output folder"),
    (IsADirectoryError(21, "Is a directory", "/music/out"), None, "bad_value",
     "cannot write /music/out: Is a directory; choose another output folder"),
])
def test_the_one_mapping_words_each_failure(error, lower, code, message):
    coded = failures.coded(error, lower)
    assert coded is not None and (coded.code, coded.message) == (code, message)
    assert failures.coded(ValueError("a bug")) is None  # left to the caller's `internal`
