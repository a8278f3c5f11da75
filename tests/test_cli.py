"""`dsu` on the command line, run in this process through `dsu.cli.main` (files, streams and exit codes);
the worker subcommand and a strict locale in real processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import Ran, in_process

from dsu.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
DSU = [sys.executable, "-m", "dsu.cli"]


def dsu(*args, cwd: Path) -> Ran:
    """`dsu ARGS` in this process (the real process: the worker and locale tests below)."""
    return in_process(main, args, cwd=cwd, env=ENV)


def test_separate_files_with_progress_and_errors(tmp_path):
    t = np.arange(2 * 22050) / 22050
    sf.write(tmp_path / "mono.flac", (0.3 * np.sin(2 * np.pi * 110 * t)).astype(np.float32), 22050)
    (tmp_path / "broken.wav").write_text("not audio")
    run = dsu("separate", "mono.flac", "broken.wav", "-m", "dsp", "-o", "out", "--bit-depth", "24",
              "--two-stems", "vocals", "--sample-rate", "input", "-O", "segment=1.0", "--threads", "1", cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    written = run.stdout.split()
    assert written == [str(tmp_path / "out" / "mono" / f"{s}.wav") for s in ("vocals", "no_vocals")]
    info = sf.info(written[0])
    assert (info.samplerate, info.channels, info.subtype) == (22050, 2, "PCM_24")  # dsp is stereo
    assert abs(info.frames - 2 * 22050) <= 1
    lines = run.stderr.splitlines()
    assert any("100%" in line for line in lines) and "\r" not in run.stderr  # not a terminal: whole lines
    assert "dsu: broken.wav: unsupported_audio: " in run.stderr
    assert not (tmp_path / "out" / "broken").exists()


def test_usage_and_model_errors(tmp_path):
    sf.write(tmp_path / "a.wav", np.zeros((4096, 2), np.float32), 44100)
    run = dsu("separate", "a.wav", "-m", "dsp", "-o", "out", "--bit-depth", "20", cwd=tmp_path)
    assert run.returncode == 2
    run = dsu("separate", "a.wav", "-m", "no-such-model", "-o", "out", "-q", cwd=tmp_path)
    assert run.returncode == 2 and run.stderr.strip().startswith("dsu: model_not_found: ")
    assert len(run.stderr.strip().splitlines()) == 1  # one line, no traceback


def test_models_list(tmp_path):
    run = dsu("models", "list", "--json", cwd=tmp_path)
    assert run.returncode == 0
    models = json.loads(run.stdout)  # one JSON array: catalog models and what the models dir holds
    assert {"name": "dsp", "family": "dsp"}.items() <= next(m for m in models if m["name"] == "dsp").items()
    run = dsu("models", "list", cwd=tmp_path)
    assert run.returncode == 0
    header, *rows = run.stdout.splitlines()  # a header row names the columns (JSON has none: the keys do)
    assert header.split() == ["NAME", "TYPE", "INSTALLED", "SIZE", "SDR", "STEMS"]
    dsp = next(r for r in rows if r.startswith("dsp "))
    assert dsp.split()[:3] == ["dsp", "dsp", "installed"] and dsp.index("drums") == header.index("STEMS")


def test_worker_subcommand_speaks_the_protocol(tmp_path):
    run = subprocess.run([*DSU, "worker", "--name", "dsu-bsroformer", "--threads", "1"], input='{"cmd":"ping","id":1}\n',
                         capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=60)
    messages = [json.loads(line) for line in run.stdout.splitlines()]
    assert [m["status"] for m in messages] == ["loading", "ready", "pong", "exiting"]
    assert messages[1]["worker"] == "dsu-bsroformer" and messages[1]["default_model"] is None
    assert run.returncode == 0


def test_restore_writes_one_file_and_names_a_mismatch(tmp_path):
    from tiny_models import tiny_apollo
    tiny_apollo(tmp_path, "apollo_tiny.ckpt")
    t = np.arange(22050) / 44100
    sf.write(tmp_path / "lossy.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100)
    run = dsu("restore", "lossy.wav", "-o", "fixed.flac", "--model-path", "apollo_tiny.ckpt", "--config-path",
              "apollo.yaml", "--chunk-seconds", "0.2", "--overlap-seconds", "0.05", "--threads", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(tmp_path / "fixed.flac")]
    info = sf.info(tmp_path / "fixed.flac")
    assert (info.samplerate, info.channels, info.frames) == (44100, 1, 22050)
    assert "100%" in run.stderr
    run = dsu("restore", "lossy.wav", "-o", "again.wav", "--model-path", "apollo_tiny.ckpt", "--feature-dim", "32",
              "-q", cwd=tmp_path)
    assert run.returncode == 1
    assert "config_mismatch" in run.stderr and "feature_dim 16" in run.stderr
    assert not (tmp_path / "again.wav").exists()


# ---- no flags needed, every mistake at once, progress, formats ------------------------------------------

def quiet_env(**extra) -> dict:
    env = {k: v for k, v in ENV.items() if k not in ("DSU_MODEL", "DSU_MODELS")}
    return {**env, **extra}


def dsu_env(*args, cwd: Path, env: dict) -> Ran:
    return in_process(main, args, cwd=cwd, env=env)


def test_separate_needs_only_a_file(tmp_path):
    from tiny_models import song, tiny_htdemucs
    song(tmp_path, "song.wav")
    run = dsu_env("separate", "song.wav", "--threads", "1", cwd=tmp_path, env=quiet_env())
    assert run.returncode == 0, run.stderr
    assert "model dsp:" in run.stderr  # it says which model it chose, and why
    assert sorted(p.name for p in (tmp_path / "separated" / "song").iterdir()) == \
        ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    models = tmp_path / "models"
    models.mkdir()
    tiny_htdemucs(models / "htdemucs.th")
    run = dsu_env("separate", "song.wav", "--threads", "1", cwd=tmp_path, env=quiet_env(DSU_MODELS=str(models)))
    assert run.returncode == 0, run.stderr
    assert "model htdemucs: the best installed 4-stem model" in run.stderr
    assert sf.info(tmp_path / "separated" / "htdemucs" / "song" / "vocals.wav").subtype == "PCM_16"
    run = dsu_env("separate", "song.wav", "-o", "chosen", "-q", cwd=tmp_path,
                  env=quiet_env(DSU_MODELS=str(models), DSU_MODEL="dsp"))
    assert run.returncode == 0 and run.stderr == ""  # -q: nothing but errors
    assert (tmp_path / "chosen" / "song" / "vocals.wav").is_file()


def test_every_path_mistake_at_once_without_traceback(tmp_path):
    from tiny_models import song
    song(tmp_path, "song.wav")
    (tmp_path / "taken.wav").write_bytes(b"x")
    run = dsu("separate", "song.wav", "missing.wav", "-o", "taken.wav", "--format", "mp3", "--bit-depth", "24",
              "--device", "mps", "-O", "segmnt=2", cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert any(line.startswith("dsu: missing.wav: no such file") for line in lines)
    assert any("-o/--output-dir taken.wav is a file, not a folder" in line for line in lines)
    assert any("--bit-depth 24 with --format mp3" in line for line in lines)
    assert any("--device mps: not available" in line for line in lines)
    run = dsu("separate", "song.wav", "-o", "taken.wav/inside", "-m", "dsp", cwd=tmp_path)
    assert run.returncode == 2 and "taken.wav is a file, so no folder can be made under it" in run.stderr
    run = dsu("separate", "song.wav", "-m", "dsp", "-O", "segmnt=2", cwd=tmp_path)
    assert run.returncode == 2 and "-O segmnt: not an option of this model; did you mean segment?" in run.stderr
    run = dsu("separate", "song.wav", "-m", "dsp", "-o", "newdir/", "--stems", "VOCALS,Drums", "-q", cwd=tmp_path)
    assert run.returncode == 0, run.stderr  # stems in any case, written with the model's spelling
    assert sorted(p.name for p in (tmp_path / "newdir" / "song").iterdir()) == ["drums.wav", "vocals.wav"]


def test_restore_into_a_folder_and_path_mistakes(tmp_path):
    from tiny_models import song, tiny_apollo
    tiny_apollo(tmp_path)
    song(tmp_path, "take.mp3.wav", seconds=0.3)
    (tmp_path / "restored").mkdir()
    common = ["--model-path", "apollo.ckpt", "--config-path", "apollo.yaml", "--chunk-seconds", "0.2",
              "--overlap-seconds", "0.05", "--threads", "1", "-q"]
    run = dsu("restore", "take.mp3.wav", "-o", "restored", *common, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(tmp_path / "restored" / "take.mp3_restored.wav")]
    run = dsu("restore", "take.mp3.wav", "-o", "fresh/", *common, cwd=tmp_path)
    assert run.returncode == 0 and (tmp_path / "fresh" / "take.mp3_restored.wav").is_file()
    run = dsu("restore", "gone.wav", "-o", "take.mp3.wav/x.wav", "--model-path", "none.ckpt", cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert len(run.stderr.splitlines()) == 3  # the input, the output's folder, the model: each once


def test_progress_lines_and_json_events(tmp_path):
    from tiny_models import song
    song(tmp_path, "a.wav", seconds=2.0)
    song(tmp_path, "b.wav", seconds=2.0)
    run = dsu("separate", "a.wav", "b.wav", "-m", "dsp", "-O", "segment=0.4", "--threads", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "\r" not in run.stderr  # stderr is a pipe here: whole lines only
    progress = [line for line in run.stderr.splitlines() if "%" in line]
    assert any(line.startswith("dsu: [2/2] b.wav 100%") for line in progress)
    assert any("ETA" in line for line in progress) and any("x real time" in line for line in progress)
    run = dsu("separate", "a.wav", "b.wav", "-m", "dsp", "--json", "-o", "j", "--threads", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert [e["status"] for e in events if e["status"] != "progress"] == \
        ["loading_model", "separating", "done", "separating", "done"]
    done = [e for e in events if e["status"] == "done"]
    assert all(Path(p).is_file() for e in done for p in e["paths"])
    assert all(0 <= e["progress"] <= 1 for e in events if e["status"] == "progress")


def test_tqdm_bar_on_a_terminal():
    import io
    from dsu.cli.progress import Display
    err = io.StringIO()
    display = Display("normal", total=3, err=err, terminal=True)
    display.index, display.name, display.seconds = 1, "song.wav", 60.0
    import time
    display.started = time.monotonic() - 2.0
    display(0.5)
    display(1.0)
    display.close_bar()
    text = err.getvalue()
    assert "[1/3] song.wav" in text and "100%|" in text and "x real time" in text and "60/60 s" in text


def test_mp3_bitrate(tmp_path):
    from tiny_models import song
    song(tmp_path, "a.wav", seconds=4.0)
    sizes = {}
    for rate in (None, 128):
        out = f"mp3_{rate}"
        extra = ["--mp3-bitrate", str(rate)] if rate else []
        run = dsu("separate", "a.wav", "-m", "dsp", "--format", "mp3", *extra, "--stems", "other", "-o", out, "-q",
                  cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        path = tmp_path / out / "a" / "other.mp3"
        sizes[rate] = path.stat().st_size * 8 / sf.info(path).duration / 1000
    assert 300 < sizes[None] < 340 and 120 < sizes[128] < 136, sizes  # kbps: 320 by default, as demucs
    run = dsu("separate", "a.wav", "-m", "dsp", "--mp3-bitrate", "192", cwd=tmp_path)
    assert run.returncode == 2 and "--mp3-bitrate 192 applies to --format mp3 only" in run.stderr


def test_version_and_completion(tmp_path):
    from dsu import __version__
    run = dsu("--version", cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.strip() == f"dsu {__version__}"
    bash = dsu("completion", "bash", cwd=tmp_path)
    assert bash.returncode == 0 and "--mp3-bitrate" in bash.stdout and "separate" in bash.stdout
    checked = subprocess.run(["bash", "-n"], input=bash.stdout, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr  # valid bash
    zsh = dsu("completion", "zsh", "--program", "dsu-demucs", cwd=tmp_path)
    assert zsh.returncode == 0 and zsh.stdout.startswith("#compdef dsu-demucs") and "--two-stems" in zsh.stdout


def test_default_bit_depth_is_the_one_the_help_states():
    from dsu.cli.separate import BIT_DEPTH_HELP
    from dsu.families import FAMILIES
    stated = {"demucs": 16, "uvr": 16, "flat": 32}
    assert "16 for the demucs and uvr layouts" in BIT_DEPTH_HELP and "32 float for the flat layout" in BIT_DEPTH_HELP
    for fam in FAMILIES.values():
        if fam.name != "apollo":  # restores, never separates (its own default: 16)
            assert fam.default_bit_depth == stated[fam.layout], fam.name


def test_errors_speak_the_flags_of_the_command_typed(tmp_path):
    from tiny_models import song
    song(tmp_path, "song.wav")
    run = dsu("separate", "song.wav", "-m", "nope", cwd=tmp_path)
    assert run.returncode == 2 and "`dsu models list` shows what is there" in run.stderr, run.stderr
    assert "`list_models`" not in run.stderr  # the worker's command, not one a shell runs
    run = dsu("ensemble", "song.wav", "-o", "out", cwd=tmp_path)
    assert run.returncode == 2, run.stderr  # a usage error, found before any work
    assert "give each as -m NAME or --model-path FILE, or a --preset" in run.stderr, run.stderr
    assert '{"model"' not in run.stderr and "`models`" not in run.stderr
    run = dsu("batch", "song.wav", "-m", "nope", "-o", "out", "-q", cwd=tmp_path)
    assert run.returncode == 1 and "`dsu models list` shows" in run.stderr and "`list_models`" not in run.stderr
    for folder in ("a", "b"):  # stems go under batched/a and batched/b
        song(tmp_path / "crate" / folder, "song.wav")
    (tmp_path / "batched").mkdir()
    (tmp_path / "batched" / "a").write_text("a file where the track's folder goes")
    run = dsu("batch", "crate", "-m", "dsp", "-o", "batched", "-q", "--jobs", "1", cwd=tmp_path)
    assert run.returncode == 1 and "output_not_writable: -o/--output-dir " in run.stderr, run.stderr
    assert "`output_dir`" not in run.stderr


def test_default_model_is_a_bag_not_one_of_its_members(tmp_path):
    """A demucs repo as $DSU_MODELS: bags and single models by signature, as demucs' remote repo holds them."""
    from tiny_models import song, tiny_htdemucs
    from dsu.cli import default_model
    repo = tmp_path / "repo"
    repo.mkdir()
    for sig in ("5f6f4f76", "e51eebcc"):
        tiny_htdemucs(repo / f"{sig}.th")
    (repo / "tuned.yaml").write_text("models: ['e51eebcc', '5f6f4f76']\n")
    assert default_model.choose(repo, environ={})[0] == "tuned"  # not 5f6f4f76, first by name
    (repo / "htdemucs_ft.yaml").write_text("models: ['5f6f4f76']\n")
    assert default_model.choose(repo, environ={})[0] == "htdemucs_ft"  # demucs' ranking of named models
    song(tmp_path, "song.wav")
    run = dsu_env("separate", "song.wav", "--threads", "1", cwd=tmp_path, env=quiet_env(DSU_MODELS=str(repo)))
    assert run.returncode == 0 and "model htdemucs_ft: the best installed 4-stem model" in run.stderr, run.stderr


