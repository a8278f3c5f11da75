"""Ensembles: the blending rules against MSST's ensemble.py and python-audio-separator's Ensembler
(tests/fixtures/ensemble/README.md), the streamed spectral blend against the whole-file transform,
and model and file ensembles through real worker processes and the CLI."""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import ENV, Ran, in_process, snr
from tiny_models import tiny_htdemucs

from dsu.blend import algorithms
from dsu.blend.blender import blend_arrays
from dsu.cli import main
from dsu.jobs.ensemble import canonical_stem

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = np.load(FIXTURES / "ensemble" / "expected.npz")
MDX_SETTINGS = {"mdx_n_fft_scale_set": 2048, "compensate": 1.03, "primary_stem": "Vocals", "segment_size": 8}

torch.set_num_threads(1)


def fixture_members() -> torch.Tensor:
    return torch.stack([torch.from_numpy(sf.read(FIXTURES / "ensemble" / f"member{i}.wav", dtype="float32",
                                                 always_2d=True)[0].T.copy()) for i in range(4)])


def read(path) -> np.ndarray:
    return sf.read(path, dtype="float32", always_2d=True)[0].T


# ---- the rules against their references ---------------------------------------------------------------

@pytest.mark.parametrize("key", sorted(GOLDEN.files))
def test_each_algorithm_equals_its_reference(key, tmp_path):
    reference, algorithm, count = key.split("/")
    count = int(count)
    weights = [1.0, 2.0, 3.0, 4.0][:count]
    got = blend_arrays(algorithm, fixture_members()[:count], weights, reference, block=1000, spool_dir=tmp_path)
    want = GOLDEN[key]
    # python-audio-separator's uvr_*_spec drop the tail after the last whole hop; DSU keeps it
    assert got.shape[0] == 2 and got.shape[-1] == 12345 >= want.shape[-1]
    assert snr(want, got[:, :want.shape[-1]].numpy()) > 120
    assert not list(tmp_path.iterdir())  # ensemble_wav's spool files are gone


def test_median_fft_differs_between_the_references():
    members = fixture_members()[:3]
    msst = blend_arrays("median_fft", members, reference="msst")
    separate = blend_arrays("median_fft", members, reference="audio_separator")
    assert snr(GOLDEN["msst/median_fft/3"], separate.numpy()) < 60 < snr(GOLDEN["msst/median_fft/3"], msst.numpy())


def test_rules_on_values_worked_by_hand():
    x = torch.tensor([[[1.0, -3.0, 2.0]], [[-2.0, 3.0, 0.5]], [[4.0, 1.0, -2.0]], [[0.0, 0.0, 2.0]]])
    assert algorithms.median(x).tolist() == [[0.5, 0.5, 1.25]]       # mean of the two middle values
    assert algorithms.pick(x, largest=True).tolist() == [[4.0, -3.0, 2.0]]  # first on a tie (-3 vs 3)
    assert algorithms.uvr_fold(x, largest=True).tolist() == [[4.0, 3.0, 2.0]]  # later one on a tie
    assert algorithms.pick(x, largest=False).tolist() == [[0.0, 0.0, 0.5]]
    z = torch.tensor([1 + 5j, 1 - 1j, 0 + 9j])[:, None]
    assert algorithms.complex_median(z)[0] == 1 - 1j                 # by real part, then imaginary part
    w = torch.tensor([1.0, 3.0, 0.0, 0.0])
    assert algorithms.weighted_mean(x, w).tolist() == [[-1.25, 1.5, 0.875]]


