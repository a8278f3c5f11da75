"""The drop-in command lines (`dsu-demucs`, `dsu-audio-separator`, `dsu-bsroformer`) run as their tools'
READMEs show them, on real files with tiny random-weight models: output folders,
file names, formats, exit codes, and the options DSU refuses by name."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from helpers import Ran, in_process
from tiny_models import song, tiny_apollo, tiny_htdemucs

from dsu import cli

FIXTURES = Path(__file__).parent / "fixtures" / "msst"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ENTRY = {"dsu-demucs": "demucs_worker", "dsu-audio-separator": "audio_separator_worker",
         "dsu-bsroformer": "bsroformer_worker", "dsu-denoise": "denoise_worker"}


def tool(name: str, *args, cwd: Path, env: dict | None = None, stdin: str | None = None) -> Ran:
    """The drop-in in this process; given `stdin` (a worker's requests) its real console process."""
    if stdin is None:
        return in_process(getattr(cli, ENTRY[name]), args, cwd=cwd, env={**ENV, **(env or {})})
    code = f"from dsu.cli import {ENTRY[name]} as main; raise SystemExit(main())"
    run = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                         env={**ENV, **(env or {})}, cwd=cwd, timeout=300, input=stdin)
    return Ran(run.args, run.returncode, run.stdout, run.stderr)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A models dir: a tiny HTDemucs saved as demucs saves `htdemucs`, and a tiny BS-RoFormer named
    by a models.json entry (as audio-separator names its default model)."""
    root = tmp_path_factory.mktemp("models")
    tiny_htdemucs(root / "htdemucs.th")
    shutil.copytree(FIXTURES / "bs_roformer", root / "roformer")
    (root / "models.json").write_text(json.dumps({"model_bs_roformer_ep_317_sdr_12.9755.ckpt": {
        "type": "bs_roformer", "config": "roformer/config.yaml", "checkpoint": "roformer/model.ckpt"}}))
    return root


# ---- dsu-demucs ----------------------------------------------------------------------------------------

def test_demucs_readme_lines(models, tmp_path):
    song(tmp_path, "a.wav")
    song(tmp_path, "b.flac")
    env = {"DSU_MODELS": str(models)}
    # demucs PATH_TO_AUDIO_FILE_1 [PATH_TO_AUDIO_FILE_2 ...]: htdemucs, separated/htdemucs/<track>/<stem>.wav
    run = tool("dsu-demucs", "a.wav", "b.flac", "missing.wav", "-j", "1", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr  # demucs says a missing track and goes on
    assert "File missing.wav does not exist" in run.stderr
    for track in ("a", "b"):
        for stem in ("drums", "bass", "other", "vocals"):
            info = sf.info(tmp_path / "separated" / "htdemucs" / track / f"{stem}.wav")
            assert (info.samplerate, info.channels, info.subtype) == (44100, 2, "PCM_16")
    assert "\r" not in run.stderr
    # demucs --two-stems=vocals myfile.mp3 (here a wav), --mp3 at the default 320 kbps, a --filename
    run = tool("dsu-demucs", "--two-stems=vocals", "a.wav", "--mp3", "-o", "out", "--filename",
               "{track}-{stem}.{ext}", "-d", "cpu", "-j", "1", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "htdemucs").iterdir()) == ["a-no_vocals.mp3", "a-vocals.mp3"]
    assert sf.info(tmp_path / "out" / "htdemucs" / "a-vocals.mp3").format == "MP3"
    # --flac --int24 and --float32
    run = tool("dsu-demucs", "a.wav", "--flac", "--int24", "-o", "flac", "--repo", models, "-j", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert sf.info(tmp_path / "flac" / "htdemucs" / "a" / "vocals.flac").subtype == "PCM_24"
    run = tool("dsu-demucs", "a.wav", "--float32", "--two-stems", "drums", "--other-method", "none", "-o", "f32",
               "-j", "1", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    written = list((tmp_path / "f32" / "htdemucs" / "a").iterdir())
    assert [p.name for p in written] == ["drums.wav"] and sf.info(written[0]).subtype == "FLOAT"


def test_demucs_refusals_and_failures(models, tmp_path):
    song(tmp_path, "a.wav")
    env = {"DSU_MODELS": str(models)}
    for args, named in ((["--no-split"], "--no-split"), (["--clip-mode", "clamp"], "--clip-mode clamp"),
                        (["--two-stems", "vocals", "--other-method", "minus"], "--other-method minus"),
                        (["--mp3", "--mp3-preset", "5"], "--mp3-preset 5"), (["-d", "cuda:1"], "-d cuda:1")):
        run = tool("dsu-demucs", "a.wav", *args, cwd=tmp_path, env=env)
        assert run.returncode == 2 and named in run.stderr, (args, run.stderr)
        assert "Traceback" not in run.stderr
    run = tool("dsu-demucs", "a.wav", "-n", "no_such_model", cwd=tmp_path, env=env)
    assert run.returncode == 1 and "model_not_found" in run.stderr and "Traceback" not in run.stderr
    run = tool("dsu-demucs", "a.wav", "--two-stems", "kazoo", cwd=tmp_path, env=env)
    assert run.returncode == 1 and 'stem "kazoo" is not in selected model' in run.stderr
    assert not (tmp_path / "separated" / "htdemucs" / "a").exists()


def test_named_executables_stay_workers(tmp_path):
    for name, args in zip(ENTRY, ([], ["--worker", "--threads", "1"], ["--threads=1", "--device", "cpu"])):
        run = tool(name, *args, cwd=tmp_path, stdin='{"cmd":"ping","id":1}\n')
        statuses = [json.loads(line)["status"] for line in run.stdout.splitlines()]
        assert statuses == ["loading", "ready", "pong", "exiting"], (name, args, run.stdout, run.stderr)
        assert run.returncode == 0


# ---- dsu-audio-separator -----------------------------------------------------------------------------

def test_audio_separator_readme_lines(models, tmp_path):
    song(tmp_path, "audio.wav")
    sf.write(tmp_path / "hi.wav", sf.read(tmp_path / "audio.wav")[0], 44100, subtype="PCM_24")
    # audio-separator audio.wav --model_filename model_bs_roformer_ep_317_sdr_12.9755.ckpt: FLAC in the cwd
    run = tool("dsu-audio-separator", "audio.wav", "--model_filename", "model_bs_roformer_ep_317_sdr_12.9755.ckpt",
               "--model_file_dir", models, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    # up to the first dot, and the stems as UVR's copy of this config spells them, which audio-separator
    # reads (MSST's own says vocals/other): what `audio-separator` itself writes for this checkpoint
    made = tmp_path / "audio_(Vocals)_model_bs_roformer_ep_317_sdr_12.flac"
    assert (tmp_path / "audio_(Instrumental)_model_bs_roformer_ep_317_sdr_12.flac").is_file()
    info = sf.info(made)
    assert (info.samplerate, info.subtype) == (44100, "PCM_16")  # the input's bit depth
    # the default model, found through $DSU_MODELS; MP3 at a bitrate; one stem under a custom name
    run = tool("dsu-audio-separator", "audio.wav", "-m", "htdemucs.th", "--output_dir", "out",
               "--output_format=MP3", "--output_bitrate", "128k", "--single_stem=Drums",
               "--custom_output_names", '{"Drums": "drums_output"}', cwd=tmp_path, env={"DSU_MODELS": str(models)})
    assert run.returncode == 0, run.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["drums_output.mp3"]
    run = tool("dsu-audio-separator", "hi.wav", "-m", "htdemucs.th", "--model_file_dir", models, "--output_dir",
               "wav", "--output_format", "WAV", "--sample_rate", "22050", "--demucs_shifts", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    names = sorted(p.name for p in (tmp_path / "wav").iterdir())
    assert names == [f"hi_({s})_htdemucs.wav" for s in ("Bass", "Drums", "Other", "Vocals")]
    info = sf.info(tmp_path / "wav" / names[0])
    assert (info.samplerate, info.subtype) == (22050, "PCM_24")


def test_audio_separator_exit_codes(models, tmp_path):
    song(tmp_path, "audio.wav")
    run = tool("dsu-audio-separator", "--model_file_dir", models, "-m", "htdemucs.th", cwd=tmp_path)
    assert run.returncode == 1 and "usage:" in run.stdout  # no files: help, exit 1 (as audio-separator)
    run = tool("dsu-audio-separator", "audio.wav", "--output_format", "OGG", "--chunk_duration", "600",
               "--invert_spect", cwd=tmp_path)
    assert run.returncode == 2
    assert all(n in run.stderr for n in ("--output_format OGG", "--chunk_duration", "--invert_spect"))
    run = tool("dsu-audio-separator", "audio.wav", "-m", "UVR-MDX-NET-Inst_HQ_3.onnx", "--model_file_dir", models,
               cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert f"run `dsu models download UVR-MDX-NET-Inst_HQ_3 --models-dir {models}`" in run.stderr  # not both
    assert "does not download" not in run.stderr
    run = tool("dsu-audio-separator", "audio.wav", "-m", "UVR-MDX-NET-Inst_HQ_3.onnx", "--download_model_only",
               cwd=tmp_path)  # refused, with the command that does download (DSU has one)
    assert run.returncode == 2 and "dsu models download UVR-MDX-NET-Inst_HQ_3.onnx" in run.stderr, run.stderr
    run = tool("dsu-audio-separator", "--list_models", "--list_format", "json", "--model_file_dir", models,
               cwd=tmp_path)
    assert run.returncode == 0 and "htdemucs" in {m["name"] for m in json.loads(run.stdout)}


def test_audio_separator_apollo(tmp_path):
    tiny_apollo(tmp_path, "apollo_tiny.ckpt")
    song(tmp_path, "lossy.wav", seconds=0.5)
    run = tool("dsu-audio-separator", "lossy.wav", "--apollo", "-m", "apollo_tiny.ckpt", "--apollo_config",
               "apollo.yaml", "--output_dir", "restored", "--apollo_chunk_seconds", "0.2",
               "--apollo_overlap_seconds", "0.05", "--threads", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert sf.info(tmp_path / "restored" / "lossy_restored.wav").frames == int(0.5 * 44100)


# ---- dsu-bsroformer (MSST inference.py) ---------------------------------------------------------------

def test_msst_readme_line_and_template(models, tmp_path):
    song(tmp_path / "input" / "wavs", "mix.wav")
    song(tmp_path / "input" / "wavs" / "live", "encore.wav")
    (tmp_path / "input" / "wavs" / "notes.txt").write_text("not audio")
    base = ["--model_type", "bs_roformer", "--config_path", models / "roformer" / "config.yaml",
            "--start_check_point", models / "roformer" / "model.ckpt", "--input_folder", "input/wavs/"]
    run = tool("dsu-bsroformer", *base, "--store_dir", "separation_results/", cwd=tmp_path)
    assert run.returncode == 0, run.stderr  # an unreadable file is said and skipped, as MSST does
    assert "Cannot read track" in run.stdout and "Total files found: 3" in run.stdout
    out = tmp_path / "separation_results"
    assert sf.info(out / "mix" / "vocals.wav").subtype == "FLOAT" and (out / "encore" / "vocals.wav").is_file()
    run = tool("dsu-bsroformer", *base, "--store_dir", "flac", "--flac_file", "--pcm_type", "PCM_24",
               "--extract_instrumental", "--filename_template", "{dir_name}/{file_name}_{instr}_{model_type}",
               cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    got = sorted(p.relative_to(tmp_path / "flac").as_posix() for p in (tmp_path / "flac").rglob("*.flac"))
    assert got == ["live/encore_instrumental_bs_roformer.flac", "live/encore_vocals_bs_roformer.flac",
                   "mix_instrumental_bs_roformer.flac", "mix_vocals_bs_roformer.flac"]
    assert sf.info(tmp_path / "flac" / got[0]).subtype == "PCM_24"


def test_msst_refusals(models, tmp_path):
    run = tool("dsu-bsroformer", "--model_type", "bs_roformer", "--input_folder", "in", "--bigshifts", "3",
               "--draw_spectro", "5", "--device_ids", "0", "1", cwd=tmp_path)
    assert run.returncode == 2
    for named in ("--bigshifts 3", "--draw_spectro", "--device_ids 0 1", "--start_check_point"):
        assert named in run.stderr
    run = tool("dsu-bsroformer", "--model_type", "bs_roformer", "--config_path", models / "roformer" / "config.yaml",
               "--start_check_point", models / "roformer" / "model.ckpt", "--input_folder", "nowhere", cwd=tmp_path)
    assert run.returncode == 1 and "--input_folder nowhere: no such folder" in run.stderr


# ---- bare on a terminal, early-closing readers -----------------------------------------------------

@pytest.mark.slow  # a real process per drop-in on a pty, then on a pipe
def test_bare_drop_ins_print_usage_on_a_terminal_and_serve_a_pipe(tmp_path):
    import pty
    for name in ("dsu-demucs", "dsu-audio-separator", "dsu-denoise"):
        master, slave = pty.openpty()  # stdin a real terminal, as a user typing the bare name
        try:
            code = f"from dsu.cli import {ENTRY[name]} as main; raise SystemExit(main())"
            run = subprocess.run([sys.executable, "-c", code], stdin=slave, capture_output=True, text=True,
                                 env=ENV, cwd=tmp_path, timeout=60)
        finally:
            os.close(master)
            os.close(slave)
        assert run.returncode == 1, (name, run.stdout, run.stderr)  # as demucs and audio-separator exit
        assert "usage:" in run.stdout + run.stderr and f"{name} --worker" in run.stderr
        assert '"status"' not in run.stdout  # no worker started
        run = tool(name, cwd=tmp_path, stdin='{"cmd":"ping","id":1}\n')  # a pipe: the worker, as integrations spawn it
        statuses = [json.loads(line)["status"] for line in run.stdout.splitlines()]
        assert statuses == ["loading", "ready", "pong", "exiting"], (name, run.stderr)


def closed_reader(args, cwd: Path) -> subprocess.CompletedProcess:
    """`args` with stdout a pipe whose reader has gone, as `... | head -2` once head has its lines."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, *args], stdout=write, stderr=subprocess.PIPE, text=True, env=ENV,
                              cwd=cwd, timeout=120)
    finally:
        os.close(write)