@pytest.mark.slow  # three real processes under a strict locale
def test_names_that_are_not_utf8_print_under_a_strict_locale(tmp_path):
    """Linux file names are bytes; a CLI prints a Latin-1 `caf\\xe9.wav` as those bytes, even where
    Python's streams are strict UTF-8 (a locale such as en_US.UTF-8; PYTHONIOENCODING forces it here)."""
    from tiny_models import song
    from dsu import tempfiles
    name = os.fsdecode(b"caf\xe9.wav")
    os.replace(song(tmp_path), tmp_path / name)  # soundfile itself cannot open such a name
    env = {**ENV, "PYTHONIOENCODING": "utf-8:strict"}
    run = subprocess.run([*DSU, "separate", name, "-m", "dsp", "-o", "out"], capture_output=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert run.returncode == 0 and b"Error" not in run.stderr, run.stderr.decode(errors="replace")
    written = run.stdout.split()
    assert len(written) == 4 and all(p.startswith(os.fsencode(tmp_path / "out") + b"/caf\xe9/") for p in written)
    assert all(os.path.isfile(p) for p in written) and b"caf\xe9.wav: 4 files" in run.stderr
    partial = tmp_path / "out" / os.fsdecode(b".caf\xe9.wav.1-ab.partial")  # what a killed job on another host left
    partial.write_bytes(b"RIFF")
    t = time.time() - tempfiles.UNCHECKABLE_AGE - 60
    os.utime(partial, (t, t))
    run = subprocess.run([*DSU, "clean", "out"], capture_output=True, env=env, cwd=tmp_path, timeout=120)
    assert run.returncode == 0 and run.stdout.split() == [b"out/.caf\xe9.wav.1-ab.partial"], run.stderr
    run = subprocess.run([*DSU, "separate", os.fsdecode(b"gon\xe9.wav"), "-m", "dsp"], capture_output=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert run.returncode == 2 and b"gon\xe9.wav: no such file" in run.stderr, run.stderr


def test_a_model_option_out_of_range_is_named_as_the_flag_typed(tmp_path):
    """Family options (`shifts`, `segment`, ...) given as -O or a --member field are said that way."""
    from tiny_models import song
    song(tmp_path, "song.wav")
    for option, said in (("segment=-3", "-O segment of separate must be at least 0.01"),
                         ("shifts=-1", "-O shifts of separate must be at least 0")):
        run = dsu("separate", "song.wav", "-m", "dsp", "-O", option, cwd=tmp_path)
        assert run.returncode == 2 and said in run.stderr and "`" not in run.stderr, run.stderr
    run = dsu("separate", "song.wav", "--model-path", "song.wav", "--model-type", "nope", cwd=tmp_path)
    assert run.returncode == 2 and "unknown --model-type 'nope'" in run.stderr, run.stderr
    run = dsu("ensemble", "song.wav", "-m", "dsp", "--member", '{"model": "dsp", "segment": -3}', "-o", "e", cwd=tmp_path)
    assert "--member's segment" in run.stderr and "`segment`" not in run.stderr, run.stderr