@pytest.mark.parametrize("algorithm", algorithms.SPECTRAL)
def test_streamed_spectral_blend_equals_the_whole_file_transform(algorithm):
    """Blocks of any size, down to one sample, against one block holding the whole signal."""
    torch.manual_seed(3)
    members = torch.randn(3, 2, 20000 + 517)
    whole = blend_arrays(algorithm, members, [1.0, 2.0, 0.5], block=members.shape[-1])
    for block in (1, 999, 1024, 5000):
        if block == 1 and algorithm != "avg_fft":
            continue  # one sample at a time is slow; avg_fft shows the edges are right
        streamed = blend_arrays(algorithm, members, [1.0, 2.0, 0.5], block=block)
        assert streamed.shape == whole.shape and snr(whole.numpy(), streamed.numpy()) > 60


def test_stem_names_match_across_families():
    assert canonical_stem("Vocals", ["Vocals", "Instrumental"]) == "vocals"
    assert canonical_stem("no_vocals", ["vocals", "no_vocals"]) == "instrumental"
    assert canonical_stem("Instrumental", ["Vocals", "Instrumental"]) == "instrumental"
    assert canonical_stem("other", ["vocals", "other"]) == "instrumental"
    assert canonical_stem("other", ["drums", "bass", "other", "vocals"]) == "other"


# ---- through a real worker -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    sr = 44100
    t = np.arange(int(2.5 * sr)) / sr
    rng = np.random.default_rng(5)
    left = 0.25 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    right = 0.2 * np.sin(2 * np.pi * 330 * t + 1) + 0.05 * rng.standard_normal(t.size)
    path = tmp_path_factory.mktemp("song") / "song.wav"
    sf.write(path, np.stack([left, right], 1).astype(np.float32), sr, subtype="FLOAT")
    return path


@pytest.fixture(scope="module")
def one_worker():
    """A `--threads 1` worker for the tests below that need nothing fresh: no cancel, no cwd, no counts."""
    from dsu.client import Worker

    with Worker(["--threads", "1"]) as worker:
        yield worker


def members() -> list[dict]:
    """Three families: the built-in dsp (4 stems), a tiny BS-RoFormer (vocals, and the instrumental as
    the mix minus them), a tiny MDX-Net
    (Vocals/Instrumental, its instrumental taken from the mix)."""
    return [{"model": "dsp", "segment": 2},
            {"model_path": str(FIXTURES / "msst/bs_roformer/model.ckpt"),
             "config_path": str(FIXTURES / "msst/bs_roformer/config.yaml"), "extract_instrumental": True},
            {"model_path": str(FIXTURES / "mdx/model.onnx"), **MDX_SETTINGS}]


def test_model_ensemble_blends_what_each_member_separates(song, tmp_path):
    from dsu.client import Worker

    with Worker(["--threads", "1", "--max-cached-models", "1"]) as worker:
        progress, notes = [], []
        done = worker.request("ensemble", input=str(song), output_dir=str(tmp_path / "ens"), models=members(),
                              algorithm="avg_wave", weights=[1, 2, 3], on_progress=progress.append,
                              on_message=notes.append)
        assert done["stems"] == ["drums", "bass", "other", "vocals", "instrumental"]
        assert done["model"] == "custom_ensemble_dsp_model_model" and done["elapsed"] > 0
        assert [m["blended"] for m in done["members"]] == [
            ["bass", "drums", "other", "vocals"], ["instrumental", "vocals"], ["instrumental", "vocals"]]
        assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
        ensembling = [n for n in notes if n["status"] == "ensembling"]
        assert ensembling and ensembling[0]["members"] == ["dsp", "model", "model"]
        status = worker.request("get_status")
        assert status["max_cache_size"] == 1  # grown to 3 for the job, then restored

        # each member on its own, then blended by hand with the same weights
        alone = []
        for k, m in enumerate(members()):
            one = worker.separate(input=str(song), output_dir=str(tmp_path / f"m{k}"), bit_depth=32, **m)
            alone.append({canonical_stem(s, one["stems"]): read(p) for s, p in zip(one["stems"], one["paths"])})
        got = {s: read(p) for s, p in zip(done["stems"], done["paths"])}
        vocals = (1 * alone[0]["vocals"] + 2 * alone[1]["vocals"] + 3 * alone[2]["vocals"]) / 6
        inst = (2 * alone[1]["instrumental"] + 3 * alone[2]["instrumental"]) / 5
        assert snr(vocals, got["vocals"]) > 100 and snr(inst, got["instrumental"]) > 100
        assert snr(alone[0]["drums"], got["drums"]) > 100  # one member makes it: its stem as is

        # a spectral blend through the stream equals blending the whole separated files
        fft = worker.ensemble(input=str(song), output_dir=str(tmp_path / "fft"), models=members()[:2],
                              algorithm="max_fft", stems=["Vocals"], layout="uvr", name="mine")
        assert fft["files"] == ["song_(Vocals)_mine.wav"]
        whole = worker.ensemble(files=[str(p) for p in (tmp_path / "m0/song/vocals.wav",
                                                        tmp_path / "m1/song/vocals.wav")],
                                output=str(tmp_path / "whole.wav"), algorithm="max_fft")
        assert snr(read(whole["paths"][0]), read(fft["paths"][0])) > 100
        assert whole["members"] == [{"file": str(tmp_path / "m0/song/vocals.wav")},
                                    {"file": str(tmp_path / "m1/song/vocals.wav")}]