@pytest.mark.slow  # a real process per drop-in, each into a closed pipe
def test_lists_into_a_closed_pipe_end_quietly(models, tmp_path):
    listings = [["-m", "dsu.cli", "models", "list"], ["-m", "dsu.cli", "ensemble", "--list-presets"],
                ["-c", "from dsu.cli import demucs_worker as m; raise SystemExit(m())", "--list-models", "--repo",
                 str(models)],
                ["-c", "from dsu.cli import audio_separator_worker as m; raise SystemExit(m())", "--list_models",
                 "--model_file_dir", str(models)]]
    for args in listings:
        run = closed_reader(args, tmp_path)
        assert run.returncode == 141, (args, run.stderr)  # 128 + SIGPIPE, as coreutils under `head`
        assert "Traceback" not in run.stderr and "BrokenPipe" not in run.stderr, (args, run.stderr)


def test_drop_in_errors_speak_their_own_flags(models, tmp_path):
    song(tmp_path, "a.wav")
    lone = tmp_path / "lone"
    lone.mkdir()  # a checkpoint audio-separator users name, without the YAML published with it
    shutil.copy(models / "roformer" / "model.ckpt", lone / "model_bs_roformer_ep_317_sdr_12.9755.ckpt")
    run = tool("dsu-audio-separator", "a.wav", "-m", "model_bs_roformer_ep_317_sdr_12.9755.ckpt", "--model_file_dir",
               lone, cwd=tmp_path)
    assert run.returncode == 1 and "config_path" not in run.stderr, run.stderr  # audio-separator has no such flag
    assert "put it beside the checkpoint as model_bs_roformer_ep_317_sdr_12.9755.yaml" in run.stderr
    assert "--model_file_dir" in run.stderr
    run = tool("dsu-demucs", "a.wav", "-d", "mps", cwd=tmp_path, env={"DSU_MODELS": str(models)})  # never on Linux
    assert run.returncode == 1 and "-d mps: not available" in run.stderr, run.stderr
    assert "--device" not in run.stderr and "give -d cpu" in run.stderr  # demucs has -d, and no `auto`
    run = tool("dsu-demucs", "a.wav", "-n", "nope", cwd=tmp_path, env={"DSU_MODELS": str(models)})
    assert run.returncode == 1 and "`list_models`" not in run.stderr, run.stderr
    run = tool("dsu-demucs", "a.wav", "-n", "dsp", "--segment", "-3", cwd=tmp_path)
    assert run.returncode == 1 and "--segment of separate must be at least" in run.stderr, run.stderr


def test_msst_model_type_from_the_config(models, tmp_path):
    song(tmp_path / "in", "mix.wav")
    roformer = models / "roformer"
    base = ["--config_path", roformer / "config.yaml", "--start_check_point", roformer / "model.ckpt",
            "--input_folder", "in"]
    run = tool("dsu-bsroformer", *base, "--store_dir", "out", "--filename_template", "{file_name}_{model_type}/{instr}",
               cwd=tmp_path)  # no --model_type: the config's keys tell it, as `dsu separate` reads them
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out" / "mix_bs_roformer" / "vocals.wav").is_file()
    run = tool("dsu-bsroformer", "--model_type", "mdx23c", *base, "--store_dir", "wrong", cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.stderr and "KeyError" not in run.stderr, run.stderr
    assert "config_mismatch" in run.stderr and "give --model_type bs_roformer, or leave it out" in run.stderr
