"""Bad paths are coded errors, names never leave output_dir, and debris of killed jobs is cleaned:
`dsu.paths` and `dsu.tempfiles` directly, then through real worker processes and the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from dsu import paths, tempfiles
from dsu.errors import DSUError
from dsu.jobs.outputs import stem_paths
from helpers import ENV, in_process

from dsu.cli import main

MDX = Path(__file__).parent / "fixtures" / "mdx"
MDX_SETTINGS = {"mdx_n_fft_scale_set": 2048, "compensate": 1.03, "mdx_segment_size": 8}


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---- names --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("vocals", "vocals"), ("No Vocals", "No Vocals"), ("Bass (DI)", "Bass (DI)"), ("Gesang é", "Gesang é"),
    ("../../../escaped3", "_._.._.._escaped3"), ("..", "_"), (".", "_"), ("", "_"), ("a/b\\c", "a_b_c"),
    ("nul\x00byte", "nul_byte"), ("tab\tand\x1bescape", "tab_and_escape"), (".hidden", "_hidden"),
    ("CON", "_CON"), ("lpt1.wav", "_lpt1.wav"), ("trailing. ", "trailing"), ("bad\ud800", "bad_"),
])
def test_safe_component(text, want):
    assert paths.safe_component(text) == want


def test_safe_component_limits_length():
    name = paths.safe_component("é" * 300)
    assert len(os.fsencode(name)) <= paths.MAX_COMPONENT_BYTES and name == "é" * (paths.MAX_COMPONENT_BYTES // 2)


def test_inside_refuses_paths_that_leave(tmp_path):
    assert paths.inside(tmp_path, "a/b.wav") == tmp_path / "a" / "b.wav"
    (tmp_path / "link").symlink_to("/tmp")
    for bad in (tmp_path / ".." / "x.wav", "/etc/x.wav", tmp_path / "link" / "x.wav"):
        with pytest.raises(DSUError) as e:
            paths.inside(tmp_path, bad)
        assert e.value.code == "bad_value" and "outside output_dir" in e.value.message


def test_stem_paths_stay_inside_for_every_layout(tmp_path):
    stems = ["../../../escaped3", "No ../../../escaped3", "CON", "a/b"]
    for layout in ("demucs", "uvr", "flat"):
        got = stem_paths(layout, tmp_path, "../model", Path("/music/../track.wav"), stems, "wav")
        assert list(got) == stems  # keyed by the model's own stem names
        for p in got.values():
            assert tmp_path in p.parents and ".." not in p.relative_to(tmp_path).parts
    with pytest.raises(DSUError) as e:  # two stems that sanitise to one file
        stem_paths("flat", tmp_path, "m", Path("t.wav"), ["a/b", "a_b"], "wav")
    assert e.value.code == "bad_value" and "distinct" in e.value.message


# ---- temporaries and debris ---------------------------------------------------------------------------

def test_temp_names_name_their_owner_and_are_unique(tmp_path):
    final = tmp_path / "drums.wav"
    a, b = tempfiles.temp_name(final), tempfiles.temp_name(final, ".unscaled")
    assert a != b and a.parent == tmp_path and a.name.startswith(".drums.wav.")
    assert tempfiles.owner(a.name) == tempfiles.owner(b.name) == os.getpid()
    assert tempfiles.owner("drums.wav") is None and tempfiles.owner(".drums.wav.partial") is None


def old(path: Path) -> Path:
    """`path` as if nothing had written to it for longer than an owner that cannot be checked may idle."""
    t = time.time() - tempfiles.UNCHECKABLE_AGE - 60
    os.utime(path, (t, t))
    return path


def test_clean_folder_removes_only_dead_owners(tmp_path):
    dead, live = dead_pid(), os.getppid()
    here = tempfiles.owner_tag().split("@")[1]  # this machine and PID namespace
    (tmp_path / "sub").mkdir()
    stale = [tmp_path / f".a.wav.{dead}@{here}-00ff.partial",
             tmp_path / "sub" / f".b.wav.{dead}@{here}-ab.unscaled.partial"]
    kept = [tmp_path / f".c.wav.{live}@{here}-01.partial", tempfiles.temp_name(tmp_path / "d.wav"),
            tmp_path / "song.wav", tmp_path / ".e.wav.partial"]
    for p in stale + kept:
        p.write_bytes(b"x")
    old(kept[-1])
    assert tempfiles.clean_folder(tmp_path) == [stale[0]]  # not recursive, legacy kept
    assert sorted(tempfiles.clean_folder(tmp_path, recursive=True, legacy=True)) == sorted([stale[1], kept[-1]])
    assert all(p.exists() for p in kept[:-1])
    assert tempfiles.owner(kept[1].name) == os.getpid() and kept[1].name.startswith(f".d.wav.{os.getpid()}@")


def test_a_partial_whose_owner_cannot_be_checked_here_is_kept_until_old(tmp_path):
    """Another machine on a shared (NFS) folder, another PID namespace, or an older DSU that did not say
    where: its pid means nothing here, so a fresh partial is kept whatever that pid is here, and only
    one nothing has written to for UNCHECKABLE_AGE goes."""
    dead, live = dead_pid(), os.getppid()
    host, realm = tempfiles.owner_tag().split("@")[1].split(".")
    other = "0" * 8 if realm != "0" * 8 else "1" * 8
    names = [f".a.wav.{live}@othernode.{other}-01.partial",     # another host, a pid alive here
             f".b.wav.{dead}@othernode.{other}-02.partial",     # another host, a pid dead here
             f".c.wav.{dead}@{host}.{other}-03.unscaled.partial",  # this host name, another PID namespace
             f".d.wav.{dead}-04.partial"]                       # DSU before realms: pid only
    files = [tmp_path / n for n in names]
    for p in files:
        p.write_bytes(b"x")
    assert tempfiles.clean_folder(tmp_path, recursive=True, legacy=True) == []
    assert all(p.exists() for p in files)
    for p in files:
        old(p)
    assert sorted(tempfiles.clean_folder(tmp_path, recursive=True, legacy=True)) == sorted(files)
    decode = Path(tempfile.gettempdir()) / f"dsu-decode-{dead}@othernode.{other}-x1y2.wav"
    decode.write_bytes(b"RIFF")
    try:
        assert decode not in tempfiles.clean_decode_files()
        old(decode)
        assert decode in tempfiles.clean_decode_files()
    finally:
        decode.unlink(missing_ok=True)


# ---- through a worker ---------------------------------------------------------------------------------

def test_bad_inputs_are_coded_errors(worker, tmp, song):
    fifo = tmp / "pipe.wav"
    os.mkfifo(fifo)
    (tmp / "folder.wav").mkdir()
    cases = [
        ("nul\x00.wav", "bad_value", "NUL"),
        ("x" * 300 + ".wav", "bad_value", "255"),
        (str(tmp / ("y" * 300)), "bad_value", "255"),
        (str(tmp / "folder.wav"), "input_not_found", "is a folder, not a file"),
        (str(fifo), "bad_value", "special file"),
        ("/dev/zero", "bad_value", "special file"),
        (str(song / "inner.wav"), "input_not_found", "not found"),
        ("", "bad_value", "empty"),
    ]
    for i, (name, code, words) in enumerate(cases):
        error = worker.error(cmd="separate", id=i, input=name, output_dir=str(tmp / "o"), model="dsp")
        assert error["code"] == code and words in error["message"], (name, error)
    assert worker.ask(cmd="ping", id="alive")["status"] == "pong"


def test_bad_output_folders_are_refused_before_the_model_loads(worker, tmp, song):
    afile = tmp / "afile"
    afile.write_text("not a folder")
    cases = [
        ("/proc/dsu-out", "output_not_writable"), ("/proc/self/fd", "output_not_writable"),
        ("/sys/dsu", "output_not_writable"), (str(afile), "output_not_writable"),
        (str(afile / "below"), "output_not_writable"), ("o\x00ut", "bad_value"),
        (str(tmp / ("z" * 300)), "bad_value"),
    ]
    for i, (out, code) in enumerate(cases):
        # a model that does not exist: the output is refused first, with nothing loaded
        error = worker.error(cmd="separate", id=i, input=str(song), output_dir=out, model="no-such-model")
        assert error["code"] == code and "output" in error["message"], (out, error)
    error = worker.error(cmd="restore", id="r", input=str(song), output=str(tmp), model_path=str(tmp / "none.ckpt"))
    assert error["code"] == "output_not_writable" and "is a folder" in error["message"]
    assert worker.ask(cmd="ping", id="alive")["status"] == "pong"


def test_a_stem_name_cannot_write_outside_output_dir(worker, tmp, song):
    out = tmp / "deep" / "er" / "out"
    done = worker.ask(cmd="separate", id="esc", input=str(song), output_dir=str(out),
                      model_path=str(MDX / "model.onnx"), primary_stem="../../../escaped3",
                      stems=["../../../escaped3", "No ../../../escaped3"], **MDX_SETTINGS)
    assert all(out in Path(p).parents for p in done["paths"]), done["paths"]
    assert done["files"] == ["song_(_._.._.._escaped3)_model.wav", "song_(No .._.._.._escaped3)_model.wav"]
    assert not list(tmp.rglob("escaped3*")) and not [p for p in tmp.rglob("*") if "escaped3" in p.name
                                                     and out not in p.parents]


def test_clean_command_and_cli(worker, tmp):
    folder = tmp / "debris"
    (folder / "model" / "song").mkdir(parents=True)
    dead = dead_pid()
    here = tempfiles.owner_tag().split("@")[1]
    stale = [folder / "model" / "song" / f".drums.wav.{dead}@{here}-1a2b.partial", folder / ".old.wav.partial"]
    live = folder / f".vocals.wav.{os.getpid()}@{here}-3c4d.partial"  # the test process: alive
    decode = Path(tempfile.gettempdir()) / f"dsu-decode-{dead}@{here}-x1y2.wav"
    for p in [*stale, live, decode, folder / "model" / "song" / "bass.wav"]:
        p.write_bytes(b"RIFF")
    old(stale[1])  # owner-less: removed only when old
    cleaned = worker.ask(cmd="clean", id="c", dir=str(folder))
    assert sorted(cleaned["removed"]) == sorted(str(p) for p in [*stale, decode]) and cleaned["count"] == 3
    assert live.exists() and (folder / "model" / "song" / "bass.wav").exists()
    assert worker.error(cmd="clean", id="m", dir=str(folder / "missing"))["code"] == "input_not_found"
    stale[0].write_bytes(b"RIFF")
    run = in_process(main, ["clean", folder], cwd=tmp, env=ENV)
    assert run.returncode == 0 and run.stdout.split() == [str(stale[0])] and "removed 1" in run.stderr
    assert live.exists() and not stale[0].exists()


def test_a_file_name_that_is_not_utf8_is_read_and_named_after(worker, tmp, song):
    """Linux file names are bytes: a Latin-1 `caf\\xe9.wav` is read, its stems are named after it, and
    the answers carry its bytes back (as the \\udcXY escapes Python's os.fsdecode makes of them)."""
    import json
    import shutil
    folder = tmp / "latin1"
    folder.mkdir()
    track = Path(os.fsdecode(os.fsencode(folder) + b"/caf\xe9.wav"))
    shutil.copy(song, track)
    done = worker.ask(cmd="separate", id="l1", input=str(track), output_dir=str(folder / "w"), model="dsp")
    assert done["output_dir"] == os.fsdecode(os.fsencode(folder) + b"/w/caf\xe9"), done
    assert len(done["paths"]) == 4 and all(os.path.isfile(os.fsencode(p)) for p in done["paths"])
    assert sorted(os.listdir(os.fsencode(folder / "w"))) == [b"caf\xe9"]
    (folder / "w" / os.fsdecode(b"caf\xe9") / os.fsdecode(b".x\xe9.wav.1-ab.partial")).write_bytes(b"RIFF")
    old(folder / "w" / os.fsdecode(b"caf\xe9") / os.fsdecode(b".x\xe9.wav.1-ab.partial"))
    cleaned = worker.ask(cmd="clean", id="l2", dir=str(folder))
    assert cleaned["removed"] == [os.fsdecode(os.fsencode(folder) + b"/w/caf\xe9/.x\xe9.wav.1-ab.partial")]
    run = in_process(main, ["separate", track, "-m", "dsp", "-o", folder / "c", "--json"], cwd=tmp, env=ENV)
    assert run.returncode == 0, run.stderr
    done = [m for m in map(json.loads, run.stdout.splitlines()) if m["status"] == "done"][-1]
    assert all(os.path.isfile(os.fsencode(p)) for p in done["paths"]) and len(done["paths"]) == 4
    assert sorted(os.listdir(os.fsencode(folder / "c"))) == [b"caf\xe9"]


def test_random_bytes_and_broken_headers_say_what_they_are(worker, tmp):
    junk = tmp / "junk.mp3"
    junk.write_bytes(np.random.default_rng(1).bytes(5000))
    error = worker.error(cmd="separate", id="j", input=str(junk), output_dir=str(tmp / "o"), model="dsp")
    assert error["code"] == "unsupported_audio" and "not an audio file libsndfile" in error["message"], error
    assert ".." not in error["message"] and "does not exist" not in error["message"]
    text = tmp / "notes.wav"
    text.write_text("this is not audio\n" * 100)
    error = worker.error(cmd="separate", id="t", input=str(text), output_dir=str(tmp / "o"), model="dsp")
    assert error["code"] == "unsupported_audio" and ".." not in error["message"], error


def test_yaml_errors_are_one_line(worker, tmp, song):
    broken = tmp / "broken.yaml"
    broken.write_text("model:\n  dim: 4\n  depth 2\ntraining: [1,\n")
    error = worker.error(cmd="separate", id="y", input=str(song), output_dir=str(tmp / "o"),
                         model_path=str(tmp / "model.ckpt"), config_path=str(broken), model_type="bs_roformer")
    assert error["code"] in ("bad_value", "model_not_found"), error
    (tmp / "model.ckpt").write_bytes(b"x")
    error = worker.error(cmd="separate", id="y2", input=str(song), output_dir=str(tmp / "o"),
                         model_path=str(tmp / "model.ckpt"), config_path=str(broken), model_type="bs_roformer")
    assert error["code"] == "bad_value" and "\n" not in error["message"] and "line 4" in error["message"], error
    broken.write_bytes(b"model: \xff\xfe\n")
    error = worker.error(cmd="separate", id="y3", input=str(song), output_dir=str(tmp / "o"),
                         model_path=str(tmp / "model.ckpt"), config_path=str(broken), model_type="bs_roformer")
    assert error["code"] == "bad_value" and "broken.yaml" in error["message"], error


def test_model_paths_that_would_block_or_crash_are_refused(worker, tmp, song):
    fifo = tmp / "model.th"
    os.mkfifo(fifo)  # torch.load on a FIFO would wait forever for a writer
    (tmp / "models.ckpt").mkdir()
    cases = [("model_path", str(fifo), "special file"), ("model_path", "/dev/zero", "special file"),
             ("model_path", str(tmp / "models.ckpt"), "is a folder"), ("model_path", "m" * 300, "255"),
             ("config_path", "c\x00.yaml", "NUL"), ("models_dir", str(song), "not a folder"),
             ("repo", "/dev/null", "not a folder")]
    for i, (field, value, words) in enumerate(cases):
        error = worker.error(cmd="separate", id=i, input=str(song), output_dir=str(tmp / "o"), **{field: value})
        assert error["code"] == "bad_value" and field in error["message"] and words in error["message"], error
    assert worker.ask(cmd="ping", id="alive")["status"] == "pong"