@pytest.mark.slow  # a worker start for the names; test_layouts names each tool's files
def test_audio_separator_worker_names_outputs_as_it_does(song, tmp_path):
    from dsu.client import Worker

    with Worker(["--name", "dsu-audio-separator", "--threads", "1"]) as worker:
        done = worker.ensemble(input=str(song), output_dir=str(tmp_path), algorithm="uvr_max_spec",
                               models=[{"model": "dsp", "segment": 2},
                                       {"model": "dsp", "segment": 3, "stem_map": {"other": "Instrumental"}}])
        assert done["files"] == [f"song_({s})_custom_ensemble_dsp_dsp.wav"
                                 for s in ("Drums", "Bass", "Other", "Vocals", "Instrumental")]
        assert [m["blended"] for m in done["members"]] == [["bass", "drums", "other", "vocals"],
                                                           ["bass", "drums", "instrumental", "vocals"]]


def test_bad_input_is_a_coded_error_and_leaves_nothing(song, tmp_path):
    from dsu.client import Worker, WorkerError

    demucs_file = tiny_htdemucs(tmp_path / "tiny8k.th", samplerate=8000)
    out = tmp_path / "out"
    base = {"input": str(song), "output_dir": str(out)}
    dsp2 = [{"model": "dsp"}, {"model": "dsp", "segment": 3}]
    cases = [
        ({"models": []}, "bad_value", "at least 2"),
        ({"models": [{"model": "dsp"}]}, "bad_value", "at least 2"),
        ({"models": dsp2, "algorithm": "loudest"}, "bad_value", "algorithm"),
        ({"models": dsp2, "weights": [1]}, "bad_value", "one per"),
        ({"models": dsp2, "weights": [1, -1]}, "bad_value", "`weights[1]` of ensemble must be at least 0"),
        ({"models": dsp2, "weights": [1, math.nan]}, "bad_value", "finite"),
        ({"models": dsp2, "weights": [0, 0]}, "bad_value", "sum to 0"),
        ({"models": members(), "weights": [1, 0, 0], "stems": ["vocals", "instrumental"]}, "bad_value",
         "every member that makes `instrumental` weight 0 (members 2, 3)"),
        ({"models": [{"model": "dsp"}, {"model_path": str(demucs_file)}]}, "bad_value", "8000 Hz"),
        ({"models": [{"model": "dsp"}, {"model": "nowhere"}]}, "model_not_found", "member 2 (nowhere)"),
        ({"models": dsp2, "stems": ["guitar"]}, "bad_value", "dsp makes drums, bass, other, vocals"),
        ({"models": [{"model": "dsp"}, {"model": "dsp", "segment": 0.01}]}, "bad_value", "member 2 (dsp): segment"),
        ({"models": [{"model": "dsp"}, 7]}, "bad_value", "models[1]"),
        # a member's own family options pass the protocol table's checks, as top-level ones do
        ({"models": [{"model": "dsp"}, {"model": "dsp", "segment": "abc"}]}, "bad_value",
         "member 2 (dsp): `segment` of ensemble must be a number"),
        ({"models": [{"model": "dsp", "segment": 1e308}, {"model": "dsp"}]}, "bad_value",
         "member 1 (dsp): `segment` of ensemble must be at most 600"),
        ({"models": [{"model": "dsp"}, {"model": "dsp", "shifts": -1}]}, "bad_value",
         "member 2 (dsp): `shifts` of ensemble must be at least 0"),
        ({"models": dsp2, "preset": "no_such"}, "bad_value", "vocal_balanced"),
        ({"preset": "vocal_balanced"}, "model_not_found", "member 1 (bs_roformer_vocals_resurrection_unwa.ckpt)"),
        ({"files": [str(song)], "output": str(out / "x.wav")}, "bad_value", "at least 2"),
        # in range, but 64 spectrograms of 4096 frames at once: refused before anything is written
        ({"models": [{"model": "dsp"}, {"model_path": str(FIXTURES / "mdx/model.onnx"), **MDX_SETTINGS,
                                        "segment_size": 4096, "batch_size": 64, "hop_length": 8192}]},
         "out_of_memory", "member 2 (model): this job would need"),
    ]
    with Worker(["--threads", "1", "--max-cached-models", "3"]) as worker:
        for fields, code, words in cases:
            with pytest.raises(WorkerError) as e:
                worker.ensemble(**{**base, **fields})
            assert e.value.code == code and words in e.value.message, (fields, e.value.message)
        cached = worker.request("list_cached")
        assert [m["model"] for m in cached["models"]] == ["tiny8k", "dsp", "model"]  # members that loaded stay cached
        wide = tmp_path / "four.wav"
        sf.write(wide, np.zeros((100, 4), np.float32), 44100)
        with pytest.raises(WorkerError) as e:
            worker.ensemble(files=[str(song), str(wide)], output=str(out / "x.wav"))
        assert e.value.code == "bad_value" and "channels" in e.value.message
        assert worker.ping()["status"] == "pong"
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


