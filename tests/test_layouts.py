"""Where stems are written: each worker name's layout for every family, `layout` presets and
templates, `output_names`, and `done.output_dir` + `files` naming real files."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import soundfile as sf

from dsu.client import Worker, WorkerError
from dsu.errors import DSUError
from dsu.jobs.outputs import stem_paths, template_of, written_folder
from test_model_folders import MDX_SETTINGS, ROFORMER, VR_SETTINGS, noise_file, tiny_demucs, tiny_vr

FIXTURES = Path(__file__).parent / "fixtures"
DEMUCS = ["drums", "bass", "other", "vocals"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """One tiny model of every family in one models dir."""
    root = tmp_path_factory.mktemp("models")
    shutil.copy(FIXTURES / "msst" / "bs_roformer" / "model.ckpt", root / f"{ROFORMER}.ckpt")
    shutil.copy(FIXTURES / "msst" / "bs_roformer" / "config.yaml", root / f"{ROFORMER}.yaml")
    shutil.copy(FIXTURES / "mdx" / "model.onnx", root / "mdx_tiny.onnx")
    tiny_vr(root / "vr_tiny.pth")
    tiny_demucs(root)
    return root


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    return noise_file(tmp_path_factory.mktemp("input") / "my song.flac", "PCM_24")


# (request, family): the same tiny models through every worker name
REQUESTS = {
    "dsp": {"model": "dsp"},
    "demucs": {"model": "tiny01"},
    "msst": {"model": f"{ROFORMER}.ckpt"},
    "vr": {"model": "vr_tiny", **VR_SETTINGS},
    "mdx": {"model": "mdx_tiny", "mdx_segment_size": 8, **MDX_SETTINGS},
}
SHORT = "model_bs_roformer_ep_317_sdr_12"  # python-audio-separator's name: up to the first dot

# worker -> family -> (folder under OUT, files)
EXPECTED = {
    "dsu": {
        "dsp": ("my song", [f"{s}.wav" for s in DEMUCS]),
        "demucs": ("tiny01/my song", [f"{s}.wav" for s in DEMUCS]),
        "msst": ("my song", ["vocals.wav"]),
        "vr": (".", ["my song_(Instrumental)_vr_tiny.wav", "my song_(Vocals)_vr_tiny.wav"]),
        "mdx": (".", ["my song_(Vocals)_mdx_tiny.wav", "my song_(Instrumental)_mdx_tiny.wav"]),
    },
    "dsu-demucs": {
        "dsp": ("dsp/my song", [f"{s}.wav" for s in DEMUCS]),
        "demucs": ("tiny01/my song", [f"{s}.wav" for s in DEMUCS]),
        "msst": (f"{ROFORMER}/my song", ["vocals.wav"]),
        "vr": ("vr_tiny/my song", ["Instrumental.wav", "Vocals.wav"]),
        "mdx": ("mdx_tiny/my song", ["Vocals.wav", "Instrumental.wav"]),
    },
    "dsu-bsroformer": {
        "dsp": ("my song", [f"{s}.wav" for s in DEMUCS]),
        "demucs": ("my song", [f"{s}.wav" for s in DEMUCS]),
        "msst": ("my song", ["vocals.wav"]),
        "vr": ("my song", ["Instrumental.wav", "Vocals.wav"]),
        "mdx": ("my song", ["Vocals.wav", "Instrumental.wav"]),
    },
    "dsu-audio-separator": {
        "dsp": (".", [f"my song_({s.capitalize()})_dsp.wav" for s in DEMUCS]),
        "demucs": (".", [f"my song_({s.capitalize()})_tiny01.wav" for s in DEMUCS]),
        "msst": (".", [f"my song_(Vocals)_{SHORT}.wav", f"my song_(Instrumental)_{SHORT}.wav"]),
        "vr": (".", ["my song_(Instrumental)_vr_tiny.wav", "my song_(Vocals)_vr_tiny.wav"]),
        "mdx": (".", ["my song_(Vocals)_mdx_tiny.wav", "my song_(Instrumental)_mdx_tiny.wav"]),
    },
}
BIT_DEPTHS = {"dsu": {"dsp": "FLOAT", "demucs": "PCM_16", "msst": "FLOAT", "vr": "PCM_16", "mdx": "PCM_16"}}


# the fast tier: `dsu` (the others run every family again, a worker start each)
@pytest.mark.parametrize("worker_name", [pytest.param(n, marks=pytest.mark.slow) if n in ("dsu-bsroformer", "dsu-demucs", "dsu-audio-separator")
                                         else n for n in sorted(EXPECTED)])
def test_each_worker_writes_its_tools_layout_for_every_family(worker_name, models, song, tmp_path):
    with Worker(["--name", worker_name, "--models-dir", str(models), "--threads", "1"]) as worker:
        for family, request in REQUESTS.items():
            out = tmp_path / family
            done = worker.separate(input=str(song), output_dir=str(out), **request)
            folder, files = EXPECTED[worker_name][family]
            assert done["output_dir"] == str((out / folder).resolve()) and done["files"] == files, family
            for name, path in zip(done["files"], done["paths"]):
                joined = Path(done["output_dir"]) / name
                assert joined.is_file() and str(joined) == path
                subtype = sf.info(joined).subtype
                if worker_name == "dsu-audio-separator":
                    assert subtype == "PCM_24"  # the input's bit depth, as python-audio-separator writes
                elif worker_name == "dsu":
                    assert subtype == BIT_DEPTHS["dsu"][family]


def test_layout_field_templates_and_output_names_through_a_worker(models, song, tmp_path):
    with Worker(["--name", "dsu-audio-separator", "--models-dir", str(models), "--threads", "1"]) as worker:
        done = worker.separate(input=str(song), output_dir=str(tmp_path / "a"), model="tiny01", layout="demucs",
                               bit_depth=16)
        assert done["output_dir"] == str((tmp_path / "a" / "tiny01" / "my song").resolve())
        assert sf.info(done["paths"][0]).subtype == "PCM_16"
        done = worker.separate(input=str(song), output_dir=str(tmp_path / "b"), model="tiny01",
                               layout="{stem}/{track}.{trackext}.{ext}")
        assert done["output_dir"] == str((tmp_path / "b").resolve())
        assert done["files"] == [f"{s}/my song.flac.wav" for s in DEMUCS]
        assert all((Path(done["output_dir"]) / f).is_file() for f in done["files"])
        done = worker.separate(input=str(song), output_dir=str(tmp_path / "c"), model="vr_tiny", **VR_SETTINGS,
                               output_names={"vocals": "lead", "INSTRUMENTAL": "backing track"})
        assert done["files"] == ["backing track.wav", "lead.wav"]
        with pytest.raises(WorkerError) as e:
            worker.separate(input=str(song), output_dir=str(tmp_path / "d"), model="tiny01", layout="../{stem}.wav")
        assert e.value.code == "bad_value" and "layout" in e.value.message
        assert not (tmp_path / "d").exists()


def test_presets_and_aliases():
    song = Path("/music/Song.mp3")
    assert stem_paths("msst", Path("/o"), "m", song, ["vocals"], "flac") == {"vocals": Path("/o/Song/vocals.flac")}
    assert stem_paths("flat", Path("/o"), "m", song, ["vocals"], "wav") == {"vocals": Path("/o/Song/vocals.wav")}
    assert stem_paths("demucs", Path("/o"), "htdemucs", song, ["bass"], "wav") == {
        "bass": Path("/o/htdemucs/Song/bass.wav")}
    assert stem_paths("audio_separator", Path("/o"), "a.b.c", song, ["no_vocals"], "wav") == {
        "no_vocals": Path("/o/Song_(No Vocals)_a.wav")}
    # MSST configs' names as UVR spells them, UVR's names as they are, a model's label for a derived stem
    assert stem_paths("uvr", Path("/o"), "m", song, ["drums", "Drum-Bass", "instrumental"], "wav", family="msst",
                      labels={"instrumental": "No Drum-Bass"}) == {
        "drums": Path("/o/Song_(Drums)_m.wav"), "Drum-Bass": Path("/o/Song_(Drum-Bass)_m.wav"),
        "instrumental": Path("/o/Song_(No Drum-Bass)_m.wav")}
    assert stem_paths("uvr", Path("/o"), "m", song, ["lead_only", "no_Vocals"], "wav", family="vr") == {
        "lead_only": Path("/o/Song_(lead_only)_m.wav"), "no_Vocals": Path("/o/Song_(No Vocals)_m.wav")}
    assert template_of("{track}-{Stem}") == "{track}-{Stem}.{ext}"  # the extension is added when missing


@pytest.mark.parametrize("layout, words", [
    ("{track}/{nope}.{ext}", "unknown placeholder {nope}"),
    ("{track}.{ext}", "names no {stem}"),
    ("/abs/{stem}.{ext}", "relative path"),
    ("a/../{stem}", "relative path"),
    ("a//{stem}", "relative path"),
    ("{stem!r}", "unknown placeholder"),
    ("{stem", "not a template"),
    ("", "must be demucs, flat, uvr"),
])
def test_bad_layouts_are_named(layout, words):
    with pytest.raises(DSUError) as e:
        template_of(layout)
    assert e.value.code == "bad_value" and words in e.value.message


def test_stems_that_would_share_a_file_are_refused():
    with pytest.raises(DSUError, match="same file"):
        stem_paths("flat", Path("/o"), "m", Path("s.wav"), ["a", "b"], "wav", output_names={"a": "x", "b": "x"})
    with pytest.raises(DSUError, match="output_names"):
        from dsu.jobs.outputs import check_output_names
        check_output_names({"vocals": "../up"})


def test_written_folder_is_the_common_parent(tmp_path):
    files = [tmp_path / "m" / "s" / "a.wav", tmp_path / "m" / "s" / "b.wav"]
    assert written_folder(files, tmp_path) == (tmp_path.resolve() / "m" / "s", ["a.wav", "b.wav"])
    files = [tmp_path / "a" / "s.wav", tmp_path / "b" / "s.wav"]
    assert written_folder(files, tmp_path) == (tmp_path.resolve(), ["a/s.wav", "b/s.wav"])