@pytest.mark.slow  # a 40 s song, twice (over 8 s); a cancelled job leaving nothing is in test_robust_jobs
def test_cancel_in_the_middle_keeps_nothing(tmp_path):
    from dsu.client import Worker, WorkerError

    long_song = tmp_path / "long.wav"
    sf.write(long_song, (0.1 * np.random.default_rng(0).standard_normal((44100 * 40, 2))).astype(np.float32), 44100)
    out = tmp_path / "out"
    with Worker(["--threads", "1"]) as worker:
        for algorithm in ("avg_fft", "ensemble_wav"):
            request = worker.submit("ensemble", input=str(long_song), output_dir=str(out), algorithm=algorithm,
                                    models=[{"model": "dsp", "segment": 1}, {"model": "dsp", "segment": 2}])
            cancelled = False
            with pytest.raises(WorkerError) as e:
                for message in request:
                    if message["status"] == "progress":
                        assert message["member"] == "dsp"
                        if message["progress"] > 0.3 and not cancelled:
                            request.cancel()
                            cancelled = True
            assert e.value.code == "cancelled"
            assert not [p for p in out.rglob("*") if p.is_file()]  # no stem, no partial, no spool
        assert worker.ping()["status"] == "pong"


def test_file_ensemble_on_the_command_line(tmp_path):
    files = [str(FIXTURES / "ensemble" / f"member{i}.wav") for i in range(3)]
    out = tmp_path / "res.wav"
    run = in_process(main, ["ensemble", "--files", *files, "--algorithm", "avg_fft",
                            "--weights", "1", "2", "3", "-o", str(out), "-q", "--threads", "1"], cwd=tmp_path, env=ENV)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(out.resolve())
    assert snr(GOLDEN["msst/avg_fft/3"], read(out)) > 120

    # a mono file and a shorter one: copied to both channels and padded with silence, as audio-separator
    mono = tmp_path / "mono.wav"
    short = tmp_path / "short.wav"
    stereo = read(files[0])
    sf.write(mono, stereo[0], 44100, subtype="FLOAT")
    sf.write(short, stereo.T[:5000], 44100, subtype="FLOAT")
    run = in_process(main, ["ensemble", "--files", str(mono), str(short),
                            "-o", str(tmp_path / "mixed.flac"), "-q", "--threads", "1"], cwd=tmp_path, env=ENV)
    assert run.returncode == 0, run.stderr
    assert sf.info(tmp_path / "mixed.flac").format == "FLAC"
    mixed = read(tmp_path / "mixed.flac")
    padded = np.pad(stereo[:, :5000], ((0, 0), (0, stereo.shape[1] - 5000)))
    np.testing.assert_allclose(mixed, (np.stack([stereo[0], stereo[0]]) + padded) / 2, atol=1e-4)  # 24-bit

    # a usage error (exit 2), as in `dsu separate`
    bad = in_process(main, ["ensemble", "--files", *files[:2], "--weights", "1",
                            "-o", str(tmp_path / "no.wav"), "-q"], cwd=tmp_path, env=ENV)
    assert bad.returncode == 2 and "bad_value" in bad.stderr and not (tmp_path / "no.wav").exists()


def test_presets_are_listed(tmp_path):
    run = in_process(main, ["ensemble", "--list-presets"], cwd=tmp_path, env=ENV)
    assert run.returncode == 0 and "vocal_balanced" in run.stdout and "avg_fft" in run.stdout


def test_model_ensemble_on_the_command_line(song, tmp_path):
    run = in_process(main, ["ensemble", str(song), "-m", "dsp",
                            "--member", json.dumps({"model": "dsp", "segment": 3}), "--algorithm", "median_wave",
                            "--stems", "vocals,drums", "-o", str(tmp_path), "-q", "--threads", "1"],
                     cwd=tmp_path, env=ENV)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(tmp_path / "song" / s) for s in ("vocals.wav", "drums.wav")]

    # the layouts and custom names of `separate`
    run = in_process(main, ["ensemble", str(song), "-m", "dsp",
                            "--member", json.dumps({"model": "dsp", "segment": 3}), "--stems", "vocals,bass",
                            "--layout", "{model}/{track}-{stem}.{ext}", "--output-names", '{"Vocals": "lead"}',
                            "-o", str(tmp_path / "named"), "--threads", "1", "--json"], cwd=tmp_path, env=ENV)
    assert run.returncode == 0, run.stderr
    done = json.loads(run.stdout.splitlines()[-1])
    folder = tmp_path / "named" / "custom_ensemble_dsp_dsp"
    assert done["output_dir"] == str(folder) and done["files"] == ["lead.wav", "song-bass.wav"]
    assert all(Path(p).is_file() for p in done["paths"])


def test_a_whole_file_vr_member_blends_with_a_streaming_one(one_worker, song, tmp_path):
    """A UVR VR model yields the whole file at its end (the documented exception); the streaming
    member's blocks wait for it and the blend is still each member's separation, averaged."""
    from dsu.models.vr_cascade import CascadedASPPNet

    torch.manual_seed(2)
    vr_path = tmp_path / "narrow_vr.pth"
    torch.save(CascadedASPPNet(672, 2, 0, 4).state_dict(), vr_path)
    vr_member = {"model_path": str(vr_path), "vr_model_param": "4band_v2", "primary_stem": "Instrumental"}
    dsp_member = {"model": "dsp", "segment": 1}
    worker = one_worker
    done = worker.ensemble(input=str(song), output_dir=str(tmp_path / "ens"), models=[dsp_member, vr_member],
                           algorithm="avg_wave", weights=[1, 3], stems=["vocals"])
    alone = []
    for k, m in enumerate((dsp_member, vr_member)):
        one = worker.separate(input=str(song), output_dir=str(tmp_path / f"m{k}"), bit_depth=32,
                              normalization_threshold=1, **m)
        alone.append({canonical_stem(s, one["stems"]): read(p) for s, p in zip(one["stems"], one["paths"])})
    assert [m["family"] for m in done["members"]] == ["dsp", "vr"]
    want = (alone[0]["vocals"] + 3 * alone[1]["vocals"]) / 4
    assert snr(want, read(done["paths"][0])) > 100


# ---- output folders, weights and blends at the job's door ----------------------------------------------

DSP2 = [{"model": "dsp", "segment": 2}, {"model": "dsp", "segment": 3}]


def dsu_cli(*args, cwd: Path) -> Ran:
    """`dsu ensemble ARGS -q --threads 1` in this process."""
    return in_process(main, ["ensemble", *args, "-q", "--threads", "1"], cwd=cwd, env=ENV)


def test_a_member_option_of_the_wrong_type_is_refused_in_the_cli_flags(song, tmp_path):
    run = dsu_cli(song, "-m", "dsp", "--member", '{"model": "dsp", "segment": "abc"}', "-o", tmp_path / "e",
                  cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert "member 2 (dsp): --member's segment of ensemble must be a number" in run.stderr, run.stderr
    assert not (tmp_path / "e").exists()


@pytest.mark.slow  # a worker of its own in another folder
def test_a_relative_output_folder_is_taken_from_the_working_folder(song, tmp_path):
    """`output_dir` and `-o` relative to where the worker or the CLI runs, once (it was joined onto
    itself: ens3/ens3/song)."""
    from dsu.client import Worker

    here = tmp_path.resolve()
    with Worker(["--threads", "1"], cwd=str(here)) as worker:
        done = worker.ensemble(input=str(song), output_dir="ens3", models=DSP2, stems=["vocals"])
        assert done["output_dir"] == str(here / "ens3" / "song") and done["files"] == ["vocals.wav"]
        assert done["paths"] == [str(here / "ens3" / "song" / "vocals.wav")]
        blended = worker.ensemble(files=[str(FIXTURES / "ensemble" / f"member{i}.wav") for i in range(2)],
                                  output="blend.wav")
        assert blended["paths"] == [str(here / "blend.wav")]
    run = dsu_cli(song, "-m", "dsp", "--member", json.dumps(DSP2[1]), "-o", "rel2", "--stems", "vocals", cwd=here)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(here / "rel2" / "song" / "vocals.wav")]
    assert sorted(p.relative_to(here).as_posix() for p in here.rglob("*") if p.is_file()) == [
        "blend.wav", "ens3/song/vocals.wav", "rel2/song/vocals.wav"]


def test_weights_are_bounded_and_blends_finite(one_worker, song, tmp_path):
    """Weights past float32's range were blended into NaN ([1e39, 1]) or silence ([3e38, 3e38]) and
    answered `done`; a blend that overflows is a coded error with nothing written."""
    from dsu.client import WorkerError

    files = [str(FIXTURES / "ensemble" / f"member{i}.wav") for i in range(2)]
    loud = [tmp_path / "loud0.wav", tmp_path / "loud1.wav"]
    for k, path in enumerate(loud):  # finite float samples whose spectrum is not
        sf.write(path, np.full((50000, 2), 3e38 * (1 - k / 4), np.float32), 44100, subtype="FLOAT")
    out = tmp_path / "out"
    worker = one_worker
    for weights in ([1e39, 1], [3e38, 3e38], [1, 2e6]):
        for fields in ({"files": files, "output": str(out / "x.wav")},
                       {"input": str(song), "output_dir": str(out), "models": DSP2}):
            with pytest.raises(WorkerError) as e:
                worker.ensemble(**fields, weights=weights)
            assert e.value.code == "bad_value" and "`weights[" in e.value.message, e.value.message
            assert "at most 1000000" in e.value.message
    # the extremes of the range blend as equal weights do
    equal = read(worker.ensemble(files=files, output=str(tmp_path / "equal.wav"), algorithm="avg_fft")["paths"][0])
    for weights in ([1e6, 1e6], [1e-44, 1e-44]):
        done = worker.ensemble(files=files, output=str(tmp_path / "w.wav"), algorithm="avg_fft", weights=weights)
        assert done["weights"] == weights
        assert snr(equal, read(done["paths"][0])) > 100, weights
    with pytest.raises(WorkerError) as e:
        worker.ensemble(files=[str(p) for p in loud], output=str(out / "loud.wav"), algorithm="avg_fft")
    assert e.value.code == "unsupported_audio" and "NaN or infinite" in e.value.message, e.value.message
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]
    run = dsu_cli("--files", *files, "--weights", "1e39", "1", "-o", out / "cli.wav", cwd=tmp_path)
    assert run.returncode == 2 and "--weights" in run.stderr and "1e+06" not in run.stderr, run.stderr
    assert not (out / "cli.wav").exists()


def test_every_ensemble_checks_its_output_before_work_starts(one_worker, song, tmp_path):
    """The output check of `separate` (paths.check_output_dir), for both kinds of ensemble: a system
    folder, a file in the folder's place, a folder as the file, an input as the output."""
    from dsu.client import WorkerError

    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    files = [str(FIXTURES / "ensemble" / f"member{i}.wav") for i in range(2)]
    shm = Path(f"/dev/shm/dsu-ensemble-test-{tmp_path.name}")
    nowhere = [{"model": "dsp"}, {"model": "no-such-model"}]  # the output is refused before members resolve
    cases = [({"files": files, "output": str(shm / "x.wav")}, "output_not_writable", "system folder"),
             ({"files": files, "output": str(shm.with_suffix(".wav"))}, "output_not_writable", "system folder"),
             ({"files": files, "output": str(afile / "x.wav")}, "output_not_writable", "not a folder"),
             ({"files": files, "output": str(tmp_path)}, "output_not_writable", "is a folder"),
             ({"files": files, "output": files[1]}, "bad_value", "one of `files`"),
             ({"input": str(song), "output_dir": str(shm), "models": nowhere}, "output_not_writable", "system folder"),
             ({"input": str(song), "output_dir": str(afile / "below"), "models": nowhere}, "output_not_writable",
              "not a folder")]
    readonly = tmp_path / "readonly"
    readonly.mkdir(mode=0o555)
    if os.geteuid() != 0:  # root writes anyway
        cases += [({"files": files, "output": str(readonly / "x.wav")}, "output_not_writable", "cannot take"),
                  ({"input": str(song), "output_dir": str(readonly / "o"), "models": nowhere}, "output_not_writable",
                   "cannot take")]
    worker = one_worker
    for fields, code, words in cases:
        with pytest.raises(WorkerError) as e:
            worker.ensemble(**fields)
        assert e.value.code == code and words in e.value.message, (fields, e.value.message)
    assert not shm.exists() and not shm.with_suffix(".wav").exists()
    run = dsu_cli(song, "-m", "dsp", "-m", "dsp", "-o", shm, cwd=tmp_path)
    assert run.returncode == 1 and "output_not_writable" in run.stderr and not shm.exists(), run.stderr
    run = dsu_cli("--files", *files, "-o", shm / "x.wav", cwd=tmp_path)
    assert run.returncode == 1 and "output_not_writable" in run.stderr and not shm.exists(), run.stderr
